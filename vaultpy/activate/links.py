"""Steps ``check_paths``, ``link_paths`` and ``retire_early``: each extra ``path``
becomes a symlink to ``<dir>/<name>``; the early items' live link goes with the last
of them.

The link points through the live symlink, so it follows every switch without
being rewritten.  It is placed by temp name + renameat2(2) inside a directory
opened component by component with O_NOFOLLOW: a symlink planted by another
user, at the path itself or anywhere above it, is never followed, and what the
link replaces is checked as the rename takes it out, not before (:func:`_put`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import posixpath
import stat
from collections.abc import Callable, Collection
from pathlib import Path, PurePosixPath

from vaultpy._internal import fsutil, sigint
from vaultpy.activate import linkrecord, users
from vaultpy.activate.context import Context, read_link_generation, read_manifest
from vaultpy.errors import Problem, VaultpyError, os_problem
from vaultpy.output import path_clash


def _refuse(ctx: Context, path: str, why: str, hint: str = "") -> VaultpyError:
    owners = "yours (or root's)" if ctx.user else "root-owned"
    return VaultpyError(Problem(path, why, "path", hint or
                                f"remove it, or make the directories above it {owners} "
                                "and not writable by others"))


# A group-writable directory: the fix is the directory's own mode.
GROUP_HINT = ("make that directory writable by its owner alone (chmod g-w), or choose a "
               "place elsewhere")


def _check_replaceable(path: str, st: os.stat_result, fd: int) -> None:
    """What the link may replace at ``path`` (its parent open as ``fd``): a symlink,
    which holds no data, or a regular file in RAM (tmpfs, ramfs: runtime state such as
    agenix's ``/run/agenix/<name>``, gone at the next boot anyway).  A file on disk (a
    config written by hand, a copy of an old secret) is nobody's to delete without a
    word, and a directory or a device cannot be replaced."""
    if stat.S_ISLNK(st.st_mode):
        return
    if stat.S_ISREG(st.st_mode) and _in_ram(fd):
        return
    what = ("a directory" if stat.S_ISDIR(st.st_mode) else
            "a regular file on disk" if stat.S_ISREG(st.st_mode) else "a special file")
    raise VaultpyError(Problem(path, f"is {what}: vaultpy replaces only a symlink, or a "
                               "file in RAM (/run), with its link", "path",
                               "move it away (or set another path), then activate again"))


def _in_ram(fd: int) -> bool:
    """The directory open as ``fd`` is on tmpfs or ramfs."""
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return False
    return fsutil.mount_fstype(Path(where)) in fsutil.RAM_FILESYSTEMS


def open_parent(ctx: Context, path: str, create: bool) -> int:
    """A descriptor of ``path``'s parent directory, walked from --root without
    following any symlink or directory that a non-root user controls (a user's
    profile: that anyone but root and the user controls)."""
    parts = PurePosixPath(path).parent.parts[1:]
    fd = os.open(ctx.opts.root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i, part in enumerate(parts):
            shown = "/" + "/".join(parts[: i + 1])
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                if not create:
                    raise
                fsutil.mkdir_exact(part, 0o755, dir_fd=fd)
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            if not ctx.trusted(st.st_uid):
                raise _refuse(ctx, shown, "is owned by another user; refusing to write "
                              "below it")
            if stat.S_ISLNK(st.st_mode):     # root's own symlink (e.g. /etc -> …): follow
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                try:
                    _refuse_own_place(ctx, path, _real_parent(ctx, nxt, shown), below=True)
                    _refuse_theirs_above(ctx, nxt, shown)
                except BaseException:
                    os.close(nxt)
                    raise
            elif stat.S_ISDIR(st.st_mode):
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            else:
                raise _refuse(ctx, shown, "is not a directory")
            os.close(fd)
            fd = nxt
            _refuse_theirs(ctx, os.fstat(fd), shown, followed=stat.S_ISLNK(st.st_mode))
        return fd
    except BaseException:
        os.close(fd)
        raise


def _refuse_theirs_above(ctx: Context, fd: int, shown: str) -> None:
    """A trusted symlink was followed to the directory ``fd``: the kernel followed its
    whole target, so every directory above where it leads must pass the same rule (a
    user's link into a directory another user controls would let them swap what lies
    below).  Its real path holds no symlink: one there now (a race) is refused too."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        raise _refuse(ctx, shown, "leads to a directory whose place cannot be read "
                      "(/proc)") from None
    parts = real.split("/")[1:-1]
    for i in range(len(parts)):
        above = "/" + "/".join(parts[: i + 1])
        st = os.lstat(above)
        if stat.S_ISLNK(st.st_mode):
            raise _refuse(ctx, shown, f"leads through {above}, which changed meanwhile")
        _refuse_theirs(ctx, st, f"{shown} (through {above})", followed=True)


def _refuse_theirs(ctx: Context, st: os.stat_result, shown: str, followed: bool) -> None:
    """A directory the walk entered (``followed``: through root's symlink) must be one
    no other user can change: root's, and not writable by everyone (unless sticky, as
    /tmp: then nobody else can rename or remove root's entries).  Else another user
    could replace the link with one of theirs, and the service would read their file."""
    what = "leads to a directory" if followed else "is"
    if not ctx.trusted(st.st_uid):
        raise _refuse(ctx, shown, f"{what} owned by another user; refusing to write below it")
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise _refuse(ctx, shown, f"{what} writable by every user; refusing to write below "
                      "it")
    # A user's: a group-writable directory is theirs alone only in their own group (a
    # user private group) or root's, and only while no one else is in that group (as
    # OpenSSH's Debian patch checks ~/.ssh): another member could swap its entries.
    if ctx.user and st.st_mode & stat.S_IWGRP and not st.st_mode & stat.S_ISVTX:
        if st.st_gid not in (0, ctx.gid):
            raise _refuse(ctx, shown, f"{what} writable by group {st.st_gid}, not yours; "
                          "refusing to write below it", GROUP_HINT)
        other = users.other_member(ctx, st.st_gid)
        if other is not None:
            mine = "your group" if st.st_gid == ctx.gid else "root's group"
            raise _refuse(ctx, shown, f"{what} writable by {mine} {st.st_gid}, {other}; "
                          "refusing to write below it", GROUP_HINT)


def _real_parent(ctx: Context, fd: int, nominal: str) -> str:
    """The host path of the directory ``fd`` (``nominal`` with root's own symlinks
    above it resolved): a relative link target counts from there."""
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return nominal
    return _host(ctx, real, nominal)


def _host(ctx: Context, real: str, nominal: str) -> str:
    """``real`` (a path on this machine) as a path on the host under --root."""
    root = os.path.realpath(ctx.opts.root)
    if real == root:
        return "/"
    if root != "/" and not real.startswith(root + "/"):
        return nominal
    return real[len(root):] if root != "/" else real


def _refuse_own_place(ctx: Context, path: str, real: str, below: bool = False) -> None:
    """Refuse ``path`` when it really is (``real``: root's symlinks above it resolved)
    one of activation's own places, or lies in or above one; ``below``: ``real`` is a
    directory the walk reached, refused only inside one.  The profile loader refuses
    ``/run/vaultpy`` as written; ``/var/run/vaultpy`` (``/var/run`` is root's symlink
    to ``/run``) is the same place, and a link there would replace the live symlink,
    a file of the live generation or the lock."""
    s = ctx.profile.settings
    places = {}
    for key, place in (("dir", s.dir), ("early_dir", s.early_dir), ("store", s.store)):
        head, base = posixpath.split(place)
        places[key] = posixpath.join(
            _host(ctx, os.path.realpath(ctx.host_path(head)), head), base)
    if below:
        clash = next(((k, d) for k, d in places.items()
                      if real == d or real.startswith(d + "/")), None)
    else:
        clash = path_clash(real, places)
    if clash is not None:
        what, where = clash
        raise VaultpyError(Problem(path, f"leads to {real!r}, which overlaps {where!r}, "
                                   f"where activation keeps its {what}", "path",
                                   "choose a path outside it, or drop it"))


def _real_path(ctx: Context, fd: int, path: str) -> str:
    """``path`` with root's symlinks above it resolved (its parent open as ``fd``)."""
    pure = PurePosixPath(path)
    return posixpath.join(_real_parent(ctx, fd, str(pure.parent)), pure.name)


def _target(ctx: Context, fd: int, path: str, name: str, early: bool | None = None) -> str:
    """What the link at ``path`` (its parent open as ``fd``) holds: ``name`` in this
    run's live directory (``early``: in early_dir, or not), relative to where the link
    really is."""
    early = ctx.opts.early if early is None else early
    dir_path = ctx.profile.settings.early_dir if early else ctx.profile.settings.dir
    return _target_at(ctx, fd, path, dir_path, name)


def _target_at(ctx: Context, fd: int, path: str, dir_path: str, name: str) -> str:
    """A link at ``path`` (its parent open as ``fd``) to ``name`` in the live directory
    ``dir_path``, relative to where the link really is."""
    parent = _real_parent(ctx, fd, str(PurePosixPath(path).parent))
    return os.path.relpath(PurePosixPath(dir_path) / name, parent)


def _place(ctx: Context, path: str, name: str) -> None:
    base = PurePosixPath(path).name
    fd = open_parent(ctx, path, create=True)
    try:
        _refuse_own_place(ctx, path, _real_path(ctx, fd, path))
        target = _target(ctx, fd, path, name)
        with contextlib.suppress(FileNotFoundError):     # nothing there yet
            _check_replaceable(path, os.stat(base, dir_fd=fd, follow_symlinks=False), fd)
        prefix = fsutil.tmp_prefix(base)
        for leftover in os.listdir(fd):             # from a killed run: ours only
            if leftover.startswith(prefix):
                lst = os.stat(leftover, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(lst.st_mode) and lst.st_uid == ctx.uid:
                    os.unlink(leftover, dir_fd=fd)
        tmp = fsutil.tmp_basename(base)
        os.symlink(target, tmp, dir_fd=fd)
        try:
            _put(path, fd, tmp, base)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=fd)
            raise
        os.fsync(fd)
    finally:
        os.close(fd)


def _put(path: str, fd: int, tmp: str, base: str) -> None:
    """Rename the new link ``tmp`` to ``base`` (in the directory open as ``fd``),
    replacing only what :func:`_check_replaceable` allows: what is there as the rename
    happens, not as :func:`_place` looked.  In a sticky directory every user may write
    to (/tmp), another user's file can appear in between; so the link goes in where
    nothing is (RENAME_NOREPLACE), or is swapped with what is there (RENAME_EXCHANGE),
    which is then looked at: removed if replaceable, else swapped back, kept, and
    named.  At no moment is ``base`` absent.  Where renameat2 cannot be asked, a plain
    rename after the check (the window stays)."""
    for _try in range(_PUT_TRIES):
        try:
            if not fsutil.rename_in(fd, tmp, base, exchange=False):
                break
            return
        except FileExistsError:
            pass
        # Held whole: interrupted between the swap and the swap back, their file would
        # be left at the temp name, which the caller then removes.
        with sigint.held():
            try:
                if not fsutil.rename_in(fd, tmp, base, exchange=True):
                    break
            except FileNotFoundError:   # removed meanwhile: place it where nothing is
                continue
            old = os.stat(tmp, dir_fd=fd, follow_symlinks=False)     # now at the temp name
            try:
                _check_replaceable(path, old, fd)
            except VaultpyError:
                fsutil.rename_in(fd, tmp, base, exchange=True)      # theirs goes back
                raise
            os.unlink(tmp, dir_fd=fd)
            return
    else:
        raise VaultpyError(Problem(path, "kept appearing and disappearing while its link "
                                   "was placed", "path", "activate again"))
    os.rename(tmp, base, src_dir_fd=fd, dst_dir_fd=fd)   # replaces, never follows


_PUT_TRIES = 3


LINKED = ".vaultpy-linked"   # in a generation: the old links its run owed are removed


def stale_links(ctx: Context) -> dict[str, str]:
    """The links this run owes removing (path -> the item name they lead to): the
    previous generation's extra paths no item wants now, and, when the run that built
    it did not get to remove its own (killed after its switch, or a removal failed:
    no ``LINKED`` in it), those it owed too.  Recorded in the manifest before the
    switch, so that a run killed after it leaves them to the next one."""
    if ctx.stale is None:
        wanted = _wanted(ctx)
        ctx.stale = {} if ctx.previous is None else {
            path: name for path, name in _placed_by(ctx.previous).items()
            if path not in wanted}
    return ctx.stale


def _placed_by(gen: Path) -> dict[str, str]:
    """The links generation ``gen`` placed, or owed removing (path -> item name)."""
    data = read_manifest(gen)
    if data is None:
        return {}
    try:
        old = {str(i["path"]): str(i["name"]) for i in data["items"] if i.get("path")}
        if not (gen / LINKED).exists():
            for path, name in data.get("unlink", []):
                old.setdefault(str(path), str(name))
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}
    return old


def _unlink_stale(ctx: Context, path: str, name: str, early: bool | None = None) -> None:
    """Remove a link a previous generation placed, only if it is still our symlink:
    root's, and to ``name`` through this run's live directory (``early``: early_dir,
    or not).  A link to anything else is not this run's to remove: the other run's (an
    item moved between the early and the normal run, which the other run has just
    linked), or one root put there since."""
    early = ctx.opts.early if early is None else early
    settings = ctx.profile.settings
    _unlink_recorded(ctx, path, settings.early_dir if early else settings.dir, name)


def _unlink_recorded(ctx: Context, path: str, dir_path: str, name: str) -> None:
    """Remove a link the record holds, only if it is still root's symlink to ``name``
    in the live directory ``dir_path``, as it was placed."""
    try:
        fd = open_parent(ctx, path, create=False)
    except (FileNotFoundError, VaultpyError):
        return
    try:
        base = PurePosixPath(path).name
        st = os.stat(base, dir_fd=fd, follow_symlinks=False)
        if (stat.S_ISLNK(st.st_mode) and st.st_uid == ctx.uid
                and os.readlink(base, dir_fd=fd) == _target_at(ctx, fd, path, dir_path,
                                                               name)):
            os.unlink(base, dir_fd=fd)
            os.fsync(fd)
            ctx.log("link_paths", f"removed {path} (no item wants it)")
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
    finally:
        os.close(fd)


def _record(ctx: Context) -> dict[str, linkrecord.Links] | None:
    """The on-disk record, read once a run; the early run has none (its own); None
    when it cannot be read now (then neither used nor written over)."""
    if ctx.opts.early:
        return {}
    if not ctx.link_record_read:
        ctx.link_record = linkrecord.load(ctx)
        ctx.link_record_read = True
    return ctx.link_record


def _wanted(ctx: Context) -> dict[str, str]:
    """This run's extra paths: path -> the item name it links to."""
    return {i.out.path: i.name for i in ctx.items() if i.out.path}


def _forgotten(ctx: Context, record: dict[str, linkrecord.Links]) -> linkrecord.Links:
    """The links the record's normal part holds that no item wants and no previous
    generation names (it was lost with the ramfs, at a reboot)."""
    wanted = _wanted(ctx)
    stale = stale_links(ctx)
    return {p: v for p, v in record.get("normal", {}).items()
            if p not in wanted and p not in stale}


def _sync_early(ctx: Context, old: linkrecord.Links) -> linkrecord.Links:
    """(The normal run) the early part of the record: the profile's early items' links;
    each old one no early item wants any more (dropped across a reboot: no early
    generation names it) is removed first, while still root's link through
    ``early_dir``.  One that cannot be removed stays in the record."""
    early_dir = ctx.profile.settings.early_dir
    want = {i.out.path: (early_dir, i.name)
            for i in ctx.profile.installed(early=True) if i.out.path}
    left = dict(want)
    for path, (dir_path, name) in sorted(old.items()):
        if want.get(path) == (dir_path, name):
            continue
        if (not _attempt(ctx, path, "remove the old link", _unlink_recorded, dir_path, name)
                and path not in left):
            left[path] = (dir_path, name)   # the next run tries again
    return left


def _below_any(path: str, above: Collection[str]) -> bool:
    """Whether ``path`` is strictly below one of ``above``."""
    p = PurePosixPath(path)
    return any(p != PurePosixPath(a) and p.is_relative_to(a) for a in above)


def check_paths(ctx: Context) -> None:
    """Before the switch, writing nothing: every extra path can be linked (no directory
    of another user above it, no directory in its place), so that a refused path
    changes nothing live; every refused path is named, not only the first.
    :func:`link_paths` checks again as it places each link; a file there that is not
    for it to replace (:func:`_check_replaceable`) is reported then, and stops no
    other secret going live."""
    problems: list[Problem] = []
    stale = {*stale_links(ctx), *_forgotten(ctx, _record(ctx) or {})}
    for path in sorted(_wanted(ctx)):
        if _below_any(path, stale):
            continue        # below a link of ours no item wants: link_paths removes it first
        try:
            fd = open_parent(ctx, path, create=False)
        except FileNotFoundError:
            continue                    # link_paths creates the rest, root-owned
        except VaultpyError as exc:
            problems += exc.problems
            continue
        except OSError as exc:          # ENOTDIR: a part of the path is a file
            problems.append(Problem(path, "cannot be linked: a part of it is not a "
                                    f"directory ({exc.strerror})", "", "remove what is in "
                                    "the way, or give the item another path"))
            continue
        try:
            _refuse_own_place(ctx, path, _real_path(ctx, fd, path))
            st = os.stat(PurePosixPath(path).name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):        # (a file: for link_paths to keep and name)
                _check_replaceable(path, st, fd)
        except FileNotFoundError:
            pass
        except VaultpyError as exc:
            problems += exc.problems
        finally:
            os.close(fd)
    if problems:
        raise VaultpyError(problems)


def owed_removals(ctx: Context) -> dict[str, str]:
    """The links a run of this profile would remove (path -> the item name they lead
    to): the previous generation's, and the record's (after a reboot or a logout, the
    only ones that say what an earlier run placed), that no item wants."""
    wanted = _wanted(ctx)
    owed = {p: n for p, (_d, n) in _forgotten(ctx, _record(ctx) or {}).items()}
    owed.update(stale_links(ctx))
    return {p: n for p, n in owed.items() if p not in wanted}


def link_paths(ctx: Context) -> None:
    """After the switch (links of items that are new resolve only from then on).  A
    path that cannot be linked or removed does not stop the run: its problem is kept
    in ``ctx.problems``, raised once the units have heard of the new generation."""
    wanted = _wanted(ctx)
    if ctx.opts.dry_run:
        for path in sorted(wanted):
            ctx.log("link_paths", f"would link {path}")
        for path in sorted(owed_removals(ctx)):
            ctx.log("link_paths", f"would remove {path} (no item wants it)")
        return
    # The on-disk record (linkrecord): the normal run's alone.  Every wanted path is
    # written to it before it is placed.
    loaded = _record(ctx)
    record = loaded or {}
    live = ctx.profile.settings.dir
    forgotten = _forgotten(ctx, record)
    ahead = {**record.get("normal", {}), **{p: (live, n) for p, n in wanted.items()}}
    writable = (not ctx.opts.early and loaded is not None
                and linkrecord.write(ctx, {**record, "normal": ahead}, record))
    gone: set[str] = set()          # old links removed (or found gone)

    def remove(path: str, fn: Callable[..., None], *args: object) -> None:
        if _attempt(ctx, path, "remove the old link", fn, *args):
            gone.add(path)

    # An old link in the way of a new path (an item moved from /x to /x/y): first.
    for path, old_name in sorted(stale_links(ctx).items()):
        if any(_below_any(w, {path}) for w in wanted):
            remove(path, _unlink_stale, old_name)
    for path, (dir_path, name) in sorted(forgotten.items()):
        if any(_below_any(w, {path}) for w in wanted):
            remove(path, _unlink_recorded, dir_path, name)
    for path, name in sorted(wanted.items()):
        _attempt(ctx, path, "link", _place, name)
    failed = len(ctx.problems)
    for path, old_name in sorted(stale_links(ctx).items()):
        if path not in gone:
            remove(path, _unlink_stale, old_name)
    for path, (dir_path, name) in sorted(forgotten.items()):
        if path not in gone:
            remove(path, _unlink_recorded, dir_path, name)
    if len(ctx.problems) == failed:         # else the next run tries them again
        _attempt(ctx, str(ctx.generation), "record the links", _mark_linked)
    if writable:
        after = {"normal": {p: v for p, v in ahead.items() if p in wanted or p not in gone},
                 "early": _sync_early(ctx, record.get("early", {}))}
        linkrecord.write(ctx, after, {**record, "normal": ahead})
    if wanted:
        ctx.log("link_paths", f"{len(wanted)} path(s)")


def retire_early(ctx: Context) -> None:
    """When the profile has no early item any more (the last one was dropped, or made
    normal), the early generation goes out of service now, not at the next boot
    (nothing runs ``--early`` again to replace it): its links that still lead through
    ``early_dir`` are removed, then ``early_dir`` itself, and :func:`prune` treats the
    generation as any old one (sealed, then removed).  A run killed part way leaves the
    rest to the next."""
    gen = retiring(ctx)
    if gen is None:
        return
    link = ctx.host_path(ctx.profile.settings.early_dir)
    if ctx.opts.dry_run:
        ctx.log("retire_early", f"would remove {link} (no early item is left)")
        return
    failed = len(ctx.problems)
    for path, name in sorted(_placed_by(gen).items()):
        _attempt(ctx, path, "remove the old link", _unlink_stale, name, True)
    if len(ctx.problems) != failed:
        return                          # the next run tries again, the link still there
    _attempt(ctx, str(link), "remove the early items' live link", _unlink_live)
    if len(ctx.problems) == failed:
        ctx.retired = True
        ctx.log("retire_early", f"removed {link}: no early item is left")


def retiring(ctx: Context) -> Path | None:
    """The early generation :func:`retire_early` takes out of service, or None: the
    profile has no early item, and ``early_dir`` is still our live link (root's
    symlink to a generation in the store; anything else is never touched).  Its items
    count as removed (:mod:`notify`): their units hear of it like any other's."""
    if ctx.profile.installed(early=True):
        return None
    link = ctx.host_path(ctx.profile.settings.early_dir)
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        return None
    gen = (read_link_generation(link) if stat.S_ISLNK(st.st_mode) and st.st_uid == ctx.uid
           else None)
    if gen is None or gen.resolve().parent != ctx.store.resolve():
        return None
    return gen


def _unlink_live(_ctx: Context, path: str) -> None:
    os.unlink(path)
    fsutil.fsync_path(os.path.dirname(path), directory=True)


def _mark_linked(ctx: Context, path: str) -> None:
    assert ctx.generation_fd is not None
    os.close(os.open(LINKED, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400,
                     dir_fd=ctx.generation_fd))


def _attempt(ctx: Context, path: str, action: str, fn: Callable[..., None],
             *args: object) -> bool:
    """``fn(ctx, path, *args)``; a failure kept in ``ctx.problems`` (False)."""
    try:
        fn(ctx, path, *args)
    except VaultpyError as exc:
        ctx.problems.extend(exc.problems)
    except OSError as exc:
        ctx.problems.append(os_problem(path, exc, action, as_is=True))
    else:
        return True
    return False
