"""Steps ``new_generation``, ``switch`` and ``prune``: numbered directories in the
store, and the live symlink that points at one of them."""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

from vaultpy._internal import fsutil
from vaultpy.activate import links, notify
from vaultpy.activate.context import MANIFEST, Context, read_link_generation
from vaultpy.errors import Problem, VaultpyError, os_problem

_NUMBER = re.compile(r"[0-9]+")


def _numeric(store: Path) -> list[int]:
    try:
        names = os.listdir(store)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if _NUMBER.fullmatch(n))


def generations(store: Path) -> list[int]:
    """Numbered generation directories (never a symlink or a file of that name)."""
    return [n for n in _numeric(store)
            if (store / str(n)).is_dir() and not (store / str(n)).is_symlink()]


def remove_leftover_links(link: Path, uid: int = 0) -> None:
    """Temp symlinks a killed run left beside ``link`` (ours: symlinks owned by ``uid``,
    root, or a user's profile's user, only)."""
    prefix = fsutil.tmp_prefix(link.name)
    try:
        names = os.listdir(link.parent)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(prefix):
            st = os.lstat(link.parent / name)
            if stat.S_ISLNK(st.st_mode) and st.st_uid == uid:
                os.unlink(link.parent / name)


def referenced(ctx: Context) -> set[Path]:
    """Generations a live symlink (``dir`` or ``early_dir``) points to.  A user's
    profile has no early run: its ``early_dir`` is never read (a link another user made
    there would keep a generation from being pruned and sealed)."""
    s = ctx.profile.settings
    out = set()
    for link in ((ctx.host_path(s.dir),) if ctx.user
                 else (ctx.host_path(s.dir), ctx.host_path(s.early_dir))):
        gen = read_link_generation(link)
        if gen is not None:
            out.add(gen.resolve())
    return out


def _check_link_replaceable(ctx: Context, link: Path) -> None:
    if link.exists() and not link.is_symlink():
        raise VaultpyError(Problem(str(link), "exists and is not a symlink", "dir",
                                   "move it away: vaultpy manages this path as a symlink "
                                   "to the live generation"))
    # Another user's symlink there (made first, in a sticky directory) would be read as
    # the live link: its "previous generation" would name the units to restart and the
    # links to remove.
    owner = link.lstat().st_uid if link.is_symlink() else ctx.uid
    if not ctx.trusted(owner):
        raise VaultpyError(Problem(str(link), f"is a symlink of another user (uid {owner})",
                                   "dir", "remove it, or give settings.dir a place of its "
                                   "own"))


def new_generation(ctx: Context) -> None:
    """Next number after every existing generation; created 0751, root's (a user's
    profile: the user's).
    Generations a killed run left unfinished (no manifest, not live) are removed."""
    _check_link_replaceable(ctx, ctx.link)
    ctx.previous = read_link_generation(ctx.link)
    live = referenced(ctx)
    numbers = _numeric(ctx.store)               # number past anything numeric in the store
    for n in numbers:
        path = ctx.store / str(n)
        is_dir = path.is_dir() and not path.is_symlink()
        unfinished = not is_dir or (path.resolve() not in live
                                    and not (path / MANIFEST).exists())
        if unfinished and not ctx.opts.dry_run:
            fsutil.remove_tree(path)            # never follows a symlink
            ctx.log("new_generation", f"removed unfinished generation {n}")
    number = (numbers[-1] + 1) if numbers else 1
    target = ctx.store / str(number)
    if ctx.opts.dry_run:
        ctx.generation = target
        ctx.log("new_generation", f"would build generation {number}")
        return
    fsutil.mkdir_exact(target, 0o751)
    ctx.generation = target                     # ours from now on (removed if we fail)
    os.chown(target, ctx.uid, ctx.gid)
    ctx.generation_fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    ctx.log("new_generation", f"building {target}")


def _write_manifest(ctx: Context) -> None:
    """Items, and the unit calls and old links this generation owes: they are recorded
    before the switch, so a crash between switch and notification (or the links'
    removal) is made good by the next run."""
    items = [{"name": i.name, "path": i.out.path, "restart_units": list(i.out.restart_units),
              "reload_units": list(i.out.reload_units)} for i in ctx.items()]
    data = json.dumps({"version": 1, "host": ctx.profile.host, "items": items,
                       "pending": [list(c) for c in notify.plan_calls(ctx)],
                       "unlink": sorted(list(p) for p in links.stale_links(ctx).items())},
                      sort_keys=True).encode()
    assert ctx.generation_fd is not None
    # Under a temp name, renamed whole: a run killed as it wrote left a manifest cut
    # short (or empty) that made the generation count as finished.
    tmp = f".{MANIFEST}.tmp"            # (the generation is this run's: none is there)
    fsutil.write_new(tmp, data, 0o400, dir_fd=ctx.generation_fd)
    os.rename(tmp, MANIFEST, src_dir_fd=ctx.generation_fd, dst_dir_fd=ctx.generation_fd)


def switch(ctx: Context) -> None:
    """Seal the generation (its manifest marks it complete), then replace the live
    symlink atomically: a symlink under a temp name, renamed over the old one."""
    assert ctx.generation is not None
    if ctx.opts.dry_run:
        return
    _write_manifest(ctx)
    link = ctx.link
    fsutil.makedirs(link.parent)
    remove_leftover_links(link, ctx.uid)
    # Relative to where the link really is: its ".." are taken in the directory that
    # holds it, not in the path as written (a user's home may be a symlink, the live
    # link in it and the store in the runtime directory).
    target = os.path.relpath(os.path.realpath(ctx.generation), os.path.realpath(link.parent))
    tmp = fsutil.tmp_name(link)
    os.symlink(target, tmp)
    try:
        os.rename(tmp, link)
    except OSError:
        os.unlink(tmp)
        raise
    ctx.switched = True         # live from here: never removed as a failed build
    ctx.log("switch", f"{link} -> {target}")
    if not _leads_to(link, ctx.generation):
        ctx.problems.append(Problem(str(link), f"the live link does not lead to {ctx.generation}",
                                    "dir", "report this: the link was placed, its target "
                                    "does not resolve there"))
    try:
        fsutil.fsync_path(link.parent, directory=True)
    except OSError as exc:      # like any problem after the switch: reported at the end
        ctx.problems.append(os_problem(link.parent, exc, "sync the switch", as_is=True))
    # A grant the new generation revokes ends here, not at prune: until then the old
    # file stayed readable by its full path through the links, every unit's restart
    # (a slow one), and for good if the run was killed before prune.
    try:
        _seal_not_live(ctx)
    except OSError as exc:
        ctx.problems.append(os_problem(ctx.store, exc, "seal the previous generation",
                                       as_is=True))


def _leads_to(link: Path, generation: Path) -> bool:
    try:
        return os.path.samefile(link, generation)
    except OSError:
        return False


def _seal_not_live(ctx: Context) -> None:
    """Every generation no live link points at: 0700, root only."""
    live = referenced(ctx)
    for n in generations(ctx.store):
        path = ctx.store / str(n)
        if path.resolve() not in live:
            _seal(path)


def _seal(path: Path) -> None:
    if stat.S_IMODE(path.stat().st_mode) != 0o700:
        os.chmod(path, 0o700)


def prune(ctx: Context) -> None:
    """Keep the newest ``keep`` generations (and any that is live); delete the rest.
    Kept ones that are not live are sealed (0700, root only): a user whose grant the
    new generation revoked must not go on reading the old file by its full path."""
    live = referenced(ctx)
    numbers = generations(ctx.store)
    keep = set(numbers[-ctx.keep:])
    for n in numbers:
        path = ctx.store / str(n)
        if path.resolve() in live:
            continue
        if n in keep:
            if not ctx.opts.dry_run:        # (switch sealed it; a killed run's not)
                _seal(path)
            continue
        if ctx.opts.dry_run:
            ctx.log("prune", f"would remove generation {n}")
            continue
        fsutil.remove_tree(path)
        ctx.log("prune", f"removed generation {n}")
