"""Owner and group names → numeric ids, from the *target* system's files.

With ``--root`` the host's /etc/passwd and /etc/group are read under the root,
not the running system's, so a test (or an installer) resolves names exactly
as the host will.  An unknown name is an error, never a silent root.
"""

from __future__ import annotations

import re
from pathlib import Path

from vaultpy._internal import fsutil
from vaultpy.errors import Problem, VaultpyError, os_problem

_NUMERIC = re.compile(r"[0-9]+")


def _read_db(path: Path) -> dict[str, int]:
    ids: dict[str, int] = {}
    try:
        text = fsutil.read_regular(path)[0].decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ids
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "read the host's accounts",
                                      as_is=True)) from None
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0] and _NUMERIC.fullmatch(parts[2]):
            ids.setdefault(parts[0], int(parts[2]))
    return ids


class Accounts:
    def __init__(self, root: Path) -> None:
        self.passwd_path = root / "etc/passwd"
        self.group_path = root / "etc/group"
        self._users: dict[str, int] | None = None
        self._groups: dict[str, int] | None = None

    def uid(self, name: str, item: str) -> int:
        if self._users is None:
            self._users = _read_db(self.passwd_path)
        return self._resolve(name, self._users, "user", self.passwd_path, item)

    def gid(self, name: str, item: str) -> int:
        if self._groups is None:
            self._groups = _read_db(self.group_path)
        return self._resolve(name, self._groups, "group", self.group_path, item)

    @staticmethod
    def _resolve(name: str, table: dict[str, int], kind: str, db: Path, item: str) -> int:
        if _NUMERIC.fullmatch(name):
            return int(name)
        if name in table:
            return table[name]
        if name == "root":
            return 0
        raise VaultpyError(Problem(item, f"unknown {kind} {name!r} (not in {db})", "owner"
                                   if kind == "user" else "group",
                                   f"create the {kind} first, or use a numeric id"))
