"""``vaultpy init``: a commented hosts.toml, and optionally a new master identity."""

from __future__ import annotations

import datetime
import errno
import os
from collections.abc import Sequence
from pathlib import Path

import tomli_w

from vaultpy import age, model
from vaultpy._internal import fsutil, writes
from vaultpy.errors import Problem, VaultpyError, display_path, fail, os_problem
from vaultpy.model import FILENAME

TEMPLATE = """\
# hosts.toml — the one source of truth for vaultpy (schema version 1).
# Reference: docs/hosts-toml.md in the vaultpy repository; `vaultpy --help`.

[vaultpy]
# Master recipients: every secrets/<id>.age is encrypted to all of these.
# Add a backup key (age1… or "ssh-ed25519 AAAA…") here, then run `vaultpy rekey`.
{recipients}
{identity}
# secrets_dir = "secrets"
# cache_dir = "secrets/cache"   # renc output: safe to commit

# Declare each secret; its master file is secrets/<id>.age unless `file` says otherwise.
# Create it with `vaultpy edit db_password` (or `vaultpy encrypt db_password < file`).
#
# [secrets.db_password]

# One table per host, with its SSH ed25519 host key (/etc/ssh/ssh_host_ed25519_key.pub).
#
# [hosts.web1]
# pubkey = "ssh-ed25519 AAAA… root@web1"
# secrets = ["db_password"]                 # all defaults: root:root 0400
#
# [hosts.web1.secrets.db_password]          # or: one table per secret
# owner = "postgres"
# mode = "0400"
# restart_units = ["postgresql.service"]
#
# [hosts.web1.templates."app.env"]          # rendered on the host
# content = "DB_URL=postgres://app:{{{{ secrets.db_password }}}}@db/app\\n"
# trim = true                               # the value's newline: not inside the URL
#   (a longer text: file = "templates/app.env" in place of content)
"""


GITIGNORE = writes.CACHE_GITIGNORE


# Beside hosts.toml: the journal of a write of several files, while it runs (or after a
# kill, until the next command finishes it), and its own temp file.
TOP_GITIGNORE = """\
# vaultpy: the journal of a write of several files, while it runs (or after a crash)
/.vaultpy-writes
/..vaultpy-writes.vaultpy-tmp-*
"""


def _add_to_gitignore(path: Path, line: str, block: str) -> bool:
    """Append ``block`` to the .gitignore ``path`` (created if missing) unless ``line``
    is one of its lines; False when it is.  Its bytes are kept as they are, whatever
    their encoding.  A symbolic link is left alone (git does not follow one): OSError."""
    if os.path.islink(path):
        raise OSError(errno.ELOOP, fsutil.LINK, str(path))
    try:
        old: bytes | None = fsutil.read_regular(path)[0]       # a FIFO must not hang
    except FileNotFoundError:
        old = None
    if old is not None and line.encode() in [ln.rstrip() for ln in old.splitlines()]:
        return False
    mode = path.stat().st_mode & 0o777 if old is not None else 0o644
    head = b"" if not old else old if old.endswith(b"\n") else old + b"\n"
    fsutil.atomic_write(path, head + (b"\n" if head else b"") + block.encode(), mode)
    return True


def _ignore_journal(path: Path) -> bool:
    """Make git ignore the write journal beside hosts.toml: ``path`` (the .gitignore
    there) is created, or the lines added to it; False when it already has them."""
    return _add_to_gitignore(path, "/.vaultpy-writes", TOP_GITIGNORE)


def _ignore_identity(top: Path, identity: Path) -> Path | None:
    """A master key made inside the repository (``top``, hosts.toml's folder, or the
    git repository it is in): a line in that folder's .gitignore, so that `git add .`
    (or the README's `git add secrets`) never commits it.  The .gitignore written, or
    None (outside, or the line is there already)."""
    here = top.resolve()
    key = identity.resolve()
    git = fsutil.git_top(here)
    folder = git if git is not None and key.is_relative_to(git) else here
    if not key.is_relative_to(folder):
        return None
    # A name git would read as a pattern is escaped, each special character alone.
    line = "/" + "".join("\\" + c if c in "*?[]!#\\" else c
                         for c in key.relative_to(folder).as_posix())
    if line.endswith(" "):
        line = line[:-1] + "\\ "
    path = folder / ".gitignore"
    block = f"# vaultpy: the master identity (never commit it)\n{line}\n"
    return path if _add_to_gitignore(path, line, block) else None


def ignore_local_state(top: Path, cache_dir: Path) -> list[Path]:
    """Make git ignore vaultpy's local state (the cache files themselves are committed):
    ``cache_dir``'s .gitignore, made if missing, and the write journal's lines in
    ``top``'s.  Returns the files written.  (``init`` and the importers.)"""
    written = []
    cache_dir.mkdir(parents=True, exist_ok=True)
    if writes.ignore_own_files(cache_dir):
        written.append(cache_dir / ".gitignore")
    if _ignore_journal(top / ".gitignore"):
        written.append(top / ".gitignore")
    return written


def default_recipient() -> tuple[str, str] | None:
    """(how it is named, its public key) of the default identity
    (``~/.config/vaultpy/master.txt``) when it is one plain age key; else None (absent,
    unreadable, passphrase-protected, several keys, a plugin's)."""
    from vaultpy.identities import DEFAULT_IDENTITY

    try:
        text = fsutil.read_regular(os.path.expanduser(DEFAULT_IDENTITY))[0].decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    keys = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("AGE-SECRET-KEY-")]
    if len(keys) != 1:
        return None
    try:
        (ident,) = age.parse_identity_text(keys[0], DEFAULT_IDENTITY)
        return DEFAULT_IDENTITY, str(ident.key.to_public())
    except Exception:   # a damaged key: init says nothing of it, as before
        return None


def _identity_line(directory: Path, identity: Path) -> str:
    shown = model.identity_setting(directory, identity)
    line = tomli_w.dumps({"identity": shown}).strip()
    if os.path.isabs(shown):        # this machine's place: say how others differ
        line += "   # yours: -i or VAULTPY_IDENTITY override it"
    return line


def _identity_text(secret_key: str, public: str) -> str:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"# created: {now}\n# public key: {public}\n{secret_key}\n"


def init(directory: Path, recipients: Sequence[str] = (),
         generate_identity: Path | None = None, *, identity: Path | None = None
         ) -> list[Path]:
    """Create ``directory/hosts.toml`` (never overwriting) and return what was written.
    ``identity``: an existing master identity for ``[vaultpy] identity`` (its public key
    is among ``recipients``)."""
    target = directory / FILENAME
    problems: list[Problem] = []
    if target.exists():
        problems.append(Problem(display_path(target), "already exists", "",
                                "edit it, or choose another directory"))
    ignore = directory / ".gitignore"       # added to at the end: refused before any write
    if ignore.exists() and not ignore.is_file():
        problems.append(Problem(display_path(ignore), "not a regular file", "",
                                "replace it with a regular file, or remove it"))
    if generate_identity is not None and generate_identity.exists():
        problems.append(Problem(display_path(generate_identity), "already exists", "",
                                "choose another path; vaultpy never overwrites a key"))
    # Refused before anything is made (a directory made, then the key's refused, stayed).
    for what, folder, fix in (
            (f"hosts.toml in {display_path(directory)}", directory, "another directory"),
            (f"the identity {display_path(generate_identity or directory)}",
             generate_identity and generate_identity.parent, "another --generate-identity")):
        blocker = folder and fsutil.not_a_directory(folder)
        if blocker:
            problems.append(Problem(display_path(blocker), f"is not a directory, so {what} "
                                    "cannot be created", "", f"choose {fix}"))
    normalized = []
    for r in recipients:
        try:
            key = age.normalize_recipient(r, allow_rsa=True)
            if key in normalized:
                problems.append(Problem("--recipient", f"the same key is given twice: {r}",
                                        "", "give each recipient once"))
                continue
            normalized.append(key)
        except ValueError as exc:
            problems.append(Problem("--recipient", str(exc), "",
                                    "use an age1… key or an ssh-ed25519 public key line"))
    if problems:
        raise VaultpyError(problems)
    written: list[Path] = []
    try:
        fsutil.mkdir_p(directory)
        identity_line = '# identity = "~/.config/vaultpy/master.txt"   # or -i / VAULTPY_IDENTITY'
        if identity is not None:
            identity_line = _identity_line(directory, identity)
        if generate_identity is not None:
            secret_key, public = age.generate_x25519()
            fsutil.mkdir_p(generate_identity.parent, 0o700)
            fsutil.create_new(generate_identity,           # fails instead of overwriting
                              _identity_text(secret_key, public).encode(), 0o600)
            written.append(generate_identity)
            normalized.insert(0, public)
            identity_line = _identity_line(directory, generate_identity)
        if normalized:
            recipients_line = tomli_w.dumps({"recipients": normalized}).strip()
        else:
            recipients_line = 'recipients = []   # add your master public key: age-keygen -y KEY'
        text = TEMPLATE.format(recipients=recipients_line, identity=identity_line)
        (directory / "secrets").mkdir(exist_ok=True)
        fsutil.create_new(target, text.encode(), 0o644)
        written.append(target)
        written += ignore_local_state(directory, directory / "secrets" / "cache")
        if generate_identity is not None:
            try:
                ignored = _ignore_identity(directory, generate_identity)
            except OSError as exc:      # a symlinked or unwritable .gitignore
                raise VaultpyError(Problem(
                    display_path(exc.filename or directory), "cannot add the new master "
                    f"identity to it: {exc.strerror}", "", "keep the key out of git "
                    f"yourself: {display_path(generate_identity)} is the plaintext master "
                    "key (hosts.toml and the key were written)")) from None
            if ignored is not None and Path(os.path.abspath(ignored)) not in [
                    Path(os.path.abspath(w)) for w in written]:
                written.append(ignored)
    except FileExistsError as exc:
        raise fail(exc.filename or target, "already exists") from None
    except OSError as exc:
        raise VaultpyError(os_problem(exc.filename or target, exc, "write")) from None
    return written
