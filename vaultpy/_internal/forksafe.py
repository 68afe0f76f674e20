"""Forking only once the threads that foreign code left behind are gone.

fork() copies only the calling thread: whatever another thread was doing is cut off in
the child, with any lock it held.  vaultpy starts no thread of its own before it forks
(its progress bar is redrawn by renc's callback, not by rich's refresh thread), but
pyrage's plugin client does: it leaves one behind after each plugin call (age's notice
for a slow plugin, which polls every 100 ms until it sees the call ended).  renc pools
forked while such threads lived hung about once in 85 first runs with a plugin identity
(the first job's result never came back); once the fork waited for them, not once in
1,080 runs.

:func:`mark` runs before any plugin code can; :func:`settled` before a fork.  Threads
the process had before the first plugin call (a library caller's own) are not waited for.
"""

from __future__ import annotations

import os
import time

_baseline: int | None = None     # threads before this process first ran plugin code


def threads() -> int:
    """How many threads this process has (Linux /proc; 0 where it cannot be read)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 0


def mark() -> None:
    """Call before code that may leave threads behind: the first call remembers how
    many threads the process had then."""
    global _baseline
    if _baseline is None:
        _baseline = threads()


def settled(timeout: float) -> bool:
    """Wait (up to ``timeout`` seconds) until no thread started since :func:`mark` is
    left; False if one still runs.  True at once when no such code ran."""
    if _baseline is None:
        return True
    deadline = time.monotonic() + timeout
    while threads() > _baseline:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True
