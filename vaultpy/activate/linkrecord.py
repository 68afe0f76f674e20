"""The extra-path links activation placed, kept on disk across reboots.

Which links a profile no longer wants is worked out from the previous generation's
manifest (:func:`vaultpy.activate.links.stale_links`), which lives on the ramfs: after
a reboot there is no previous generation, and a link that the new profile dropped
(``nixos-rebuild boot``, a bundle copied, then a reboot) would stay, dangling, for
good.  So each run also writes down the links it placed, with their exact target, in
:data:`RECORD` on the host's disk (one part for the early run, one for the normal one),
and the next run removes those no item wants, if each is still root's symlink with
that very target.

The record holds paths, never a secret.  It is written by temp file + fsync + rename
under the store's lock; a run that cannot write it (a read-only /var) says so and goes
on: links are then removed as before, up to the next reboot.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

from vaultpy._internal import fsutil
from vaultpy.activate.context import Context

RECORD = "/var/lib/vaultpy/links.json"
_VERSION = 1
_MAX = 4 << 20          # bytes: far more than any profile's links


def _path(ctx: Context) -> Path:
    return ctx.host_path(RECORD)


def _part(ctx: Context) -> str:
    return "early" if ctx.opts.early else "normal"


def _load(ctx: Context) -> dict[str, dict[str, str]]:
    """The whole record (part -> path -> target); empty when absent or unusable."""
    try:
        data = json.loads(fsutil.read_regular(_path(ctx), follow=False)[0][:_MAX])
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _VERSION:
        return {}
    out: dict[str, dict[str, str]] = {}
    for part in ("early", "normal"):
        links = data.get(part)
        if isinstance(links, dict):
            out[part] = {p: t for p, t in links.items()
                         if isinstance(p, str) and p.startswith("/") and isinstance(t, str)}
    return out


def recorded(ctx: Context, early: bool | None = None) -> dict[str, str]:
    """The links this run's part of the record holds (``early``: that part): path ->
    the target each was placed with."""
    part = _part(ctx) if early is None else ("early" if early else "normal")
    return _load(ctx).get(part, {})


def write(ctx: Context, links: dict[str, str], early: bool | None = None) -> None:
    """Replace this run's part of the record (``early``: that part) with ``links``.
    Not written when nothing changes; a failure is logged, never raised."""
    part = _part(ctx) if early is None else ("early" if early else "normal")
    whole = _load(ctx)
    if whole.get(part, {}) == links and (links or _path(ctx).exists()):
        return
    whole[part] = dict(sorted(links.items()))
    path = _path(ctx)
    try:
        fsutil.makedirs(path.parent, 0o700)
        st = os.lstat(path.parent)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{path.parent} is not a directory of root's")
        fsutil.atomic_write(path, (json.dumps({"version": _VERSION, **whole}, indent=1)
                                   + "\n").encode(), 0o600)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"vaultpy activate: warning: cannot record the links placed in {path} "
              f"({reason}): a link a later profile drops is removed only until the next "
              "reboot", file=sys.stderr)
