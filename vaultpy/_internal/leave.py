"""How vaultpy's programs end (``vaultpy``, ``vaultpy-activate``)."""

from __future__ import annotations

import atexit
import errno  # (built in: no file read at start-up)
import os
import sys

TYPE_CHECKING = False       # typing itself costs ~4 ms to import (--version, the memo)
if TYPE_CHECKING:
    from typing import NoReturn


def leave(code: object) -> NoReturn:
    """Exit as ``sys.exit(code)`` would, without tearing the interpreter down: freeing
    every module and object one by one takes ~40 ms after a full command (typer, rich,
    the plan), and the kernel frees the whole process at once.  Only when nothing is left for
    that teardown to do: stdout and stderr flushed, no ``atexit`` function (a
    ``weakref.finalize``, coverage's data file) and no other thread.  Otherwise, and
    if a flush fails (a closed pipe: Python reports it as it always does), the
    normal exit, as it is for a ``code`` that is a message for Python to print."""
    if code is None:
        code = 0
    if not isinstance(code, int):
        raise SystemExit(code)
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:      # None: started with that descriptor closed
                stream.flush()
    except (OSError, ValueError):
        sys.exit(code)
    threading = sys.modules.get("threading")
    if atexit._ncallbacks() or (threading is not None and threading.active_count() > 1):
        sys.exit(code)
    os._exit(code)


# Write errors of stdout or stderr (> /dev/full, a full disk): not an internal error.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG})


def output_lost(exc: OSError) -> int:
    """The exit status once stdout or stderr could not be written, said on stderr if it
    can be: 141 when the reader went away (``vaultpy check | head``: as other Unix
    tools), else 74 (EX_IOERR), after one line; what the command did stands.  stdout
    then goes to /dev/null, so that the exit's own flush fails no more."""
    import contextlib  # (loaded already: runpy imports it)

    if not isinstance(exc, BrokenPipeError):
        with contextlib.suppress(OSError, ValueError):
            os.write(2, f"vaultpy: cannot write the output ({exc.strerror}); what the "
                        "command did is not undone: vaultpy check or status tells where "
                        "things are\n".encode())
    with contextlib.suppress(OSError, ValueError, AttributeError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141 if isinstance(exc, BrokenPipeError) else 74
