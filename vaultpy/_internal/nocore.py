"""No core dump of a process that holds plaintext or keys.

``RLIMIT_CORE`` 0 stops the kernel writing a core file, and systemd-coredump honours
it; but a ``core_pattern`` that pipes the core to a program (apport, a crash
reporter) is not bound by it (found in review).  ``prctl(PR_SET_DUMPABLE, 0)`` stops
every core, and also keeps other processes of the same user from attaching to this
one or reading its memory through /proc.  An ``exec``'d program (the editor) starts
dumpable again: it is not vaultpy's to decide.
"""

from __future__ import annotations

import resource

_PR_GET_DUMPABLE, _PR_SET_DUMPABLE = 3, 4


def forbid() -> None:
    """This process (and what it forks) never dumps core."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (ImportError, OSError, AttributeError):  # no ctypes (a minimal Python), no
        pass                                         # prctl (not Linux): the limit alone


def dumpable() -> bool:
    """Whether this process may dump core (for tests and ``doctor``)."""
    import ctypes

    return bool(ctypes.CDLL(None, use_errno=True).prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))
