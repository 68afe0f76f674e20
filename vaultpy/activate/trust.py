"""Step ``trust_inputs``: what activation reads decides what it does as root.

The profile says which owners, modes and paths the secrets get and which units
restart; the cache files hold the values.  Whoever can write either chooses what root
installs, so both must be what root (or the user activating) put there: owned by them,
writable by nobody else, in directories nobody else can change — OpenSSH's
``StrictModes`` for ``authorized_keys``, applied to every file activation reads.  A
profile streamed in (``--profile /dev/stdin``, a pipe) is whoever runs activation's
own, and is not a path anyone else can reach.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from vaultpy.activate.context import Context
from vaultpy.errors import Problem, VaultpyError


def trust_inputs(ctx: Context) -> None:
    """Refuse a profile or cache file that anyone but root or the user activating could
    have written (the file, or a directory above it)."""
    seen: dict[str, Problem | None] = {}       # a directory: what is wrong with it
    folders: dict[str, Problem | None] = {}    # a folder: what is wrong above it
    problems: list[Problem] = []
    inputs = [(os.fspath(i.file), "file") for i in ctx.profile.secrets if i.file is not None]
    try:
        if stat.S_ISREG(os.stat(ctx.opts.profile).st_mode):
            inputs.insert(0, (os.fspath(ctx.opts.profile), ""))
    except OSError:
        pass                            # (read already: a FIFO, gone since is the read's)
    for path, field in inputs:
        found = _problem(path, field, seen, folders)
        if found is not None and found not in problems:
            problems.append(found)
    if problems:
        raise VaultpyError(problems[:5])


def _problem(path: str, field: str, seen: dict[str, Problem | None],
             folders: dict[str, Problem | None]) -> Problem | None:
    """What makes ``path`` untrusted: itself, or a directory above it as given or as
    resolved (a symlink followed leads through other directories).  Each folder is
    walked once: a profile names hundreds of cache files in a few folders."""
    absolute = os.path.abspath(path)   # (shown without the profile's "../")
    real_folder = None
    try:
        st = os.lstat(absolute)
        if stat.S_ISLNK(st.st_mode):    # the file it leads to, and where that lies
            st = os.stat(absolute)
            real_folder = os.path.dirname(os.path.realpath(absolute))
    except OSError:
        return None                     # the step that reads it says why it cannot
    mine = _owned(st, absolute, field, directory=False)
    if mine is not None:
        return mine
    for folder in (os.path.dirname(absolute), real_folder):
        if folder is None:
            continue
        if folder not in folders:
            folders[folder] = _above(folder, field, absolute, seen)
        if folders[folder] is not None:
            return folders[folder]
    return None


def _above(folder: str, field: str, below: str, seen: dict[str, Problem | None]
           ) -> Problem | None:
    """The first directory of ``folder``'s chain, as given and as resolved, that
    someone else could change."""
    for chain in dict.fromkeys((folder, os.path.realpath(folder))):
        for above in _upwards(chain):
            if above not in seen:
                try:
                    seen[above] = _owned(os.lstat(above), above, field, directory=True,
                                         below=below)
                except OSError:
                    seen[above] = None
            if seen[above] is not None:
                return seen[above]
    return None


def _upwards(folder: str) -> list[str]:
    parts = Path(folder).parts
    return [os.path.join(*parts[: i + 1]) for i in range(len(parts))]


def _owned(st: os.stat_result, path: str, field: str, *, directory: bool,
           below: str = "") -> Problem | None:
    euid = os.geteuid()
    who = "root" if euid == 0 else "root or you"
    what = f"{path} (a directory above {below})" if directory else path
    if st.st_uid not in (0, euid):
        return Problem(what, f"owned by uid {st.st_uid}, not {who}: whoever owns it "
                       "chooses what activation installs", field,
                       f"chown {'root' if euid == 0 else euid} {path}, or keep the "
                       "profile and cache where only root can write")
    # A symlink's own mode means nothing; a directory writable by others is safe only
    # if sticky (as /tmp, /nix/store: nobody else can rename or remove root's entries).
    if stat.S_ISLNK(st.st_mode) or (directory and st.st_mode & stat.S_ISVTX):
        return None
    if st.st_mode & stat.S_IWOTH:
        whom = "every user"
    elif st.st_mode & stat.S_IWGRP and st.st_gid not in (0, os.getegid()):
        whom = f"group {st.st_gid}"
    else:
        return None
    return Problem(what, f"writable by {whom}: whoever can write it chooses what "
                   "activation installs", field, f"chmod go-w {path}")
