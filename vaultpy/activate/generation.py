"""Steps ``new_generation``, ``switch`` and ``prune``: numbered directories in the
store, and the live symlink that points at one of them."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

from vaultpy._internal import fsutil
from vaultpy.activate.context import MANIFEST, Context, read_link_generation
from vaultpy.errors import Problem, VaultpyError

_NUMBER = re.compile(r"[0-9]+")


def generations(store: Path) -> list[int]:
    try:
        names = os.listdir(store)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names if _NUMBER.fullmatch(n) and (store / n).is_dir()
                  and not (store / n).is_symlink())


def referenced(ctx: Context) -> set[Path]:
    """Generations a live symlink (``dir`` or ``early_dir``) points to."""
    s = ctx.profile.settings
    out = set()
    for link in (ctx.host_path(s.dir), ctx.host_path(s.early_dir)):
        gen = read_link_generation(link)
        if gen is not None:
            out.add(gen.resolve())
    return out


def _check_link_replaceable(link: Path) -> None:
    if link.exists() and not link.is_symlink():
        raise VaultpyError(Problem(str(link), "exists and is not a symlink", "dir",
                                   "move it away: vaultpy manages this path as a symlink "
                                   "to the live generation"))


def new_generation(ctx: Context) -> None:
    """Next number after every existing generation; created 0751, root-owned.
    Generations a killed run left unfinished (no manifest, not live) are removed."""
    _check_link_replaceable(ctx.link)
    ctx.previous = read_link_generation(ctx.link)
    live = referenced(ctx)
    numbers = generations(ctx.store)
    for n in numbers:
        path = ctx.store / str(n)
        unfinished = path.resolve() not in live and not (path / MANIFEST).exists()
        if unfinished and not ctx.opts.dry_run:
            fsutil.remove_tree(path)
            ctx.log("new_generation", f"removed unfinished generation {n}")
    number = (numbers[-1] + 1) if numbers else 1
    ctx.generation = ctx.store / str(number)
    if ctx.opts.dry_run:
        ctx.log("new_generation", f"would build generation {number}")
        return
    os.mkdir(ctx.generation, 0o751)
    os.chown(ctx.generation, 0, 0)
    os.chmod(ctx.generation, 0o751)
    ctx.generation_fd = os.open(ctx.generation, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    ctx.log("new_generation", f"building {ctx.generation}")


def _write_manifest(ctx: Context) -> None:
    items = [{"name": i.name, "path": i.out.path, "restart_units": list(i.out.restart_units),
              "reload_units": list(i.out.reload_units)} for i in ctx.items()]
    data = json.dumps({"version": 1, "host": ctx.profile.host, "items": items},
                      sort_keys=True).encode()
    assert ctx.generation_fd is not None
    fd = os.open(MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o400, dir_fd=ctx.generation_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def switch(ctx: Context) -> None:
    """Seal the generation (its manifest marks it complete), then replace the live
    symlink atomically: a symlink under a temp name, renamed over the old one."""
    assert ctx.generation is not None
    if ctx.opts.dry_run:
        return
    _write_manifest(ctx)
    link = ctx.link
    fsutil.makedirs(link.parent)
    target = os.path.relpath(ctx.generation, link.parent)
    tmp = link.with_name(f".{link.name}{fsutil.TMP_MARK}{secrets.token_hex(6)}")
    os.symlink(target, tmp)
    try:
        os.rename(tmp, link)
    except OSError:
        os.unlink(tmp)
        raise
    fsutil.fsync_path(link.parent, directory=True)
    ctx.switched = True
    ctx.log("switch", f"{link} -> {target}")


def prune(ctx: Context) -> None:
    """Keep the newest ``keep`` generations (and any that is live); delete the rest."""
    live = referenced(ctx)
    numbers = generations(ctx.store)
    keep = set(numbers[-ctx.keep:])
    for n in numbers:
        path = ctx.store / str(n)
        if n in keep or path.resolve() in live:
            continue
        if ctx.opts.dry_run:
            ctx.log("prune", f"would remove generation {n}")
            continue
        fsutil.remove_tree(path)
        ctx.log("prune", f"removed generation {n}")
