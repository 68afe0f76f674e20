"""Entry point.  ``vaultpy --version`` answers before the CLI (typer, rich) is imported."""

import sys


def main() -> None:
    if sys.argv[1:] == ["--version"]:
        from vaultpy import __version__

        print(f"vaultpy {__version__}")
        return
    from vaultpy.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
