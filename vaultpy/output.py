"""Where and how a file lands on a host, and the names that say so.

Shared by hosts.toml's model (:mod:`vaultpy.model`) and the activation profile
(:mod:`vaultpy.profile`).  It lives apart from the model so that activation, which
runs on every boot and reads only a profile, does not load hosts.toml's validator
(~10 ms of imports).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vaultpy.templates import ID_PATTERN

ID_RE = re.compile(ID_PATTERN)                      # secret ids, file and host names
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")  # owner / group names
UNIT_RE = re.compile(r"[^\s/]+")                    # systemd units to restart / reload
UID_MAX = 2**32 - 2         # numeric owners: (uid_t)-1 means "leave unchanged" to chown
# Where activation keeps its own state (the profile's settings): never a ``path``.
DEFAULT_DIRS = {"dir": "/run/vaultpy", "early_dir": "/run/vaultpy-early",
                "store": "/run/vaultpy.d"}


def numeric_id_ok(text: str) -> bool:
    """A numeric owner or group chown(2) takes as that id (not -1, not beyond 32 bits)."""
    return text.isascii() and text.isdigit() and int(text) <= UID_MAX


def path_clash(path: str, dirs: dict[str, str]) -> str | None:
    """The setting among ``dirs`` (name -> absolute path) that ``path`` is, lies inside or
    contains, if any: a link there would replace activation's own files or symlinks."""
    for key, d in dirs.items():
        if path == d or path.startswith(d.rstrip("/") + "/") or d.startswith(path + "/"):
            return key
    return None


def path_clash_message(path: str, key: str, d: str) -> tuple[str, str]:
    """The problem and hint for :func:`path_clash`'s answer."""
    return (f"path {path!r} overlaps {d!r}, where activation keeps its {key}",
            f"choose a path outside {d}, or drop it")


@dataclass(frozen=True)
class Output:
    """Where and how a file lands on the host (fields shared by secrets and templates)."""

    owner: str = "root"
    group: str = "root"
    mode: str = "0400"
    path: str | None = None
    restart_units: tuple[str, ...] = ()
    reload_units: tuple[str, ...] = ()
    early: bool = False
