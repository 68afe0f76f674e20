"""Cache file names (DESIGN §3), apart from the rest of :mod:`vaultpy.cache`: the
incremental renc (:mod:`vaultpy._internal.delta`) names files without loading the
plan and its dataclasses.

    h   = sha256_hex( sha256_hex(master bytes) + "\\n" + "\\n".join(recipients) )
    out = <cache_dir>/<host>/<id>.<h[:32]>.age
"""

from __future__ import annotations

import hashlib
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

NAME_RE = re.compile(r"(?P<id>.+)\.(?P<hash>[0-9a-f]{32})\.age")


def cache_hash(master_sha256: str, recipients: Sequence[str]) -> str:
    """The full 64-hex-digit hash of DESIGN §3."""
    return _hash(master_sha256.encode(), recipients_suffix(recipients))


def _hash(master_sha256: bytes, suffix: bytes) -> str:
    """:func:`cache_hash` from its parts (:func:`plan` makes each part once)."""
    return hashlib.sha256(master_sha256 + suffix).hexdigest()


def recipients_suffix(recipients: Sequence[str]) -> bytes:
    """The part of :func:`cache_hash`'s input after the master's hash: the same for all
    of a host's files, so :func:`plan` computes it once per host."""
    return ("\n" + "\n".join(recipients)).encode("utf-8")


def cache_name(secret_id: str, master_sha256: str, recipients: Sequence[str]) -> str:
    return _name(secret_id, master_sha256.encode(), recipients_suffix(recipients))


def _name(secret_id: str, master_sha256: bytes, suffix: bytes) -> str:
    """:func:`cache_name` from its parts."""
    return f"{secret_id}.{_hash(master_sha256, suffix)[:32]}.age"
