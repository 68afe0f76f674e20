# The few NixOS options vaultpy's module sets or reads, declared loosely typed, so the
# module can be evaluated with the real nixpkgs lib.evalModules and nothing else.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  loose = default: mkOption { type = types.anything; inherit default; };
in
{
  options = {
    assertions = mkOption { type = types.listOf types.anything; default = [ ]; };
    warnings = mkOption { type = types.listOf types.str; default = [ ]; };
    systemd.services = mkOption { type = types.attrsOf types.anything; default = { }; };
    systemd.package = loose "/nix/store/00000000000000000000000000000000-systemd";
    users.users = mkOption { type = types.attrsOf types.anything; default = { }; };
    users.groups = mkOption { type = types.attrsOf types.anything; default = { }; };
    system.activationScripts = mkOption { type = types.attrsOf types.anything; default = { }; };
    environment.systemPackages = mkOption { type = types.listOf types.anything; default = [ ]; };
    networking.hostName = mkOption { type = types.str; default = "nixos"; };
    systemd.sysusers.enable = mkOption { type = types.bool; default = false; };
    services.userborn.enable = mkOption { type = types.bool; default = false; };
    services.openssh.hostKeys = mkOption {
      type = types.listOf types.anything;
      default = [ { type = "ed25519"; path = "/etc/ssh/ssh_host_ed25519_key"; } ];
    };
  };
}
