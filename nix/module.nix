# The vaultpy NixOS module: declare secrets in your configuration, get them under
# /run/vaultpy on every boot and every `nixos-rebuild switch`.
#
#   vaultpy.settings.hostPubkey = "ssh-ed25519 AAAA…";   # this host's key
#   vaultpy.settings.cacheRoot = ./secrets/cache;         # the repo's renc output
#   vaultpy.secrets.db_password = { file = ./secrets/db_password.age; owner = "postgres"; };
#   services.foo.passwordFile = config.vaultpy.secrets.db_password.path;   # as with agenix
#
# or import everything for this host from the operator's hosts.toml:
#
#   vaultpy.hostsToml = ./hosts.toml;
{ config, lib, options, ... }:
let
  inherit (lib) mkOption mkIf mkMerge mkDefault types mapAttrs attrNames filterAttrs
    concatMap concatStringsSep optional optionals;
  cfg = config.vaultpy;
  s = cfg.settings;
  vlib = import ./lib.nix;
  common = import ./common.nix { inherit lib; };
  inherit (common) absPath validId keyShape overlaps;

  userNameWords = "user or group name (a letter or _ first, then letters, digits, _ . -) or numeric id";
  userName = types.either types.ints.unsigned
    (types.strMatching "[A-Za-z_][A-Za-z0-9_.-]*[$]?|[0-9]+" // { description = userNameWords; })
    // { description = userNameWords; };
  outputOptions = common.modeAndUnits "" // {
    owner = mkOption {
      type = userName;
      default = "root";
      description = "Owner of the file: a user name from `users.users`, or a numeric id.";
    };
    group = mkOption {
      type = userName;
      default = "root";
      description = "Group of the file: a group name from `users.groups`, or a numeric id.";
    };
    path = mkOption {
      type = types.nullOr absPath;
      default = null;
      description = ''
        Where the file is read (as agenix's, sops-nix's and vaultix's `path`): by default
        its place in the live directory, `outPath`; set to another absolute path, a
        symlink there to it (outside `settings.dir`, `earlyDir` and `store`, and not
        `<store>.lock`, activation's lock file).
      '';
    };
    early = mkOption {
      type = types.bool;
      default = false;
      description = "Install before users exist (into earlyDir), e.g. password hashes.";
    };
  };

  liveDir = early: if early then s.earlyDir else s.dir;
  # `path` defaults to the file's own place; only another value becomes a symlink.
  pathAt = place: outputOptions.path // {
    default = place;
    defaultText = lib.literalExpression ''"''${config.vaultpy.settings.dir}/<name>"'';
  };
  # A secret with install = false has no file on the host: reading its `path` is a
  # mistake (`passwordFile = config.vaultpy.secrets.x.path` would name nothing), so that
  # default throws; `pathGiven` tells whether a path was set anyway (an assertion).
  extraPath = v:
    if !(v.install or true) then (if v.pathGiven then v.path else null)
    else if v.path == null || v.path == v.outPath then null else v.path;


  secretType = types.submodule ({ name, config, options, ... }: {
    options = outputOptions // {
      # (hosts.toml's mkDefault counts as set: group left at "root" is not)
      groupGiven = common.givenOption options "group";
      path = pathAt (if validId config.name then config.outPath else null);
      pathGiven = common.givenOption options "path";
      file = mkOption {
        type = types.path;
        default = if s.secretsDir != null then s.secretsDir + "/${name}.age" else throw
          "vaultpy: secret ${name}: file is not set: give vaultpy.secrets.${vlib.nixAttr name}.file = ./secrets/${name}.age, or set vaultpy.settings.secretsDir = ./secrets (then <id>.age there is the default)";
        defaultText = lib.literalExpression ''"''${config.vaultpy.settings.secretsDir}/<id>.age"'';
        description = "The master file, secrets/<id>.age (encrypted to the master key).";
      };
      name = mkOption {
        # Checked by an assertion (letters, digits, _ . -), which says what to do: a type
        # error would blame module.nix for an id such as "nginx/cert".
        type = types.str;
        default = name;
        description = "File name inside the generation directory.";
      };
      install = mkOption {
        type = types.bool;
        default = true;
        description = "false: only decrypted for templates, not installed as a file.";
      };
      outPath = mkOption {
        type = types.str;
        readOnly = true;
        default = if config.install then "${liveDir config.early}/${config.name}" else throw
          "vaultpy: secret ${name} is not installed on this host (install = false: it only feeds templates), so it has no path: read it through a template, or install it (list it under [hosts.<host>.secrets] in hosts.toml, or set vaultpy.secrets.${vlib.nixAttr name}.install = true)";
        defaultText = lib.literalExpression ''"''${config.vaultpy.settings.dir}/<name>"'';
        description = "Where the secret is readable on the host (none with install = false).";
      };
    };
  });

  templateType = types.submodule ({ name, config, options, ... }: {
    options = outputOptions // common.templateText { inherit name config options; } // {
      groupGiven = common.givenOption options "group";
      path = pathAt (if validId name then config.outPath else null);
      outPath = mkOption {
        type = types.str;
        readOnly = true;
        default = "${liveDir config.early}/${name}";
        description = "Where the rendered file is readable on the host.";
      };
    };
  });

  # A key given as a path (./hosts/web1.pub, as vaultix and agenix-rekey take it): its
  # text, as hosts.toml would hold it.
  inherit (common.keysAndCache "the host's /etc/ssh/ssh_host_ed25519_key.pub (copied into your configuration), or its key line as a string" s)
    recipients cachePath cacheFile;

  profile = vlib.profileFromOptions {
    host = s.hostName;
    settings = {
      identities = s.hostKeys;
      dir = s.dir;
      early_dir = s.earlyDir;
      store = s.store;
      keep = s.keep;
    };
    secrets = mapAttrs (_: v: v // { path = extraPath v; }) cfg.secrets;
    templates = mapAttrs (_: v: v // { path = extraPath v; }) cfg.templates;
    inherit cacheFile;
    inherit (signing) signed;        # the signed list of the host's cache files
  };

  profileFile = builtins.toFile "vaultpy-profile-${s.hostName}.json" (builtins.toJSON profile);

  # --- hosts.toml import (common.nix) ------------------------------------------------
  fromToml = common.fromHostsToml {
    inherit (cfg) hostsToml;
    name = s.hostName;
    missing = "set vaultpy.settings.hostName to this host's name in hosts.toml, or add [hosts.${vlib.tomlKey s.hostName}] there";
  };

  # --- checks ------------------------------------------------------------------------
  installed = filterAttrs (_: v: v.install) cfg.secrets;
  items = lib.mapAttrsToList (id: v: { label = "secret ${id}"; path = extraPath v; inherit (v) name owner group early mode groupGiven; }) installed
    ++ lib.mapAttrsToList (n: v: { label = "template ${n}"; name = n; inherit (v) owner group early mode groupGiven;
                                   path = if validId n then extraPath v else null; }) cfg.templates;
  # `path` overlapping activation's own directories would write into the live generation;
  # on the store's lock file (<store>.lock) or a temporary name of a live symlink
  # (.<name>.vaultpy-tmp-… beside it), it would break or be removed by the next run.
  # vaultpy/output.py `path_clash` refuses the same paths.
  tmpLinkPrefix = d: "${lib.removeSuffix (baseNameOf d) d}.${baseNameOf d}.vaultpy-tmp-";
  # /var/run is root's symlink to /run: /var/run/vaultpy/x is /run/vaultpy/x; and a dir
  # set under /var/run itself clashes with the path as written (both, as path_clash).
  clashes = p0: lib.unique
    (lib.optionals (p0 == "/var/run" || lib.hasPrefix "/var/run/" p0)
      (clashesAt (lib.removePrefix "/var" p0)) ++ clashesAt p0);
  clashesAt = p:
    builtins.filter (d: p == d || lib.hasPrefix "${d}/" p || lib.hasPrefix "${p}/" d)
      [ s.dir s.earlyDir s.store "${s.store}.lock" ]
    ++ (let live = map (d: "${tmpLinkPrefix d}*")
                     (builtins.filter (d: lib.hasPrefix (tmpLinkPrefix d) p) [ s.dir s.earlyDir ]);
        # else a link's own temp names, beside it (removed as a killed run's leftovers)
        in if live != [ ] then live
           else lib.optional (lib.hasInfix ".vaultpy-tmp-" (baseNameOf p)) "*.vaultpy-tmp-*");
  # Activation's own places must not be, or lie inside, one another
  # (vaultpy/output.py `settings_clashes`).
  places = [ { n = "dir"; p = s.dir; } { n = "earlyDir"; p = s.earlyDir; }
             { n = "store"; p = s.store; } { n = "the store's lock file"; p = "${s.store}.lock"; } ];
  settingsClashes = concatMap (i: map (b: { a = (builtins.elemAt places i).n; inherit (b) n; })
      (builtins.filter (b: overlaps (builtins.elemAt places i).p b.p)
        (lib.drop (i + 1) places)))
    (lib.range 0 (builtins.length places - 1));
  # chown(2) takes (uid_t)-1 as "leave unchanged": numeric ids stop below it
  idTooBig = n:
    let digits = builtins.match "0*([0-9]+)" (toString n);
        d = if digits == null then "" else builtins.head digits;
        len = builtins.stringLength d;
    in digits != null && (len > 10 || (len == 10 && d > "4294967294"));
  dupes = key: xs:
    let
      keyed = map (x: { k = key x; inherit (x) label; }) (builtins.filter (x: key x != null) xs);
      groups = builtins.groupBy (x: x.k) keyed;
    in
    filterAttrs (_: g: builtins.length g > 1) groups;
  # By each entry's `name` (users.users.svc.name = "my-service" makes my-service, and
  # `owner = config.users.users.svc.name` is the agenix idiom), and by attribute name.
  accountNames = kind: lib.mapAttrs' (attr: v: lib.nameValuePair (v.name or attr) attr)
    (config.users.${kind} or { });
  known = kind: name:
    builtins.isInt name || builtins.match "[0-9]+" name != null || name == "root"
    || (config.users.${kind} or { }) ? ${name} || (accountNames kind) ? ${name};
  templateRefs = concatMap (n: map (id: { tmpl = n; inherit id; }) (vlib.templateRefs cfg.templates.${n}.content))
    (attrNames cfg.templates);
  hasEarly = builtins.any (i: i.early) items;
  # agenix, sops-nix and vaultix default `group` to the owner's group; here it is root.
  # A mode with group bits and the group left so is most likely such a migration.
  groupBits = mode: builtins.substring (builtins.stringLength mode - 2) 1 mode != "0";
  ownersGroup = owner:
    let attr = (accountNames "users").${toString owner} or (toString owner);
    in (config.users.users.${attr} or { }).group or null;
  rootGroupByDefault = builtins.filter (i: !i.groupGiven && groupBits i.mode
    && !earlyOwnerOk i.owner) items;
  # Directories every user may create names in (model.SHARED_DIRS): a path below one
  # can be taken first by anyone, and a refused link stops the whole activation.
  sharedDir = p: lib.findFirst (d: lib.hasPrefix "${d}/" p) null
    [ "/tmp" "/var/tmp" "/dev/shm" "/run/lock" ];
  inSharedDir = builtins.filter (i: i.path != null && sharedDir i.path != null) items;
  # Users are made by systemd-sysusers or userborn (units), not the `users` script.
  systemdUsers = (config.systemd.sysusers.enable or false)
    || (config.services.userborn.enable or false);
  # A user's password file that is a secret installed after users are created: the
  # users of a boot would read it before it exists (it must be early).
  # (by `path` or by `outPath`: both name the file; a null path names nothing)
  lateSecretAt = builtins.listToAttrs (concatMap (id:
    let v = cfg.secrets.${id}; in map (p: { name = p; value = id; })
      (builtins.filter builtins.isString (lib.unique [ v.path v.outPath ])))
    (attrNames (filterAttrs (_: v: v.install && !v.early && validId v.name) cfg.secrets)));
  latePasswordFiles = concatMap (u:
    let v = config.users.users.${u}; in
    concatMap (f: let file = v.${f} or null; in
      optional (builtins.isString file && lateSecretAt ? ${file})
        { user = u; field = f; inherit file; id = lateSecretAt.${file}; })
      [ "hashedPasswordFile" "passwordFile" ])
    (attrNames (config.users.users or { }));
  # A user's password file written by hand into vaultpy's live directories where no
  # item is installed (an early secret's file is in earlyDir, not dir): that user would
  # have no password, without a word.
  installedAt = lib.unique (concatMap (v: builtins.filter builtins.isString [ v.path v.outPath ])
    (builtins.attrValues (filterAttrs (_: v: v.install) cfg.secrets)
     ++ builtins.attrValues cfg.templates));
  strayPasswordFiles = concatMap (u:
    let v = config.users.users.${u}; in
    concatMap (f: let file = v.${f} or null; in
      optional (builtins.isString file && !(builtins.elem file installedAt)
                && (lib.hasPrefix "${s.dir}/" file || lib.hasPrefix "${s.earlyDir}/" file))
        { user = u; field = f; inherit file;
          named = builtins.filter (id: cfg.secrets.${id}.install
                                       && cfg.secrets.${id}.name == baseNameOf file)
            (attrNames cfg.secrets); })
      [ "hashedPasswordFile" "passwordFile" ])
    (attrNames (config.users.users or { }));
  # The cache files are looked for (an assertion each) once the key and cacheRoot are right.
  cacheChecked = s.hostPubkey != null && s.cacheRoot != null && builtins.isPath s.cacheRoot
    && builtins.all keyShape recipients && cfg.secrets != { };
  hostCache = s.cacheRoot + "/${s.hostName}";
  signing = common.signing s cacheChecked (map (id: cachePath id cfg.secrets.${id})
    (builtins.filter (id: common.validId id && builtins.pathExists cfg.secrets.${id}.file)
      (attrNames cfg.secrets)));
  earlyOwnerOk = x: x == "root" || builtins.isInt x || builtins.match "[0-9]+" (toString x) != null;
  # vaultpy-activate: the boot-time entry point (no typer/rich imports)
  activateCmd = flags: "${cfg.package}/bin/vaultpy-activate --profile ${profileFile}${flags}";
in
{
  options.vaultpy = {
    package = mkOption {
      type = types.package;
      description = "The vaultpy package (the flake's nixosModules.default sets it).";
    };
    hostsToml = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "Import this host's secrets and templates from the operator's hosts.toml (merged with the options below; options win).";
    };
    settings = {
      hostPubkey = mkOption {
        type = let key = types.either types.str types.path;
               in types.nullOr (types.either key (types.listOf key));
        default = null;
        description = "This host's public key(s) as in hosts.toml: its ssh-ed25519 host key line, or age1 keys; or the path of a file holding one (./hosts/web1.pub).";
      };
      signingKey = common.signingOption;
      hostKeys = mkOption {
        type = types.listOf types.str;      # empty: an assertion says what to do
        default = map (k: k.path) (builtins.filter (k: (k.type or "") == "ed25519")
          (config.services.openssh.hostKeys or [ { type = "ed25519"; path = "/etc/ssh/ssh_host_ed25519_key"; } ]));
        defaultText = lib.literalExpression ''ed25519 paths of services.openssh.hostKeys'';
        description = "Private keys the host decrypts with.";
      };
      cacheRoot = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "The repository's secrets/cache directory (vaultpy renc output).";
      };
      secretsDir = mkOption {
        type = types.nullOr types.path;
        default = null;
        description = "Where the master files are (secrets_dir): a secret's `file` defaults to <id>.age there, as vaultix's defaultSecretDirectory.";
      };
      hostName = mkOption {
        type = types.strMatching "[A-Za-z0-9][A-Za-z0-9_.-]*";
        default = config.networking.hostName or "nixos";
        defaultText = lib.literalExpression "config.networking.hostName";
        description = "This host's name in hosts.toml (its cache directory).";
      };
      dir = mkOption { type = absPath; default = "/run/vaultpy"; description = "The live symlink."; };
      earlyDir = mkOption { type = absPath; default = "/run/vaultpy-early"; description = "The live symlink for early items."; };
      store = mkOption { type = absPath; default = "/run/vaultpy.d"; description = "The ramfs holding generations."; };
      keep = mkOption { type = types.ints.positive; default = 3; description = "Generations to keep."; };
    };
    secrets = mkOption {
      type = types.attrsOf secretType;
      default = { };
      description = "Secrets to install on this host, by id.";
    };
    templates = mkOption {
      type = types.attrsOf templateType;
      default = { };
      description = "Files rendered on the host from text with secret placeholders.";
    };
    placeholder = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      default = mapAttrs (id: _: vlib.placeholder id) cfg.secrets;
      description = "placeholder.<id>: the text to put in a template for secret <id>.";
    };
    profile = mkOption {
      type = types.attrs;
      readOnly = true;
      default = profile;
      description = "The activation profile (what `vaultpy profile` would write).";
    };
    profileFile = mkOption {
      type = types.str;
      readOnly = true;
      default = profileFile;
      description = "The profile as a JSON file in the store.";
    };
    renc = mkOption {
      type = types.attrs;
      readOnly = true;
      internal = true;
      # Strings, not paths: read by `vaultpy renc` (hosts.toml's `nixos`), nothing is
      # copied to the store for it.
      default = {
        host = s.hostName;
        recipients = if s.hostPubkey == null then null else recipients;
        cacheRoot = if s.cacheRoot == null then null else toString s.cacheRoot;
        cacheRootIsPath = builtins.isPath s.cacheRoot;    # a string: an assertion fails
        secrets = mapAttrs (_: v: toString v.file) cfg.secrets;
        installed = mapAttrs (_: v: v.name) (filterAttrs (_: v: v.install) cfg.secrets);
        templates = mapAttrs (_: t: vlib.templateRefs t.content) cfg.templates;   # -> ids
        # The hosts.toml this host is imported from (vaultpy.hostsToml), and whether its
        # key is that file's (not set over it here).
        hostsToml = if cfg.hostsToml == null then null else toString cfg.hostsToml;
        keyFromHostsToml = cfg.hostsToml != null
          && options.vaultpy.settings.hostPubkey.highestPrio >= (lib.mkDefault null).priority;
      };
      description = "What `vaultpy renc` needs of this host: its name, keys, cache directory and master files.";
    };
  };

  config = mkMerge [
    (mkIf (cfg.hostsToml != null) {
      vaultpy.settings.hostPubkey = mkDefault fromToml.pubkey;
      vaultpy.settings.cacheRoot = mkDefault fromToml.cacheRoot;
      vaultpy.settings.secretsDir = mkDefault fromToml.secretsDir;
      vaultpy.settings.signingKey = mkIf (fromToml.signingKey != null)
        (mkDefault fromToml.signingKey);
      vaultpy.settings.hostKeys = mkIf (fromToml.identities != null)
        (mkDefault fromToml.identities);
      vaultpy.secrets = fromToml.secrets;
      vaultpy.templates = fromToml.templates;
    })
    (mkIf (cfg.secrets != { } || cfg.templates != { }) {
      assertions =
        [
          { assertion = s.hostPubkey != null;
            message = "vaultpy.settings.hostPubkey is not set: give this host's /etc/ssh/ssh_host_ed25519_key.pub line"; }
          { assertion = s.cacheRoot != null;
            message = "vaultpy.settings.cacheRoot is not set: point it at your repository's secrets/cache"; }
        ]
        ++ map (k: { assertion = keyShape k;
            message = "vaultpy.settings.hostPubkey: ${common.shownKey k} is not an ssh-ed25519 or age1 public key: give this host's /etc/ssh/ssh_host_ed25519_key.pub line (the .pub file, not the key beside it)"; })
          (if s.hostPubkey == null then [ ] else recipients)
        ++ optional (cacheChecked && !(builtins.pathExists hostCache)) {
            assertion = false;
            message = "vaultpy: no cache directory ${toString hostCache}: vaultpy renc writes one for each host of hosts.toml: check settings.cacheRoot (the repository's secrets/cache) and settings.hostName (${s.hostName}: this host's name there), then run vaultpy renc"; }
        ++ optionals (cacheChecked && builtins.pathExists hostCache)
          (lib.mapAttrsToList (id: spec:
            let
              # (a message is evaluated for a passing assertion too: it must not read
              # a master that is missing, which has an assertion of its own)
              others = builtins.filter (n: lib.hasPrefix "${id}." n) (attrNames (builtins.readDir hostCache));
            in {
            assertion = validId id && builtins.pathExists spec.file
              -> builtins.pathExists (cachePath id spec);
            message = if !(builtins.pathExists spec.file) then "" else if others != [ ]
              then "vaultpy: secret ${id}: the cache holds ${builtins.head others}, made for another master file or host key than this configuration's (file ${toString spec.file}, hostPubkey): run `vaultpy renc` if hosts.toml changed since; else give the same file and key as hosts.toml's [${vlib.tomlKey s.hostName}] there"
              else "vaultpy: secret ${id}: cache file ${toString (cachePath id spec)} is missing: run `vaultpy renc` and commit the cache (renc writes only what hosts.toml gives this host: if it still misses, list ${id} under [hosts.${vlib.tomlKey s.hostName}] there, with the same master file, or let renc read it from this configuration: nixos = \"nixos.nix\" in the [vaultpy] table of hosts.toml)";
          }) cfg.secrets)
        ++ common.sharedFailures { inherit (cfg) secrets templates; inherit items; keys = s.hostKeys; }
        ++ signing.failures
        ++ optional (s.cacheRoot != null && !builtins.isPath s.cacheRoot) {
            assertion = false;
            message = "vaultpy.settings.cacheRoot is the string ${builtins.toJSON s.cacheRoot}, not a Nix path: the cache files would not be copied to the store, and the host would look for them at that place; write a path (./secrets/cache, no quotes; for vaultpy.hostsToml too: ./hosts.toml)"; }
        # An age1 key is opened by its identity file, never by sshd's key (the default).
        ++ optional (s.hostPubkey != null && recipients != [ ]
            && builtins.all (r: builtins.substring 0 4 r == "age1") recipients
            && options.vaultpy.settings.hostKeys.highestPrio >= (lib.mkOptionDefault null).priority) {
            assertion = false;
            message = "vaultpy.settings.hostKeys: this host's key is an age1… key, and hostKeys is sshd's ed25519 key, which cannot decrypt what renc writes for it: set vaultpy.settings.hostKeys = [ \"/etc/vaultpy/host.key\" ] (where its age identity file is), or identities in hosts.toml"; }
        ++ optional (s.hostKeys == [ ]) {
            assertion = false;
            message = "vaultpy.settings.hostKeys is empty (services.openssh.hostKeys has no ed25519 key): set vaultpy.settings.hostKeys = [ \"/etc/ssh/ssh_host_ed25519_key\" ], the private key(s) this host decrypts with"; }
        ++ map (x: { assertion = false;
            message = "vaultpy: users.users.${vlib.nixAttr x.user}.${x.field} is ${x.file}, secret ${x.id}'s path, which is installed after users are created: set vaultpy.secrets.${vlib.nixAttr x.id}.early = true (owner and group root), as for any password hash"; })
          latePasswordFiles
        ++ map (x: { assertion = false;
            message = "vaultpy: users.users.${vlib.nixAttr x.user}.${x.field} is ${x.file}, where no secret is installed: ${
              if x.named != [ ] then let id = builtins.head x.named; in
                "secret ${id} is at ${cfg.secrets.${id}.outPath}; write config.vaultpy.secrets.${vlib.nixAttr id}.path"
              else "write config.vaultpy.secrets.<id>.path (an early secret's file is in ${s.earlyDir})"}"; })
          strayPasswordFiles
        ++ lib.mapAttrsToList (id: v: { assertion = false;
            message = "vaultpy: secret ${id}: name ${builtins.toJSON v.name} is invalid: use letters, digits, _ . - (starting with a letter or digit, at most 128); it is a file name in ${s.dir}"; })
          (filterAttrs (id: v: v.name != id && !(validId v.name)) cfg.secrets)
        ++ map (id: { assertion = false;
            message = "vaultpy: secret id ${builtins.toJSON id} is invalid: use letters, digits, _ . - (starting with a letter or digit, at most 128), as in hosts.toml${
              let made = common.toId id; in lib.optionalString (validId made)
                " (vaultpy import sops names it ${made}: vaultpy.secrets.${vlib.nixAttr made}, and {{ secrets.${made} }} in templates)"}"; })
          (builtins.filter (id: !(validId id)) (attrNames cfg.secrets))
        ++ map (n: { assertion = false;
            message = "vaultpy: template name ${builtins.toJSON n} is invalid: use letters, digits, _ . - (starting with a letter or digit, at most 128); it is a file name in ${s.dir}"; })
          (builtins.filter (n: !(validId n)) (attrNames cfg.templates))
        ++ map (c: { assertion = false;
            message = "vaultpy.settings: ${c.a} and ${c.n} overlap: activation would put one over the other; give each a place of its own"; })
          settingsClashes
        ++ map (i: { assertion = false;
            message = "vaultpy: ${i.label}: path ${i.path} overlaps ${concatStringsSep " and " (clashes i.path)}, where activation keeps its own files: choose a path outside, or leave path unset"; })
          (builtins.filter (i: i.path != null && clashes i.path != [ ]) items)
        ++ lib.mapAttrsToList (id: _: { assertion = false;
            message = "vaultpy: secret ${id}: path is set but install = false (the secret only feeds templates): drop the path, or install it"; })
          (filterAttrs (_: v: !v.install && extraPath v != null) cfg.secrets)
        ++ concatMap (i: map (f: { assertion = false;
            message = "vaultpy: ${i.label}: ${f} ${toString i.${f}} is too big: numeric ids stop at 4294967294"; })
          (builtins.filter (f: idTooBig i.${f}) [ "owner" "group" ])) items
        # Early items are installed before users and groups exist (vaultpy/output.py
        # `early_owner_ok`): a name could only be looked up in a later boot.
        ++ map (i: { assertion = false;
            message = "vaultpy: ${i.label}: an early item is installed before users and groups exist: its owner and group must be root or numeric ids (leave them out, give numeric ids, or drop early)"; })
          (builtins.filter (i: i.early && !(earlyOwnerOk i.owner && earlyOwnerOk i.group)) items)
        ++ concatMap (i: [
          { assertion = known "users" i.owner;
            message = "vaultpy: ${i.label}: owner ${toString i.owner} is not in users.users: declare users.users.${vlib.nixAttr (toString i.owner)} (the service's module may, once enabled), or give a numeric id"; }
          { assertion = known "groups" i.group;
            message = "vaultpy: ${i.label}: group ${toString i.group} is not in users.groups: declare users.groups.${vlib.nixAttr (toString i.group)} (the service's module may, once enabled), or give a numeric id"; }
        ]) items
        ++ lib.mapAttrsToList (n: g: { assertion = false;
            message = "vaultpy: ${concatStringsSep " and " (map (x: x.label) g)} install as the same name ${n}"; })
          (dupes (i: i.name) items)
        ++ lib.mapAttrsToList (p: g: { assertion = false;
            message = "vaultpy: ${concatStringsSep " and " (map (x: x.label) g)} use the same path ${p}"; })
          (dupes (i: i.path) items)
        ++ map (r: { assertion = cfg.secrets ? ${r.id};
            message = "vaultpy: template ${r.tmpl} uses secrets.${r.id}: declare vaultpy.secrets.${vlib.nixAttr r.id}"; })
          templateRefs;

      warnings = map (i: "vaultpy: ${i.label}: mode ${vlib.normalizeMode i.mode} lets group root read it, the default group here (agenix, sops-nix and vaultix default to the owner's): set group = \"${
          let g = ownersGroup i.owner; in if g == null || g == "" then "<the group>" else g}\", or group = \"root\" to keep it") rootGroupByDefault
        ++ map (i: "vaultpy: ${i.label}: path ${i.path} lies under ${sharedDir i.path}, where every user may create names: one who makes its directory first stops every activation (refused, rightly); choose a path under a directory only root can write to (/etc, /var/lib, /run)") inSharedDir
        ++ common.placeholderWarnings { inherit (cfg) secrets templates; };

      environment.systemPackages = [ cfg.package ];

      systemd.services.vaultpy-activate = {
        description = "vaultpy: install secrets into ${s.dir}";
        wantedBy = [ "sysinit.target" ];
        # sysinit-reactivation.target: on a switch, restarted before the units that
        # read its files (NixOS manual, "sysinit units").
        requiredBy = [ "sysinit-reactivation.target" ];
        after = [ "local-fs.target" "systemd-sysusers.service" "userborn.service" ];
        before = [ "sysinit.target" "sysinit-reactivation.target" "shutdown.target" ];
        conflicts = [ "shutdown.target" ];
        unitConfig.DefaultDependencies = false;
        restartTriggers = [ profileFile ];   # switch-to-configuration re-runs activation
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          UMask = "0077";
          ExecStart = activateCmd " --systemctl ${config.systemd.package or "/run/current-system/sw"}/bin/systemctl";
        };
      };
    })
    # Early items (user password hashes) must exist before users are created: by the
    # activation script on classic NixOS, by a unit with sysusers/userborn.
    (mkIf (hasEarly && systemdUsers) {
      systemd.services.vaultpy-activate-early = {
        description = "vaultpy: install early secrets into ${s.earlyDir}";
        wantedBy = [ "sysinit.target" "systemd-sysusers.service" "userborn.service" ];
        requiredBy = [ "sysinit-reactivation.target" ];
        # Not after local-fs.target: systemd-tmpfiles-setup-dev.service runs after
        # sysusers and before local-fs-pre.target, so that order is a cycle (systemd
        # breaks it by dropping a job at boot).  Only the host keys' mounts are needed.
        # After / is writable (its links are placed on disk; sysusers waits for that
        # too).  A host key on a file system mounted after the initrd would close the
        # same cycle: early items' keys belong on /.
        after = [ "systemd-remount-fs.service" ];
        before = [ "systemd-sysusers.service" "userborn.service" "sysinit.target"
                   "sysinit-reactivation.target" "shutdown.target" ];
        conflicts = [ "shutdown.target" ];
        unitConfig.DefaultDependencies = false;
        unitConfig.RequiresMountsFor = s.hostKeys;
        restartTriggers = [ profileFile ];
        serviceConfig = {
          Type = "oneshot";
          RemainAfterExit = true;
          UMask = "0077";
          ExecStart = activateCmd " --early";
        };
      };
    })
    # Classic NixOS creates users in the `users` activation script, at every boot and
    # switch: early items first.  (With sysusers or userborn that script is an empty
    # string: no deps may be added to it.)
    (mkIf (hasEarly && !systemdUsers) {
      system.activationScripts.vaultpy-early = {
        deps = [ "specialfs" ];
        text = activateCmd " --early";
      };
      system.activationScripts.users.deps = [ "vaultpy-early" ];
    })
  ];
}
