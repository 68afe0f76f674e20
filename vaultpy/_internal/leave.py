"""How vaultpy's programs end (``vaultpy``, ``vaultpy-activate``)."""

from __future__ import annotations

import atexit
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
