# The vaultpy home-manager module: a user's own secrets, for their own programs, as
# agenix's and sops-nix's home-manager modules give them.
#
#   vaultpy.settings.hostName = "alice";                  # your entry in hosts.toml
#   vaultpy.settings.hostPubkey = ./keys/alice.pub;       # its pubkey: ~/.ssh/id_ed25519.pub
#   vaultpy.settings.cacheRoot = ./secrets/cache;         # the repo's renc output
#   vaultpy.secrets.gh_token = { file = ./secrets/gh_token.age; };
#   programs.foo.tokenFile = config.vaultpy.secrets.gh_token.path;
#
# hosts.toml lists the same secrets under [hosts.alice] (with alice's public key), so
# `vaultpy renc` encrypts them to her key; or, with `user = true` there, the module
# takes them all from it:  vaultpy.hostsToml = ./hosts.toml;  At login (and at every `home-manager
# switch` that changes them, when home-manager manages user units: startServices) the
# user unit vaultpy.service decrypts them with
# ~/.ssh/id_ed25519 into $XDG_RUNTIME_DIR/vaultpy.d/<N> (RAM), every file hers, and
# switches ~/.local/state/vaultpy/secrets to it: the profile is a user's
# (`vaultpy profile --user` writes the same one), refused if activated as root.
{ config, lib, options, ... }:
let
  inherit (lib) mkOption mkIf mkMerge mkDefault types mapAttrs attrNames filterAttrs
    concatMap concatStringsSep;
  cfg = config.vaultpy;
  s = cfg.settings;
  vlib = import ./lib.nix;
  common = import ./common.nix { inherit lib; };
  inherit (common) validId keyShape overlaps;
  home = config.home.homeDirectory;

  # Absolute and normalised (lib.nix isAbsPath); home-manager knows the home, so a path
  # in it is written with config.home.homeDirectory, never ~ or $HOME.
  absPath = common.absPath // {
    description = "absolute, normalised path (for your home: \"\${config.home.homeDirectory}/…\", not ~ or $HOME)";
  };
  # The store alone may be in the runtime directory, known only at login: %r/…
  storePath = types.addCheck types.str (p: vlib.isAbsPath (lib.removePrefix "%r" p)) // {
    description = "absolute, normalised path, or %r/… (in $XDG_RUNTIME_DIR)";
  };
  # As the profile writes it: literally, but for the store's leading %r.
  storeText = p: if lib.hasPrefix "%r/" p then "%r" + vlib.literalPath (lib.removePrefix "%r" p)
                 else vlib.literalPath p;
  outputOptions = common.modeAndUnits "--user ";     # (the file is always yours)
  pathOption = place: mkOption {
    type = types.nullOr absPath;
    default = place;
    defaultText = lib.literalExpression ''"''${config.vaultpy.settings.dir}/<name>"'';
    description = ''
      Where the file is read: by default its place in the live directory, `outPath`; set
      to another path (in your home, say ~/.config/gh/token), a symlink there to it.
    '';
  };
  # A secret with install = false has no file: reading its `path` throws (a program
  # given it would wait for a file that never comes); `pathGiven` says it was set.
  extraPath = v:
    if !(v.install or true) then (if v.pathGiven then v.path else null)
    else if v.path == null || v.path == v.outPath then null else v.path;

  secretType = types.submodule ({ name, config, options, ... }: {
    options = outputOptions // {
      path = pathOption (if validId config.name then config.outPath else null);
      pathGiven = common.givenOption options "path";
      file = mkOption {
        type = types.path;
        default = if s.secretsDir != null then s.secretsDir + "/${name}.age" else throw
          "vaultpy: secret ${name}: file is not set: give vaultpy.secrets.${vlib.nixAttr name}.file = ./secrets/${name}.age, or set vaultpy.settings.secretsDir = ./secrets";
        description = "The master file, secrets/<id>.age (encrypted to the master key).";
      };
      name = mkOption { type = types.str; default = name; description = "File name in the live directory."; };
      install = mkOption {
        type = types.bool;
        default = true;
        description = "false: only decrypted for templates, not installed as a file.";
      };
      outPath = mkOption {
        type = types.str;
        readOnly = true;
        default = if config.install then "${s.dir}/${config.name}" else throw
          "vaultpy: secret ${name} is not installed (install = false: it only feeds templates), so it has no path: read it through a template, or set vaultpy.secrets.${vlib.nixAttr name}.install = true";
        description = "Where the secret is readable (none with install = false).";
      };
    };
  });

  templateType = types.submodule ({ name, config, options, ... }: {
    options = outputOptions // common.templateText { inherit name config options; } // {
      path = pathOption (if validId name then config.outPath else null);
      outPath = mkOption {
        type = types.str;
        readOnly = true;
        default = "${s.dir}/${name}";
        description = "Where the rendered file is readable.";
      };
    };
  });

  inherit (common.keysAndCache "your ~/.ssh/id_ed25519.pub (copied into your configuration), or its key line as a string" s)
    recipients cachePath cacheFile;

  profile = vlib.profileFromOptions {
    host = s.hostName;
    user = true;
    settings = {
      identities = map vlib.literalPath s.hostKeys;
      dir = vlib.literalPath s.dir;
      early_dir = vlib.literalPath s.earlyDir;
      store = storeText s.store;
      inherit (s) keep;
    };
    secrets = mapAttrs (_: v: v // { path = extraPath v; }) cfg.secrets;
    templates = mapAttrs (_: v: v // { path = extraPath v; }) cfg.templates;
    inherit cacheFile;
    inherit (signing) signed;        # the signed list of your cache files
  };
  signing = common.signing s (s.cacheRoot != null && keySet && builtins.all keyShape recipients
                              && cfg.secrets != { })
    (map (id: cachePath id cfg.secrets.${id})
      (builtins.filter (id: validId id && builtins.pathExists cfg.secrets.${id}.file)
        (attrNames cfg.secrets)));
  profileFile = builtins.toFile "vaultpy-profile-${s.hostName}.json" (builtins.toJSON profile);

  items = lib.mapAttrsToList (id: v: { label = "secret ${id}"; inherit (v) name; path = extraPath v; })
      (filterAttrs (_: v: v.install) cfg.secrets)
    ++ lib.mapAttrsToList (n: v: { label = "template ${n}"; name = n;
                                   path = if validId n then extraPath v else null; }) cfg.templates;
  dupes = key: builtins.filter (g: builtins.length g > 1) (builtins.attrValues
    (builtins.groupBy (x: key x) (builtins.filter (x: key x != null) items)));
  templateRefs = concatMap (n: map (id: { tmpl = n; inherit id; })
    (vlib.templateRefs cfg.templates.${n}.content)) (attrNames cfg.templates);
  keySet = s.hostPubkey != null && s.hostPubkey != [ ];

  # Your entry of hosts.toml (vaultpy.hostsToml): a person's, user = true.
  fromToml = common.fromHostsToml {
    inherit (cfg) hostsToml;
    inherit home;
    name = s.hostName;
    missing = "set vaultpy.settings.hostName to your entry's name in hosts.toml, or add [hosts.${vlib.tomlKey s.hostName}] there (user = true)";
  };
in
{
  options.vaultpy = {
    package = mkOption {
      type = types.package;
      description = "The vaultpy package (the flake's homeManagerModules.default sets it).";
    };
    hostsToml = mkOption {
      type = types.nullOr types.path;
      default = null;
      description = "Import your entry from the operator's hosts.toml (a person's entry, user = true): its key (settings.hostPubkey), key paths (settings.hostKeys), the cache and master-file directories, secrets and templates; the options below win.";
    };
    settings = {
      hostName = mkOption {
        type = types.strMatching "[A-Za-z0-9][A-Za-z0-9_.-]*";
        default = if validId config.home.username then config.home.username else throw
          "vaultpy.settings.hostName: home.username ${builtins.toJSON config.home.username} is no name hosts.toml can hold: set vaultpy.settings.hostName to your entry's name there ([hosts.<name>])";
        defaultText = lib.literalExpression "config.home.username";
        description = "Your entry's name in hosts.toml (its cache directory).";
      };
      hostPubkey = mkOption {
        type = let key = types.either types.str types.path;
               in types.nullOr (types.either key (types.listOf key));
        default = null;
        description = "Your public key as in hosts.toml: the ssh-ed25519 line of ~/.ssh/id_ed25519.pub (or an age1 key), or the path of a file holding it.";
      };
      hostKeys = mkOption {
        type = types.listOf (types.coercedTo types.path toString absPath);
        default = [ "${home}/.ssh/id_ed25519" ];
        defaultText = lib.literalExpression ''[ "''${config.home.homeDirectory}/.ssh/id_ed25519" ]'';
        description = "Your private keys, which decrypt (passphrase-less: the unit runs unattended).";
      };
      cacheRoot = mkOption { type = types.nullOr types.path; default = null; description = "The repository's secrets/cache directory (vaultpy renc output)."; };
      signingKey = common.signingOption;
      secretsDir = mkOption { type = types.nullOr types.path; default = null; description = "Where the master files are: a secret's `file` defaults to <id>.age there."; };
      dir = mkOption {
        type = absPath;
        default = "${home}/.local/state/vaultpy/secrets";
        defaultText = lib.literalExpression ''"''${config.home.homeDirectory}/.local/state/vaultpy/secrets"'';
        description = "The live symlink (in your home: paths your programs can be given).";
      };
      earlyDir = mkOption {
        type = absPath;
        default = "${home}/.local/state/vaultpy/early";
        internal = true;
        description = "Unused by a user's profile (no early items); kept apart from dir.";
      };
      store = mkOption {
        type = storePath;
        default = "%r/vaultpy.d";
        description = "Where generations are built: in RAM, your runtime directory (%r is $XDG_RUNTIME_DIR).";
      };
      keep = mkOption { type = types.ints.positive; default = 3; description = "Generations to keep."; };
    };
    secrets = mkOption { type = types.attrsOf secretType; default = { }; description = "Your secrets, by id."; };
    templates = mkOption { type = types.attrsOf templateType; default = { }; description = "Files rendered from text with secret placeholders."; };
    placeholder = mkOption {
      type = types.attrsOf types.str;
      readOnly = true;
      default = mapAttrs (id: _: vlib.placeholder id) cfg.secrets;
      description = "placeholder.<id>: the text to put in a template for secret <id>.";
    };
    profile = mkOption { type = types.attrs; readOnly = true; default = profile; description = "The activation profile (what `vaultpy profile --user` writes)."; };
    profileFile = mkOption { type = types.str; readOnly = true; default = profileFile; description = "The profile as a JSON file in the store."; };
  };

  config = mkMerge [
   (mkIf (cfg.hostsToml != null) {
    vaultpy.settings.hostPubkey = mkDefault fromToml.pubkey;
    vaultpy.settings.cacheRoot = mkDefault fromToml.cacheRoot;
    vaultpy.settings.secretsDir = mkDefault fromToml.secretsDir;
    vaultpy.settings.signingKey = mkIf (fromToml.signingKey != null) (mkDefault fromToml.signingKey);
    vaultpy.settings.hostKeys = mkIf (fromToml.identities != null) (mkDefault fromToml.identities);
    vaultpy.secrets = fromToml.secrets;
    vaultpy.templates = fromToml.templates;
   })
   (mkIf (cfg.secrets != { } || cfg.templates != { }) {
    warnings = common.placeholderWarnings { inherit (cfg) secrets templates; };
    assertions = [
      { assertion = keySet;
        message = "vaultpy.settings.hostPubkey is not set: give your ~/.ssh/id_ed25519.pub line (the pubkey of [hosts.${vlib.tomlKey s.hostName}] in hosts.toml), or a path to it"; }
      { assertion = !keySet || builtins.all keyShape recipients;
        message = "vaultpy.settings.hostPubkey: ${concatStringsSep ", "
          (map common.shownKey (builtins.filter (k: !(keyShape k)) (if keySet then recipients else [ ])))}: not an ssh-ed25519 or age1 public key; give the line of ~/.ssh/id_ed25519.pub (the .pub file, not the key beside it)"; }
      { assertion = s.cacheRoot != null;
        message = "vaultpy.settings.cacheRoot is not set: point it at your repository's secrets/cache (vaultpy renc writes it)"; }
      { assertion = s.hostKeys != [ ];
        message = "vaultpy.settings.hostKeys is empty: give your private key, ~/.ssh/id_ed25519"; }
      { assertion = !(overlaps s.dir s.store || overlaps s.dir s.earlyDir || overlaps s.store s.earlyDir);
        message = "vaultpy.settings: dir (${s.dir}), store (${s.store}) and earlyDir (${s.earlyDir}) overlap: give each a place of its own"; }
    ]
    ++ lib.optionals (s.cacheRoot != null && keySet && builtins.all keyShape recipients)
      (lib.mapAttrsToList (id: v: {
        assertion = validId id && builtins.pathExists v.file -> builtins.pathExists (cachePath id v);
        # (evaluated for a passing assertion too: it must not read a missing master)
        message = if !(validId id && builtins.pathExists v.file) then "" else
          "vaultpy: secret ${id}: no cache file ${toString (cachePath id v)}: list ${id} under [hosts.${vlib.tomlKey s.hostName}] in hosts.toml (with this pubkey) and run vaultpy renc";
      }) cfg.secrets)
    ++ common.sharedFailures { inherit (cfg) secrets templates; inherit items; keys = s.hostKeys; }
    ++ signing.failures
    ++ lib.optional (s.cacheRoot != null && !builtins.isPath s.cacheRoot) {
        assertion = false;
        message = "vaultpy.settings.cacheRoot is the string ${builtins.toJSON s.cacheRoot}, not a Nix path: the cache files would not be copied to the store; write a path (./secrets/cache, no quotes; for vaultpy.hostsToml too: ./hosts.toml)"; }
    # An age1 key is opened by its identity file, never by ~/.ssh/id_ed25519 (the default).
    ++ lib.optional (keySet && builtins.all (r: builtins.substring 0 4 r == "age1") recipients
        && options.vaultpy.settings.hostKeys.highestPrio >= (lib.mkOptionDefault null).priority) {
        assertion = false;
        message = "vaultpy.settings.hostKeys: your key is an age1… key, and hostKeys is ~/.ssh/id_ed25519, which cannot decrypt what renc writes for it: set vaultpy.settings.hostKeys = [ \"\${config.home.homeDirectory}/.config/sops/age/keys.txt\" ] (where your age identity file is)"; }
    ++ lib.mapAttrsToList (id: _: { assertion = false;
        message = "vaultpy: secret ${id}: path is set, but install = false (it only feeds templates): no file is installed to link there; drop path, or set install = true"; })
      (filterAttrs (_: v: !v.install && v.pathGiven) cfg.secrets)

    ++ lib.mapAttrsToList (id: v: {
        assertion = validId id && validId v.name;
        message = "vaultpy: secret ${id}: an id or name of letters, digits, _ . - (at most 128), starting with a letter or digit";
      }) cfg.secrets
    ++ map (n: { assertion = validId n;
        message = "vaultpy: template ${n}: a name of letters, digits, _ . - (at most 128), starting with a letter or digit"; })
      (attrNames cfg.templates)
    ++ map (g: { assertion = false;
        message = "vaultpy: ${concatStringsSep " and " (map (x: x.label) g)} install as the same name ${(builtins.head g).name}"; })
      (dupes (i: i.name))
    ++ map (g: { assertion = false;
        message = "vaultpy: ${concatStringsSep " and " (map (x: x.label) g)} use the same path ${(builtins.head g).path}"; })
      (dupes (i: i.path))
    ++ concatMap (i: lib.optional (i.path != null && builtins.any (d: overlaps d i.path) [ s.dir s.store s.earlyDir "${s.store}.lock" ]) {
        assertion = false;
        message = "vaultpy: ${i.label}: path ${i.path} lies in or above vaultpy's own places (${s.dir}, ${s.store}): choose another path, or drop it"; })
      items
    ++ map (r: { assertion = cfg.secrets ? ${r.id};
        message = "vaultpy: template ${r.tmpl} uses secrets.${r.id}: declare vaultpy.secrets.${vlib.nixAttr r.id}"; })
      templateRefs;

    home.packages = [ cfg.package ];

    systemd.user.services.vaultpy = {
      Unit = {
        Description = "vaultpy: install your secrets into ${s.dir}";
        # A switch that changes the profile changes this unit: it is started again.
        X-Restart-Triggers = [ profileFile ];
      };
      Service = {
        Type = "oneshot";
        RemainAfterExit = true;
        UMask = "0077";
        ExecStart = "${cfg.package}/bin/vaultpy-activate --profile ${profileFile} --systemctl ${config.systemd.user.systemctlPath}";
      };
      Install.WantedBy = [ "default.target" ];
    };
   })
  ];
}
