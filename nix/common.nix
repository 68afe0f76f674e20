# What the NixOS module (module.nix) and the home-manager module (home-module.nix)
# share: option types, the key option read as recipients, cache files, and the checks
# whose one-line messages are the same in both.
{ lib }:
let
  inherit (lib) mkOption types concatMap concatStringsSep filterAttrs;
  inherit (builtins) attrNames;
  vlib = import ./lib.nix;
in
rec {
  # As strict as `vaultpy activate`'s profile loader: what evaluates also activates.
  # (vaultpy/output.py UNIT_RE: systemd's characters and globs; "-" first only as "-.")
  # (Each type's description is what a wrong value's error names: words, not a regex.)
  unitName = types.strMatching vlib.unitPattern // {
    description = "systemd unit name (like \"nginx.service\")";
  };
  # absolute and normalised: no empty, "." or ".." segment, no trailing slash, no
  # control character, names of at most 255 bytes (vaultpy/output.py path_shape_problem;
  # lib.nix isAbsPath, which hosts.toml's identities are checked with too)
  absPath = types.addCheck (types.strMatching vlib.absPathPattern) vlib.isAbsPath // {
    description = "absolute, normalised path (like /etc/app/secret: no . or .. part, no trailing /)";
  };
  validId = id: builtins.match "[A-Za-z0-9][A-Za-z0-9_.-]*" id != null
    && builtins.stringLength id <= 128;
  # vaultpy/migrate_sops.py to_id: what an import makes of a sops-nix key (db/password).
  toId = text:
    let
      parts = builtins.filter builtins.isString (builtins.split "[^A-Za-z0-9_.-]+" text);
      joined = concatStringsSep "_" parts;
      lead = builtins.match "[_.-]*(.*)" joined;
    in builtins.head lead;
  keyShape = k: builtins.match
    "[[:space:]]*(ssh-ed25519[[:space:]]+AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43}|age1[0-9a-z]{20,})([[:space:]].*)?" k != null;
  overlaps = a: b: a == b || lib.hasPrefix "${a}/" b || lib.hasPrefix "${b}/" a;

  # An internal, read-only flag: whether option `name` of a submodule (its `options`)
  # was set, by the configuration or hosts.toml's mkDefault, not left at its default.
  givenOption = options: name: mkOption {
    type = types.bool;
    internal = true;
    readOnly = true;
    default = options.${name}.highestPrio < (lib.mkOptionDefault null).priority;
    description = "Whether `${name}` was set (not its default).";
  };

  # mode, restartUnits, reloadUnits; `scope`: "--user " for a user's own units.
  modeAndUnits = scope: {
    mode = mkOption {
      type = types.strMatching "0?[0-7]{3}" // { description = "octal mode, a string (like \"0440\")"; };
      default = "0400";
      description = "Permission bits, octal: \"0440\" or \"440\".";
    };
    restartUnits = mkOption {
      type = types.listOf unitName;
      default = [ ];
      description = "Units to `systemctl ${scope}try-restart` when this file changes.";
    };
    reloadUnits = mkOption {
      type = types.listOf unitName;
      default = [ ];
      description = "Units to `systemctl ${scope}try-reload-or-restart` when this file changes.";
    };
  };

  # A template's own options (its submodule's `name`, `config` and `options`): its text,
  # given as content or read from a file (sops-nix's templates.<name>.file).
  templateText = { name, config, options }: {
    content = mkOption {
      type = types.str;
      default =
        if config.file == null
        then throw "vaultpy: template ${name}: no text: set its content, or file = ./templates/${name} (a file holding it)"
        else if !(builtins.pathExists config.file)
        then throw "vaultpy: template ${name}: file ${toString config.file} does not exist: create it, or give the template's content"
        else builtins.readFile config.file;
      defaultText = lib.literalMD "the text of `file`";
      description = "Text with `{{ secrets.<id> }}` placeholders (see vaultpy.placeholder).";
    };
    file = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "A file holding the template's text, read at evaluation, instead of `content` (it holds placeholders, not secrets: it may go to the store).";
    };
    contentGiven = givenOption options "content";
    trim = mkOption {
      type = types.bool;
      default = false;
      description = "Strip whitespace around each inserted secret.";
    };
  };

  # A hostPubkey that is not a public key, as an assertion shows it: never a private
  # key's text (it would go to build logs), nor a whole file of something else.
  shownKey = k:
    if lib.hasInfix "PRIVATE KEY" k then "a private key (its text is not shown)"
    else if builtins.stringLength k > 120 then builtins.toJSON "${builtins.substring 0 60 k}…"
    else builtins.toJSON k;

  # settings.hostPubkey (a key line, the path of a file holding one, or a list of
  # them) as hosts.toml would hold it; `give`: what to give for a missing file.
  recipientsOf = give: value: map
    (k: if !(builtins.isPath k) then vlib.trimSpace k
        else if builtins.pathExists k then vlib.trimSpace (builtins.readFile k)
        else throw "vaultpy.settings.hostPubkey: ${toString k}: no such file; give ${give}")
    (if builtins.isList value then value else [ value ]);

  # The module's settings (`s`) read as: its recipients; cachePath id spec, where renc
  # wrote secret `id` (`spec.file` its master) for this host or user; and cacheFile,
  # that file put into the store (it is ciphertext; a missing one is reported by an
  # assertion, not by a copy error).  `give`: as for recipientsOf.
  keysAndCache = give: s: rec {
    recipients = recipientsOf give s.hostPubkey;
    cachePath = id: spec: s.cacheRoot
      + "/${s.hostName}/${vlib.cacheName { inherit id recipients; secretFile = spec.file; }}";
    cacheFile = id: spec:
      let p = cachePath id spec; in if builtins.pathExists p then "${p}" else toString p;
  };

  # The signed cache (vaultpy/signing.py): settings.signingKey, hosts.toml's [vaultpy]
  # signing_key.  `signed`: the profile's { key, sums, signature } (the list and its
  # signature copied to the store beside the cache files), or null; `failures`: a
  # key that is no ssh-ed25519 line, and a list missing where the cache is (activation
  # would refuse every file).  `cached`: whether the cache files are looked for.
  signingOption = mkOption {
    type = types.nullOr types.str;
    default = null;
    example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… vaultpy cache signing";
    description = "hosts.toml's [vaultpy] signing_key (vaultpy signing-key): activation then installs only cache files whose SHA-256 the signed SHA256SUMS of this entry lists.";
  };
  signing = s: cached: paths:
    let
      keyOk = s.signingKey == null || builtins.match
        "[[:space:]]*ssh-ed25519[[:space:]]+AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43}([[:space:]].*)?"
        s.signingKey != null;
      usable = s.signingKey != null && keyOk && builtins.isPath s.cacheRoot;
      hostCache = s.cacheRoot + "/${s.hostName}";
      sumsPath = hostCache + "/SHA256SUMS";
      listFile = name: let p = hostCache + "/${name}"; in
        if builtins.pathExists p then "${p}" else toString p;
      listed = usable && cached && builtins.pathExists hostCache
        && builtins.pathExists sumsPath && builtins.pathExists (hostCache + "/SHA256SUMS.sig");
      # name -> SHA-256, from "<sha256>  <name>" lines (no signature check here: Nix has
      # no Ed25519; activation verifies it.  This catches a list older than its files.)
      sums = builtins.listToAttrs (map
        (line: { name = builtins.substring 66 (builtins.stringLength line) line;
                 value = builtins.substring 0 64 line; })
        (builtins.filter (l: builtins.isString l && l != "")
          (builtins.split "\n" (builtins.readFile sumsPath))));
      unlisted = builtins.filter (p: builtins.pathExists p
          && (sums.${baseNameOf (toString p)} or null) != builtins.hashFile "sha256" p)
        paths;
      committed = "run `vaultpy renc` (with the master key: it signs each host's cache) and commit the cache with its SHA256SUMS and SHA256SUMS.sig (in a flake, git add them: an untracked file is not in the flake)";
    in {
      signed = if !usable then null else {
        key = vlib.normalizeRecipient s.signingKey;
        sums = listFile "SHA256SUMS";
        signature = listFile "SHA256SUMS.sig";
      };
      failures = lib.optional (!keyOk) {
          assertion = false;
          message = "vaultpy.settings.signingKey is not an ssh-ed25519 public key line: give hosts.toml's [vaultpy] signing_key (vaultpy signing-key --public prints it)"; }
        ++ lib.optional (usable && cached && builtins.pathExists hostCache && !listed) {
          assertion = false;
          message = "vaultpy: ${toString hostCache}/SHA256SUMS or its .sig is missing: with vaultpy.settings.signingKey set, activation installs only signed cache files: ${committed}"; }
        ++ lib.optional (listed && unlisted != [ ]) {
          assertion = false;
          message = "vaultpy: ${toString (builtins.head unlisted)}: its SHA-256 is not the one ${toString sumsPath} lists${if builtins.length unlisted > 1 then " (and ${toString (builtins.length unlisted - 1)} more)" else ""}: the list is older than the file (not committed with it?) or the file was altered, and activation would refuse it: ${committed}"; };
    };

  # An item's path inside another item's: that one is a symlink to a file, and a link
  # below it would be written through it (vaultpy/output.py `nesting`).  Each path's
  # ancestors are looked up by name, as there: a pairwise scan is quadratic, minutes
  # of evaluation for a host with thousands of items.  items: [ { label, path } ].
  nested = items:
    let
      withPath = builtins.filter (i: i.path != null) items;
      byPath = builtins.groupBy (i: i.path) withPath;
      ancestors = p:                      # "/a/b/c" -> [ "/a" "/a/b" ]
        let parts = builtins.tail (lib.splitString "/" p); in
        map (k: "/" + concatStringsSep "/" (lib.take k parts))
          (lib.range 1 (builtins.length parts - 1));
    in
    concatMap (i: concatMap (a: map (o: { inherit (i) label path; outer = o; })
      (byPath.${a} or [ ])) (ancestors i.path)) withPath;

  # The failed assertions both modules make alike.
  # Warnings, as renc and check give them: a template's text that reads like a
  # placeholder mistyped, for a secret declared here (another tool's {{ secret.x }} is
  # left alone).
  placeholderWarnings = { secrets, templates }: concatMap (n:
    map (m: "vaultpy: template ${n}: ${builtins.toJSON m.text} is kept as text, not a placeholder; did you mean {{ secrets.${m.id} }}? (to keep it, write {{{{ for its {{)")
      (builtins.filter (m: secrets ? ${m.id}) (vlib.nearMisses templates.${n}.content)))
    (attrNames templates);

  # `keys`: settings.hostKeys, the private keys activation decrypts with.
  sharedFailures = { secrets, templates, items, keys }:
    lib.mapAttrsToList (n: t: { assertion = false;
        message = "vaultpy: template ${n}: both content and file are set: remove one (content imported from hosts.toml with vaultpy.hostsToml counts too)"; })
      (filterAttrs (_: t: t.file != null && t.contentGiven) templates)
    ++ lib.mapAttrsToList (id: spec: {
        assertion = false;
        message = "vaultpy: secret ${id}: master file ${toString spec.file} does not exist: if vaultpy.secrets.${vlib.nixAttr id}.file has a typo, correct it; else create the master: vaultpy edit ${id} writes the file hosts.toml's [secrets.${vlib.tomlKey id}] names (<secrets_dir>/${id}.age unless its file says otherwise)"; })
      (filterAttrs (id: spec: validId id && !(builtins.pathExists spec.file)) secrets)
    ++ lib.mapAttrsToList (n: _: { assertion = false;
        message = "vaultpy: template ${n}: broken placeholder: write {{ secrets.<id> }} (or {{{{ for a literal {{)"; })
      (filterAttrs (_: t: vlib.brokenPlaceholder t.content) templates)
    ++ map (n: { assertion = false;
        message = "vaultpy: ${n.label}: path ${n.path} lies inside ${n.outer.path}, ${n.outer.label}'s path (a link to a file: nothing can be linked below it): give one of them another path"; })
      (nested items)
    ++ map (i: { assertion = false;
        message = "vaultpy: ${i.label}: path ${i.path} is one of vaultpy.settings.hostKeys, the private key activation decrypts with: give it a path of its own (a link there would lead nowhere after a reboot, and nothing could be decrypted)"; })
      (builtins.filter (i: i.path != null && builtins.elem i.path (map toString keys)) items);

  # [hosts.<name>] of hosts.toml as the modules' options (vaultpy.hostsToml), each field
  # a default the configuration may override; every mistake one line naming the file,
  # the field and the fix, as `vaultpy check` says it.  `missing`: what to do when there
  # is no such entry.  `home`: set by the home-manager module, which imports a person's
  # entry (user = true) only, its %h written out as that home; the NixOS module refuses
  # a person's entry.
  fromHostsToml = { hostsToml, name, missing, home ? null }:
    let
      person = home != null;
      file = toString hostsToml;
      bad = where: msg: throw "vaultpy.hostsToml: ${file}: ${where}: ${msg}";
      read = vlib.readEntry {
        inherit hostsToml name bad;
        elsewhere = id: ", or vaultpy.secrets.${vlib.nixAttr id} in this configuration";
        missing = known: throw "vaultpy.hostsToml: no [hosts.${vlib.tomlKey name}] in ${file} (hosts there: ${concatStringsSep ", " known}): ${missing}";
      };
      # Every field below comes through this: the wrong kind of entry is said first.
      entry = if read.person == person then read
        else if person then bad "${read.hw}.user" "not a person's entry: the home-manager module imports a person's entry only; add user = true to [${read.hw}] (its paths may then begin with %h/), or import it in the NixOS module"
        else bad "${read.hw}.user" "a person's entry (user = true) is activated by that person, not by a host: set vaultpy.settings.hostName to this host's own entry (a person's secrets go in their home-manager configuration, the vaultpy home module)";
      inherit (entry) hw h deployed tmpls content decimals;
      # A person's path as home-manager writes it: %h is the home, %% a %; %r (the
      # runtime directory) is known only at login.
      homeExpand = where: p:
        if lib.hasPrefix "%r/" p
        then bad where "${builtins.toJSON p}: the home-manager module writes a path with %h (your home) only; use %h/… or an absolute path"
        else vlib.expandUserPath { inherit home; runtime = throw "unreachable: %r/ refused"; } p;
      homePath = where: p:
        homeExpand where (vlib.checkedItemPath { inherit bad where; user = true;
                                                 keys = h.identities or null; } p);
      # A host's path: one line, not the option type's error.
      hostPath = where: p: vlib.checkedItemPath { inherit bad where; user = false;
                                                  keys = h.identities or null; } p;
      inherit (vlib) outputKeys;
      fromSpec = kind: item: allowed: given:
        let
          where = "${hw}.${kind}.${vlib.tomlKey item}";
          spec = vlib.withoutOwnPath { inherit person;
            name = if kind == "secrets" then given.name or item else item; } given;
        in
        builtins.removeAttrs
          ((if person then vlib.personalSpec { inherit bad where; } else lib.id)
            (entry.checkedItem kind item allowed spec) // {
            restartUnits = vlib.checkedUnits { inherit bad; where = "${where}.restart_units"; }
              (spec.restart_units or [ ]);
            reloadUnits = vlib.checkedUnits { inherit bad; where = "${where}.reload_units"; }
              (spec.reload_units or [ ]);
          } // lib.optionalAttrs (spec ? mode) {
              mode = vlib.checkedMode { inherit decimals; file = "vaultpy.hostsToml: ${file}";
                                     where = "${where}.mode"; } spec.mode; }
            // lib.optionalAttrs (spec ? owner) { owner = vlib.checkedOwner {
                 file = "vaultpy.hostsToml: ${file}"; where = "${where}.owner"; } spec.owner; }
            // lib.optionalAttrs (spec ? group) { group = vlib.checkedOwner {
                 file = "vaultpy.hostsToml: ${file}"; where = "${where}.group"; } spec.group; }
            // lib.optionalAttrs (spec ? path) {
                 path = (if person then homePath else hostPath) "${where}.path" spec.path; })
          [ "restart_units" "reload_units" ];
    in
    {
      pubkey = h.pubkey or (bad "${hw}.pubkey"
        (if person then "missing: give the person's ~/.ssh/id_ed25519.pub line"
         else "missing: give this host's /etc/ssh/ssh_host_ed25519_key.pub line"));
      identities = if !(h ? identities) then null else
        let keys = vlib.checkedKeyPaths { inherit bad; where = "${hw}.identities";
                                          user = person; } h.identities;
        in if person then map (homeExpand "${hw}.identities") keys else keys;
      cacheRoot = entry.cacheDir;
      inherit (entry) signingKey;
      inherit (entry) secretsDir;
      secrets = builtins.listToAttrs (map
        (id: {
          name = id;
          value = lib.mapAttrs (_: lib.mkDefault)
            (fromSpec "secrets" id ([ "name" ] ++ outputKeys) (deployed.${id} or { })
              // { file = entry.masterFile id; install = deployed ? ${id}; });
        })
        entry.needed);
      templates = lib.mapAttrs (n: spec: lib.mapAttrs (_: lib.mkDefault)
        (builtins.removeAttrs
          (fromSpec "templates" n ([ "content" "file" "trim" ] ++ outputKeys) spec)
          [ "file" ] // { content = content n; })) tmpls;
    };
}
