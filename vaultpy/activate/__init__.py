"""On-host activation (DESIGN §6): profile → new generation on ramfs → atomic switch.

The whole procedure is :data:`STEPS`, run in order, each a named function of
one :class:`~vaultpy.activate.context.Context`, each logged by name and
testable alone:

1. ``trust_inputs``      the profile and the cache files, and the directories above
                         them: nobody but root (or the user activating) can write them;
2. ``verify_signature``  with a signing key: the host's list of cache files is signed by
                         it, and each file is installed only if the list has it;
3. ``lock``              flock ``<store>.lock``: activations never interleave; the
                         directories above the store and links nobody else can change;
4. ``load_identities``   the host's SSH key(s), read once;
5. ``mount_store``       the store is ramfs (mounted if needed; tmpfs/disk refused);
6. ``new_generation``    ``<store>/<N+1>``, 0751; unfinished leftovers removed;
7. ``decrypt_secrets``   every needed secret (in forked helpers too, when there are
                         many), installed O_EXCL|O_NOFOLLOW, owner and mode set
                         before the first byte;
8. ``render_templates``  placeholders filled, same file discipline;
9. ``check_paths``       every extra path can be linked (writes nothing);
10. ``switch``           manifest written, then ``dir`` swapped atomically;
11. ``link_paths``       extra paths as symlinks through ``dir``, placed by temp
                         name + rename; those no item wants any more removed;
12. ``retire_early``     no early item left: ``early_dir`` and its links removed;
13. ``diff_and_notify``  changes since the previous generation → unit restarts;
14. ``prune``            keep the newest ``keep`` generations; seal the older ones
                         that stay (0700: a revoked grant ends with the switch).

A failure before ``switch`` removes the half-built generation and leaves the
previous one live, its links untouched: nothing half-populated ever goes live and
nothing live changes.  After the switch the run goes to the end: a path that still
cannot be linked (an I/O error) is reported then, once the units have heard of the
new generation.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from vaultpy import profile as profile_mod
from vaultpy._internal import fsutil, nocore
from vaultpy.activate import generation, install, links, notify, store, trust, verify
from vaultpy.activate.context import Context, Options
from vaultpy.errors import Problem, VaultpyError, os_problem

Step = Callable[[Context], None]

STEPS: list[tuple[str, Step]] = [
    ("trust_inputs", trust.trust_inputs),
    ("verify_signature", verify.verify_signature),
    ("lock", store.lock),
    ("load_identities", store.load_identities),
    ("mount_store", store.mount_store),
    ("new_generation", generation.new_generation),
    ("decrypt_secrets", install.decrypt_secrets),
    ("render_templates", install.render_templates),
    ("check_paths", links.check_paths),
    ("switch", generation.switch),
    ("link_paths", links.link_paths),
    ("retire_early", links.retire_early),
    ("diff_and_notify", notify.diff_and_notify),
    ("prune", generation.prune),
]

__all__ = ["STEPS", "Context", "Options", "activate", "summary"]


def activate(opts: Options) -> Context:
    """Run every step; raise :class:`~vaultpy.errors.VaultpyError` on failure."""
    nocore.forbid()                                      # no plaintext in core dumps
    profile = profile_mod.load(opts.profile, regular_only=opts.regular_profile,
                               as_root=os.geteuid() == 0)
    if profile.settings.user:
        _check_user_run(opts, profile)
    elif os.geteuid() != 0 and os.path.realpath(opts.root) == "/":
        # (a user's own test or image under --root may go on: it fails where it must)
        raise VaultpyError(Problem(profile.source, "a host's profile, run by a user who is "
                                   "not root", "", "run it as root (sudo); for "
                                   "secrets of your own, write a user's profile: vaultpy "
                                   f"profile --host {profile.host or 'NAME'} --user"))
    if not os.path.isdir(opts.root):   # a typo'd --root: else its lock and dirs are made
        raise VaultpyError(Problem("--root", f"{opts.root}: no such directory", "",
                                   "give the directory the host's files are under "
                                   "(/ on the host itself)"))
    old_umask = os.umask(0o077)
    ctx = Context(opts, profile)
    try:
        for name, step in STEPS:
            try:
                step(ctx)
            except OSError as exc:      # ENOSPC, EIO…: one line naming the step
                where = exc.filename if isinstance(exc.filename, str) else str(ctx.link)
                problem = os_problem(where, exc, name.replace("_", " "), as_is=True)
                if not ctx.switched:
                    raise VaultpyError(problem) from None
                # After the switch the run goes to the end (prune seals and removes
                # old generations); what failed is said with everything else.
                ctx.problems.append(problem)
        if ctx.problems:
            raise VaultpyError(ctx.problems)
        return ctx
    finally:
        if ctx.generation_fd is not None:
            os.close(ctx.generation_fd)
        if ctx.generation is not None and not ctx.switched and not opts.dry_run:
            fsutil.remove_tree(ctx.generation)      # a failed build never goes live
        if ctx.lock_fd is not None:
            os.close(ctx.lock_fd)
        ctx.plaintext.clear()
        ctx.rendered.clear()
        os.umask(old_umask)


def _check_user_run(opts: Options, profile: profile_mod.Profile) -> None:
    """A user's profile is activated by that user (their systemd --user unit), never as
    root (the loader refuses that, ``as_root``, before it expands anything), and has no
    early run."""
    if opts.early:
        raise VaultpyError(Problem("--early", "a user's profile has no early files", "",
                                   "drop --early"))


def summary(ctx: Context) -> list[str]:
    """The lines a finished run ends with: what changed, and what is live now."""
    verb = "would change" if ctx.opts.dry_run else "changed"
    lines = [f"{verb}: " + (", ".join(f"{c.name} ({c.kind})" for c in ctx.changes)
                            or "nothing")]
    if ctx.opts.dry_run:
        return lines
    if ctx.opts.early and ctx.retired:
        return [*lines, f"live: nothing ({ctx.link} removed: no early item is left)"]
    return [*lines, f"live: {ctx.link} -> {ctx.generation}"]
