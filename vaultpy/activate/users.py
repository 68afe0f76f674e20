"""Owner and group names → numeric ids, and who else is in a group, from the *target*
system's account databases.

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


def _records(path: Path) -> list[list[str]]:
    """The colon-separated fields of each line of an account file (none if missing)."""
    try:
        text = fsutil.read_regular(path)[0].decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "read the host's accounts",
                                      as_is=True)) from None
    return [line.split(":") for line in text.splitlines()]


def _read_db(path: Path) -> dict[str, int | str]:
    """name -> id, or the id field as written when it is no valid id (named, if used)."""
    ids: dict[str, int | str] = {}
    for parts in _records(path):
        if len(parts) >= 3 and parts[0]:
            number = _valid(parts[2])
            ids.setdefault(parts[0], parts[2] if number is None else number)
    return ids


_MEMBERS: dict[tuple[int, int], str | None] = {}


def other_member(ctx: Context, gid: int) -> str | None:
    """Why group ``gid`` may hold someone other than the user and root ("which bob is
    in too"), as the account databases say (NSS; under ``--root``, the root's
    /etc/group and /etc/passwd); None when it holds no one else.  A group the database
    does not know is not vouched for."""
    uid = ctx.uid
    if (uid, gid) not in _MEMBERS:
        root = ctx.opts.root
        found = _accounts_nss(gid) if root == Path("/") else _accounts_files(root, gid)
        if found is None:
            _MEMBERS[uid, gid] = "which the group database does not know"
            return _MEMBERS[uid, gid]
        listed, users = found          # (group members; (name, uid, primary gid) of all)
        ours = {name for name, u, _g in users if u in (uid, 0)}
        others = [m for m in listed if m not in ours]
        others += [name for name, u, g in users if g == gid and u not in (uid, 0)]
        _MEMBERS[uid, gid] = f"which {others[0]} is in too" if others else None
    return _MEMBERS[uid, gid]


_Accounts = tuple[list[str], list[tuple[str, int, int]]]


def _accounts_nss(gid: int) -> _Accounts | None:
    import grp
    import pwd

    try:
        listed = grp.getgrgid(gid).gr_mem
    except KeyError:
        return None
    return listed, [(p.pw_name, p.pw_uid, p.pw_gid) for p in pwd.getpwall()]


def _accounts_files(root: Path, gid: int) -> _Accounts | None:
    listed = next(([m for m in f[3].split(",") if m] for f in _records(root / "etc/group")
                   if len(f) >= 4 and f[2] == str(gid)), None)
    if listed is None:
        return None
    users = [(f[0], int(f[2]), int(f[3])) for f in _records(root / "etc/passwd")
             if len(f) >= 4 and f[2].isdigit() and f[3].isdigit()]
    return listed, users


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
