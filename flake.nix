{
  description = "vaultpy: a declarative, age-based secret compiler for NixOS and plain Linux hosts";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
      app = pkgs: command: {
        type = "app";
        meta.description = "vaultpy ${command}";
        program = toString (pkgs.writeShellScript "vaultpy-${command}" ''
          exec ${self.packages.${pkgs.stdenv.hostPlatform.system}.default}/bin/vaultpy ${command} "$@"
        '');
      };
    in
    {
      # Pure-Nix helpers (cacheName, profileFromHostsToml, …): no nixpkgs needed.
      lib = import ./nix/lib.nix;

      packages = forAllSystems (pkgs: rec {
        vaultpy = pkgs.callPackage ./nix/package.nix { };
        default = vaultpy;
      });

      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./nix/module.nix ];
        vaultpy.package = lib.mkDefault self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      };
      nixosModules.vaultpy = self.nixosModules.default;

      # A user's own secrets (home-manager), activated by their systemd --user unit.
      homeManagerModules.default = { lib, pkgs, ... }: {
        imports = [ ./nix/home-module.nix ];
        vaultpy.package = lib.mkDefault (self.packages.${pkgs.stdenv.hostPlatform.system}.default
          or (throw "vaultpy: no package for ${pkgs.stdenv.hostPlatform.system}: the home-manager module needs Linux with systemd --user (${builtins.concatStringsSep ", " systems})"));
      };
      homeManagerModules.vaultpy = self.homeManagerModules.default;

      apps = forAllSystems (pkgs: {
        renc = app pkgs "renc";
        edit = app pkgs "edit";
        check = app pkgs "check";
        default = app pkgs "renc";
      });

      checks = forAllSystems (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
        # The demo's cache names computed in Nix must name the committed files.
        demo-cache-names =
          let
            files = host: map (s: s.file)
              (self.lib.profileFromHostsToml { hostsToml = ./hosts.toml; inherit host; }).secrets;
            missing = builtins.filter (f: !builtins.pathExists f)
              (builtins.concatMap files [ "web1" "db1" "mail1" ]);
          in
          assert missing == [ ] || throw "vaultpy: cache files missing: ${toString missing}";
          pkgs.runCommand "vaultpy-demo-cache-names" { } "touch $out";
      });
    };
}
