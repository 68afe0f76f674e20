"""A gate on one file: every ``open`` of it waits until the test lets it through.

Tests use it to stop a process at an exact point (a forked helper about to read one
cache file) without changing the file: a FIFO used to play that part, but vaultpy now
refuses a FIFO where it expects a file, unread.  It is Linux's fanotify, with
``FAN_OPEN_PERM`` events (as root): the kernel holds the opener until the listener
answers, and tells the listener who it is.
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import time
from pathlib import Path

_FAN_CLOEXEC = 0x1
_FAN_CLASS_CONTENT = 0x4
_FAN_MARK_ADD = 0x1
_FAN_OPEN_PERM = 0x10000
_FAN_ALLOW = 0x1
_AT_FDCWD = -100
# struct fanotify_event_metadata: event_len, vers, reserved, metadata_len, mask, fd, pid
_EVENT = struct.Struct("=IBBHQii")
_RESPONSE = struct.Struct("=iI")      # struct fanotify_response: fd, response


class OpenGate:
    def __init__(self, path: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64,
                                       ctypes.c_int, ctypes.c_char_p]
        self.fd = libc.fanotify_init(_FAN_CLOEXEC | _FAN_CLASS_CONTENT,
                                     os.O_RDONLY | os.O_LARGEFILE)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"fanotify_init: {os.strerror(err)}")
        if libc.fanotify_mark(self.fd, _FAN_MARK_ADD, _FAN_OPEN_PERM, _AT_FDCWD,
                              os.fsencode(path)) != 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"fanotify_mark {path}: {os.strerror(err)}")
        self.pending: list[tuple[int, int]] = []       # (event fd, pid), oldest first

    def wait(self, deadline: float) -> tuple[int, int] | None:
        """The next held open, as (event fd, pid of the opener); None at the deadline."""
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], min(left, 0.05))[0]:
                if left <= 0:
                    return None
                continue
            buf = os.read(self.fd, 4096)
            offset = 0
            while offset + _EVENT.size <= len(buf):
                length, _v, _r, _m, _mask, fd, pid = _EVENT.unpack_from(buf, offset)
                self.pending.append((fd, pid))
                offset += length
        return self.pending.pop(0)

    def allow(self, event_fd: int) -> None:
        os.write(self.fd, _RESPONSE.pack(event_fd, _FAN_ALLOW))
        os.close(event_fd)

    def close(self) -> None:
        """Lets through every open still held, and closes the gate."""
        for event_fd, _pid in self.pending:
            self.allow(event_fd)
        self.pending = []
        os.close(self.fd)       # closing the group allows whatever it had not read yet
