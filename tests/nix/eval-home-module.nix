# Evaluate nix/home-module.nix with the real nixpkgs lib:  nix-instantiate --eval --strict
#   --json --arg config 'path to a module file'  tests/nix/eval-home-module.nix -A <attr>
{ config, libPath ? builtins.getEnv "NIXPKGS_LIB" }:
let
  lib = import libPath;
  fakePackage = { type = "derivation"; name = "vaultpy"; outPath = "/nix/store/11111111111111111111111111111111-vaultpy"; };
  c = (lib.evalModules {
    modules = [ ./home-manager-stubs.nix ../../nix/home-module.nix
                { vaultpy.package = fakePackage; home.username = "alice";
                  home.homeDirectory = "/home/alice"; }
                config ];
  }).config;
in
{
  inherit (c.vaultpy) profile placeholder;
  profileJson = builtins.toJSON c.vaultpy.profile;
  settings = { inherit (c.vaultpy.settings) hostKeys dir store hostName; };
  paths = lib.mapAttrs (_: v: if v.install then v.path else null) c.vaultpy.secrets
    // lib.mapAttrs' (n: v: lib.nameValuePair "template:${n}" v.path) c.vaultpy.templates;
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions);
  services = c.systemd.user.services;
  packages = map (p: p.outPath) c.home.packages;
}
