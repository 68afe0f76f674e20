# vaultpy's Nix library: builtins only, no nixpkgs, so it evaluates anywhere.
#
#   cacheName            { id, secretFile, recipients } -> "<id>.<hash>.age"   (docs/contracts.md)
#   profileFromHostsToml { hostsToml, host, root? }     -> the profile `vaultpy profile --host H` writes
#   profileFromOptions   { host, settings?, secrets, templates, cacheFile, user? } -> the same profile from
#                        module options (each secret and template with every field the module's
#                        options have; cacheFile: id -> spec -> the cache file's path)
#   templateRefs         text -> [ id ]   the secrets a template uses
#   placeholder          id -> "{{ secrets.<id> }}"
#
# Every function here has a Python twin, and the tests compare them.
let
  inherit (builtins)
    attrNames concatStringsSep elemAt filter foldl' fromTOML genList hashFile hashString
    head isAttrs isInt isList isString length listToAttrs map readFile sort split stringLength
    substring toString;

  words = s: filter (w: isString w && w != "") (split "[[:space:]]+" s);

  # "ssh-ed25519 AAAA… comment" -> "ssh-ed25519 AAAA…"; age1 keys as written.
  normalizeRecipient = key:
    let w = words key;
    in if substring 0 4 (head w) == "age1" then head w else "${elemAt w 0} ${elemAt w 1}";

  toList = x: if isList x then x else [ x ];

  # A key as TOML writes it in a dotted key or a header (vaultpy/errors.py toml_key):
  # bare when it may be, else quoted ("app.env": [secrets.app.env] is another table).
  tomlKey = k: if builtins.match "[A-Za-z0-9_-]+" k != null then k else builtins.toJSON k;
  # A name as Nix writes it in an attribute path (errors.py nix_attr): "1password" and
  # "app.env" are quoted, db is not.
  nixAttr = k: if builtins.match "[A-Za-z_][A-Za-z0-9_'-]*" k != null
      && !(builtins.elem k [ "assert" "else" "if" "in" "inherit" "let" "rec" "then" "with" ])
    then k else builtins.toJSON k;

  # vaultpy/model.py did_you_mean: difflib.get_close_matches(word, known, n=1), whose
  # SequenceMatcher ratio (2 x matched / total length, at least 0.6) is computed as
  # difflib does for strings under 200 characters: the longest common run (first in
  # the known key, then in the word), then the same on either side of it.  Nix counts
  # bytes where Python counts characters: for a non-ASCII word the two may differ
  # (hosts.toml's keys are ASCII: such a word is never one of them).
  chars = s: genList (i: substring i 1 s) (stringLength s);
  range = lo: hi: genList (d: lo + d) (hi - lo);
  matched = a: b:
    let
      go = alo: ahi: blo: bhi:
        let
          run = i: j: if i < ahi && j < bhi && elemAt a i == elemAt b j then 1 + run (i + 1) (j + 1) else 0;
          best = foldl' (x: i: foldl' (y: j: let k = run i j; in if k > y.k then { inherit i j k; } else y)
            x (range blo bhi)) { i = alo; j = blo; k = 0; } (range alo ahi);
        in if best.k == 0 then 0
           else best.k + go alo best.i blo best.j + go (best.i + best.k) ahi (best.j + best.k) bhi;
    in go 0 (length a) 0 (length b);
  closeMatch = word: known:
    let
      lw = stringLength word;
      scored = map (x: rec {
        inherit x;
        t = stringLength x + lw;
        # at most the shorter length matches: the rest is computed only if that may do
        may = 10 * (if stringLength x < lw then stringLength x else lw) >= 3 * t;
        m = matched (chars x) (chars word);
      }) known;
      close = filter (s: s.t > 0 && s.may && 10 * s.m >= 3 * s.t) scored;
      better = s: o: s.m * o.t > o.m * s.t || (s.m * o.t == o.m * s.t && s.x > o.x);
      best = foldl' (b: s: if b == null || better s b then s else b) null close;
    in if best == null then null else best.x;
  # What `vaultpy check` says of a key not in `known`.
  unknownKey = key: known:
    let
      c = closeMatch key known;
      # other tools' keys (vaultpy/model.py FOREIGN_KEYS)
      foreign = {
        neededForUsers = { meant = "early"; said = "sops-nix's neededForUsers is early = true here"; };
        symlink = { meant = "path"; said = "agenix's symlink: a path here is always a symlink (to the file in RAM); remove it"; };
      };
    in
    "unknown key; " + (if foreign ? ${key} && builtins.elem foreign.${key}.meant known
                       then foreign.${key}.said
                       else if c != null then "did you mean '${c}'?"
                       else "allowed keys: ${concatStringsSep ", " known}");
  # A person's entry refuses these with a line of their own (personalSpec).
  notPersonal = [ "owner" "group" "early" ];

  # Leading and trailing whitespace off (lib.trim is newer than some nixpkgs in use).
  trimSpace = s:
    let m = builtins.match "[[:space:]]*([^[:space:]](.*[^[:space:]])?)[[:space:]]*" s;
    in if m == null then "" else head m;

  # vaultpy/output.py path_shape_problem: absolute and normalised, no control
  # character, names of at most 255 bytes and the whole at most 4095.
  absPathPattern = "(/([^/.[:cntrl:]][^/[:cntrl:]]*|[.][^/.[:cntrl:]][^/[:cntrl:]]*|[.][.][^/[:cntrl:]]+))+";
  isAbsPath = p: isString p
    && builtins.match absPathPattern p != null
    && stringLength p <= 4095
    && builtins.all (n: stringLength n <= 255) (filter isString (split "/" p));

  # [hosts.<name>] identities, as vaultpy/model.py checks it; `bad where msg` throws.
  # A person's entry (`user = true`) may begin a path with %h/ or %r/ (isUserPath).
  checkedKeyPaths = { bad, where, user ? false }: v:
    if !(isList v) || v == [ ] then bad where "expected a non-empty list of key paths"
    else let wrong = filter (p: !(if user then isUserPath p else isAbsPath p)) v; in
      if wrong != [ ] then bad where (if user
        then "invalid path ${builtins.toJSON (head wrong)}: a key path is absolute or begins with %h/ (the person's home) or %r/ (their runtime directory); %% is a %"
        else "invalid path ${builtins.toJSON (head wrong)}: give the absolute path of the host's private key file")
      else v;

  # A person's entry's path, as a user's profile takes it (vaultpy/model.py _user_path):
  # absolute, or %h/ (any home) or %r/ (any runtime directory) and the rest, in which
  # %% is a % and no other % may stand.
  userPathRest = p:
    if builtins.elem (substring 0 3 p) [ "%h/" "%r/" ] then substring 2 (stringLength p) p else p;
  isUserPath = p: isString p
    && builtins.match ".*%.*" (builtins.replaceStrings [ "%%" ] [ "" ] (userPathRest p)) == null
    && isAbsPath (expandUserPath { home = "/home/user"; runtime = "/run/user/1000"; } p);
  # Such a path with %h and %r given (each read only if the path begins with it).
  expandUserPath = { home, runtime }: p:
    let
      lead = substring 0 3 p;
      rest = builtins.replaceStrings [ "%%" ] [ "%" ] (userPathRest p);
    in
    if lead == "%h/" then home + rest else if lead == "%r/" then runtime + rest else rest;

  # A person's entry refuses owner, group and early: every file is theirs, installed
  # once they log in (vaultpy/model.py _output).  `spec` back as it is, else `bad`.
  personalSpec = { bad, where }: spec:
    let wrong = filter (k: spec ? ${k}) notPersonal; in
    if wrong == [ ] then spec
    else bad "${where}.${head wrong}" (if head wrong == "early"
      then "early in a person's entry (user = true): early files are for a host's boot; remove early"
      else "${head wrong} in a person's entry (user = true): every file is installed as the person who activates it; remove ${head wrong}");

  # vaultpy/output.py path_clash: what activation keeps at `path` (its settings' dir,
  # early_dir and store themselves, the store's lock file, the live links' temporary
  # names), as { what, where } or null; /var/run is root's symlink to /run.
  hasPrefix = pre: x: substring 0 (stringLength pre) x == pre;
  overlapsPath = a: d: a == d || hasPrefix "${d}/" a || hasPrefix "${a}/" d;
  tmpMark = ".vaultpy-tmp-";
  tmpLinkPrefix = link:
    let parts = split "/" link; base = elemAt parts (length parts - 1);
    in substring 0 (stringLength link - stringLength base) link + ".${base}${tmpMark}";
  pathClash = dirs: p:
    let
      viaRun = if p == "/var/run" || hasPrefix "/var/run/" p
        then pathClash dirs (substring 4 (stringLength p) p) else null;
      inDirs = filter (k: overlapsPath p dirs.${k}) [ "dir" "early_dir" "store" ];
      lock = "${dirs.store}.lock";
      links = filter (k: hasPrefix (tmpLinkPrefix dirs.${k}) p) [ "dir" "early_dir" ];
      parts = split "/" p;
    in
    if viaRun != null then viaRun
    else if inDirs != [ ] then { what = head inDirs; where = dirs.${head inDirs}; }
    else if overlapsPath p lock then { what = "lock file"; where = lock; }
    else if links != [ ] then { what = "${head links}'s temporary symlinks";
                                where = tmpLinkPrefix dirs.${head links} + "*"; }
    else if builtins.match ".*${builtins.replaceStrings [ "." ] [ "[.]" ] tmpMark}.*"
      (elemAt parts (length parts - 1)) != null
    then { what = "temporary names (removed as a killed run's leftovers)"; where = "*${tmpMark}*"; }
    else null;
  # vaultpy/output.py UNIT_RE: systemd's characters and globs; "-" first only as "-.".
  unitPattern = "-[.][]A-Za-z0-9:_.\\@*?[-]{0,253}|[]A-Za-z0-9:_.\\@*?[][]A-Za-z0-9:_.\\@*?[-]{0,254}";
  # restart_units / reload_units from hosts.toml, as `vaultpy check` takes them.
  checkedUnits = { bad, where }: units:
    if !(isList units) || !(builtins.all isString units)
    then bad where "expected a list of strings, got ${builtins.typeOf units}; write it as [\"a\", \"b\"]"
    else let wrong = filter (u: builtins.match unitPattern u == null) units; in
      if wrong != [ ] then bad where "invalid unit name ${builtins.toJSON (head wrong)}; use a name like \"nginx.service\""
      else units;
  # An item's `path` from hosts.toml, as `vaultpy check` takes it: one line through `bad`.
  # `keys`: the entry's identities as written (null: the default), never a path
  # (vaultpy/output.py key_path_problem).
  checkedItemPath = { bad, where, user, keys ? null }: p:
    let
      settings = if user then userSettings else defaultSettings;
      clash = pathClash settings p;
    in
    if !(if user then isUserPath p else isAbsPath p)
    then bad where "invalid path ${builtins.toJSON p}: ${if user
      then "a path is absolute or begins with %h/ (the person's home) or %r/ (their runtime directory); %% is a %"
      else "use an absolute, normalised path like /var/lib/app/secret"}"
    else if clash != null
    then bad where "path ${builtins.toJSON p} overlaps ${builtins.toJSON clash.where}, where activation keeps its ${clash.what}; ${
      if builtins.elem clash.what [ "dir" "early_dir" "store" ]
      then "choose a path outside ${clash.where}, or drop it" else "choose another path, or drop it"}"
    else if builtins.elem p (if keys == null then settings.identities
                             else if isList keys then keys else [ ])   # (else said elsewhere)
    then bad where "path ${builtins.toJSON p} is ${if user then "the person's" else "the host's"} private key, which activation decrypts with; give the secret a path of its own (a link there would lead nowhere after a reboot, and nothing could be decrypted)"
    else p;

  cacheHash = { secretFile, recipients }:
    hashString "sha256"
      (hashFile "sha256" secretFile + "\n"
        + concatStringsSep "\n" (map normalizeRecipient (toList recipients)));

  cacheName = { id, secretFile, recipients }:
    "${id}.${substring 0 32 (cacheHash { inherit secretFile recipients; })}.age";

  # Leftmost match first: "{{{{" (a literal "{{") wins over a placeholder that
  # would start inside it, exactly like the Python scanner.
  templateRefs = text:
    let
      parts = split "(\\{\\{\\{\\{|\\{\\{[ \t]*secrets\\.([A-Za-z0-9][A-Za-z0-9_.-]*)[ \t]*}})" text;
      found = map (m: elemAt m 1) (filter (m: isList m && elemAt m 1 != null) parts);
    in
    foldl' (acc: id: if builtins.elem id acc then acc else acc ++ [ id ]) [ ] found;

  # true when the text has a "{{ secrets." that does not form a whole placeholder: the
  # Python parser's "broken placeholder" (the same leftmost scan as templateRefs).
  brokenPlaceholder = text:
    let
      parts = split "(\\{\\{\\{\\{|\\{\\{[ \t]*secrets\\.([A-Za-z0-9][A-Za-z0-9_.-]*)[ \t]*}}|\\{\\{[ \t]*secrets\\.)" text;
    in
    builtins.any (m: isList m && elemAt m 1 == null && elemAt m 0 != "{{{{") parts;

  placeholder = id: "{{ secrets.${id} }}";

  # vaultpy/templates.py near_misses: text kept as it is that reads like a placeholder
  # mistyped ({{ secret.x }}, {{ Secrets.x }}, {{ secrets: x }}): [ { text, id } ], the
  # text and the id it most likely meant.  Neither a placeholder nor a literal ({{{{).
  nearMisses = text:
    let
      parts = split ("[{][{]([ \t]*)([sS][eE][cC][rR][eE][tT][sS]?)([ \t]*)([.:])([ \t]*)"
        + "([A-Za-z0-9][A-Za-z0-9_.-]*)([ \t]*)[}][}]") text;
      at = range 0 (length parts);
      found = i: let g = elemAt parts i; before = elemAt parts (i - 1); in {
        text = "{{${elemAt g 0}${elemAt g 1}${elemAt g 2}${elemAt g 3}${elemAt g 4}${elemAt g 5}${elemAt g 6}}}";
        id = elemAt g 5;
        real = elemAt g 1 == "secrets" && elemAt g 2 == "" && elemAt g 3 == ".";
        literal = isString before && stringLength before >= 2
          && substring (stringLength before - 2) 2 before == "{{";
      };
    in map (m: { inherit (m) text id; })
      (filter (m: !m.real && !m.literal) (map found (filter (i: isList (elemAt parts i)) at)));

  # `mode = 440` in hosts.toml is a decimal TOML integer (0o670), not what it looks
  # like: the decimal literals written after `mode =`, as strings, like the Python
  # checker's scan of the text (vaultpy/model.py _DECIMAL_MODE).
  decimalModes = text:
    let
      excluded = c: builtins.match "[0-9_.xXoObBeE:-]" c != null;
      inLine = line:
        let parts = split "[{,][ \t]*mode[ \t]*=[ \t]*([0-9]{1,20})" ("," + line);
        in builtins.concatLists (genList
          (i:
            let m = elemAt parts i; next = elemAt parts (i + 1); in
            if isList m && !(excluded (substring 0 1 next)) then [ (head m) ] else [ ])
          (length parts - 1));
    in
    builtins.concatLists (map inLine (filter isString (split "\n" text)));

  # A hosts.toml mode, normalised; `where` names the field for the error.
  checkedMode = { decimals, file, where }: m:
    if isInt m && m >= 8 && builtins.elem (toString m) decimals
    then throw "${file}: ${where}: mode = ${toString m} is a decimal number (0o${octal m}); ${
      if builtins.match "[0-7]{1,3}" (toString m) != null
      then "write it as a string \"0${toString m}\" or as 0o${toString m}"
      else "write it as an octal string like \"0440\""}"
    # as vaultpy check: permission bits only, "440" / "0440" or an integer up to 0o777
    else if (isInt m && m >= 0 && m <= 511)
      || (isString m && builtins.match "0?[0-7]{3}" m != null)
    then normalizeMode m
    else throw "${file}: ${where}: invalid mode ${builtins.toJSON m}; use an octal string like \"0440\" (permission bits only)";

  # owner/group: a name, or a numeric id (true was taken as uid 1)
  checkedOwner = { file, where }: o:
    if isInt o && o >= 0 then toString o
    else if isString o && o != "" then o
    else throw "${file}: ${where}: expected a user or group name or a numeric id, got ${builtins.toJSON o}; quote the name";

  uniqueSorted = xs: attrNames (listToAttrs (map (x: { name = x; value = null; }) xs));

  # 288 -> "0440"; "440" -> "0440"; "0440" -> "0440"
  octal = n: if n < 8 then toString n else octal (n / 8) + toString (n - 8 * (n / 8));
  normalizeMode = m:
    let s = if isInt m then octal m else m;
    in if stringLength s >= 4 then s
       else concatStringsSep "" (genList (_: "0") (4 - stringLength s)) + s;

  normalizeOwner = o: if isInt o then toString o else o;

  defaultSettings = {
    identities = [ "/etc/ssh/ssh_host_ed25519_key" ];
    dir = "/run/vaultpy";
    early_dir = "/run/vaultpy-early";
    store = "/run/vaultpy.d";
    keep = 3;
  };

  # A user's profile (`vaultpy profile --user`, the home-manager module): vaultpy/profile.py
  # USER_SETTINGS.  %h (home) and %r ($XDG_RUNTIME_DIR) are expanded at activation.
  userSettings = {
    user = true;
    identities = [ "%h/.ssh/id_ed25519" ];
    dir = "%h/.local/state/vaultpy/secrets";
    early_dir = "%h/.local/state/vaultpy/early";
    store = "%r/vaultpy.d";
    keep = 3;
  };

  # A path as a user's profile writes it to mean itself: activation expands %h and %r
  # there (vaultpy/profile.py expand), so a % is written %%.
  literalPath = p: builtins.replaceStrings [ "%" ] [ "%%" ] p;

  # The output fields shared by secrets and templates, with hosts.toml's defaults.
  outputFields = spec: {
    owner = normalizeOwner (spec.owner or "root");
    group = normalizeOwner (spec.group or "root");
    mode = normalizeMode (spec.mode or "0400");
    path = spec.path or null;
    restart_units = spec.restart_units or [ ];
    reload_units = spec.reload_units or [ ];
    early = spec.early or false;
  };

  # An item's `path` that is where its file is anyway (/run/vaultpy/<name>, as agenix
  # users write): no link, as the modules take it (vaultpy/model.py _output).
  withoutOwnPath = { person, name }: spec:
    let
      dirs = if person then userSettings else defaultSettings;
      own = "${if !person && (spec.early or false) == true then dirs.early_dir else dirs.dir}/${name}";
    in
    if isAttrs spec && (spec.path or null) == own then builtins.removeAttrs spec [ "path" ] else spec;

  # Join a hosts.toml-relative path onto root (a path), keeping absolute ones.
  resolve = root: p: if substring 0 1 p == "/" then /. + p else root + "/${p}";

  # The fields an item (secret or template) of hosts.toml may set about its file.
  outputKeys = [ "owner" "group" "mode" "path" "restart_units" "reload_units" "early" ];

  # [hosts.<name>] itself, as vaultpy check takes it: its own keys, its secrets (a list
  # of ids, once each, or a table) and its templates (a table); each mistake one line
  # through `bad` (a typo such as `template` dropped what it held without a word).
  checkedHost = bad: hw: h:
    let
      allowed = [ "pubkey" "identities" "secrets" "templates" "user" ];
      unknown = filter (k: !(builtins.elem k allowed)) (attrNames h);
      raw = h.secrets or [ ];
      ids = if isList raw then raw else [ ];
      twice = filter (id: length (filter (x: x == id) ids) > 1) ids;
    in
    if !(isAttrs h) then bad hw "expected a table; write it as [${hw}]"
    else if unknown != [ ] then bad "${hw}.${tomlKey (head unknown)}" (unknownKey (head unknown) allowed)
    else if !(builtins.isBool (h.user or false)) then bad "${hw}.user"
      "expected true or false, got ${builtins.typeOf h.user}; write true or false, without quotes"
    else if !(isList raw || isAttrs raw) then bad "${hw}.secrets"
      "expected a list of ids or a table, got ${builtins.typeOf raw}; write secrets = [\"id\"] or [${hw}.secrets.<id>]"
    else if !(builtins.all isString ids) then bad "${hw}.secrets" "expected a list of ids (strings); quote each id"
    else if twice != [ ] then bad "${hw}.secrets" "secret ${head twice} is listed twice; remove one"
    else if !(isAttrs (h.templates or { })) then bad "${hw}.templates"
      "expected a table, got ${builtins.typeOf h.templates}; write [${hw}.templates.\"<file name>\"]"
    else h;

  # A template's `file = "…"` (hosts.toml-relative), read as vaultpy reads it; each
  # mistake one line through `bad` (its field, the fix), not a bare Nix error.
  readTemplate = { bad, where, root, file, hostsToml ? null }:
    if !(isString file) then bad where "expected a string, got ${builtins.typeOf file}; quote the value"
    else if builtins.match "[[:space:]]*" file != null
    then bad where "an empty path; give the template's file, e.g. \"templates/app.conf\""
    else
      let
        p = resolve root file;
        kind = if builtins.pathExists (dirOf p)
          then (builtins.readDir (dirOf p)).${baseNameOf p} or null else null;
      in
      if kind == null then bad where "cannot read the template ${toString p}: no such file; check the path: a relative one is read from hosts.toml's directory (in a flake, only files git knows: git add it)"
      else if kind == "directory" then bad where "cannot read the template ${toString p}: it is a directory; point it at a file"
      else if kind == "unknown" then bad where "cannot read the template ${toString p}: not a regular file; replace it with a regular file"
      # (what a link leads to cannot be told before reading it: a FIFO would hang this)
      else if kind == "symlink" then bad where "cannot read the template ${toString p}: a symbolic link, not a file; point file at the file itself, not at a symbolic link"
      else if hostsToml != null && toString p == toString hostsToml then bad where "${toString p} is hosts.toml itself; give the template a file of its own"
      else readFile p;

  # A hosts.toml template's text: its `content`, or its `file` read (one of the two).
  templateText = { bad, where, root, hostsToml, spec }:
    if spec ? file then
      (if spec ? content
       then bad "${where}.file" "a template has content or a file, not both; remove one of them"
       else readTemplate { inherit bad root hostsToml; where = "${where}.file"; inherit (spec) file; })
    else spec.content or (bad "${where}.content"
      "missing: give the template's text (content = \"...\"), or the file that holds it (file = \"templates/...\")");

  # profile: secrets = [ { id, file (path), install, name, <output fields> } ] and
  # templates = [ { name, content, trim, <output fields> } ]  ->  the profile attrset.
  # signed: { key, sums, signature } with a signing key ([vaultpy] signing_key), else
  # null; only a profile with secrets carries it (vaultpy/profile.py build).
  mkProfile = { host, settings, secrets, templates, user ? false, signed ? null }: {
    version = 1;
    inherit host;
    settings = (if user then userSettings else defaultSettings) // settings;
    secrets = sort (a: b: a.id < b.id) secrets;
    templates = sort (a: b: a.name < b.name) templates;
  } // (if signed == null || secrets == [ ] then { } else { inherit signed; });

  # One [hosts.<name>] entry of hosts.toml, read as `vaultpy check` reads it; shared by
  # profileFromHostsToml and the modules' import of it (nix/common.nix fromHostsToml),
  # which make a profile and module options of it.  `bad where msg` throws one line;
  # `missing`, given the names there, is what an absent entry throws.  Gives the checked
  # table `h`, whether it is a person's (user = true), its field path `hw`, `checkedItem`
  # (an item table with only `allowed` keys), the deployed secrets (id -> table), the
  # templates (checked) and each one's text, the ids the entry needs (its secrets and
  # its templates' placeholders) and each one's master file.
  # `elsewhere id`: where else an id may be declared (the modules: their configuration).
  readEntry = { hostsToml, name, bad, missing, root ? dirOf hostsToml, elsewhere ? (_: "") }:
    let
      text = readFile hostsToml;
      doc = fromTOML text;
      top = doc.vaultpy or { };
      declared = doc.secrets or { };
      hw = "hosts.${tomlKey name}";
      h = checkedHost bad hw (doc.hosts.${name} or (missing (attrNames (doc.hosts or { }))));
      person = h.user or false;
      # An item's table, [hosts.<name>.<kind>.<item>], with only `allowed` keys: a typo
      # ("mdoe") was passed over, the default used in its place.  A table inside it is
      # a dotted name left unquoted ([hosts.h.templates.app.env]), said as such.
      checkedItem = kind: item: allowed: spec:
        let
          where = "${hw}.${kind}.${tomlKey item}";
          unknown = filter (k: !(builtins.elem k allowed)) (attrNames spec);
          k = head unknown;
        in
        if !(isAttrs spec) then bad where "expected a table"
        else if unknown != [ ] && isAttrs spec.${k} then bad "${where}.${tomlKey k}"
          "a table inside [${where}]; for the name '${item}.${k}', quote it: [${hw}.${kind}.${tomlKey "${item}.${k}"}]"
        else if unknown != [ ] then bad "${where}.${tomlKey k}" (unknownKey k
          (if person then filter (k: !(builtins.elem k notPersonal)) allowed else allowed))
        else spec;
      raw = h.secrets or [ ];
      deployed =
        if isList raw then listToAttrs (map (id: { name = id; value = { }; }) raw) else raw;
      tmpls = builtins.mapAttrs (n: checkedItem "templates" n
        ([ "content" "file" "trim" ] ++ outputKeys)) (h.templates or { });
      # `file = "templates/app.conf"`: the text read from there (hosts.toml-relative).
      content = n: templateText { inherit bad root hostsToml; where = "${hw}.templates.${tomlKey n}";
                                  spec = tmpls.${n}; };
      # An id no [secrets] table declares: said where the entry names it, its secrets or
      # the first template whose placeholder it is, as `vaultpy check` says it.
      unknownId = id:
        let
          listed = deployed ? ${id};
          t = head (filter (n: builtins.elem id (templateRefs (content n))) (attrNames tmpls));
          close = closeMatch id (attrNames declared);
        in
        bad (if listed then "${hw}.secrets"
             else "${hw}.templates.${tomlKey t}.${if tmpls.${t} ? file then "file" else "content"}")
          ("unknown secret id '${id}'${if listed then "" else " in placeholder"}; "
           + (if close != null then "did you mean '${close}'?"
              else "declare [secrets.${tomlKey id}] in hosts.toml${elsewhere id}"));
    in
    {
      inherit hw h person checkedItem deployed tmpls content declared;
      decimals = decimalModes text;
      cacheDir = resolve root (top.cache_dir or "secrets/cache");
      secretsDir = resolve root (top.secrets_dir or "secrets");
      # [vaultpy] signing_key, as vaultpy reads it ("ssh-ed25519 AAAA…"), or null
      signingKey = if top ? signing_key then normalizeRecipient top.signing_key else null;
      needed = uniqueSorted (attrNames deployed
        ++ builtins.concatLists (map (n: templateRefs (content n)) (attrNames tmpls)));
      masterFile = id:
        if !(declared ? ${id}) then unknownId id else
        let
          spec = declared.${id};
          f = resolve root (spec.file or "${top.secrets_dir or "secrets"}/${id}.age");
        in
        if builtins.pathExists f then f
        else bad "${hw}.secrets" "secret ${id} has no master file ${toString f}: create it with `vaultpy edit ${id}`";
    };

  profileFromHostsToml = { hostsToml, host, root ? dirOf hostsToml }:
    let
      bad = where: msg: throw "vaultpy: ${toString hostsToml}: ${where}: ${msg}";
      entry = readEntry { inherit hostsToml root bad; name = host;
                          missing = known: bad "hosts" "no host ${host}; known hosts: ${concatStringsSep ", " known}"; };
      inherit (entry) hw h person checkedItem deployed tmpls content decimals cacheDir;
      owners = where: spec: builtins.mapAttrs (k: v:
        checkedOwner { file = "vaultpy: ${toString hostsToml}"; where = "${where}.${k}"; } v)
        (builtins.intersectAttrs { owner = null; group = null; } spec);
      mode = where: spec: checkedMode { inherit decimals where; file = "vaultpy: ${toString hostsToml}"; }
        (spec.mode or "0400");
      # A person's entry (`user = true`): a user's profile, as `vaultpy profile` makes it.
      personal = where: spec: if person then personalSpec { inherit bad where; } spec else spec;
      fields = where: spec:
        let
          checked = outputFields spec // { mode = mode "${where}.mode" spec; }
            // (if spec ? path then { path = checkedItemPath { inherit bad; user = person;
                                                             keys = h.identities or null;
                                                             where = "${where}.path"; } spec.path; }
                else { })
            // builtins.mapAttrs (k: v: checkedUnits { inherit bad; where = "${where}.${k}"; } v)
                 (builtins.intersectAttrs { restart_units = null; reload_units = null; } spec);
        in
        if person then builtins.removeAttrs checked notPersonal
        else checked // owners where spec;
      recipients = toList (h.pubkey or (bad "${hw}.pubkey"
        (if person then "missing: give the person's ~/.ssh/id_ed25519.pub line"
         else "missing: give this host's /etc/ssh/ssh_host_ed25519_key.pub line")));
      secretEntry = id:
        let
          checkedSpec = personal "${hw}.secrets.${tomlKey id}"
            (checkedItem "secrets" id ([ "name" ] ++ outputKeys) (deployed.${id} or { }));
          spec = withoutOwnPath { inherit person; name = checkedSpec.name or id; } checkedSpec;
          installed = deployed ? ${id};
        in
        {
          inherit id;
          file = toString (cacheDir + "/${host}/${cacheName {
            inherit id recipients;
            secretFile = entry.masterFile id;
          }}");
          install = installed;
          name = if installed then spec.name or id else id;
        } // fields "${hw}.secrets.${tomlKey id}" spec;
      templateEntry = name:
        let spec = withoutOwnPath { inherit person name; }
          (personal "${hw}.templates.${tomlKey name}" tmpls.${name}); in
        { inherit name; content = content name; trim = spec.trim or false; }
        // fields "${hw}.templates.${tomlKey name}" spec;
    in
    mkProfile {
      inherit host;
      user = person;
      # [hosts.<name>] identities: the host's private key files (else sshd's ed25519 key)
      settings = if h ? identities
        then { identities = checkedKeyPaths { inherit bad; where = "${hw}.identities";
                                              user = person; } h.identities; }
        else if person && builtins.all (r: substring 0 4 (normalizeRecipient r) == "age1") recipients
        then bad "${hw}.identities" "the person's key is an age1… key, and no identities say where its identity file is: activation would try ~/.ssh/id_ed25519, which cannot decrypt what renc writes for it; add identities = [\"%h/.config/age/keys.txt\"] (where that age identity file is)"
        # as `vaultpy profile`: sshd's key cannot open what renc writes for an age1 key
        else if builtins.all (r: substring 0 4 (normalizeRecipient r) == "age1") recipients
        then bad "${hw}.identities" "the host's key is an age1… key, and no identities say where its identity file is: activation would try sshd's /etc/ssh/ssh_host_ed25519_key, which cannot decrypt what renc writes for it; add identities = [\"/etc/vaultpy/host.key\"] (where that age identity file is on the host; the NixOS module takes it as settings.hostKeys)"
        else { };
      secrets = map secretEntry entry.needed;
      templates = map templateEntry (attrNames tmpls);
      signed = if entry.signingKey == null then null else {
        key = entry.signingKey;
        sums = toString (cacheDir + "/${host}/SHA256SUMS");
        signature = toString (cacheDir + "/${host}/SHA256SUMS.sig");
      };
    };

  # From the NixOS module's options (camelCase) to the same profile.
  #   secrets.<id>   = { file, install, name, owner, group, mode, path, restartUnits, reloadUnits, early }
  #   templates.<n>  = { content, trim, owner, group, mode, path, restartUnits, reloadUnits, early }
  #   cacheFile      = id: spec -> the cache file (a path or a store path string)
  #   user           = true: a user's profile (the home-manager module's): no owner,
  #                    group or early, userSettings the defaults, paths taken literally
  #                    (settings are given as the profile writes them)
  profileFromOptions = { host, settings ? { }, secrets, templates, cacheFile, user ? false,
                         signed ? null }:
    let
      out = spec:
        if user then builtins.removeAttrs (outputFields {
          inherit (spec) mode;
          path = if spec.path == null then null else literalPath spec.path;
          restart_units = spec.restartUnits;
          reload_units = spec.reloadUnits;
        }) notPersonal
        else outputFields {
          inherit (spec) owner group mode path early;
          restart_units = spec.restartUnits;
          reload_units = spec.reloadUnits;
        };
    in
    mkProfile {
      inherit host settings user signed;
      secrets = map
        (id:
          let spec = secrets.${id}; in
          { inherit id; file = toString (cacheFile id spec); install = spec.install;
            name = spec.name; } // out spec)
        (attrNames secrets);
      templates = map
        (name:
          let spec = templates.${name}; in
          { inherit name; content = spec.content; trim = spec.trim; } // out spec)
        (attrNames templates);
    };
in
{
  inherit withoutOwnPath nearMisses readEntry tomlKey nixAttr closeMatch unknownKey notPersonal trimSpace templateText checkedKeyPaths checkedItemPath checkedUnits unitPattern pathClash resolve outputKeys expandUserPath personalSpec absPathPattern isAbsPath cacheHash cacheName normalizeRecipient templateRefs placeholder profileFromHostsToml
    profileFromOptions defaultSettings userSettings literalPath normalizeMode brokenPlaceholder decimalModes checkedMode checkedOwner checkedHost;
}
