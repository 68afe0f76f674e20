"""Step ``diff_and_notify``: what changed since the previous live generation, and
the units to restart or reload because of it.

An item changed when its content, owner, group or mode differs; added and
removed items count too.  Each unit is called once, after the switch:
``systemctl --no-block try-restart`` for restart_units, ``try-reload-or-restart`` for
reload_units (a unit in both is restarted): queued, never waited for.
"""

from __future__ import annotations

import os
from pathlib import Path

from vaultpy._internal import fsutil
from vaultpy.activate import links
from vaultpy.activate.context import Change, Context, read_manifest
from vaultpy.activate.users import Accounts, owner_ids


def _previous_items(ctx: Context, gen: Path | None = None
                    ) -> dict[str, dict[str, list[str]]]:
    """The items generation ``gen`` (default: the previous live one) installed."""
    gen = ctx.previous if gen is None else gen
    if gen is None:
        return {}
    data = read_manifest(gen)
    try:
        return {i["name"]: i for i in data["items"]} if data is not None else {}
    except (KeyError, TypeError):
        return {}


def compute_changes(ctx: Context) -> list[Change]:
    accounts = Accounts(ctx.opts.root)
    previous = _previous_items(ctx)
    changes: list[Change] = []
    for item in ctx.items():
        content = (ctx.rendered[item.name] if item.is_template
                   else ctx.plaintext[item.id or ""])
        want = (*owner_ids(ctx, accounts, item), int(item.out.mode, 8))
        units = (item.out.restart_units, item.out.reload_units)
        old = ctx.previous / item.name if ctx.previous is not None else None
        try:
            if old is None:
                raise FileNotFoundError
            st = os.stat(old, follow_symlinks=False)
            old_content = fsutil.read_regular(old)[0]      # a FIFO must not hang the run
        except OSError:
            changes.append(Change(item.name, "added", "", *units))
            continue
        diffs = []
        if old_content != content:
            diffs.append("content")
        if (st.st_uid, st.st_gid) != want[:2]:
            diffs.append("owner")
        if (st.st_mode & 0o7777) != want[2]:
            diffs.append("mode")
        if diffs:
            changes.append(Change(item.name, "changed", "+".join(diffs), *units))
    current = {i.name for i in ctx.items()}
    for name, old_item in sorted(previous.items()):
        if name not in current:
            changes.append(Change(name, "removed", "",
                                  tuple(old_item.get("restart_units", [])),
                                  tuple(old_item.get("reload_units", []))))
    # The early generation this run retires (links.retire_early): its files go with
    # early_dir, as removed as any other (the early run, which would report them, never
    # runs again).  Planned here, before the switch, so the calls are in the manifest.
    retired = links.retiring(ctx) if not ctx.opts.early else None
    if retired is not None and ctx.previous is not None \
            and retired.resolve() == ctx.previous.resolve():
        retired = None                  # (early_dir on the live generation: kept live)
    for name, old_item in sorted(_previous_items(ctx, retired).items() if retired else ()):
        changes.append(Change(name, "removed", "from the early generation",
                              tuple(old_item.get("restart_units", [])),
                              tuple(old_item.get("reload_units", []))))
    return changes


NOTIFIED = ".vaultpy-notified"   # in a generation: its pending unit calls were made


def owed_calls(gen: Path) -> list[tuple[str, str]]:
    """(verb, unit) calls generation ``gen`` recorded but never confirmed (a crash
    between its switch and its notification)."""
    if (gen / NOTIFIED).exists():
        return []
    data = read_manifest(gen)
    try:
        return [(str(v), str(u)) for v, u in data.get("pending", [])] if data else []
    except (ValueError, TypeError, AttributeError):
        return []


def _unfinished_calls(ctx: Context) -> list[tuple[str, str]]:
    """Unit calls the previous generation owes (:func:`owed_calls`)."""
    return [] if ctx.previous is None else owed_calls(ctx.previous)


def plan_calls(ctx: Context) -> list[tuple[str, str]]:
    """Every unit call this run owes: for its changes, and those left unfinished."""
    if not ctx.changes_computed:
        ctx.changes = compute_changes(ctx)
        ctx.changes_computed = True
    restart: dict[str, None] = {}
    reload: dict[str, None] = {}
    for verb, unit in _unfinished_calls(ctx):
        (restart if verb == "try-restart" else reload).setdefault(unit)
    for c in ctx.changes:
        for u in c.restart_units:
            restart.setdefault(u)
        for u in c.reload_units:
            reload.setdefault(u)
    return [("try-restart", u) for u in restart] + [
        ("try-reload-or-restart", u) for u in reload if u not in restart]


def _mark_notified(ctx: Context) -> None:
    if ctx.generation_fd is not None:
        fd = os.open(NOTIFIED, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o400,
                     dir_fd=ctx.generation_fd)
        os.close(fd)


def diff_and_notify(ctx: Context) -> None:
    calls = plan_calls(ctx)
    for c in ctx.changes:
        ctx.log("diff_and_notify", f"{c.kind} {c.name}" + (f" ({c.detail})" if c.detail else ""))
    if not calls:
        if not ctx.opts.dry_run:
            _mark_notified(ctx)
        return
    units = ", ".join(u for _, u in calls)
    if ctx.opts.systemctl is None and os.path.realpath(ctx.opts.root) != "/":
        # The units are the system's under --root (an image being built, a test), not
        # this machine's: restarting this machine's namesakes would be wrong.
        would = "would not restart" if ctx.opts.dry_run else "not restarting"
        ctx.log("diff_and_notify", f"{would} {units}: --root is not /, and these units "
                "are not this machine's (pass --systemctl PATH to call one)")
        if not ctx.opts.dry_run:
            _mark_notified(ctx)
        return
    # A user's profile names the user's own units (their systemd --user manager's).
    scope = ["--user"] if ctx.user else []
    if ctx.opts.dry_run:
        for verb, unit in calls:
            ctx.log("diff_and_notify", f"would run {ctx.opts.systemctl or 'systemctl'} "
                    f"{' '.join([*scope, '--no-block'])} {verb} {unit}")
        return
    # Only when a unit is to be restarted: subprocess takes ~5 ms to import.
    import shutil
    import subprocess

    name = ctx.opts.systemctl or "systemctl"
    systemctl = shutil.which(name)
    if systemctl is None:
        ctx.log("diff_and_notify", f"{name} not found; not restarting {units}")
        return
    for verb, unit in calls:
        # --no-block: the job is queued, not waited for.  Activation runs inside a
        # oneshot unit (no start timeout); a unit ordered after it (After=
        # vaultpy-activate.service, as services that read secrets often are) could
        # only restart once that unit is done: waiting here would never end.
        proc = subprocess.run([systemctl, *scope, "--no-block", verb, "--", unit],
                              capture_output=True, text=True)
        ctx.notified.append(f"{verb} {unit}")
        if proc.returncode != 0:
            said = (proc.stderr or proc.stdout).strip()
            # The usual cause for a user: no manager of theirs to reach (a su or ssh
            # session without one, a user without lingering).
            hint = ("; no systemd --user manager of yours answers (log in on a session "
                    "that has one, or: loginctl enable-linger): restart the unit by hand"
                    if ctx.user and "bus" in said.lower() else "")
            ctx.log("diff_and_notify", f"warning: systemctl {' '.join([*scope, verb])} "
                    f"{unit} failed: {said}{hint}")
    _mark_notified(ctx)
