"""The extra-path links activation placed, kept on disk across reboots.

Which links a profile no longer wants is worked out from the previous generation's
manifest (:func:`vaultpy.activate.links.stale_links`), which lives on the ramfs: after
a reboot there is no previous generation, and a link that the new profile dropped
(``nixos-rebuild boot``, a bundle copied, then a reboot) would stay, dangling, for
good.  So the normal run also writes down the links placed, each as the live directory
it leads through and the item's name, in a record on the host's disk (one file per
store, under the store's lock; one part for the normal items, one for the early ones),
and removes those no item wants, each only while it is still root's symlink to that
very place.

Only the normal run reads and writes the record: the early run comes before local
file systems are mounted (or writable), and the normal run, which follows it, keeps
the early part from the profile.

The record holds paths, never a secret.  It is trusted only in a directory and a file
of root's that no one else may write; it is written by temp file + fsync + rename, and
ahead of placing links (a run killed between placing a link and recording it would
lose it).  A run that cannot write it says so and goes on: links are then removed as
before, up to the next reboot.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
from pathlib import Path

from vaultpy._internal import fsutil
from vaultpy.activate.context import Context
from vaultpy.output import ID_RE, path_shape_problem
from vaultpy.profile import expand

DIR = "/var/lib/vaultpy"
_VERSION = 2
_MAX = 4 << 20          # bytes: far more than any profile's links

Links = dict[str, tuple[str, str]]     # path -> (the live dir it leads through, item name)


def path(ctx: Context) -> Path:
    """This store's record (two profiles with stores of their own keep two).  A user's
    profile keeps it in the user's home (:func:`user_dir`)."""
    store = ctx.profile.settings.store
    tag = hashlib.sha256(store.encode()).hexdigest()[:12]
    return ctx.host_path(user_dir() if ctx.user else DIR) / f"links-{tag}.json"


def user_dir() -> str:
    """~/.local/state/vaultpy, whatever $XDG_STATE_HOME says: the record must be found
    where the last run left it, and a session's environment may differ from the last
    one's (the live link, settings.dir, does not move with it either).  ($HOME was
    checked when the profile was read.)"""
    return expand("%h/.local/state/vaultpy", os.environ)


def _whose(ctx: Context) -> str:
    return "yours that only you" if ctx.user else "root's that only root"


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & 0o022


def _warn(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):     # best effort, as Context.log
        print(f"vaultpy activate: warning: {message}", file=sys.stderr, flush=True)


def load(ctx: Context) -> dict[str, Links] | None:
    """The record: part ("normal", "early") -> its links; empty when there is none, or
    when it is not root's alone (then said: someone else could make root remove links);
    None when it cannot be read now (EIO, too big): not to be written over this run."""
    where = path(ctx)
    try:
        st = os.lstat(where.parent)
        if not stat.S_ISDIR(st.st_mode):
            return {}                   # (write says so)
        if not _private(st):
            _warn(f"{where.parent} is not a directory of {_whose(ctx)} may write: the "
                  "record of links in it is not used")
            return {}
        raw, st = fsutil.read_regular(where, follow=False)
    except FileNotFoundError:   # none yet (a first run)
        return {}
    except OSError as exc:
        _warn(f"cannot read {where} ({exc.strerror or exc}): it is left as it is")
        return None
    if len(raw) > _MAX:
        _warn(f"{where} is too big for a record of links: it is left as it is")
        return None
    if not _private(st):
        owner = "yours" if ctx.user else "root's"
        _warn(f"{where} is not {owner} alone: the record of links is not used")
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return {}
    out: dict[str, Links] = {}
    for part in ("early", "normal"):
        links = data.get(part)
        if not isinstance(links, dict):
            continue
        out[part] = {p: (v[0], v[1]) for p, v in links.items()
                     if isinstance(p, str) and path_shape_problem(p) is None
                     and isinstance(v, list) and len(v) == 2
                     and isinstance(v[0], str) and path_shape_problem(v[0]) is None
                     and isinstance(v[1], str) and ID_RE.fullmatch(v[1])}
    return out


def write(ctx: Context, record: dict[str, Links], old: dict[str, Links]) -> bool:
    """Replace the record ``old`` (as :func:`load` read it) with ``record``, unless they
    are the same.  A failure is said, never raised: False."""
    where = path(ctx)
    if all(record.get(p, {}) == old.get(p, {}) for p in ("early", "normal")):
        return True
    doc = {"version": _VERSION,
           **{part: {p: list(v) for p, v in sorted(record.get(part, {}).items())}
              for part in ("early", "normal")}}
    try:
        fsutil.makedirs(where.parent.parent, 0o755)
        if not os.path.lexists(where.parent):
            fsutil.mkdir_exact(where.parent, 0o700)
        st = os.lstat(where.parent)
        if not stat.S_ISDIR(st.st_mode) or not _private(st):
            raise OSError(f"{where.parent} is not a directory of {_whose(ctx)} may write")
        fsutil.atomic_write(where, (json.dumps(doc, indent=1) + "\n").encode(), 0o600)
    except OSError as exc:
        _warn(f"cannot record the links placed in {where} ({exc.strerror or exc}): a link "
              "a later profile drops is removed only until the next reboot")
        return False
    return True
