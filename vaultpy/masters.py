"""Master secrets by id: ``encrypt``, ``decrypt``, ``rekey``.

Master files are encrypted to the ``[vaultpy] recipients``; every write is
atomic (temp + fsync + rename + fsync of the directory) and serialised with
renc by the repository lock.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from vaultpy import age, identities, signing
from vaultpy._internal import ageformat, fsutil, ledger, sigint, writes
from vaultpy.cache import missing_master
from vaultpy.errors import Problem, VaultpyError, display_path, key_path, os_problem
from vaultpy.model import Config
from vaultpy.recovery import refuse_if_rotating


def read_master(cfg: Config, secret_id: str) -> bytes:
    secret = cfg.secret(secret_id)
    try:
        return fsutil.read_regular(secret.file)[0]
    except FileNotFoundError:
        raise VaultpyError(missing_master(cfg, secret_id)) from None
    except OSError as exc:
        raise VaultpyError(os_problem(secret.file, exc, "read master file")) from None


# The most plaintext `encrypt` takes: every host holds its secrets in RAM, and a
# stream without end (`--file /dev/zero`) must stop with an error, not exhaust memory.
MAX_PLAINTEXT = 64 << 20

ANY = object()      # write_master(based_on=ANY): last writer wins (encrypt, pull)


def holds_a_value(cfg: Config, secret_id: str) -> bool:
    """Whether ``secret_id``'s master file holds a value an empty one would replace:
    it exists and is no age file of empty plaintext.  Told without a key (``encrypt``
    needs none): such a file's payload is a nonce and one empty chunk.  A master that
    cannot be read or is no well-formed age file counts as a value."""
    try:
        data = fsutil.read_regular(cfg.secret(secret_id).file)[0]
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        return ageformat.parse(data).payload_size != ageformat.NONCE + ageformat.TAG
    except ageformat.FormatError:
        return True


def refuse_empty_over_a_value(cfg: Config, secret_id: str, plaintext: bytes,
                              source: str) -> None:
    """``encrypt`` of an empty input over a secret that holds a value: refused, before
    anything is written (``vaultpy encrypt db </dev/null``, an unset variable piped in
    or an empty file replaced the value, and only warned once it was gone).  A new
    secret, or one already empty, may be stored empty; so may any with --allow-empty.
    Checked before the lock is taken: encrypt's last writer wins all the same.  A lone
    line break counts as empty here: ``echo "$UNSET" | vaultpy encrypt db`` gives one."""
    if plaintext not in (b"", b"\n", b"\r\n") or not holds_a_value(cfg, secret_id):
        return
    file = cfg.secret(secret_id).file
    what, value = (("is empty", "an empty one") if not plaintext else
                   ("holds only a line break (an unset variable echoed?)", "that"))
    raise VaultpyError(Problem(
        display_path(file), f"{source} {what}, and storing it would replace the value "
        f"of {secret_id} with {value}; nothing was written",
        key_path("secrets", secret_id),
        f"check what feeds {source}; to store {'an empty value' if not plaintext else 'it'}"
        ", add --allow-empty"))


def value_warnings(cfg: Config, secret_id: str, plaintext: bytes) -> list[str]:
    """What a user may not mean by a value just given (warnings, never errors): an
    empty one, or a final newline that a template without ``trim`` puts mid-line."""
    from vaultpy import templates

    if not plaintext:
        return [f"{secret_id} is now empty"]
    if not plaintext.endswith(b"\n"):
        return []
    where: dict[str, list[str]] = {}
    for host in cfg.hosts.values():
        for t in host.templates:
            if secret_id in t.refs and not t.trim and templates.mid_line(t.content, secret_id):
                where.setdefault(t.name, []).append(host.name)
    return [f"{secret_id} ends with a newline, and template {name} (on {', '.join(hosts)}) "
            "has text after it on the same line: the newline lands there; set trim = true "
            "on the template, or store the value without it" for name, hosts in where.items()]


def write_master(cfg: Config, secret_id: str, plaintext: bytes, armor: bool = False, *,
                 lock: bool = True, based_on: object = ANY, keep_unsaved: bool = False,
                 record: bool = True) -> Path:
    """Encrypt ``plaintext`` to the master recipients and replace the master file
    (``lock=False``: the caller already holds the repository lock).

    ``based_on``: the master bytes the plaintext was derived from (None: there was no
    file).  If the file holds anything else by the time the lock is held, someone
    wrote it meanwhile: nothing is overwritten, the new ciphertext is kept beside it
    (see :func:`_keep_conflict`) and the error says where.

    ``keep_unsaved``: the plaintext exists nowhere else (``edit``): if the master
    cannot be written (a full disk, an I/O error), the new ciphertext is kept anyway
    (see :func:`_keep_unsaved`) and the error says where.

    ``record``: note the new value as one vaultpy wrote here (vaultpy/signing.py), which
    renc signs without asking; rekey does only for a value it could vouch for before.
    """
    secret = cfg.secret(secret_id)
    ciphertext = age.encrypt(plaintext, cfg.recipients, armor=armor)
    try:
        secret.file.parent.mkdir(parents=True, exist_ok=True)
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        with fsutil.locked(cfg.lock_path) if lock else contextlib.nullcontext():
            how = "encrypted"
            try:
                if lock:
                    # An interrupted write is finished first (writes.lock); one that
                    # cannot be must not lose an edit either.
                    writes.finish(cfg)
                    # A master key rotation is unfinished: this ciphertext is for the old
                    # recipients, and the rotation would take it as already done.
                    how = "encrypted to the old recipients"
                    refuse_if_rotating(cfg)
            except VaultpyError as exc:
                kept = _keep_unsaved(secret.file, ciphertext) if keep_unsaved else None
                if kept is None:
                    raise
                raise VaultpyError([Problem(p.file, p.message, p.field,
                                            f"{p.hint}; your edit is kept, {how}, in "
                                            f"{display_path(kept)}")
                                    for p in exc.problems]) from None
            if based_on is not ANY and _current(secret.file) != based_on:
                _keep_conflict(cfg, secret_id, ciphertext)
            fsutil.atomic_write(secret.file, ciphertext)
            if record:                  # (renc: a value vaultpy wrote here)
                ledger.record_written(secret.file, ciphertext, [secret_id])
    except OSError as exc:
        problem = os_problem(secret.file, exc, "write master file")
        kept = _keep_unsaved(secret.file, ciphertext) if keep_unsaved else None
        if kept is not None:
            problem = Problem(problem.file, problem.message, key_path("secrets", secret_id),
                              f"your edit is kept, encrypted, in {display_path(kept)}: once "
                              f"this is fixed, mv {display_path(kept)} "
                              f"{display_path(secret.file)}")
        raise VaultpyError(problem) from None
    return secret.file


def _keep_unsaved(master: Path, ciphertext: bytes) -> Path | None:
    """Keep a master's new ciphertext that could not replace it: beside it if that can
    be written, else in a fresh directory in RAM (it is ciphertext: safe anywhere, but
    gone at reboot).  None if neither can be written."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    beside = master.with_name(f"{master.name}.unsaved-{stamp}-{os.getpid()}")
    try:
        fsutil.create_new(beside, ciphertext, 0o644)
        return beside
    except OSError:
        pass
    try:        # a new, private directory: the name is only given once the file is whole
        ram = "/dev/shm" if os.path.isdir("/dev/shm") else None
        folder = Path(tempfile.mkdtemp(prefix="vaultpy-unsaved-", dir=ram))
        kept = folder / master.name
        fsutil.write_new(kept, ciphertext, 0o644)
        return kept
    except OSError:
        return None


class Appeared(Exception):
    """:func:`write_all`: files of ``new`` exist by the time the lock is held (another
    writer created them meanwhile); nothing was written."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(", ".join(map(str, paths)))
        self.paths = paths


def _now(path: Path) -> bytes | None:
    """The bytes at ``path`` now, or None if absent (a FIFO there: OSError)."""
    try:
        return fsutil.read_regular(path)[0]
    except FileNotFoundError:
        return None


def write_all(cfg: Config, files: Sequence[tuple[Path, bytes | Callable[[], bytes], int]],
              *, new: Collection[Path] = (),
              based_on: Mapping[Path, bytes | None] | None = None) -> None:
    """Write every file durably under a temp name, then rename them all under one hold of
    the lock: a reader that takes the lock (renc) sees all of them or none, and a failed
    rename puts back what the earlier ones replaced (``rotate`` of a key pair: never a
    new private key beside the old .pub; ``pull``: never half of a change).  Files are
    renamed in the order given.

    ``new``: paths of ``files`` that must not exist (``generate`` creates them; another
    writer may have since it looked).  If one does once the lock is held, or appears
    before its rename (which never replaces it), :class:`Appeared` is raised and
    nothing is written.

    A file's data may be a function: it is called under the lock (a read-modify-write
    of a file other writers update, such as rotation.toml); what it raises stops the
    run before anything is renamed.

    ``based_on``: for some paths, the bytes the caller read before deciding (None: the
    file was absent).  If one holds anything else once the lock is held, another writer
    changed it meanwhile: nothing is written, and each such file is named."""
    new = set(new)
    seen: set[str] = set()
    for path, _, _ in files:        # the second would silently replace the first
        where = os.path.realpath(path)
        if where in seen:
            raise VaultpyError(Problem(display_path(path), "two files of one write would "
                                       "go here; nothing was written", "",
                                       "give each secret a file of its own in hosts.toml"))
        seen.add(where)
    temps: list[tuple[Path, Path]] = []
    written: list[bytes] = []       # each file's bytes, for the ledger (signing.py)
    current: Path = cfg.secrets_dir
    try:
        for path, _, _ in files:
            current = path
            path.parent.mkdir(parents=True, exist_ok=True)
        current = cfg.cache_dir
        with writes.lock(cfg):
            refuse_if_rotating(cfg)     # a master written now would miss the new key
            appeared = [path for path in new if os.path.lexists(path)]
            if appeared:
                raise Appeared(appeared)
            moved = [path for path, bytes_read in (based_on or {}).items()
                     if _now(path) != bytes_read]
            if moved:
                raise VaultpyError([Problem(display_path(p), "written by another command "
                                            "while this one ran; nothing was written", "",
                                            "run the command again: it starts from the "
                                            "new value") for p in moved])
            # Each rename done, and what it replaced: bytes, mode and times (or nothing).
            before: list[tuple[Path, Path, tuple[bytes, os.stat_result] | None]] = []
            try:
                for path, data, mode in files:
                    current = path
                    tmp = fsutil.tmp_name(path)
                    # Listed first: a Ctrl-C can land as the write returns.
                    temps.append((tmp, path))
                    payload = data() if callable(data) else data
                    fsutil.write_new(tmp, payload, mode)
                    written.append(payload)
                    fsutil.fsync_path(tmp)
                # From here on the write is decided: killed, it is finished by the next
                # command that takes the lock (vaultpy/_internal/writes.py).
                current = writes.path(cfg)
                writes.begin(cfg, [(tmp, path, path in new) for tmp, path in temps])
                for tmp, path in temps:
                    current = path
                    # Noted before the rename: an exception (a Ctrl-C) can land as it
                    # returns.  _put_back skips a file whose temp name is still there.
                    if path in new:
                        before.append((tmp, path, None))
                        try:
                            fsutil.rename_new(tmp, path)
                        except FileExistsError:
                            raise Appeared([path]) from None
                        continue
                    # read_regular: a FIFO there must not hang this with the lock held
                    old = fsutil.read_regular(path) if path.exists() else None
                    before.append((tmp, path, old))
                    os.rename(tmp, path)
            except BaseException:
                # All or nothing: a new private key beside the old .pub (or a new value
                # without its rotation.toml record) must not stay.  The renames are
                # undone (the new bytes back under their temp names), then the journal
                # goes, then the temp files.  Killed before the journal is gone, or if a
                # file cannot be put back, the next command finishes the write instead:
                # every temp file it lists is there again.
                with sigint.held():
                    if _put_back(before):
                        with contextlib.suppress(OSError):
                            writes.end(cfg, undone=True)
                            for tmp, _ in temps:
                                with contextlib.suppress(OSError):
                                    os.unlink(tmp)
                raise
            for d in sorted({path.parent for _, path in temps}):
                current = d
                fsutil.fsync_path(d, directory=True)
            with contextlib.suppress(OSError):      # left behind, it lists nothing to do
                writes.end(cfg)
            ids_at: dict[str, list[str]] = {}
            for sid, secret in cfg.secrets.items():
                ids_at.setdefault(os.path.realpath(secret.file), []).append(sid)
            for (_tmp, path), payload in zip(temps, written, strict=True):
                ledger.record_written(path, payload,
                                       ids_at.get(os.path.realpath(path), []))
    except OSError as exc:
        raise VaultpyError(os_problem(current, exc, "write")) from None


def _put_back(before: list[tuple[Path, Path, tuple[bytes, os.stat_result] | None]]
              ) -> bool:
    """Undo :func:`write_all`'s renames, last first: the new bytes go back to their temp
    name, and the file is as it was (bytes, mode and times; or absent).  False if one
    could not be put back (the journal then stays, to finish the write).  A file whose
    temp file still exists was not renamed (a temp name is unique): it is left as is.

    A file that replaced another is never absent meanwhile: its new bytes get their temp
    name back as a hard link, then the old file is renamed over it.  Killed in between,
    the next command finishes the write; and hosts.toml (an import's), by which every
    command finds the journal, is still there."""
    for tmp, path, old in reversed(before):
        if os.path.lexists(tmp):
            continue
        try:
            if old is None:
                os.rename(path, tmp)
                continue
            try:
                os.link(path, tmp, follow_symlinks=False)
            except OSError:             # no hard links here: as absent for a moment
                os.rename(path, tmp)
            fsutil.atomic_write(path, old[0], old[1].st_mode & 0o7777)
            os.utime(path, ns=(old[1].st_atime_ns, old[1].st_mtime_ns))
        except OSError:
            return False
    return True


def _current(path: Path) -> bytes | None:
    try:
        return fsutil.read_regular(path)[0]
    except FileNotFoundError:
        return None


def _keep_conflict(cfg: Config, secret_id: str, ciphertext: bytes) -> NoReturn:
    """The master changed under a read-modify-write (two ``edit``s at once): keep the
    loser's version, encrypted like any master, in ``<id>.age.conflict-<time>``."""
    secret = cfg.secret(secret_id)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = secret.file.with_name(f"{secret.file.name}.conflict-{stamp}")
    n = 1
    while True:
        try:
            fsutil.create_new(kept, ciphertext, 0o644)     # complete or absent
            break
        except FileExistsError:
            n += 1
            kept = secret.file.with_name(f"{secret.file.name}.conflict-{stamp}-{n}")
    raise VaultpyError(Problem(
        display_path(secret.file), "changed by another writer while you were editing it; "
        "it was not overwritten", key_path("secrets", secret_id),
        f"your version is kept, encrypted, in {display_path(kept)}: read it with "
        f"vaultpy decrypt --file {display_path(kept)}, merge it into the other writer's "
        f"with vaultpy edit {secret_id}, then delete it"))


def decrypt(cfg: Config, secret_id: str, ids: Sequence[age.Identity]) -> bytes:
    data = read_master(cfg, secret_id)
    return age.decrypt(data, ids, display_path(cfg.secret(secret_id).file),
                       secret_id=secret_id)


# The largest age file that can hold a secret vaultpy keeps: MAX_PLAINTEXT bytes,
# armored (base64, 64-column lines), with room to spare for its header.  What
# ``decrypt --file`` and an import read at the most.
MAX_AGE_FILE = MAX_PLAINTEXT * 14 // 10 + (1 << 20)


def decrypt_file(path: Path, ids: Sequence[age.Identity]) -> bytes:
    """A file encrypted like a master (an edit conflict's kept version, a backup).  Named
    on the command line, it may be a pipe (``--file <(…)``), as ``encrypt --file`` and
    ``-i`` take; a device that never ends stops at the cap."""
    try:
        data = fsutil.read_named(path, MAX_AGE_FILE)
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "read the file")) from None
    if data is None:
        raise VaultpyError(Problem(display_path(path), f"is more than {MAX_AGE_FILE >> 20} MiB, "
                                   "more than any file vaultpy writes", "",
                                   "give the age file itself"))
    return age.decrypt(data, ids, display_path(path))


def rekey(cfg: Config, ids: Sequence[str] = (), identity_files: Sequence[Path] = (),
          ask: age.PassphraseFn = age.passphrase_from_env_or_tty) -> list[Path]:
    """Re-encrypt master files to the current recipients.

    Every file is decrypted first, so a file no key can open stops the run
    before anything is written; then each file is replaced atomically.
    """
    writes.settle(cfg)      # a master an interrupted write was making is one to rekey
    chosen = list(ids) or [s for s, sec in cfg.secrets.items() if sec.file.exists()]
    for sid in chosen:
        cfg.secret(sid)
    keys = identities.load(cfg, identity_files, ask)
    seen: dict[str, bytes] = {}
    plain: dict[str, tuple[bytes, bool]] = {}
    for sid in chosen:
        data = seen[sid] = read_master(cfg, sid)
        plain[sid] = (age.decrypt(data, keys, display_path(cfg.secrets[sid].file),
                                  secret_id=sid), ageformat.is_armored(data))
    # One hold of the lock from here to the last write: a master another writer
    # (encrypt, edit) replaced meanwhile is decrypted again, never overwritten
    # with the plaintext read before.
    seen_now: dict[str, bytes] = {}
    with writes.held(cfg, "lock the repository"):
        for sid in chosen:
            data = seen_now[sid] = read_master(cfg, sid)
            if data != seen[sid]:
                plain[sid] = (age.decrypt(data, keys, display_path(cfg.secrets[sid].file),
                                          secret_id=sid), ageformat.is_armored(data))
        # A value re-encrypted is recorded as vaultpy's only if it was vouched for: a
        # forged master must not come out of a rekey as one renc signs unasked.
        vouchers = signing.Vouchers.of(cfg)
        return [write_master(cfg, sid, text, armor, lock=False,
                             record=vouchers is None or vouchers.vouch_bytes(
                                 sid, cfg.secrets[sid].file, seen_now[sid]))
                for sid, (text, armor) in plain.items()]
