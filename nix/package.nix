# vaultpy built with nixpkgs' Python packages.  Called by flake.nix:
#   pkgs.callPackage ./nix/package.nix { }
{ lib, stdenv, python3Packages, age, autoPatchelfHook }:
let
  pyproject = builtins.fromTOML (builtins.readFile ../pyproject.toml);

  # pyrage (age for Python, in Rust) is not in every nixpkgs: when missing, its wheel
  # from PyPI (abi3: one per architecture), its libgcc_s found by autoPatchelf.
  pyrageWheels = {
    x86_64-linux = {
      platform = "manylinux_2_17_x86_64.manylinux2014_x86_64";
      hash = "sha256-f06wy8K0ruXerJhixHs4lYZt9VVBU5Ua+CLpxYHmhVg=";
    };
    aarch64-linux = {
      platform = "manylinux_2_17_aarch64.manylinux2014_aarch64";
      hash = "sha256-+GizYMzT+DYybUK1Mvrj6OuDQKiMygo5wK4Q/OaPbMU=";
    };
  };
  system = stdenv.hostPlatform.system;
  pyrage = python3Packages.pyrage or (python3Packages.buildPythonPackage rec {
    pname = "pyrage";
    version = "1.4.0";
    format = "wheel";
    src = python3Packages.fetchPypi {
      inherit pname version format;
      dist = "cp310";
      python = "cp310";
      abi = "abi3";
      inherit (pyrageWheels.${system} or (throw
        "vaultpy: no pyrage wheel for ${system}: use a nixpkgs that has python3Packages.pyrage"))
        platform hash;
    };
    nativeBuildInputs = [ autoPatchelfHook ];
    buildInputs = [ stdenv.cc.cc.lib ];
    pythonImportsCheck = [ "pyrage" ];
  });
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
  # Every [project] dependency of pyproject.toml (tests/test_nix.py checks the list).
  dependencies = [ pyrage ] ++ (with python3Packages;
    [ cryptography bcrypt typer rich tomli-w shamir-mnemonic tomlkit hvac ]);
  # pyproject's upper bounds keep pip from a slower typer; nixpkgs has its own.
  pythonRelaxDeps = [ "typer" "shamir-mnemonic" ];
  # The test suite needs root (chown, ramfs mounts in unshare -m): run it with
  # `make test` on a machine, not in the sandbox.  Importing is checked here.
  pythonImportsCheck = [ "vaultpy" "vaultpy.cli" "vaultpy.activate" "vaultpy.vault"
                         "vaultpy.shamir" ];
  nativeCheckInputs = [ age ];
  meta = {
    description = pyproject.project.description;
    license = lib.licenses.mit;
    mainProgram = "vaultpy";
    platforms = lib.platforms.linux;
  };
}
