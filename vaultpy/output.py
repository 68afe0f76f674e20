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
