# vaultpy built with nixpkgs' Python packages.  Called by flake.nix:
#   pkgs.callPackage ./nix/package.nix { }
{ lib, python3Packages, age }:
let
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);
in
python3Packages.buildPythonApplication {
  pname = "vaultpy";
  version = pyproject.project.version;
  pyproject = true;
  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [ ../pyproject.toml ../README.md ../LICENSE ../vaultpy ];
  };
  build-system = [ python3Packages.setuptools ];
  dependencies = with python3Packages; [ pyrage cryptography bcrypt typer rich tomli-w ];
  # The test suite needs root (chown, ramfs mounts in unshare -m): run it with
  # `make test` on a machine, not in the sandbox.  Importing is checked here.
  pythonImportsCheck = [ "vaultpy" "vaultpy.cli" "vaultpy.activate" ];
  nativeCheckInputs = [ age ];
  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "vaultpy";
    platforms = lib.platforms.linux;
  };
}
