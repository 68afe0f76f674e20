"""The ledger of master values vaultpy wrote on this machine (vaultpy/signing.py).

With a signing key, renc encrypts and signs a master's value only if it can vouch for
it; one way is that vaultpy itself wrote that value, here, as that secret's master at
that path.  Every master write appends ``<sha256> <secret id> <real path>`` to
``$XDG_STATE_HOME/vaultpy/written`` (else ``~/.local/state/vaultpy/written``): outside
the repository, where no commit can put a line.  The newest line for an (id, path) is
the one that counts: an older value of the master, put back, is not vouched for.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from vaultpy._internal.fsutil import atomic_write, read_regular

_LEDGER_MAX = 1 << 20           # bytes: ~6,000 writes; then the newer half is kept


def location() -> Path:
    """Where the ledger is: per user, outside any repository."""
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".local", "state")
    return Path(state, "vaultpy", "written")


def record_written(path: Path, data: bytes, ids: Iterable[str]) -> None:
    """Note that vaultpy on this machine wrote ``data`` as the master of secrets ``ids``
    at ``path``: a line "<sha256> <id> <real path>" each, the newest for an (id, path)
    being what renc vouches for (found in review: bare hashes let a value vaultpy wrote
    for one secret, copied over another's master, pass; and every older value of a
    master stay vouched for).  Best effort: a ledger that cannot be written only means
    renc asks for --accept."""
    digest = hashlib.sha256(data).hexdigest()
    where = os.path.realpath(path)
    lines = "".join(f"{digest} {sid} {where}\n" for sid in ids).encode()
    if not lines:
        return
    ledger = location()
    try:
        ledger.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(ledger, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(fd).st_size > _LEDGER_MAX:
                kept = _read_ledger_bytes()[-_LEDGER_MAX // 2:]
                kept = kept[kept.find(b"\n") + 1:]
                atomic_write(ledger, kept + lines, 0o600)
                return
            os.write(fd, lines)
        finally:
            os.close(fd)
    except OSError:
        pass


def _read_ledger_bytes() -> bytes:
    try:
        return read_regular(location(), follow=False)[0]
    except OSError:
        return b""


def written_here() -> dict[tuple[str, str], str]:
    """(secret id, real path) -> the SHA-256 of the last master vaultpy wrote there on
    this machine."""
    out: dict[tuple[str, str], str] = {}
    for line in _read_ledger_bytes().decode("utf-8", "replace").split("\n"):
        digest, _, rest = line.partition(" ")
        sid, _, where = rest.partition(" ")
        if len(digest) == 64 and sid and where:
            out[(sid, where)] = digest
    return out
