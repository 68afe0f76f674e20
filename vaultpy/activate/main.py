"""``vaultpy-activate``: the boot-time entry point, without typer or rich.

Runs on every boot and every switch, so it imports only what activation needs
(like sops-nix's separate ``sops-install-secrets``).  It takes exactly the
options of ``vaultpy activate`` (a test keeps the two in step) and prints
problems in the same one-line form.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from vaultpy.errors import VaultpyError


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vaultpy-activate",
        description="On the host: decrypt into a new generation in RAM and switch to it "
                    "atomically (the same as `vaultpy activate`).")
    p.add_argument("--profile", "-p", type=Path, required=True, metavar="FILE",
                   help="The profile: a host's, or a user's (profile --user).")
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                   help="Prefix every host path (keys, dirs, extra paths, /etc/passwd).")
    p.add_argument("--no-mount", action="store_true",
                   help="Do not mount ramfs on the store (a user's profile: accept a "
                        "store not in RAM); tests and demos only.")
    p.add_argument("--dry-run", action="store_true",
                   help="Show what would change; touch nothing.")
    p.add_argument("--early", action="store_true",
                   help="Only items marked early, into early_dir.")
    p.add_argument("--systemctl", default=None, metavar="PATH",
                   help="systemctl to call for unit restarts (default: systemctl, but none "
                        "with a --root other than /).")
    p.add_argument("--keep", type=int, metavar="N",
                   help="Generations to keep (default: the profile's).")
    p.add_argument("--jobs", "-j", type=int, metavar="N",
                   help="Processes that decrypt (default: the CPUs, at most 4).")
    p.add_argument("--regular-profile", action="store_true",
                   help="Read the profile only if it is a regular file, never wait on a "
                        "FIFO (the units vaultpy bundle writes pass it).")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.keep is not None and args.keep < 1:
        parser().error("--keep must be at least 1")
    if args.jobs is not None and args.jobs < 1:
        parser().error("--jobs must be at least 1")
    from vaultpy.activate import Options, activate, summary

    try:
        ctx = activate(Options(profile=args.profile, root=args.root, no_mount=args.no_mount,
                               dry_run=args.dry_run, early=args.early,
                               systemctl=args.systemctl, keep=args.keep, jobs=args.jobs,
                               regular_profile=args.regular_profile))
    except VaultpyError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:                      # a bug: one line, never a traceback
        if os.environ.get("VAULTPY_DEBUG"):
            raise
        print(f"vaultpy-activate: internal error: {type(exc).__name__}: {exc} (set "
              "VAULTPY_DEBUG=1 for details and please report it)", file=sys.stderr)
        return 70
    # Best effort, as every line the steps logged: the activation is done.
    with contextlib.suppress(OSError, ValueError):
        for line in summary(ctx):
            print(line, file=sys.stderr, flush=True)
    return 0


def entry() -> None:
    from vaultpy._internal.leave import leave

    try:
        code: object = main()
    except SystemExit as exc:       # argparse: a usage error, --help
        code = exc.code
    leave(code)


if __name__ == "__main__":
    entry()
