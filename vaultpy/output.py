"""Where and how a file lands on a host, and the names that say so.

Shared by hosts.toml's model (:mod:`vaultpy.model`) and the activation profile
(:mod:`vaultpy.profile`).  It lives apart from the model so that activation, which
runs on every boot and reads only a profile, does not load hosts.toml's validator
(~10 ms of imports).
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from vaultpy._internal.fsutil import TMP_MARK
from vaultpy._internal.record import record
from vaultpy.errors import shown
from vaultpy.templates import ID_PATTERN

TYPE_CHECKING = False       # typing and collections.abc: not on activation's path
if TYPE_CHECKING:
    from collections.abc import Container

ID_RE = re.compile(ID_PATTERN)                      # secret ids, file and host names
USER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\$?")  # owner / group names
# systemd units to restart / reload: systemd's characters, and globs as systemctl takes
# them; a leading "-" only as in "-.mount" (else systemctl would read an option).
UNIT_RE = re.compile(r"(?!-[^.])[A-Za-z0-9:_.\\@*?\[\]-]{1,255}")
UID_MAX = 2**32 - 2         # numeric owners: (uid_t)-1 means "leave unchanged" to chown
# Where activation keeps its own state (the profile's settings): never a ``path``.
DEFAULT_DIRS = {"dir": "/run/vaultpy", "early_dir": "/run/vaultpy-early",
                "store": "/run/vaultpy.d"}
# A user's profile's (%h, %r: the user's home and runtime directory, at activation).
USER_DIRS = {"dir": "%h/.local/state/vaultpy/secrets", "early_dir": "%h/.local/state/vaultpy/early",
             "store": "%r/vaultpy.d"}
# The private key a profile decrypts with when its entry names none (``identities``):
# a host's sshd key, a person's own SSH key.  Never a ``path`` either.
HOST_IDENTITY = "/etc/ssh/ssh_host_ed25519_key"
PERSON_IDENTITY = "%h/.ssh/id_ed25519"


def key_path_problem(path: str, keys: Container[str], person: bool) -> tuple[str, str] | None:
    """(problem, hint) when an item's ``path`` is one of the entry's private ``keys``:
    its link would replace the key activation decrypts with (refused there, as a file
    in the way), and would lead nowhere once the runtime directory is gone."""
    if path not in keys:
        return None
    whose = "the person's" if person else "the host's"
    return (f"path {shown(path)} is {whose} private key, which activation decrypts with",
            "give the secret a path of its own (a link there would lead nowhere after "
            "a reboot, and nothing could be decrypted)")


def numeric_id_ok(text: str) -> bool:
    """A numeric owner or group chown(2) takes as that id (not -1, not beyond 32 bits)."""
    return text.isascii() and text.isdigit() and int(text) <= UID_MAX


def early_owner_ok(text: str) -> bool:
    """An early item's owner or group: installed before users and groups exist (on a
    first boot, or one added in the same switch), so no name is looked up but root's."""
    return text == "root" or numeric_id_ok(text)


EARLY_OWNER_PROBLEM = ("an early item is installed before users and groups exist: its "
                       "owner and group must be root or numeric ids")
EARLY_OWNER_HINT = "leave owner and group out (root), give numeric ids, or drop early"


LOCK_SUFFIX = ".lock"       # activation's flock: <store>.lock, beside the store


def lock_path(store: str) -> str:
    """The file activation locks (beside the store: a ramfs is mounted over the store)."""
    return store + LOCK_SUFFIX


def tmp_link_prefix(link: str) -> str:
    """How the temporary names begin that activation gives the live symlink ``link``
    (``dir``, ``early_dir``) before renaming it into place: beside it, and removed as a
    killed run's leftovers by the next run (:func:`vaultpy._internal.fsutil.tmp_prefix`)."""
    head, _, base = link.rpartition("/")
    return f"{head}/.{base}{TMP_MARK}"


def _overlaps(path: str, d: str) -> bool:
    return path == d or path.startswith(d.rstrip("/") + "/") or d.startswith(path + "/")


def has_control(text: str) -> bool:
    """Whether ``text`` holds a control character (a line break, a tab, a NUL, DEL)."""
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def path_shape_problem(path: str) -> str | None:
    """Why ``path`` cannot be an item's extra path (None: it can): absolute and
    normalised (no "..", no "//" at its start, which POSIX keeps), no control
    character (a line break in a file name breaks every tool that lists it), each
    name at most 255 bytes and the whole at most 4095, as Linux takes them."""
    if path == "/":     # (absolute and normalised: that is not what is wrong)
        return "it is the root directory itself, not a path below it"
    pure = PurePosixPath(path)
    if (not pure.is_absolute() or ".." in pure.parts or str(pure) != path
            or path.startswith("//")):
        return "not an absolute, normalised path"
    if has_control(path):
        return "a control character (a line break, a tab, a NUL) is in it"
    encoded = path.encode("utf-8", "surrogateescape")
    if len(encoded) > 4095 or any(len(part) > 255 for part in encoded.split(b"/")):
        return "too long for Linux (a name at most 255 bytes, the path 4095)"
    return None


def path_clash(path: str, dirs: dict[str, str]) -> tuple[str, str] | None:
    """What activation keeps at ``path`` (is it, lies inside or contains it), given its
    settings ``dirs`` (name -> absolute path): ``(what, where)``, or None.  A link there
    would replace activation's own files or symlinks: the ``dir``, ``early_dir`` and
    ``store`` themselves, the store's lock file, and the temporary names of the live
    symlinks.  The NixOS module (nix/module.nix ``clashes``) refuses the same paths."""
    if path == "/var/run" or path.startswith("/var/run/"):   # root's symlink to /run
        clash = path_clash(path[4:], dirs)
        if clash is not None:
            return clash
    for key, d in dirs.items():
        if _overlaps(path, d):
            return key, d
    if dirs.get("store") and _overlaps(path, lock_path(dirs["store"])):
        return "lock file", lock_path(dirs["store"])
    for key in ("dir", "early_dir"):
        if dirs.get(key) and path.startswith(tmp_link_prefix(dirs[key])):
            return f"{key}'s temporary symlinks", tmp_link_prefix(dirs[key]) + "*"
    if TMP_MARK in path.rpartition("/")[2]:     # a link's own temp names, beside it
        return "temporary names (removed as a killed run's leftovers)", f"*{TMP_MARK}*"
    return None


def nesting(path: str, others: Container[str]) -> str | None:
    """Another item's path that ``path`` lies inside (``others``: every item's path),
    or None.  That one is a symlink into the live directory: a link below it would be
    written through it, into a generation.  The NixOS module (nix/module.nix
    ``nested``) refuses the same."""
    parent, _, _ = path.rpartition("/")
    while parent:
        if parent in others:
            return parent
        parent, _, _ = parent.rpartition("/")
    return None


def nesting_message(path: str, outer: str, whose: str = "another item's"
                    ) -> tuple[str, str]:
    """The problem and hint for :func:`nesting`'s answer."""
    return (f"path {shown(path)} lies inside {shown(outer)}, {whose} path (a link to a file: "
            "nothing can be linked below it)", "give one of them another path")


def settings_clashes(dirs: dict[str, str]) -> list[tuple[str, str]]:
    """Pairs of activation's own places (``dir``, ``early_dir``, ``store`` and the
    store's lock file) that are, or lie inside, one another: activation would replace
    one with the other (a live symlink over the lock file, a generation inside a live
    link).  The NixOS module (nix/module.nix ``settingsClashes``) refuses the same."""
    places = dict(dirs)
    if places.get("store"):
        places["lock file"] = lock_path(places["store"])
    names = [k for k in places if places[k]]
    return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]
            if _overlaps(places[a], places[b])]


def path_clash_message(path: str, what: str, where: str) -> tuple[str, str]:
    """The problem and hint for :func:`path_clash`'s answer."""
    return (f"path {shown(path)} overlaps {where!r}, where activation keeps its {what}",
            f"choose a path outside {where}, or drop it" if what in DEFAULT_DIRS else
            "choose another path, or drop it")


@record
class Output:
    """Where and how a file lands on the host (fields shared by secrets and templates)."""

    owner: str = "root"
    group: str = "root"
    mode: str = "0400"
    path: str | None = None
    restart_units: tuple[str, ...] = ()
    reload_units: tuple[str, ...] = ()
    early: bool = False
