"""Entry point.  ``vaultpy --version``, and a ``renc`` or ``check`` that the no-op memo
(vaultpy/_internal/memo.py) can answer, finish before the CLI (typer, rich) is imported."""

import sys


def main() -> None:
    try:
        _main()
    except KeyboardInterrupt:   # before the CLI's own handler (as it: one line, exit 130)
        sys.stderr.write("interrupted\n")
        sys.exit(130)


def _main() -> None:
    if sys.argv[1:] == ["--version"]:
        from vaultpy import __version__

        print(f"vaultpy {__version__}")
        return
    if "renc" in sys.argv[1:] or "check" in sys.argv[1:]:
        from vaultpy._internal import memo

        code = memo.answer(sys.argv[1:])
        if code is not None:
            sys.exit(code)
    import resource

    # No command may dump core: renc, rekey, encrypt, pull... hold plaintext or keys.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    from vaultpy.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
