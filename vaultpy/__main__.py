"""Entry point.  ``vaultpy --version`` answers before the CLI (typer, rich) is imported."""

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from vaultpy import __version__

        print(f"vaultpy {__version__}")
        return
    import resource

    # No command may dump core: renc, rekey, encrypt, pull... hold plaintext or keys.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from vaultpy.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
