"""Disaster recovery: prove backup keys work, and rotate the master key.

* :func:`coverage` — ``vaultpy check --recipient-coverage [--backup-identity F]…``:
  every master file must decrypt with *each* backup identity, and its header must
  be addressed to exactly the ``[vaultpy] recipients`` as far as the header shows
  it (ssh-ed25519/ssh-rsa stanzas carry a key tag; X25519 stanzas only count).
* :func:`rotate_master` — ``vaultpy rekey --rotate-master --new-identity FILE``:
  a new X25519 master identity, every master re-encrypted to it plus the backup
  recipients that remain, ``hosts.toml`` updated, renc run.  Progress is kept in
  a journal (``.vaultpy-rotation.jsonl`` beside hosts.toml) so that a run killed
  at any point is finished by running the same command again.

Journal: the first line (written atomically before anything else) records the
new identity's path and public key, the new recipient list and the masters to
rotate; then one ``{"done": id}`` line is appended (and fsynced) after each master
is atomically replaced, and ``{"hosts_toml": true}`` once hosts.toml is updated.
The journal is removed when renc has succeeded.  The new identity file is written
(0600, durable) after the journal's first line and before any master, so a master
is never encrypted to a key that is not on disk.  Hence a journal whose identity
file does not exist and that records nothing done is a plan only (killed between
the two writes): the rerun starts over, and a start whose identity cannot be
written removes its journal again (nothing to finish, and it would stop every
command that writes a master).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vaultpy import age, identities, signing
from vaultpy._internal import ageformat, fsutil, ledger, writes
from vaultpy.errors import Problem, VaultpyError, display_path, fail, key_path, os_problem
from vaultpy.model import Config

JOURNAL = ".vaultpy-rotation.jsonl"
FIX_REKEY = "run vaultpy rekey"


# --------------------------------------------------------------------------- coverage

def header_problems(cfg: Config, sid: str, header: ageformat.Header) -> list[Problem]:
    """What a master's stanzas say about its recipients versus ``[vaultpy] recipients``."""
    shown = display_path(cfg.secrets[sid].file)
    where = key_path("secrets", sid)
    out: list[Problem] = []
    stanzas = header.recipient_stanzas()
    tags = {s.args[0] for s in stanzas if s.type in (age.SSH_ED25519, age.SSH_RSA) and s.args}
    wanted_tags: set[str] = set()
    x25519_wanted = 0
    plugins = [r for r in cfg.recipients if age.plugin_name(r)]
    for r in cfg.recipients:
        if r in plugins:            # a plugin's stanzas name no recipient: not checkable
            continue
        tag = age.ssh_stanza_tag(r)
        if tag is None:
            x25519_wanted += 1
            continue
        wanted_tags.add(tag)
        if tag not in tags:
            out.append(Problem(shown, f"not encrypted to [vaultpy] recipient {age.key_name(r)}",
                               where, FIX_REKEY))
    for tag in sorted(tags - wanted_tags):
        out.append(Problem(shown, f"also encrypted to an SSH key that is not a [vaultpy] "
                           f"recipient (tag {tag})", where, f"{FIX_REKEY} to drop it"))
    x25519 = sum(1 for s in stanzas if s.type == "X25519")
    if x25519 < x25519_wanted:
        out.append(Problem(shown, f"has {x25519} X25519 stanza(s) but [vaultpy] recipients "
                           f"list {x25519_wanted} age1 key(s)", where, FIX_REKEY))
    elif x25519 > x25519_wanted:
        out.append(Problem(shown, f"has {x25519} X25519 stanza(s) but [vaultpy] recipients "
                           f"list {x25519_wanted} age1 key(s): a key not listed (an old "
                           "master key?) can still decrypt it", where, f"{FIX_REKEY} to drop it"))
    native = {"X25519", age.SSH_ED25519, age.SSH_RSA}
    foreign = [s for s in stanzas if s.type not in native]
    if len(foreign) < len(plugins):
        # A plugin's stanza names no recipient, but each plugin key adds one: fewer
        # means a plugin key listed (a YubiKey backup) was never encrypted to.
        out.append(Problem(shown, f"has {len(foreign)} plugin stanza(s) but [vaultpy] "
                           f"recipients list {len(plugins)} plugin key(s)", where, FIX_REKEY))
    others = sorted({s.type for s in foreign})
    if others and not plugins:
        # Named only when they look like a stanza type ("piv-p256"): a header is file
        # content, and a message never repeats a long run of it.
        named = [t for t in others if re.fullmatch(r"[A-Za-z0-9_-]{1,24}", t)]
        what = ", ".join(named) + (f" (and {len(others) - len(named)} more)"
                                   if len(named) < len(others) else "")
        out.append(Problem(shown, "has stanzas vaultpy never writes: "
                           + (what if named else f"{len(others)} unknown type(s)"),
                           where, FIX_REKEY))
    return out


def coverage(cfg: Config, backup_files: Sequence[Path],
             ask: age.PassphraseFn = age.passphrase_from_env_or_tty) -> list[Problem]:
    """Master files that a backup identity cannot decrypt (empty = all can).

    Missing or malformed master files, and headers addressed to other recipients, are
    left to ``check`` (which reports them on every run).
    """
    problems: list[Problem] = []
    backups: list[tuple[str, list[age.Identity], str]] = []    # (source, keys, the fix)
    for path in backup_files:
        try:
            keys = age.load_identity_file(path, ask, unreadable_hint="give the backup "
                                          "identity's file with --backup-identity FILE")
        except VaultpyError as exc:
            problems.extend(Problem(p.file, p.message, "--backup-identity", p.hint)
                            for p in exc.problems)
            continue
        listed = bool(set(_x25519_publics(keys)) & set(cfg.recipients))
        backups.append((display_path(path), keys, "its key is listed: run vaultpy rekey"
                        if listed else "add its public key to [vaultpy] recipients, then "
                        "run vaultpy rekey"))
    for sid, secret in cfg.secrets.items():
        try:
            data = fsutil.read_regular(secret.file)[0]       # a FIFO must not hang check
            ageformat.parse(data)
        except (OSError, ageformat.FormatError):
            continue
        for source, keys, fix in backups:
            try:
                age.decrypt(data, keys, display_path(secret.file))
            except VaultpyError as exc:
                reason = exc.problems[0].message
                why = "" if "can decrypt it" in reason else f" ({reason})"
                problems.append(Problem(display_path(secret.file), "cannot be decrypted by "
                                        f"backup identity {source}{why}", key_path("secrets", sid),
                                        fix))
    return problems


def rotation_problems(cfg: Config) -> list[Problem]:
    """A rotation left unfinished is a problem for ``check``; a journal that cannot be
    read is named as ``rekey --rotate-master`` names it (that command would not finish
    it, so check must not tell the user to run it)."""
    try:
        journal = read_journal(cfg)
    except VaultpyError as exc:
        return exc.problems
    if journal is None:
        return []
    if journal.unstarted():
        return [Problem(display_path(journal.path), "a master key rotation is unfinished", "",
                        "nothing was rotated yet: run vaultpy rekey --rotate-master to start "
                        "it again (with --new-identity FILE to write the new key elsewhere)")]
    return [Problem(display_path(journal.path), "a master key rotation is unfinished", "",
                    "run vaultpy rekey --rotate-master to finish it")]


# --------------------------------------------------------------------------- hosts.toml

_HEADER = re.compile(r"^[ \t]*\[[ \t]*(?P<name>[^\]\[]*?)[ \t]*\][ \t]*(#.*)?$")


def _skip_value(text: str, i: int) -> int:
    """Index just past the TOML value starting at ``text[i]`` (strings, arrays, scalars)."""
    if text.startswith('"""', i) or text.startswith("'''", i):
        q = text[i : i + 3]
        j = i + 3
        while True:
            k = text.find(q, j)
            if k < 0:
                raise ValueError("unterminated string")
            if q == '"""' and _escaped(text, k):
                j = k + 1
                continue
            while text.startswith(q[0], k + 3):      # """a"""" ends at the last quote
                k += 1
            return k + 3
    if text[i] == '"':
        j = i + 1
        while j < len(text) and text[j] != "\n":
            if text[j] == "\\":
                j += 2
                continue
            if text[j] == '"':
                return j + 1
            j += 1
        raise ValueError("unterminated string")
    if text[i] == "'":
        k = text.find("'", i + 1)
        if k < 0 or "\n" in text[i:k]:
            raise ValueError("unterminated string")
        return k + 1
    if text[i] in "[{":
        close = "]" if text[i] == "[" else "}"
        j = i + 1
        while j < len(text):
            c = text[j]
            if c == close:
                return j + 1
            if c in " \t\r\n,":
                j += 1
            elif c == "#":
                nl = text.find("\n", j)
                j = len(text) if nl < 0 else nl
            elif c == "=" and close == "}":
                j += 1
            elif close == "}" and re.match(r"[A-Za-z0-9_.-]", c):
                j = re.compile(r"[A-Za-z0-9_.-]+").match(text, j).end()  # type: ignore[union-attr]
            else:
                j = _skip_value(text, j)
        raise ValueError("unterminated array")
    m = re.compile(r"[^\s,#\]\}]+").match(text, i)
    if m is None:
        raise ValueError("no value")
    return m.end()


def _escaped(text: str, k: int) -> bool:
    n = 0
    while k - 1 - n >= 0 and text[k - 1 - n] == "\\":
        n += 1
    return n % 2 == 1


def set_vaultpy_value(text: str, key: str, value: str) -> str | None:
    """``text`` with ``[vaultpy] key`` set to the TOML literal ``value``, comments and
    layout elsewhere unchanged; None if the key is not written plainly in [vaultpy]."""
    lines = text.splitlines(keepends=True)
    offset, in_table, in_value_until = 0, False, -1
    for line in lines:
        start = offset
        offset += len(line)
        if start < in_value_until:
            continue
        m = _HEADER.match(line.rstrip("\r\n"))
        if m and not line.lstrip().startswith("[["):
            in_table = m.group("name") == "vaultpy"
            continue
        if not in_table:
            continue
        km = re.match(r"[ \t]*(?P<key>[A-Za-z0-9_-]+|\"[^\"]*\")[ \t]*=[ \t]*", line)
        if km is None:
            continue
        begin = start + km.end()
        end = _skip_value(text, begin)
        if km.group("key").strip('"') == key:
            return text[:begin] + value + text[end:]
        in_value_until = end
    return None


def _master(text: str) -> str:
    """A master recipient in canonical form (RSA and plugin recipients allowed)."""
    return age.normalize_recipient(text, allow_rsa=True, allow_plugin=True)


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(_toml_str(v) for v in values) + "]"


# --------------------------------------------------------------------------- rotation

@dataclass
class Journal:
    path: Path
    new_identity: Path
    new_recipient: str
    recipients_raw: list[str]          # as they will be written into hosts.toml
    retired: list[str]                 # normalised
    masters: list[str]
    done: set[str] = field(default_factory=set)
    hosts_toml: bool = False

    @property
    def recipients(self) -> list[str]:
        return [_master(r) for r in self.recipients_raw]

    def unstarted(self) -> bool:
        """Nothing was done yet: its new identity was never written (a master is only
        ever encrypted to a key on disk), no master or hosts.toml recorded.  Such a
        journal is a plan only: the rotation may start over, with another key."""
        return (not self.done and not self.hosts_toml
                and not os.path.lexists(self.new_identity))

    def header(self) -> dict[str, Any]:
        return {"version": 1, "new_identity": str(self.new_identity),
                "new_recipient": self.new_recipient, "recipients": self.recipients_raw,
                "retired": self.retired, "masters": self.masters}

    def write_header(self) -> None:
        fsutil.remove_leftovers([self.path])      # a killed write's temp file
        fsutil.atomic_write(self.path, (json.dumps(self.header()) + "\n").encode(), 0o600)

    def append(self, entry: dict[str, Any]) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.write(fd, (json.dumps(entry) + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)


FIX_DAMAGED = "remove it and check every master by hand"


def _damaged(path: Path, what: str, field: str = "") -> VaultpyError:
    return fail(path, f"damaged rotation journal ({what})", field=field, hint=FIX_DAMAGED)


def _journal_head(path: Path, line: str) -> Journal:
    """The journal's first line, every field checked: a hand-edited or truncated one is
    one clear problem naming the field, never a traceback later on."""
    try:
        head = json.loads(line)
    except (ValueError, RecursionError):
        raise _damaged(path, "first line: not JSON") from None
    if not isinstance(head, dict):
        raise _damaged(path, "first line: not a JSON object")
    if head.get("version") != 1:
        if isinstance(head.get("version"), int) and not isinstance(head["version"], bool):
            raise fail(path, f"a rotation journal of another vaultpy (version "
                       f"{head['version']})", field="version", hint="finish it with the "
                       f"vaultpy that started it, or {FIX_DAMAGED}")
        raise _damaged(path, "first line: missing or bad", "version")

    def text(key: str) -> str:
        value = head.get(key)
        if not isinstance(value, str) or not value or "\0" in value:
            raise _damaged(path, "first line: missing or not a string", key)
        return value

    def texts(key: str) -> list[str]:
        value = head.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _damaged(path, "first line: missing or not a list of strings", key)
        return list(value)

    new_identity = Path(text("new_identity"))
    if not new_identity.is_absolute():
        raise _damaged(path, "first line: not an absolute path", "new_identity")
    new_recipient = text("new_recipient")
    recipients, retired, masters = texts("recipients"), texts("retired"), texts("masters")
    for key, values in (("new_recipient", [new_recipient]), ("recipients", recipients),
                        ("retired", retired)):
        for value in values:
            try:
                _master(value)
            except ValueError:
                raise _damaged(path, "first line: not a recipient", key) from None
    if not recipients or _master(recipients[0]) != _master(new_recipient):
        raise _damaged(path, "first line: does not start with new_recipient", "recipients")
    return Journal(path, new_identity, new_recipient, recipients, retired, masters)


def read_journal(cfg: Config) -> Journal | None:
    path = cfg.root / JOURNAL
    try:
        data = fsutil.read_regular(path)[0]         # a FIFO must not hang
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise fail(path, f"cannot read the rotation journal: {exc.strerror or exc}",
                   hint="restore it, or remove it and check every master by hand") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _damaged(path, "not UTF-8 text") from None
    lines = text.split("\n")
    journal = _journal_head(path, lines[0])
    for line in lines[1:]:
        try:
            entry = json.loads(line)
        except (ValueError, RecursionError):
            continue                      # a line torn by a crash: that step is redone
        if isinstance(entry, dict) and isinstance(entry.get("done"), str):
            journal.done.add(entry["done"])
        elif isinstance(entry, dict) and entry.get("hosts_toml") is True:
            journal.hosts_toml = True
    return journal


def refuse_if_rotating(cfg: Config) -> None:
    """Plain ``rekey`` (and friends) must not run across an unfinished rotation."""
    if problems := rotation_problems(cfg):
        raise VaultpyError(problems)


@dataclass
class RotationResult:
    new_identity: Path
    new_recipient: str
    recipients: list[str]
    retired: list[str]
    rotated: list[str]
    resumed: bool
    identity_in_hosts_toml: bool
    renc: Any = None


def _identity_text(line: str, public: str) -> bytes:
    when = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"# created: {when} (vaultpy rekey --rotate-master)\n"
            f"# public key: {public}\n{line}\n").encode()


def _identity_dir(path: Path) -> None:
    """Make the new identity's directory, durably: the key must not vanish with a new
    directory's entry once masters are encrypted to it."""
    made = [d for d in (path.parent, *path.parent.parents) if not os.path.lexists(d)]
    path.parent.mkdir(parents=True, exist_ok=True)
    for d in reversed(made):
        fsutil.fsync_path(d.parent, directory=True)


def _write_identity(path: Path, text: bytes) -> None:
    """The new identity, 0600, complete or absent, never replacing a file (OSError)."""
    from vaultpy.shamir import _write_exclusive

    # A run killed while writing the identity left its temp file, a secret key
    # never used (the journal's key is the one written whole): remove it.
    fsutil.remove_leftovers([path])
    _write_exclusive(path, text)
    fsutil.fsync_path(path.parent, directory=True)


def _identity_problem(path: Path, exc: OSError) -> Problem:
    """Why the new identity cannot be written, and the fix: one line."""
    base = os_problem(path, exc, "write the new identity")
    # mkdir says "File exists" of a file in the way, open "Not a directory" or "No
    # such file": the path, not the file system, is what to fix.
    blocker = fsutil.not_a_directory(path.parent)
    if blocker is not None:
        what = ("a symbolic link to nothing" if blocker.is_symlink() else
                "a file, not a directory")
        message = f"cannot write the new identity: {display_path(blocker)} is {what}"
        hint = "give --new-identity a path in a directory"
    elif isinstance(exc, FileExistsError):
        message, hint = "already exists", "give a path that does not exist yet"
    else:
        message, hint = base.message, base.hint or "give --new-identity a path you can write"
    return Problem(base.file, message, "--new-identity", f"{hint} (nothing was rotated)")


def _drop_unstarted(journal: Journal, identity: bytes | None) -> list[Problem]:
    """Undo a start whose new identity could not be written: no master is encrypted to
    it, so the journal has nothing to finish, and left behind it would stop check,
    rekey and encrypt and send every rerun to the same path.  The identity file goes
    too if this run's write got as far as linking it (its directory's fsync failed)."""
    with contextlib.suppress(OSError):
        if (identity is not None
                and fsutil.read_regular(journal.new_identity, follow=False)[0] == identity):
            journal.new_identity.unlink()
            fsutil.fsync_path(journal.new_identity.parent, directory=True)
    try:
        journal.path.unlink()
        fsutil.fsync_path(journal.path.parent, directory=True)
    except FileNotFoundError:
        pass
    except OSError as exc:
        gone = os_problem(journal.path, exc, "remove the rotation journal")
        return [Problem(gone.file, gone.message, "", "remove it by hand: no master was "
                        "rotated")]
    return []


def _x25519_publics(keys: Sequence[age.Identity]) -> list[str]:
    out = []
    for k in keys:
        if k.kind == "x25519":
            with contextlib.suppress(Exception):
                out.append(str(k.key.to_public()))
    return out


def _raw_recipients(cfg: Config) -> list[str]:
    try:
        doc = tomllib.loads(cfg.path.read_text(encoding="utf-8"))
        raw = doc["vaultpy"]["recipients"]
        return [r.strip() for r in raw] if isinstance(raw, list) else list(cfg.recipients)
    except (OSError, ValueError, KeyError, TypeError):
        return list(cfg.recipients)


Decrypted = dict[str, tuple[bytes, bool, bytes]]    # id -> (plaintext, armored, its master)


def _start(cfg: Config, new_identity: Path, identity_files: Sequence[Path],
           retire: Sequence[str], ask: age.PassphraseFn, *, restart: bool = False
           ) -> tuple[Journal, Decrypted, list[age.Identity]]:
    """Validate, decrypt every master, then write the journal and the new identity.
    ``restart``: a journal of a rotation that never started is there (replaced here)."""
    from vaultpy.masters import read_master  # (it imports this module)

    if os.path.lexists(new_identity):
        raise fail(new_identity, "already exists", field="--new-identity",
                   hint="give a path for the new master identity that does not exist yet")
    chosen = [s for s, sec in cfg.secrets.items() if sec.file.exists()]
    keys = identities.load(cfg, identity_files, ask)
    current = list(cfg.recipients)
    retired: list[str] = []
    problems: list[Problem] = []
    for text in retire:
        try:
            norm = _master(text)
        except ValueError as exc:
            problems.append(Problem("--retire", str(exc), "", age.KEY_HINT))
            continue
        if norm not in current:
            problems.append(Problem("--retire", f"{age.key_name(norm)} is not a [vaultpy] "
                                    "recipient", "", "give one of the keys listed in "
                                    "hosts.toml"))
        elif norm not in retired:
            retired.append(norm)
    if problems:
        raise VaultpyError(problems)
    for pub in _x25519_publics(keys):
        if pub in current and pub not in retired:
            retired.append(pub)
    if not retired:
        raise VaultpyError(Problem(display_path(cfg.path), "none of the [vaultpy] recipients "
                                   "belongs to the identity in use, so none would be retired",
                                   "vaultpy.recipients", "name the old master key with "
                                   "--retire RECIPIENT"))
    plain: Decrypted = {}
    for sid in chosen:
        data = read_master(cfg, sid)
        plain[sid] = (age.decrypt(data, keys, display_path(cfg.secrets[sid].file),
                                  secret_id=sid), ageformat.is_armored(data), data)
    line, public = age.generate_x25519()
    remaining = [r for r in _raw_recipients(cfg)
                 if _master(r) not in retired]
    # A recipient nothing can encrypt to (a plugin not installed) would stop the
    # rotation after its journal exists, and every master write waits on a journal:
    # find it out now, while nothing is written.
    age.encrypt(b"", [_master(r) for r in [public, *remaining]])
    journal = Journal(cfg.root / JOURNAL, new_identity.absolute(), public,
                      [public, *remaining], retired, chosen)
    try:
        # Before the journal: a path whose directory cannot be made leaves nothing.
        _identity_dir(journal.new_identity)
    except OSError as exc:
        raise VaultpyError([_identity_problem(journal.new_identity, exc),
                            *(_drop_unstarted(journal, None) if restart else [])]) from None
    try:
        journal.write_header()
    except OSError as exc:
        raise VaultpyError(os_problem(journal.path, exc, "write the rotation journal")) from None
    # The journal first, then the key: a run killed in between leaves a journal whose
    # key was never written, which the rerun starts over (no secret key is left on disk
    # that no journal names).  A write that fails takes the journal back.
    key_file = _identity_text(line, public)
    try:
        _write_identity(journal.new_identity, key_file)
    except OSError as exc:
        raise VaultpyError([_identity_problem(journal.new_identity, exc),
                            *_drop_unstarted(journal, key_file)]) from None
    return journal, plain, keys


def _resume_identity(journal: Journal) -> list[age.Identity]:
    """The new identity of an unfinished rotation (one whose key was never written
    starts over instead: see :meth:`Journal.unstarted`)."""
    path = journal.new_identity
    if not os.path.lexists(path):
        raise fail(path, f"the new master identity is missing but {len(journal.done)} "
                   "master(s) are already encrypted to it",
                   hint="restore the file from where you copied it")
    # Killed after linking the identity into place, before unlinking its temp name:
    # a second name for the new master key, which nothing else removes.
    with contextlib.suppress(OSError):
        fsutil.remove_leftovers([path])
    keys = age.load_identity_file(path)
    if journal.new_recipient not in _x25519_publics(keys):
        raise fail(path, "is not the identity this rotation started with (its public key "
                   f"is not {journal.new_recipient})", hint="restore the right file")
    return keys


def rotate_master(cfg: Config, new_identity: Path | None,
                  identity_files: Sequence[Path] = (), retire: Sequence[str] = (),
                  ask: age.PassphraseFn = age.passphrase_from_env_or_tty,
                  say: Callable[[str], None] | None = None,
                  renc_jobs: int | None = None) -> RotationResult:
    """Rotate the master key, or finish a rotation that was interrupted."""
    from vaultpy import model
    from vaultpy import renc as pipeline
    from vaultpy.masters import read_master  # (it imports this module)

    # A write a killed generate (or pull) left is finished first: its masters are
    # among those to rotate, not left encrypted to the old key once the lock is held.
    writes.settle(cfg)
    journal = read_journal(cfg)
    if journal is not None and journal.unstarted():
        # Killed before its key was on disk (or left by a vaultpy that kept the journal
        # of a failed write): nothing is encrypted to that key, so the rotation starts
        # over, with this run's --new-identity and --retire when given.
        if say:
            say("the unfinished master key rotation had rotated nothing yet (its new "
                "identity was never written): starting it again")
        # A kill during that key's write left its temp file (a secret key never used),
        # which a write to another path would not remove.
        with contextlib.suppress(OSError):
            fsutil.remove_leftovers([journal.new_identity])
        new_identity = journal.new_identity if new_identity is None else new_identity
        retire = retire or [r for r in journal.retired if r in cfg.recipients]
        restart, journal = True, None
    else:
        restart = False
    resumed = journal is not None
    plain: Decrypted = {}
    old_keys: list[age.Identity] | None = None
    if journal is None:
        if new_identity is None:
            raise VaultpyError(Problem("--new-identity", "missing", "",
                                       "say where to write the new master identity "
                                       "(--new-identity FILE)"))
        journal, plain, old_keys = _start(cfg, new_identity, identity_files, retire, ask,
                                          restart=restart)
    else:
        if new_identity is not None and new_identity.absolute() != journal.new_identity:
            raise fail(journal.path, f"an unfinished rotation writes the new identity to "
                       f"{journal.new_identity}, not {new_identity}",
                       hint="rerun with that --new-identity, or without it")
        retiring: set[str] = set()
        for key in retire:
            try:
                retiring.add(_master(key))
            except ValueError:
                retiring.add(key)
        if retire and retiring != set(journal.retired):
            # Read when the rotation started: another set now would be ignored.
            raise fail(journal.path, "an unfinished rotation retires "
                       + ", ".join(age.key_name(r) for r in journal.retired)
                       + "; --retire is read when a rotation starts",
                       hint="rerun without --retire (or with those keys) to finish it")
        if say:
            say(f"resuming the unfinished master key rotation ({len(journal.done)} of "
                f"{len(journal.masters)} master(s) done)")
    new_keys = _resume_identity(journal)
    # Masters written while the rotation was pending are rotated too.
    for sid, sec in cfg.secrets.items():
        if sid not in journal.masters and sec.file.exists() and not journal.hosts_toml:
            journal.masters.append(sid)
    todo = [sid for sid in journal.masters if sid not in journal.done and sid in cfg.secrets
            and cfg.secrets[sid].file.exists()]
    def decrypt(sid: str, data: bytes) -> bytes:
        nonlocal old_keys
        shown = display_path(cfg.secrets[sid].file)
        try:
            return age.decrypt(data, new_keys, shown, secret_id=sid)
        except VaultpyError:
            if old_keys is None:
                old_keys = identities.load(cfg, identity_files, ask)
            return age.decrypt(data, [*old_keys, *new_keys], shown, secret_id=sid)

    for sid in todo:
        if sid not in plain:
            data = read_master(cfg, sid)
            plain[sid] = (decrypt(sid, data), ageformat.is_armored(data), data)
    recipients = journal.recipients
    vouchers = signing.Vouchers.of(cfg)
    current: Path = cfg.cache_dir
    try:
        with writes.lock(cfg):
            for sid in todo:
                text, armor, was = plain.pop(sid)
                current = cfg.secrets[sid].file
                now = fsutil.read_regular(current)[0]
                if now != was:
                    # Written since it was read (before the lock): rotate the newer value.
                    text, armor = decrypt(sid, now), ageformat.is_armored(now)
                new = age.encrypt(text, recipients, armor=armor)
                fsutil.atomic_write(current, new)
                if vouchers is None or vouchers.vouch_bytes(sid, current, now):  # (renc:
                    ledger.record_written(current, new, [sid])  # vaultpy wrote, as rekey)
                journal.append({"done": sid})
                journal.done.add(sid)
    except OSError as exc:
        raise VaultpyError(os_problem(current, exc, "re-encrypt the master")) from None
    with writes.held(cfg):      # a read-modify-write: `host add` takes it too
        identity_set = _update_hosts_toml(cfg, journal)
    cfg = model.load(cfg.path)
    result = pipeline.renc(cfg, (), jobs=renc_jobs, identity_files=[journal.new_identity],
                           ask=ask)
    # (resumed: the masters a killed run rotated count too; the rotation is one)
    rotation = RotationResult(journal.new_identity, journal.new_recipient, recipients,
                              journal.retired, [s for s in journal.masters if s in journal.done],
                              resumed, identity_set, result)
    if not result.ok:
        raise VaultpyError([*result.failed, Problem(display_path(journal.path), "renc failed "
                            "after the masters were rotated", "", "fix the problems above "
                            "and run vaultpy rekey --rotate-master again")])
    try:
        journal.path.unlink()
        fsutil.fsync_path(journal.path.parent, directory=True)
    except OSError as exc:
        raise VaultpyError(os_problem(journal.path, exc, "remove the rotation journal")) from None
    return rotation


def _identity_setting(cfg: Config, path: Path) -> str:
    from vaultpy import model

    return model.identity_setting(cfg.root, path)


def _rotated_in_place(text: str, journal: Journal) -> str | None:
    """``text`` with the retired recipients taken out of a multi-line array and the new
    one put first, the other elements with their comments and the layout as they were
    (tomlkit round-trips them); None for a one-line array, or where tomlkit cannot."""
    try:
        import tomlkit

        doc = tomlkit.parse(text)
        array = doc["vaultpy"]["recipients"]
        if "\n" not in array.as_string():
            return None         # one line holds no comment; the plain rewrite is tidier
        for i in reversed(range(len(array))):
            if _master(str(array[i])) in journal.retired:
                del array[i]
        array.insert(0, journal.new_recipient)
        return tomlkit.dumps(doc)
    except Exception:   # tomlkit refuses some layouts; the plain rewrite remains
        return None


def _update_hosts_toml(cfg: Config, journal: Journal) -> bool:
    """Point hosts.toml at the new recipients (and identity, if it names one)."""
    from vaultpy import model

    if journal.hosts_toml:
        return cfg.identity is not None
    text = cfg.path.read_text(encoding="utf-8")
    plain = set_vaultpy_value(text, "recipients", _toml_list(journal.recipients_raw))
    candidates = [t for t in (_rotated_in_place(text, journal), plain) if t is not None]
    if not candidates:
        raise fail(cfg.path, "cannot find [vaultpy] recipients to update",
                   field="vaultpy.recipients", hint="write recipients = " +
                   _toml_list(journal.recipients_raw) + " under [vaultpy] by hand, then "
                   "rerun vaultpy rekey --rotate-master")
    has_identity = cfg.identity is not None
    for new_text in candidates:
        if has_identity:
            with_id = set_vaultpy_value(
                new_text, "identity", _toml_str(_identity_setting(cfg, journal.new_identity)))
            new_text = with_id if with_id is not None else new_text
        try:
            updated = model.reparse(new_text, cfg.path)
        except VaultpyError:
            continue
        if (list(updated.recipients) == journal.recipients and updated.hosts == cfg.hosts
                and updated.secrets == cfg.secrets):
            break
    else:
        raise fail(cfg.path, "updating [vaultpy] recipients automatically would change more "
                   "than the recipients", field="vaultpy.recipients", hint="write recipients "
                   "= " + _toml_list(journal.recipients_raw) + " by hand, then rerun")
    try:
        fsutil.atomic_write(cfg.path, new_text.encode("utf-8"),
                            cfg.path.stat().st_mode & 0o777)
        journal.append({"hosts_toml": True})
    except OSError as exc:
        raise VaultpyError(os_problem(cfg.path, exc, "update hosts.toml")) from None
    return has_identity and updated.identity == journal.new_identity
