"""Generated secrets and their rotation: ``vaultpy generate`` and ``vaultpy rotate``.

A secret declares how its value is made, ``[secrets.<id>] generate = "…"``
(:class:`vaultpy.model.GenerateSpec`), and optionally ``rotate_days = N``:

* ``alnum:N``      N characters from ``[A-Za-z0-9]``;
* ``hex:N``        N random bytes as 2N lowercase hex digits (like ``openssl rand -hex N``);
* ``base64:N``     N random bytes, standard base64 with padding (``openssl rand -base64 N``);
* ``passphrase:N`` N words of the EFF large wordlist (7776 words, 12.9 bits each),
                   separated by single spaces;
* ``ssh-ed25519``  an OpenSSH ed25519 private key; its public line goes to ``<id>.pub``;
* ``x25519``       an age X25519 identity; its ``age1…`` recipient goes to ``<id>.pub``;
* ``wireguard``    a WireGuard private key (base64, as ``wg genkey`` prints it); its public
                   key (``wg pubkey``) goes to ``<id>.pub``;
* ``command:<cmd>`` the standard output of ``/bin/sh -c <cmd>``, run in the repository
                   with ``VAULTPY_SECRET_ID`` set, less one trailing line ending (``\n``
                   or ``\r\n``, as ``echo`` adds); a non-zero exit or no output fails.

Randomness comes from :mod:`secrets` (the OS CSPRNG); key pairs are made in memory with
``cryptography`` / pyrage, so no plaintext key ever touches the disk.  Values carry no
trailing newline, except key files, which end with one as ssh-keygen, age-keygen and
wg genkey write them.

Every value of a run is made first, in memory; only when all succeeded are the master
files, public halves and ``secrets/rotation.toml`` written (temp names, fsync, renames,
directory fsync) under the repository lock.  A failure writes nothing.  generate
renames the masters last and never over a master that appeared meanwhile; a key-pair
master found without its ``<id>.pub`` gets it derived again from the decrypted master.

``secrets/rotation.toml`` (written with tomli-w) records when each secret was last
(re)generated::

    version = 1

    [rotated]
    db_password = 2025-05-01 10:00:00+00:00
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import secrets as pysecrets
import string
import subprocess
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from vaultpy._internal import fsutil, writes
from vaultpy.errors import Problem, UsageError, VaultpyError, display_path, key_path, toml_key
from vaultpy.model import ROTATION_FILE, Config, GenerateSpec, Secret

ALNUM = string.ascii_letters + string.digits
WORDLIST = Path(__file__).with_name("wordlists") / "eff_large_wordlist.txt"
PASSPHRASE_SEPARATOR = " "
_UTC = dt.UTC


def now() -> dt.datetime:
    """The current time in UTC, to the second (what rotation.toml records)."""
    return dt.datetime.now(_UTC).replace(microsecond=0)


# --------------------------------------------------------------------------- values

@dataclass(frozen=True)
class Value:
    """A freshly made secret: the master plaintext and, for key pairs, the public half."""

    id: str
    secret: bytes = field(repr=False)
    public: bytes | None = None


@cache
def wordlist() -> tuple[str, ...]:
    """The EFF large wordlist shipped in the package (comment lines skipped)."""
    words = tuple(line.strip() for line in WORDLIST.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.startswith("#"))
    if len(words) != 7776 or len(set(words)) != 7776:     # a damaged installation
        raise VaultpyError(Problem(str(WORDLIST), f"wordlist holds {len(set(words))} "
                                   "distinct words, expected 7776", "",
                                   "reinstall vaultpy"))
    return words


def _ssh_ed25519(secret_id: str) -> Value:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    return Value(secret_id, private, _ssh_public_line(key, secret_id))


def _ssh_public_line(key: Any, secret_id: str) -> bytes:
    """``ssh-ed25519 AAAA… <id>`` and a newline: the .pub of an ed25519 private key."""
    from cryptography.hazmat.primitives import serialization

    public: bytes = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                  serialization.PublicFormat.OpenSSH)
    return public + f" {secret_id}\n".encode()


def _x25519(secret_id: str) -> Value:
    from vaultpy import age

    secret_key, public = age.generate_x25519()
    text = f"# public key: {public}\n{secret_key}\n"
    return Value(secret_id, text.encode(), f"{public}\n".encode())


def _wireguard(secret_id: str) -> Value:
    # Clamped as `wg genkey` clamps it (RFC 7748 §5): the same key either way, but the
    # bytes are then what WireGuard's own tools would have written.
    raw = bytearray(pysecrets.token_bytes(32))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    private = base64.b64encode(bytes(raw)) + b"\n"
    return Value(secret_id, private, _wireguard_public(private))


def _wireguard_public(private: bytes) -> bytes:
    """``wg pubkey`` of a private key file's bytes; ValueError says why it is not one."""
    import binascii

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    try:
        raw = base64.b64decode(private.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a WireGuard private key (base64, as wg genkey prints it)") \
            from None
    if len(raw) != 32:
        raise ValueError(f"not a WireGuard private key ({len(raw)} bytes, not 32)")
    public = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(public) + b"\n"


def public_half(spec: GenerateSpec, secret_id: str, private: bytes) -> bytes:
    """The ``<id>.pub`` bytes of a key pair's master plaintext, as generate writes them;
    ValueError says why ``private`` is not such a key."""
    if spec.kind == "ssh-ed25519":
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_ssh_private_key(private, None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise ValueError("not an unencrypted OpenSSH private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError("not an ed25519 private key")
        return _ssh_public_line(key, secret_id)
    if spec.kind == "x25519":
        from vaultpy import age

        keys = [line.strip() for line in private.decode("utf-8", "replace").splitlines()
                if line.strip().startswith("AGE-SECRET-KEY-1")]
        if len(keys) != 1:
            raise ValueError("not an age X25519 identity (one AGE-SECRET-KEY-1… line)")
        return f"{age.x25519_recipient(keys[0])}\n".encode()
    if spec.kind == "wireguard":
        return _wireguard_public(private)
    raise ValueError(f"{spec} makes no key pair")


def _command(cfg: Config, secret: Secret, command: str) -> Value:
    where = f"{key_path('secrets', secret.id)}.generate"
    env = {**os.environ, "VAULTPY_SECRET_ID": secret.id, "VAULTPY_REPO": str(cfg.root)}
    from vaultpy.masters import MAX_PLAINTEXT

    try:
        proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=cfg.root, env=env,
                                stdout=subprocess.PIPE)
    except OSError as exc:
        raise VaultpyError(Problem(display_path(cfg.path), f"cannot run the command: "
                                   f"{exc.strerror}", where, "nothing was written")) from None
    too_much = Problem(display_path(cfg.path), f"command {command!r} printed more than "
                       f"{MAX_PLAINTEXT >> 20} MiB", where, "a secret is held in RAM on "
                       "every host it goes to; nothing was written")
    assert proc.stdout is not None
    with proc, proc.stdout:
        # Read at most what a master may hold (and its line ending): `yes` filled the
        # memory until the OOM killer came.
        printed = fsutil.read_at_most(proc.stdout.fileno(), MAX_PLAINTEXT + 2)
        if printed is None:
            proc.kill()
        returncode = proc.wait()
    if printed is None:
        raise VaultpyError(too_much)
    if returncode != 0:
        raise VaultpyError(Problem(display_path(cfg.path), f"command {command!r} failed "
                                   f"(exit {returncode})", where,
                                   "fix the command; nothing was written"))
    # `echo value` ends its line: the value is what is before it (one line ending only,
    # unlike the shell's $(…), so a value that ends in blank lines keeps them).
    out = printed
    out = out[:-2] if out.endswith(b"\r\n") else out[:-1] if out.endswith(b"\n") else out
    if len(out) > MAX_PLAINTEXT:
        raise VaultpyError(too_much)
    if not out:
        raise VaultpyError(Problem(display_path(cfg.path), f"command {command!r} printed "
                                   "nothing" + (" but a line ending" if printed else ""),
                                   where, "it must print the secret on its "
                                   "standard output; nothing was written"))
    return Value(secret.id, out)


def make(cfg: Config, secret: Secret) -> Value:
    """Make a new value for ``secret`` (which must have ``generate``), in memory."""
    spec = secret.generate
    if spec is None:
        raise VaultpyError(no_generator(cfg, secret.id))
    return make_value(spec, secret.id, lambda cmd: _command(cfg, secret, cmd))


def make_value(spec: GenerateSpec, secret_id: str, run_command: Any = None) -> Value:
    kind, n = spec.kind, spec.size
    if kind == "alnum":
        return Value(secret_id, "".join(pysecrets.choice(ALNUM) for _ in range(n)).encode())
    if kind == "hex":
        return Value(secret_id, pysecrets.token_hex(n).encode())
    if kind == "base64":
        return Value(secret_id, base64.b64encode(pysecrets.token_bytes(n)))
    if kind == "passphrase":
        words = wordlist()
        return Value(secret_id, PASSPHRASE_SEPARATOR.join(
            pysecrets.choice(words) for _ in range(n)).encode())
    if kind == "ssh-ed25519":
        return _ssh_ed25519(secret_id)
    if kind == "x25519":
        return _x25519(secret_id)
    if kind == "wireguard":
        return _wireguard(secret_id)
    if kind == "command" and run_command is not None:
        value: Value = run_command(spec.command)
        return value
    raise ValueError(f"cannot generate {spec}")      # unreachable: the model validated it


def no_generator(cfg: Config, secret_id: str) -> Problem:
    return Problem(display_path(cfg.path), f"secret {secret_id!r} has no generate = …",
                   key_path("secrets", secret_id), 'add e.g. generate = "alnum:32", or change it '
                   f"by hand with vaultpy edit {secret_id}")


def public_path(secret: Secret) -> Path:
    """Where a key pair's public half lives (:attr:`Secret.public_file`, the one rule,
    which hosts.toml's validation also uses)."""
    path = secret.public_file
    if path is None:
        raise ValueError(f"secret {secret.id!r} makes no key pair")
    return path


# --------------------------------------------------------------------------- rotation state

def rotation_path(cfg: Config) -> Path:
    return cfg.secrets_dir / ROTATION_FILE


def load_rotation(cfg: Config) -> dict[str, dt.datetime]:
    """``secrets/rotation.toml`` as id → last rotation (UTC); empty if there is none."""
    path = rotation_path(cfg)
    shown = display_path(path)
    try:
        text = fsutil.read_regular(path)[0].decode("utf-8")     # a FIFO must not hang
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise VaultpyError(Problem(shown, f"cannot read: {reason}", "",
                                   "restore it from git")) from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise VaultpyError(Problem(shown, f"not valid TOML: {exc}", "",
                                   "restore it from git (vaultpy rotate needs it whole)")
                           ) from None
    problems: list[Problem] = []
    if doc.get("version", 1) != 1:
        problems.append(Problem(shown, f"unsupported version {doc.get('version')!r}",
                                "version", "this vaultpy reads version 1"))
    for key in doc:
        if key not in ("version", "rotated"):
            problems.append(Problem(shown, "unknown key", toml_key(key),
                                    "allowed keys: version, rotated"))
    table = doc.get("rotated", {})
    out: dict[str, dt.datetime] = {}
    if not isinstance(table, dict):
        problems.append(Problem(shown, "expected a table", "rotated", "write it as [rotated]"))
        table = {}
    for sid, when in table.items():
        if isinstance(when, dt.datetime):
            out[sid] = when if when.tzinfo else when.replace(tzinfo=_UTC)
        elif isinstance(when, dt.date):
            out[sid] = dt.datetime(when.year, when.month, when.day, tzinfo=_UTC)
        else:
            problems.append(Problem(shown, f"expected a date-time, got {when!r}",
                                    key_path("rotated", sid), "write it like 2025-05-01T10:00:00Z"))
    if problems:
        raise VaultpyError(problems)
    return out


def dump_rotation(cfg: Config, state: dict[str, dt.datetime]) -> bytes:
    """rotation.toml's bytes: declared secrets only, sorted by id, UTC to the second."""
    import tomli_w

    rotated = {sid: when.astimezone(_UTC).replace(microsecond=0)
               for sid, when in sorted(state.items()) if sid in cfg.secrets}
    return tomli_w.dumps({"version": 1, "rotated": rotated}).encode()


@dataclass(frozen=True)
class Due:
    """A secret whose ``rotate_days`` has passed (or whose rotation was never recorded)."""

    id: str
    rotate_days: int
    last: dt.datetime | None

    def age_days(self, at: dt.datetime) -> int | None:
        return None if self.last is None else (at - self.last).days


def due(cfg: Config, at: dt.datetime | None = None,
        state: dict[str, dt.datetime] | None = None) -> list[Due]:
    """Secrets with ``rotate_days`` that are due at ``at`` (default: now).  A secret whose
    master file does not exist yet is not listed (check reports the missing file)."""
    at = at or now()
    chosen = [s for s in cfg.secrets.values() if s.rotate_days is not None]
    if not chosen:
        return []
    state = load_rotation(cfg) if state is None else state
    out = []
    for s in chosen:
        assert s.rotate_days is not None
        last = state.get(s.id)
        if last is None and not s.file.exists():
            continue
        # A date in the future (beyond a day of clock skew) would silence the secret
        # for years: it is due, like one never recorded.
        if (last is None or at - last >= dt.timedelta(days=s.rotate_days)
                or last - at > dt.timedelta(days=1)):
            out.append(Due(s.id, s.rotate_days, last))
    return out


def overdue_problems(cfg: Config, at: dt.datetime | None = None) -> list[Problem]:
    """One problem per secret due for rotation (``check`` shows them as warnings)."""
    at = at or now()
    shown = display_path(rotation_path(cfg))
    out = []
    for d in due(cfg, at):
        fix = (f"run vaultpy rotate {d.id} (or vaultpy rotate --due)"
               if cfg.secrets[d.id].generate is not None else
               f"change it (vaultpy edit {d.id}), then record it: vaultpy rotate --mark {d.id}")
        if d.last is None:
            msg = f"rotate_days = {d.rotate_days} but no rotation is recorded"
        elif d.last > at:
            msg = f"rotation recorded in the future ({d.last:%Y-%m-%d})"
        else:
            msg = (f"overdue for rotation: last rotated {d.last:%Y-%m-%d} "
                   f"({d.age_days(at)} days ago; rotate_days = {d.rotate_days})")
        out.append(Problem(shown, msg, key_path("secrets", d.id), fix))
    return out


# --------------------------------------------------------------------------- commands

@dataclass
class Result:
    generated: list[str] = field(default_factory=list)      # ids with a new value
    marked: list[str] = field(default_factory=list)         # rotation recorded only
    skipped: list[tuple[str, str]] = field(default_factory=list)   # (id, why)
    written: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)   # due but not generatable, …
    repaired: list[str] = field(default_factory=list)       # key pairs given their .pub

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "generated": self.generated, "marked": self.marked,
                "skipped": [{"id": i, "reason": r} for i, r in self.skipped],
                "repaired": self.repaired, "written": [str(p) for p in self.written],
                "problems": [p.as_dict() for p in self.problems]}


def _check_ids(cfg: Config, ids: Sequence[str]) -> None:
    problems = []
    for sid in ids:
        if sid not in cfg.secrets:
            problems.append(Problem(display_path(cfg.path), f"unknown secret id {sid!r}",
                                    "secrets",
                                    f"declare [{key_path('secrets', sid)}] in hosts.toml"))
    if problems:
        raise VaultpyError(problems)


def generate(cfg: Config, ids: Sequence[str] = (), *, at: dt.datetime | None = None,
             identity_files: Sequence[Path] = (), ask: Any = None) -> Result:
    """Create the master files of generated secrets that do not exist yet.

    Without ``ids``: every secret with ``generate`` whose master file is missing.
    Named ids must have ``generate``; an existing one is skipped (rotate replaces it),
    unless it is a key pair whose ``<id>.pub`` is missing (a run killed between its
    renames, before masters were renamed last): that public half is derived again from
    the master, decrypted with the master identity (``identity_files``, ``ask``).
    """
    _check_ids(cfg, ids)
    writes.settle(cfg)          # a killed generate's masters count as made
    missing = [no_generator(cfg, sid) for sid in ids if cfg.secrets[sid].generate is None]
    if missing:
        raise VaultpyError(missing)
    result = Result()
    chosen = list(dict.fromkeys(ids)) or [s.id for s in cfg.secrets.values() if s.generate]
    todo, lacking = [], []
    for sid in chosen:
        secret = cfg.secrets[sid]
        if not secret.file.exists():
            todo.append(sid)
        elif secret.public_file is not None and not os.path.lexists(secret.public_file):
            lacking.append(sid)
        else:
            result.skipped.append((sid, "exists (vaultpy rotate replaces it)"))
    repairs = _public_halves(cfg, lacking, result, identity_files, ask) if lacking else []
    _produce_and_write(cfg, todo, [], result, at or now(), create=True, repairs=repairs)
    return result


def _public_halves(cfg: Config, ids: list[str], result: Result,
                   identity_files: Sequence[Path], ask: Any) -> list[Value]:
    """The public halves of key-pair masters whose ``<id>.pub`` is missing, derived
    from the decrypted masters; one problem in ``result`` for each that cannot be."""
    from vaultpy import age, identities, masters

    def problem(sid: str, why: str, fix: str) -> None:
        secret = cfg.secrets[sid]
        assert secret.public_file is not None
        result.problems.append(Problem(
            display_path(secret.public_file), f"missing beside {display_path(secret.file)} "
            f"(an interrupted run?), and {why}", key_path("secrets", sid), f"{fix}, or run vaultpy "
            f"rotate {sid} for a new key pair"))

    try:
        keys = identities.load(cfg, identity_files, ask or age.passphrase_from_env_or_tty)
    except VaultpyError as exc:
        for sid in ids:
            why = exc.problems[0]
            problem(sid, f"it cannot be derived from the master ({why.file}: {why.message})",
                    f"give the master identity (-i FILE or VAULTPY_IDENTITY) to vaultpy "
                    f"generate {sid}")
        return []
    out = []
    for sid in ids:
        spec = cfg.secrets[sid].generate
        assert spec is not None
        try:
            private = masters.decrypt(cfg, sid, keys)
        except VaultpyError as exc:
            problem(sid, f"the master cannot be decrypted ({exc.problems[0].message})",
                    f"fix that and run vaultpy generate {sid} again")
            continue
        try:
            out.append(Value(sid, private, public_half(spec, sid, private)))
        except ValueError as exc:
            problem(sid, f"the master holds no key to derive it from ({exc})",
                    f"write the public key to it by hand (vaultpy decrypt {sid})")
    return out


def rotate(cfg: Config, ids: Sequence[str] = (), *, due_only: bool = False,
           mark: bool = False, at: dt.datetime | None = None) -> Result:
    """Replace the values of ``ids`` (or, with ``due_only``, of the secrets due for
    rotation) with new ones; with ``mark``, only record that ``ids`` were rotated by
    hand now."""
    at = at or now()
    _check_ids(cfg, ids)
    if not ids and not due_only:
        raise UsageError(Problem("vaultpy rotate", "nothing to rotate", "",
                                 "name the secret ids that were rotated by hand" if mark
                                 else "name the secret ids, or pass --due"))
    if mark and due_only:
        raise UsageError(Problem("vaultpy rotate", "--mark and --due do not go together",
                                 "", "name the ids that were rotated by hand"))
    result = Result()
    writes.settle(cfg)
    state = load_rotation(cfg)          # a damaged state file stops the run up front
    if mark:
        _produce_and_write(cfg, [], list(dict.fromkeys(ids)), result, at, state)
        return result
    chosen = list(dict.fromkeys(ids))
    if due_only:                        # ids, if given, narrow the due ones down
        wanted, chosen = set(chosen), []
        for d in due(cfg, at, state):
            if wanted and d.id not in wanted:
                continue
            if cfg.secrets[d.id].generate is None:
                result.problems.append(Problem(
                    display_path(rotation_path(cfg)), "due for rotation but has no "
                    "generate = …", key_path("secrets", d.id), f"change it (vaultpy edit {d.id}), "
                    f"then record it: vaultpy rotate --mark {d.id}"))
            else:
                chosen.append(d.id)
        result.skipped += [(sid, "not due") for sid in sorted(wanted - {*chosen} - {
            p.field.removeprefix("secrets.") for p in result.problems})]
    else:
        missing = [no_generator(cfg, sid) for sid in chosen
                   if cfg.secrets[sid].generate is None]
        if missing:
            raise VaultpyError(missing)
    _produce_and_write(cfg, chosen, [], result, at, state)
    return result


def _produce_and_write(cfg: Config, todo: list[str], marks: list[str], result: Result,
                       at: dt.datetime, state: dict[str, dt.datetime] | None = None, *,
                       create: bool = False, repairs: Sequence[Value] = ()) -> None:
    """Make the values of ``todo``, then write them and the rotation state in one
    :func:`~vaultpy.masters.write_all`.  ``create`` (generate): the master files must
    still be absent then; one another writer created meanwhile is never replaced.
    ``repairs``: key pairs whose master exists, to be given their missing ``.pub``.
    ``state``: rotation.toml as the caller read it (None: read now, so a damaged file
    stops the run before any generator); it is read again under the lock to be updated.

    A run killed between the renames leaves their journal: the next command that takes
    the lock finishes them (vaultpy/_internal/writes.py).  The "done" marker is still
    renamed last (for generate the masters, for rotate rotation.toml), so a state
    without the journal (an older vaultpy's crash, a .pub deleted by hand) is one the
    next run repairs: a missing master is made again, a missing .pub derived again."""
    if not todo and not marks and not repairs:
        return
    from vaultpy import age

    # A damaged state file stops the run before any command: generator runs (its side
    # effects would be for nothing).
    if state is None:
        load_rotation(cfg)
    values = [make(cfg, cfg.secrets[sid]) for sid in todo]      # all in memory first
    recorded: dict[str, dt.datetime] = {}       # what this run records in rotation.toml
    unless_known: dict[str, dt.datetime] = {}   # … unless it holds a date already
    publics: list[tuple[Path, bytes, int]] = []
    masters_: list[tuple[Path, bytes, int]] = []
    for v in values:
        secret = cfg.secrets[v.id]
        masters_.append((secret.file, age.encrypt(v.secret, cfg.recipients), 0o644))
        if v.public is not None:
            publics.append((public_path(secret), v.public, 0o644))
        recorded[v.id] = at
    for v in repairs:
        secret = cfg.secrets[v.id]
        assert v.public is not None
        publics.append((public_path(secret), v.public, 0o644))
        with contextlib.suppress(OSError):  # made by a killed run: when it was made
            made = dt.datetime.fromtimestamp(secret.file.stat().st_mtime, _UTC)
            unless_known[v.id] = made.replace(microsecond=0)
    for sid in marks:
        recorded[sid] = at

    def rotation_state() -> bytes:
        # Read again under the lock: another generate or rotate may have recorded
        # its secrets since this run read the file, and they must stay.
        return dump_rotation(cfg, {**unless_known, **load_rotation(cfg), **recorded})

    rotation: tuple[Path, bytes | Callable[[], bytes], int] = (
        rotation_path(cfg), rotation_state, 0o644)
    files = [*publics, rotation, *masters_] if create else [*publics, *masters_, rotation]
    new = {cfg.secrets[v.id].file: v.id for v in values} if create else {}
    new.update({public_path(cfg.secrets[v.id]): v.id for v in repairs})
    from vaultpy import masters

    try:
        masters.write_all(cfg, files, new=new)
    except masters.Appeared as exc:
        raise VaultpyError([Problem(
            display_path(path), "created by another writer while vaultpy generate made "
            "its value; nothing was written", key_path("secrets", new[path]),
            f"it is kept as written (vaultpy rotate {new[path]} replaces it); run "
            "vaultpy generate again for any others") for path in exc.paths]) from None
    result.generated += todo
    result.marked += marks
    result.repaired += [v.id for v in repairs]
    result.written += [path for path, _, _ in files]
