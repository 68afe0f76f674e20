"""Entry point.  ``vaultpy --version``, and a ``renc`` or ``check`` that the no-op memo
(vaultpy/_internal/memo.py) can answer, finish before the CLI (typer, rich) is imported."""

import sys


def main() -> None:
    """Run the command in ``sys.argv`` and end the process."""
    from vaultpy._internal import sigint
    from vaultpy._internal.leave import leave

    # For the whole process: a first Ctrl-C stops the command, later ones cannot cut
    # the clean-up it started short (vaultpy/_internal/sigint.py).
    sigint.install()
    try:
        try:
            _main()
        except KeyboardInterrupt:   # before the CLI's own handler (as it: one line, 130)
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        finally:
            # The command is over.  Python gives SIGINT its default action back as it
            # exits: a Ctrl-C in those last milliseconds would turn the exit status
            # into a kill.  An ignored signal it leaves alone.
            sigint.ignore()
    except SystemExit as exc:
        leave(exc.code)
    except KeyboardInterrupt as exc:
        # The first Ctrl-C, in the instant between the command's end and ignore()
        # taking effect (raised in the finally above: any earlier one was caught
        # there, and later ones are ignored).  The command had finished: its own exit
        # status stands, not a traceback and death by SIGINT.
        sigint.ignore()
        ended = exc.__context__
        leave(ended.code if isinstance(ended, SystemExit) else 0)
    leave(0)


def _main() -> None:
    if sys.argv[1:] == ["--version"]:
        from vaultpy import __version__

        print(f"vaultpy {__version__}")
        return
    if "renc" in sys.argv[1:] or "check" in sys.argv[1:]:
        from vaultpy._internal import memo
        from vaultpy._internal.leave import OUTPUT_ERRNOS, output_lost

        try:
            code = memo.answer(sys.argv[1:])    # (what it prints, flushed here)
            if code is not None:
                sys.stdout.flush()
                sys.stderr.flush()
        except OSError as exc:      # as the CLI: stdout or stderr cannot be written
            if not (isinstance(exc, BrokenPipeError) or exc.errno in OUTPUT_ERRNOS):
                raise
            sys.exit(output_lost(exc))
        if code is not None:
            sys.exit(code)
    from vaultpy._internal import nocore

    # No command may dump core: renc, rekey, encrypt, pull... hold plaintext or keys.
    nocore.forbid()
    from vaultpy.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
