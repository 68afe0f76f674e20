"""One error type for everything a user can get wrong.

Every problem vaultpy reports is a :class:`Problem`: the file it is about, the
field (a TOML table path, a secret id, a host name …), what is wrong and how to
fix it.  It renders as one line::

    hosts.toml: hosts.web1.pubkey: not an ssh-ed25519 or age1 public key; use …

:class:`VaultpyError` carries one or more problems.  The CLI prints each on its
own line and exits 1; library users catch the exception and read ``problems``.
"""

from __future__ import annotations

import errno
import functools
import os
import re
from pathlib import Path

from vaultpy._internal.record import record

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as the user would type it: relative to the working directory when below it
    (but never to ``/``, the working directory of a unit at boot: "etc/vaultpy/…" would
    read as relative to somewhere else)."""
    p = Path(path)
    try:
        at_root = os.getcwd() == "/"
    except OSError:                 # the working directory was removed: as given
        return str(p)
    if at_root:
        return os.path.abspath(p)
    if p.name in ("", ".."):
        try:
            rel = p.resolve().relative_to(Path.cwd().resolve())
        except (ValueError, OSError, RuntimeError):   # RuntimeError: a symlink loop (3.11)
            return str(p)
        return str(rel) if str(rel) != "." else str(p)
    # Resolve the directory only: a symlink is named as written, not by its target.
    # Many files share few directories (10,000 cache files, 500 masters): each
    # directory is resolved once per working directory.
    shown = _shown_dir(str(p.absolute().parent), os.getcwd())
    if shown is None:
        return str(p)
    return p.name if shown == "." else f"{shown}/{p.name}"


@functools.lru_cache(maxsize=256)
def _shown_dir(parent: str, cwd: str) -> str | None:
    """``parent`` resolved, relative to the resolved ``cwd``; None when not below it."""
    try:
        return str(Path(parent).resolve().relative_to(Path(cwd).resolve()))
    except (ValueError, OSError, RuntimeError):   # RuntimeError: a symlink loop (3.11)
        return None


@record
class Problem:
    """A single, user-facing problem: where, what, and what to do next."""

    file: str
    message: str
    field: str = ""
    hint: str = ""

    def __str__(self) -> str:
        parts = [self.file]
        if self.field:
            parts.append(self.field)
        text = ": ".join([*parts, self.message])
        if self.hint:
            text += f"; {self.hint}"
        # One line, whatever a file name or TOML key holds: no newline, NUL or
        # terminal escape from user input reaches the terminal raw.
        return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "field": self.field, "message": self.message,
                "hint": self.hint}


SHOWN_MAX = 100      # characters of a value a message quotes (:func:`shown`)


def shown(value: str, limit: int = SHOWN_MAX, *, quote: bool = True) -> str:
    """``value`` for a message, quoted (``repr``) unless ``quote`` is false: at most
    ``limit`` characters of it and, when cut, its own length:
    ``'aaa…' (100000 characters)``."""
    if len(value) <= limit:
        return repr(value) if quote else value
    cut = value[:limit - 1] + "…"
    return f"{repr(cut) if quote else cut} ({len(value)} characters)"


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_NIX_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_'-]*")
# Nix's keywords: an identifier's shape, never an attribute name unquoted.
_NIX_KEYWORDS = frozenset({"assert", "else", "if", "in", "inherit", "let", "rec", "then",
                           "with"})


def toml_key(key: str) -> str:
    """``key`` as TOML writes it in a dotted key or a table header: bare when it may
    be (``web1``), else a quoted string (``"app.env"``: ``[secrets.app.env]`` would
    be a table ``env`` inside a table ``app``)."""
    if _BARE_KEY.fullmatch(key):
        return key
    import json  # a JSON string is a TOML basic string

    return json.dumps(key, ensure_ascii=False)


def key_path(*keys: str) -> str:
    """The dotted TOML path of a field, each key written as :func:`toml_key` does:
    ``key_path("hosts", "web1", "templates", "app.env")`` is
    ``hosts.web1.templates."app.env"``."""
    return ".".join(map(toml_key, keys))


def nix_attr(name: str) -> str:
    """``name`` as Nix writes it in an attribute path: bare when it is an identifier
    (``db``), else quoted (``"app.env"``, ``"1password"``, ``"in"``; a TOML bare key
    may start with a digit, a Nix identifier may not, nor be a keyword)."""
    if _NIX_NAME.fullmatch(name) and name not in _NIX_KEYWORDS:
        return name
    import json  # for these names (no "$" or "\"), a Nix string too

    return json.dumps(name, ensure_ascii=False)


class VaultpyError(Exception):
    """Raised for any problem the user can fix.  ``problems`` holds one or more lines."""

    def __init__(self, problems: Problem | list[Problem]) -> None:
        self.problems: list[Problem] = problems if isinstance(problems, list) else [problems]
        super().__init__("\n".join(str(p) for p in self.problems))


class UsageError(VaultpyError):
    """Options that do not go together, or an argument out of range: exit 2, as for
    the usage errors the command-line parser finds itself."""


def fail(file: str | os.PathLike[str], message: str, *, field: str = "",
         hint: str = "") -> VaultpyError:
    """Build (not raise) a one-problem error; ``raise fail(...)`` reads naturally."""
    return VaultpyError(Problem(display_path(file), message, field, hint))


def too_big(path: str | os.PathLike[str], limit: int, what: str, hint: str, *,
            field: str = "") -> Problem:
    """A file the user named held more than ``limit`` bytes (``fsutil.read_named``):
    ``what`` follows "more than N MiB" (or KiB, under a MiB) as it is (" of plaintext",
    ", too much for a profile")."""
    size = f"{limit >> 20} MiB" if limit >= 1 << 20 else f"{limit >> 10} KiB"
    return Problem(display_path(path), f"more than {size}{what}", field, hint)


def os_problem(path: str | os.PathLike[str], exc: OSError, action: str, *,
               as_is: bool = False) -> Problem:
    """Turn an OSError into a readable problem without a traceback.  ``as_is``: name
    ``path`` as given (a host path during activation), not relative to the cwd."""
    reason = exc.strerror or str(exc)
    hint = ""
    reading = action.startswith(("read", "list", "open"))
    if exc.errno == errno.EROFS:
        hint = "the file system is read-only: run it where it can be written"
    elif isinstance(exc, PermissionError):
        hint = ("check the file's permissions or run as a user who can read it" if reading
                else "check the permissions of the file and its directory (or chattr -i), "
                "or run as a user who can write there")
    elif exc.errno == errno.ENAMETOOLONG:
        hint = "shorten the path: a name is at most 255 bytes"
    elif exc.errno == errno.ENOTDIR:
        hint = "a part of the path is a file, not a directory: check the path"
    elif exc.errno == errno.ENXIO:
        hint = "it is a socket or a device, not a file: point it at a regular file"
    elif isinstance(exc, FileNotFoundError):
        hint = "check the path"
    elif isinstance(exc, IsADirectoryError):
        hint = "point it at a file, not a directory"
    elif exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some disk space, then run it again"
    elif exc.errno == errno.EINVAL:
        from vaultpy._internal.fsutil import NOT_REGULAR
        if reason == NOT_REGULAR:
            hint = "replace it with a regular file"
    return Problem(os.fspath(path) if as_is else display_path(path),
                   f"cannot {action}: {reason}", "", hint)
