# Evaluate nix/module.nix with the real nixpkgs lib:  nix-instantiate --eval --strict --json
#   --arg config 'path to a module file'  tests/nix/eval-module.nix -A <attr>
{ config, libPath ? builtins.getEnv "NIXPKGS_LIB" }:
let
  lib = import libPath;
  fakePackage = { type = "derivation"; name = "vaultpy"; outPath = "/nix/store/11111111111111111111111111111111-vaultpy"; };
  evaluated = lib.evalModules {
    modules = [ ./nixos-stubs.nix ../../nix/module.nix { vaultpy.package = fakePackage; } config ];
  };
  c = evaluated.config;
in
{
  inherit (c.vaultpy) profile placeholder;
  profileJson = builtins.toJSON c.vaultpy.profile;
  outPaths = lib.mapAttrs (_: v: if v.install then v.outPath else null) c.vaultpy.secrets
    // lib.mapAttrs' (n: v: lib.nameValuePair "template:${n}" v.outPath) c.vaultpy.templates;
  paths = lib.mapAttrs (_: v: if v.install then v.path else null) c.vaultpy.secrets
    // lib.mapAttrs' (n: v: lib.nameValuePair "template:${n}" v.path) c.vaultpy.templates;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
  inherit (c) warnings;
  services = lib.mapAttrs (_: v: builtins.removeAttrs v [ "restartTriggers" ]) c.systemd.services;
  activationScripts = c.system.activationScripts;
}
