"""Step ``trust_inputs``: what activation reads decides what it does as root.

The profile says which owners, modes and paths the secrets get and which units
restart; the cache files hold the values.  Whoever can write either chooses what root
installs, so both must be what root (or the user activating) put there: owned by them,
writable by nobody else, reached only through directories and symlinks nobody else
can change — OpenSSH's ``StrictModes`` for ``authorized_keys``, applied to every file
activation reads.  A profile streamed in (``--profile /dev/stdin``, a pipe) is whoever
runs activation's own choice, not a path anyone else can reach.
"""

from __future__ import annotations

import os
import stat

from vaultpy.activate.context import Context
from vaultpy.errors import Problem, VaultpyError

# Names of the invoker's own streams: what they lead to is the invoker's to choose.
_STREAMS = ("/dev/stdin", "/dev/fd/", "/proc/self/fd/")


def trust_inputs(ctx: Context) -> None:
    """Refuse a profile or cache file that anyone but root or the user activating could
    have written (the file, or an entry on the way to it)."""
    walk = _Walk(ctx)
    problems: list[Problem] = []
    inputs = [(os.fspath(i.file), "file") for i in ctx.profile.secrets if i.file is not None]
    if ctx.profile.signed is not None:
        inputs += [(os.fspath(ctx.profile.signed.sums), "signed.sums"),
                   (os.fspath(ctx.profile.signed.signature), "signed.signature")]
    given = os.fspath(ctx.opts.profile)
    try:
        if stat.S_ISREG(os.stat(given).st_mode) and not given.startswith(_STREAMS):
            inputs.insert(0, (given, ""))
    except OSError:
        pass                            # (read already: a FIFO, gone since is the read's)
    for path, field in inputs:
        found = walk.problem(path, field)
        if found is not None and found not in problems:
            problems.append(found)
    if problems:
        raise VaultpyError(problems[:5])


class _Walk:
    """Paths walked as the kernel walks them: component by component from ``/``, each
    symlink followed where it stands, ``..`` taken after it (found in review: a
    ``../`` tidied on paper, as ``abspath`` does, checked another file than the one
    read).  Every entry passed through is checked once; a folder is walked once (a
    profile names hundreds of cache files in a few folders)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.entries: dict[str, Problem | None] = {}
        self.folders: dict[str, tuple[str, Problem | None]] = {}

    def problem(self, path: str, field: str) -> Problem | None:
        folder, name = os.path.split(os.path.join(os.getcwd(), path))
        if folder not in self.folders:
            self.folders[folder] = self._resolve(folder, field, below=path)
        real_folder, wrong = self.folders[folder]
        if wrong is not None:
            return wrong
        real = os.path.join(real_folder, name)
        try:
            st = os.lstat(real)
        except OSError:
            return None                 # the step that reads it says why it cannot
        if stat.S_ISLNK(st.st_mode):    # rare: walk the link too
            real, wrong = self._resolve(real, field, below=path)
            if wrong is not None:
                return wrong
            try:
                st = os.lstat(real)
            except OSError:
                return None
        return _owned(self.ctx, st, real, field, directory=False)

    def _resolve(self, path: str, field: str, below: str) -> tuple[str, Problem | None]:
        """Where ``path`` leads (no symlink left in it), and the first entry on the way
        someone else could change."""
        todo = [p for p in reversed(path.split("/")) if p]
        here, hops = "/", 0
        wrong = self._check("/", field, below)
        while todo and wrong is None:
            part = todo.pop()
            if part == ".":
                continue
            if part == "..":            # here holds no symlink: its parent is lexical
                here = os.path.dirname(here)
                continue
            entry = os.path.join(here, part)
            try:
                st = os.lstat(entry)
            except OSError:
                return os.path.join(entry, *reversed(todo)), None
            wrong = self._check(entry, field, below, st)
            if stat.S_ISLNK(st.st_mode):
                hops += 1
                if hops > 40:           # the kernel's ELOOP: the read fails on its own
                    return entry, None
                target = os.readlink(entry)
                if target.startswith("/"):
                    here = "/"
                todo.extend(p for p in reversed(target.split("/")) if p)
                continue
            here = entry
        return here, wrong

    def _check(self, entry: str, field: str, below: str,
               st: os.stat_result | None = None) -> Problem | None:
        if entry not in self.entries:
            try:
                st = st or os.lstat(entry)
            except OSError:
                self.entries[entry] = None
            else:
                self.entries[entry] = _owned(self.ctx, st, entry, field, directory=True,
                                             below=below)
        return self.entries[entry]


def _owned(ctx: Context, st: os.stat_result, path: str, field: str, *, directory: bool,
           below: str = "") -> Problem | None:
    euid = os.geteuid()
    who = "root" if euid == 0 else "root or you"
    what = f"{path} (on the way to {below})" if directory else path
    if st.st_uid not in (0, euid):
        return Problem(what, f"owned by uid {st.st_uid}, not {who}: whoever owns it "
                       "chooses what activation installs", field,
                       f"chown {'root' if euid == 0 else euid} {path}, or keep the "
                       "profile and cache where only root can write")
    # A symlink's own mode means nothing; a directory writable by others is safe only
    # if sticky (as /tmp, /nix/store: nobody else can rename or remove root's entries).
    if stat.S_ISLNK(st.st_mode) or (directory and stat.S_ISDIR(st.st_mode)
                                    and st.st_mode & stat.S_ISVTX):
        return None
    if st.st_mode & stat.S_IWOTH:
        whom = "every user"
    elif st.st_mode & stat.S_IWGRP and not _group_alone(ctx, st.st_gid):
        whom = f"group {st.st_gid}"
    else:
        return None
    return Problem(what, f"writable by {whom}: whoever can write it chooses what "
                   "activation installs", field, f"chmod go-w {path}")


def _group_alone(ctx: Context, gid: int) -> bool:
    """A group-writable entry is the activating user's alone if the group is root's,
    or (a user's profile) their own group with no one else in it (found in review: a
    shared primary group, NixOS's users, let every user write there) — the links'
    rule (:func:`links._refuse_theirs`)."""
    if gid == 0:
        return True
    if not ctx.user or gid != ctx.gid:
        return False
    from vaultpy.activate import users

    return users.other_member(ctx, gid) is None
