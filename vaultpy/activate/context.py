"""The state that flows through the activation steps."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path

from vaultpy import age
from vaultpy._internal import fsutil
from vaultpy._internal.record import field, mutable_record, record
from vaultpy.errors import Problem
from vaultpy.profile import Item, Profile

TYPE_CHECKING = False       # typing costs activation's start-up (tests/test_record.py)
if TYPE_CHECKING:
    from typing import Any

MANIFEST = ".vaultpy-manifest.json"   # written last: marks a generation as complete
# Errors of a read that may work the next time (too many open files, an I/O error): a
# manifest that could not be read for them is not "no manifest".
FOR_NOW = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.EIO, errno.EINTR,
                     errno.EAGAIN})


@record
class Options:
    profile: Path
    root: Path = Path("/")
    no_mount: bool = False
    dry_run: bool = False
    early: bool = False
    systemctl: str | None = None    # None: "systemctl", but none at all under --root
    keep: int | None = None
    quiet: bool = False
    jobs: int | None = None         # decrypting processes (default: CPUs, at most 4)
    regular_profile: bool = False   # the profile only if a regular file (bundle's units)


@record
class Change:
    """One difference between the previous live generation and the new one."""

    name: str
    kind: str                       # added | changed | removed
    detail: str = ""
    restart_units: tuple[str, ...] = ()
    reload_units: tuple[str, ...] = ()


@mutable_record
class Context:
    opts: Options
    profile: Profile
    lock_fd: int | None = None
    identities: list[age.Identity] = field(default_factory=list)
    previous: Path | None = None         # the live generation before this run
    generation: Path | None = None       # the one being built
    generation_fd: int | None = None
    plaintext: dict[str, bytes] = field(default_factory=dict)   # secret id -> bytes
    rendered: dict[str, bytes] = field(default_factory=dict)    # template name -> bytes
    changes: list[Change] = field(default_factory=list)
    changes_computed: bool = False          # computed once, before the switch
    switched: bool = False
    retired: bool = False                   # early_dir removed: no early item is left
    notified: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)   # after the switch: raised last
    # The on-disk record of links placed, as read once this run (links.linkrecord).
    link_record: dict[str, dict[str, tuple[str, str]]] | None = None
    link_record_read: bool = False
    # The links this run owes removing, worked out once, before the switch (the
    # previous manifest is not read again after it: a read failing then stopped links).
    stale: dict[str, str] | None = None
    # With a signed cache: SHA-256 of each signed cache file -> its name.
    signed_ids: dict[str, str] | None = None

    @property
    def user(self) -> bool:
        """A user's profile: activated by that user, every file theirs."""
        return self.profile.settings.user

    @property
    def uid(self) -> int:
        """Whose the files, directories and links activation makes are (and whose
        symlinks it takes for its own): root's, or a user's profile's user."""
        return os.geteuid() if self.user else 0

    @property
    def gid(self) -> int:
        return os.getegid() if self.user else 0

    def trusted(self, uid: int) -> bool:
        """Whether a directory owned by ``uid`` may hold what activation writes: root's,
        and with a user's profile the user's own (their home): no one else's."""
        return uid == 0 or uid == self.uid

    def host_path(self, path: str) -> Path:
        """A path on the host, under --root."""
        return self.opts.root / path.lstrip("/")

    @property
    def store(self) -> Path:
        return self.host_path(self.profile.settings.store)

    @property
    def link(self) -> Path:
        """The live symlink this run switches: ``dir``, or ``early_dir`` with --early."""
        s = self.profile.settings
        return self.host_path(s.early_dir if self.opts.early else s.dir)

    @property
    def keep(self) -> int:
        return self.opts.keep or self.profile.settings.keep

    def items(self) -> list[Item]:
        """The files this run installs (only ``early`` ones with --early)."""
        return self.profile.installed(early=self.opts.early)

    def log(self, step: str, message: str) -> None:
        if not self.opts.quiet:
            # Best effort: a stderr that cannot be written (a full disk, a reader gone)
            # must not stop, or fail, the activation it tells of.
            with contextlib.suppress(OSError, ValueError):
                print(f"vaultpy activate: {step}: {message}", file=sys.stderr, flush=True)


def read_manifest(gen: Path) -> dict[str, Any] | None:
    """Generation ``gen``'s manifest, decoded; None when none is there or it is not one
    vaultpy wrote.  A read that failed for now (:data:`FOR_NOW`) is raised: taken as "no
    manifest", what it names (old links, units to call) would be owed by no one."""
    try:
        data = json.loads(fsutil.read_regular(gen / MANIFEST)[0])
    except OSError as exc:
        if exc.errno in FOR_NOW:
            raise
        return None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def read_link_generation(link: Path) -> Path | None:
    """The generation directory a live symlink points to, if it is one."""
    try:
        target = os.readlink(link)
    except OSError:
        return None
    resolved = (link.parent / target)
    return resolved if resolved.is_dir() else None
