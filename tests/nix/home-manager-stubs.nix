# The few home-manager options vaultpy's home module sets or reads, declared loosely
# typed (as home-manager declares them: home.homeDirectory and home.username without
# defaults), so the module can be evaluated with the real nixpkgs lib.evalModules.
{ lib, ... }:
let
  inherit (lib) mkOption types;
in
{
  options = {
    assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    home.homeDirectory = mkOption { type = types.str; };
    home.username = mkOption { type = types.str; };
    home.packages = mkOption { type = types.listOf types.anything; default = [ ]; };
    systemd.user.services = mkOption { type = types.attrsOf types.anything; default = { }; };
    systemd.user.systemctlPath = mkOption {
      type = types.str;
      default = "/nix/store/00000000000000000000000000000000-systemd/bin/systemctl";
    };
  };
}
