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

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vaultpy.activate.context import Context
    from vaultpy.profile import Item

_NUMERIC = re.compile(r"[0-9]+")
# A uid or gid is 32 bits, and (uid_t) -1 means "no change" to chown: a larger value in
# passwd crashed fchown, and 4294967295 left a file root's while activation said done.
_MAX_ID = 2**32 - 2


def _valid(text: str) -> int | None:
    return int(text) if _NUMERIC.fullmatch(text) and int(text) <= _MAX_ID else None


def _read_db(path: Path) -> dict[str, int | str]:
    """name -> id, or the id field as written when it is no valid id (named, if used)."""
    ids: dict[str, int | str] = {}
    try:
        text = fsutil.read_regular(path)[0].decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ids
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "read the host's accounts",
                                      as_is=True)) from None
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) >= 3 and parts[0]:
            number = _valid(parts[2])
            ids.setdefault(parts[0], parts[2] if number is None else number)
    return ids


def owner_ids(ctx: Context, accounts: Accounts, item: Item) -> tuple[int, int]:
    """The uid and gid ``item``'s file gets.  A user's profile names no owner: every
    file is the user's who activates it."""
    if ctx.user:
        return ctx.uid, ctx.gid
    label = f"{'template' if item.is_template else 'secret'} {item.name!r}"
    return accounts.uid(item.out.owner, label), accounts.gid(item.out.group, label)


class Accounts:
    def __init__(self, root: Path) -> None:
        self.passwd_path = root / "etc/passwd"
        self.group_path = root / "etc/group"
        self._users: dict[str, int | str] | None = None
        self._groups: dict[str, int | str] | None = None

    def uid(self, name: str, item: str) -> int:
        if self._users is None:
            self._users = _read_db(self.passwd_path)
        return self._resolve(name, self._users, "user", self.passwd_path, item)

    def gid(self, name: str, item: str) -> int:
        if self._groups is None:
            self._groups = _read_db(self.group_path)
        return self._resolve(name, self._groups, "group", self.group_path, item)

    @staticmethod
    def _resolve(name: str, table: dict[str, int | str], kind: str, db: Path, item: str
                 ) -> int:
        if _NUMERIC.fullmatch(name):
            return int(name)
        found = table.get(name)
        if isinstance(found, int):
            return found
        if found is not None:
            what = "uid" if kind == "user" else "gid"
            raise VaultpyError(Problem(item, f"{kind} {name!r} has no valid {what} in {db} "
                                       f"({found!r}: not a number from 0 to {_MAX_ID})",
                                       "owner" if kind == "user" else "group",
                                       f"fix its line in {db}, or use a numeric id"))
        if name == "root":
            return 0
        raise VaultpyError(Problem(item, f"unknown {kind} {name!r} (not in {db})", "owner"
                                   if kind == "user" else "group",
                                   f"create the {kind} first, or use a numeric id"))
