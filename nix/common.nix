# What the NixOS module (module.nix) and the home-manager module (home-module.nix)
# share: option types, the key option read as recipients, cache files, and the checks
# whose one-line messages are the same in both.
{ lib }:
let
  inherit (lib) mkOption types concatMap concatStringsSep filterAttrs;
  vlib = import ./lib.nix;
in
rec {
  # As strict as `vaultpy activate`'s profile loader: what evaluates also activates.
  # (vaultpy/output.py UNIT_RE: systemd's characters and globs; "-" first only as "-.")
  unitName = types.strMatching
    "-[.][]A-Za-z0-9:_.\\@*?[-]{0,253}|[]A-Za-z0-9:_.\\@*?[][]A-Za-z0-9:_.\\@*?[-]{0,254}";
  # absolute and normalised: no empty, "." or ".." segment, no trailing slash, no
  # control character, names of at most 255 bytes (vaultpy/output.py path_shape_problem;
  # lib.nix isAbsPath, which hosts.toml's identities are checked with too)
  absPath = types.addCheck (types.strMatching vlib.absPathPattern) vlib.isAbsPath;
  validId = id: builtins.match "[A-Za-z0-9][A-Za-z0-9_.-]*" id != null
    && builtins.stringLength id <= 128;
  keyShape = k: builtins.match
    "[[:space:]]*(ssh-ed25519[[:space:]]+AAAAC3NzaC1lZDI1NTE5AAAAI[A-Za-z0-9+/]{43}|age1[0-9a-z]{20,})([[:space:]].*)?" k != null;
  overlaps = a: b: a == b || lib.hasPrefix "${a}/" b || lib.hasPrefix "${b}/" a;

  # mode, restartUnits, reloadUnits; `scope`: "--user " for a user's own units.
  modeAndUnits = scope: {
    mode = mkOption {
      type = types.strMatching "0?[0-7]{3}";
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

  # A template's own options.
  templateText = {
    content = mkOption {
      type = types.str;
      description = "Text with `{{ secrets.<id> }}` placeholders (see vaultpy.placeholder).";
    };
    trim = mkOption {
      type = types.bool;
      default = false;
      description = "Strip whitespace around each inserted secret.";
    };
  };

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
  sharedFailures = { secrets, templates, items }:
    lib.mapAttrsToList (id: spec: {
        assertion = false;
        message = "vaultpy: secret ${id}: master file ${toString spec.file} does not exist: create it with `vaultpy edit ${id}`, or set vaultpy.secrets.${id}.file"; })
      (filterAttrs (_: spec: !(builtins.pathExists spec.file)) secrets)
    ++ lib.mapAttrsToList (n: _: { assertion = false;
        message = "vaultpy: template ${n}: broken placeholder: write {{ secrets.<id> }} (or {{{{ for a literal {{)"; })
      (filterAttrs (_: t: vlib.brokenPlaceholder t.content) templates)
    ++ map (n: { assertion = false;
        message = "vaultpy: ${n.label}: path ${n.path} lies inside ${n.outer.path}, ${n.outer.label}'s path (a link to a file: nothing can be linked below it): give one of them another path"; })
      (nested items);
}
