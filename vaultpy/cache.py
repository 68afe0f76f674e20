"""The per-host cache: naming (DESIGN §3), the plan, verification and pruning.

    h   = sha256_hex( sha256_hex(master bytes) + "\\n" + "\\n".join(recipients) )
    out = <cache_dir>/<host>/<id>.<h[:32]>.age

A cache file's name is a function of exactly what went into it, so "present"
means "done": renc never re-encrypts an unchanged secret (no git churn), and a
changed master file or host key yields a new name while the old one is stale.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
from binascii import a2b_hex
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR, S_ISLNK, S_ISREG

from vaultpy import age, signing
from vaultpy._internal import ageformat
from vaultpy._internal.fsutil import (
    LINK,
    atomic_write,
    in_use,
    is_tmp,
    open_regular,
    read_regular,
    tmp_prefix,
)

# Naming lives apart (the incremental renc needs it alone); it is this module's API too.
from vaultpy._internal.memo import OWN_FILES
from vaultpy._internal.names import NAME_RE as NAME_RE
from vaultpy._internal.names import _name
from vaultpy._internal.names import cache_hash as cache_hash
from vaultpy._internal.names import cache_name as cache_name
from vaultpy._internal.names import recipients_suffix as recipients_suffix
from vaultpy._internal.record import field, mutable_record, record
from vaultpy.errors import Problem, VaultpyError, display_path, key_path, os_problem

_WRITES_JOURNAL = ".vaultpy-writes"    # vaultpy._internal.writes.JOURNAL, spelled out

TYPE_CHECKING = False       # the incremental renc names cache files without the model
if TYPE_CHECKING:
    from vaultpy.model import Config

@record
class Master:
    """What the plan needs of a master file: its hash, and its payload length when the
    header parses (age's payload length depends only on the plaintext length, so every
    cache file of this secret must have exactly the same)."""

    sha256: str
    payload: int | None
    format_error: str | None = None
    header: ageformat.Header | None = None      # (check compares its stanzas with the
                                                # [vaultpy] recipients)


def read_master_info(path: Path) -> Master:
    data, _st = read_regular(path)
    header: ageformat.Header | None = None
    try:
        header = ageformat.parse(data)
        payload: int | None = header.payload_size
        error = None
    except ageformat.FormatError as exc:
        payload, error = None, str(exc)
    return Master(hashlib.sha256(data).hexdigest(), payload, error, header)


@dataclass(frozen=True, slots=True)
class Item:
    """One ciphertext a host needs: secret ``id`` encrypted to ``recipients`` at ``path``."""

    host: str
    id: str
    dir: str                         # the host's cache directory
    name: str                        # <id>.<hash>.age
    recipients: tuple[str, ...]
    payload: int | None = None       # expected payload length (the master's)

    @property
    def path(self) -> Path:
        return Path(self.dir, self.name)

    @property
    def key(self) -> str:
        return f"{self.host}/{self.name}"


@mutable_record
class Plan:
    items: list[Item] = field(default_factory=list)
    masters: dict[str, Master] = field(default_factory=dict)
    stale: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)   # missing/unreadable masters
    # Host cache directories that did not exist: their items are missing, no stat needed
    absent: set[str] = field(default_factory=set)
    # In cache_dir, what vaultpy never writes there: left alone, and named (foreign()).
    foreign: list[Path] = field(default_factory=list)
    # Host cache directories that are symlinks: never read, written or pruned through
    # (a link to /etc would have had /etc's files removed as stale); their items fail.
    linked: set[str] = field(default_factory=set)

    def broken_ids(self) -> set[str]:
        """The secrets whose master could not be hashed (:attr:`problems`)."""
        return set(self.broken())

    def broken(self) -> dict[str, Problem]:
        """:attr:`problems` by secret id."""
        return {_secret_id(p.field): p for p in self.problems}


def _secret_id(field: str) -> str:
    """The id in ``key_path("secrets", id)``: quoted when it is no bare key (an id
    with a dot), and then not the id as written."""
    key = field.removeprefix("secrets.")
    if key.startswith('"'):
        import json

        return str(json.loads(key))
    return key


def missing_master(cfg: Config, sid: str) -> Problem:
    secret = cfg.secrets[sid]
    signing_key = cfg.signing is not None and cfg.signing.secret == sid
    fix = ("it holds the cache signing key: make a new one with vaultpy signing-key --new"
           if signing_key else
           f"create it with vaultpy generate {sid} (its generate = rule)"
           if secret.generate is not None
           else f"fetch it from Vault with vaultpy pull {sid} (its vault = source)"
           if secret.vault is not None
           else f"create it with vaultpy edit {sid} (or vaultpy encrypt {sid})")
    return Problem(display_path(secret.file), "master file is missing", key_path("secrets", sid),
                   fix)


def master_hashes(cfg: Config, ids: Iterable[str]) -> tuple[dict[str, Master], list[Problem]]:
    hashes: dict[str, Master] = {}
    problems: list[Problem] = []
    for sid in sorted(set(ids)):
        secret = cfg.secrets[sid]
        try:
            hashes[sid] = read_master_info(secret.file)
        except FileNotFoundError:
            problems.append(missing_master(cfg, sid))
        except OSError as exc:
            p = os_problem(secret.file, exc, "read master file")
            problems.append(Problem(p.file, p.message, key_path("secrets", sid), p.hint))
    return hashes, problems


def plan(cfg: Config, hosts: Sequence[str] | None = None) -> Plan:
    """What the cache should hold for ``hosts`` (all by default), and what is stale.

    Only hashing, no crypto and no writes.
    """
    selected = [cfg.hosts[h] for h in hosts] if hosts else list(cfg.hosts.values())
    result = Plan()
    result.masters, result.problems = master_hashes(
        cfg, (sid for h in selected for sid in h.needed))
    # 10,000s of items: plain strings, and cache_name's hash with its parts made once
    masters = {sid: (m.sha256.encode(), m.payload) for sid, m in result.masters.items()}
    for host in selected:
        # A host's at a time: a set of all 10,000 names was 640 KB.  The signed list is
        # no stale file while a signing key is set and the host is given a secret.
        names = set(signing.FILES) if cfg.signing is not None and host.needed else set()
        host_dir = os.path.join(cfg.cache_dir, host.name)
        suffix = recipients_suffix(host.recipients)
        for sid in host.needed:
            master = masters.get(sid)
            if master is None:
                continue
            name = _name(sid, master[0], suffix)
            names.add(name)
            result.items.append(Item(host.name, sid, host_dir, name, host.recipients,
                                     master[1]))
        try:
            if S_ISLNK(os.lstat(host_dir).st_mode):
                result.linked.add(host_dir)
                continue
            entries = sorted(os.listdir(host_dir))
        except FileNotFoundError:
            result.absent.add(host_dir)
            continue
        except NotADirectoryError:      # in the way: each item's check says so
            continue
        except OSError as exc:          # unreadable (another user's): one line
            raise VaultpyError(os_problem(host_dir, exc, "list the host's cache")) from None
        for entry in entries:
            if entry not in names:
                # Stale only if vaultpy could have written it: a file named as it names
                # files.  Anything else is left alone and named (a typo'd cache_dir may
                # make a host's directory someone else's: cache_dir = "/etc", host ssh).
                path = cfg.cache_dir / host.name / entry
                (result.stale if _own_entry(host_dir, entry) else result.foreign).append(path)
    if hosts:   # a --host run: what a killed run left of these hosts' new directories
        prefixes = tuple(tmp_prefix(h.name) for h in selected)
        for entry in _listdir(cfg.cache_dir):
            path = cfg.cache_dir / entry
            if entry.startswith(prefixes) and path.is_dir() and not path.is_symlink() \
                    and not in_use(path):
                (result.stale if holds_cache_files_only(path) else result.foreign).append(path)
    else:
        for entry in _listdir(cfg.cache_dir):
            path = cfg.cache_dir / entry
            removed_host = entry not in cfg.hosts and path.is_dir() and not path.is_symlink()
            leftover = is_tmp(entry) and not path.is_dir()   # e.g. the index's, from a kill
            if removed_host and is_tmp(entry) and in_use(path):
                continue        # a host directory a renc is building right now, flocked
            # Not a removed host's, nor a killed renc's new one: a directory named as the
            # lock, the index or the memo, or one holding what renc never writes (~/.ssh,
            # were cache_dir set to "~").
            if removed_host and (entry in OWN_FILES or not holds_cache_files_only(path)):
                result.foreign.append(path)
            elif removed_host or leftover:
                result.stale.append(path)
        # Temp files of an interrupted encrypt/edit/rekey beside the master files
        # (ciphertext only, but clutter that must not pile up),
        for folder in sorted({cfg.secrets_dir, *(s.file.parent for s in cfg.secrets.values())}):
            result.stale += [folder / e for e in _listdir(folder)
                             if is_tmp(e) and (folder / e).is_file()
                             and not (folder / e).is_symlink()]
        # and beside hosts.toml, the temp files of an interrupted hosts.toml write
        # (import, host add: written under the lock too) and of a write journal killed
        # before its rename (it lists renames nothing was decided for).
        top = cfg.path.parent
        mine = (tmp_prefix(cfg.path.name), tmp_prefix(_WRITES_JOURNAL))
        result.stale += [top / e for e in _listdir(top) if e.startswith(mine)
                         and (top / e).is_file() and not (top / e).is_symlink()
                         and top / e not in result.stale]
    # A master that could not be hashed keeps its old cache files: they are the
    # host's last good copy until the master is fixed.
    broken = result.broken_ids()
    result.stale = [p for p in result.stale if _stale_id(p) not in broken]
    return result


def _cache_file_name(name: str) -> bool:
    """A name vaultpy gives files in a host's cache directory: a cache file's, a temp's,
    the signed list's."""
    return NAME_RE.fullmatch(name) is not None or is_tmp(name) or name in signing.FILES


def _own_entry(folder: str, name: str) -> bool:
    """Whether ``name`` in a host's directory may be vaultpy's: named as a cache file or
    a temp file, and no directory (a symlink is unlinked, never followed)."""
    if not _cache_file_name(name):
        return False
    try:
        return not S_ISDIR(os.lstat(os.path.join(folder, name)).st_mode)
    except FileNotFoundError:
        return True                 # gone meanwhile: nothing to remove, or to name
    except OSError:
        return False


LINKED = "is a symlink: a host's cache directory is a directory of its own"


def holds_cache_files_only(path: Path) -> bool:
    """Whether directory ``path`` could be a removed host's (renc deletes it whole):
    nothing in it but files named as vaultpy names them."""
    try:
        return not not_cache_files(path)
    except OSError:
        return False


def not_cache_files(path: Path) -> list[str]:
    """The names in directory ``path`` (sorted) that are not files named as vaultpy
    names them: what makes it no removed host's.  OSError if it cannot be listed."""
    with os.scandir(path) as it:
        return sorted(e.name for e in it
                      if not _cache_file_name(e.name) or e.is_dir(follow_symlinks=False))


def foreign(path: Path) -> Problem:
    """What ``check`` and ``renc`` say of an entry of cache_dir vaultpy did not write."""
    if path.name in OWN_FILES:         # the lock's, the index's or the memo's name
        return Problem(display_path(path), "a directory where vaultpy keeps a file of its "
                       "own", "", "remove the directory: the next run makes the file")
    return Problem(display_path(path), "not vaultpy's: a cache directory holds host "
                   "directories of <id>.<hash>.age files only, and renc removes nothing "
                   "from it while this is there", "", "move it out; if cache_dir points at "
                   "a directory of other files, set it to one of vaultpy's own")


def _stale_id(path: Path) -> str | None:
    m = NAME_RE.fullmatch(path.name)
    return m.group("id") if m else None


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "list the directory")) from None


def verify(path: Path | str, recipients: Sequence[str], payload: int | None = None
           ) -> str | None:
    """Why the cache file at ``path`` is not a complete age file for ``recipients``
    (None when it is).  Structure only: no key is needed.  ``payload`` is the master's
    payload length: equal plaintexts have equal payload lengths, so any truncation
    or extension shows."""
    return _verify_read(path, recipients, payload)[0]


def _verify_read(path: Path | str, recipients: Sequence[str], payload: int | None
                 ) -> tuple[str | None, os.stat_result | None]:
    """:func:`verify`, and the stat of the very file it read (None if unread).

    A symlink is not followed: it is no cache file renc wrote, and what it points at
    (anything the reader may read) must not pass for one, nor be copied into a bundle.
    renc replaces it (the link, never its target) as it repairs a damaged file."""
    data, st, reason = read_cache_file(path)
    if data is None:
        return reason, None
    return verify_bytes(data, recipients, payload), st


def read_cache_file(path: Path | str
                    ) -> tuple[bytes, os.stat_result, None] | tuple[None, None, str]:
    """The bytes and stat of a cache file, or why they cannot be read ("missing",
    "a symbolic link, not a file", "unreadable (...)")."""
    try:
        data, st = read_regular(path, follow=False)
    except FileNotFoundError:
        return None, None, "missing"
    except OSError as exc:
        if exc.strerror == LINK:
            return None, None, LINK
        return None, None, f"unreadable ({exc.strerror})"
    return data, st, None


def verify_bytes(data: bytes, recipients: Sequence[str], payload: int | None = None
                 ) -> str | None:
    try:
        header = ageformat.parse(data)
    except ageformat.FormatError as exc:
        return f"damaged: {exc}"
    if payload is not None and header.payload_size != payload:
        return (f"damaged: payload is {header.payload_size} bytes, the master's is "
                f"{payload} (truncated or altered)")
    stanzas = header.recipient_stanzas()
    if len(stanzas) != len(recipients):
        return (f"encrypted to {len(stanzas)} recipient(s), the host has "
                f"{len(recipients)}")
    tags = sorted(s.args[0] for s in stanzas if s.type == "ssh-ed25519")
    want = sorted(t for t in (age.ssh_stanza_tag(r) for r in recipients) if t is not None)
    if tags != want:
        return "not encrypted to the host's current key"
    return None


def in_the_way(item: Item) -> str | None:
    """What stops renc from writing ``item`` that renc must not remove itself (it may
    hold someone's files): a directory in the file's place, or a file in the place of
    the host's directory.  None when nothing is in the way."""
    try:
        st = os.lstat(item.dir)
        if S_ISLNK(st.st_mode):
            return f"{display_path(item.dir)} {LINKED}"
        if not S_ISDIR(st.st_mode):
            return f"{display_path(item.dir)} is not a directory"
    except FileNotFoundError:
        return None
    except OSError:
        return None             # reported by the read or the write itself
    try:
        if S_ISDIR(os.lstat(os.path.join(item.dir, item.name)).st_mode):
            return "a directory is in its place"
    except OSError:
        pass
    return None


def blocker(item: Item, reason: str | None, linked: Collection[str]) -> str | None:
    """What stops renc writing ``item``, given its verification ``reason`` (None: it is
    fine; "missing"): a host directory that is a symlink (:attr:`Plan.linked`: never
    read through, so no reason), or :func:`in_the_way`."""
    if item.dir in linked:
        return f"{display_path(item.dir)} {LINKED}"
    return None if reason in (None, "missing") else in_the_way(item)


FIX_IN_THE_WAY = "move it away, then run vaultpy renc"

INDEX = ".vaultpy-verified"      # git-ignored, like the lock file


StatKey = bytes
# (size, mtime ns, inode, ctime ns), packed: 65 bytes a file where a tuple of four ints
# took ~190, and a large cache has 10,000s of them.
_STAT = struct.Struct("<qqQq")


def stat_key(st: os.stat_result) -> StatKey:
    """What must stay the same for a verified file to still be the verified bytes.
    ctime cannot be set from user space: any write or rename changes it."""
    return _STAT.pack(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class VerifiedIndex:
    """Cache files renc has verified (or written), keyed by their stat.

    Like git's index: a file whose stat matches is trusted without re-reading;
    any other file is verified in full.  Losing the index costs one full
    verification, never correctness.

    ``clock``: the file system's clock when the run began (:func:`memo.fs_clock`).  A
    file verified by reading is vouched for only if it last changed *before* it: a
    same-size rewrite in the very timestamp tick of the read (a coarse clock: 1 s on
    some file systems) would otherwise keep the stat the index trusts (git's
    "racily clean" rule).  Without a clock, reads vouch for nothing.

    In memory: host -> file name -> :data:`StatKey`, the names being the plan's own
    strings where they can (a large cache has 10,000s of entries, and renc's peak
    memory must not grow with them).  On disk: a line per file, ``<host>/<name>
    <stat key in hex>``, read and written a line at a time (:func:`_read`,
    :func:`_lines`).
    """

    def __init__(self, cache_dir: Path, *, clock: int | None = None) -> None:
        self.path = cache_dir / INDEX
        self.clock = clock
        self.hosts: dict[str, dict[str, StatKey]] = {}
        self.changed = False
        with contextlib.suppress(OSError, ValueError, RecursionError):
            self.hosts = _read(self.path)     # damaged, a FIFO...: start over
        # Entries this run adds are planned ones; only loaded ones can be stale.
        self.loaded = bool(self.hosts)
        # With a signing key (:meth:`use_signatures`): each host's directory, whose
        # signed list a file must match, and why a host's list is not to be trusted.
        self.signed_dirs: dict[str, str] | None = None
        self._entries: tuple[str, ...] = ()
        self.unsigned: dict[str, signing.Unsigned] = {}
        self._sums: dict[str, dict[str, str]] = {}

    def use_signatures(self, key: str, host_dirs: Mapping[str, str]) -> None:
        """From now on a file is verified only if its SHA-256 is the one its host's
        list, signed by ``key``, gives.  A list is verified here, unless the index
        recorded its stat after verifying it before (:meth:`record_signed`); a list
        that changed since makes every file of its host verified again, against it."""
        self.signed_dirs = dict(host_dirs)
        # Recorded under names that hold the key's hash: a new key verifies every list.
        tag = hashlib.sha256(key.split()[1].encode()).hexdigest()[:16]
        self._entries = tuple(f"{name}@{tag}" for name in signing.FILES)
        for host, folder in host_dirs.items():
            keys = _stat_keys(folder)
            names = self.hosts.get(host)
            if names is not None and keys is not None and (
                    names.get(self._entries[0]), names.get(self._entries[1])) == keys:
                continue            # verified when recorded: read only if a file needs it
            if names:
                self.hosts[host] = {}
                self.changed = True
            try:
                self._sums[host] = signing.read_signed(folder, host, key)
            except signing.Unsigned as exc:
                self._sums[host] = {}
                self.unsigned[host] = exc
                continue
            if (keys is not None and keys == _stat_keys(folder) and self.clock is not None
                    and all(_STAT.unpack(k)[1] < self.clock and _STAT.unpack(k)[3] < self.clock
                            for k in keys)):
                self.hosts.setdefault(host, {}).update(zip(self._entries, keys, strict=True))
                self.changed = True

    def signed(self, host: str) -> dict[str, str]:
        """Host's signed list (name -> SHA-256): empty if it is not signed."""
        sums = self._sums.get(host)
        if sums is None:
            assert self.signed_dirs is not None
            try:            # verified when its stat was recorded
                sums = signing.read_sums(os.path.join(self.signed_dirs[host], signing.SUMS))
            except (signing.Unsigned, ValueError, UnicodeDecodeError):
                sums = {}
            self._sums[host] = sums
        return sums

    def record_signed(self, host: str, folder: str) -> None:
        """The list and signature renc just wrote for ``host``."""
        keys = _stat_keys(folder)
        if keys is not None:
            self.hosts.setdefault(host, {}).update(zip(self._entries, keys, strict=True))
            self.changed = True

    def get(self, item: Item) -> StatKey | None:
        """The stat the index vouches for at ``item``'s file, if any."""
        names = self.hosts.get(item.host)
        return None if names is None else names.get(item.name)

    def __contains__(self, item: Item) -> bool:
        return self.get(item) is not None

    def _set(self, item: Item, key: StatKey) -> None:
        names = self.hosts.get(item.host)
        if names is None:
            names = self.hosts[item.host] = {}
        names[item.name] = key
        self.changed = True

    def check(self, item: Item) -> str | None:
        """Like :func:`verify`, but trusting files whose stat the index vouches for."""
        path = os.path.join(item.dir, item.name)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return "missing"
        except OSError as exc:
            return f"unreadable ({exc.strerror})"
        key = stat_key(st)
        if self.get(item) == key:
            return None
        if self.signed_dirs is not None:
            data, read, reason = read_cache_file(path)
            if data is not None:
                reason = verify_bytes(data, item.recipients, item.payload)
                if reason is None and (self.signed(item.host).get(item.name)
                                       != hashlib.sha256(data).hexdigest()):
                    reason = signing.UNSIGNED
        else:
            reason, read = _verify_read(path, item.recipients, item.payload)
        # Vouch only for what was read: the file lstat'ed before the read is the one
        # opened (same device, and a key that holds the inode: not a symlink's
        # target, not a directory swapped in meanwhile) and unchanged when read.
        if (reason is None and read is not None and S_ISREG(st.st_mode)
                and read.st_dev == st.st_dev and stat_key(read) == key
                and self.clock is not None and max(st.st_mtime_ns, st.st_ctime_ns) < self.clock):
            self._set(item, key)
        return reason

    def record(self, item: Item, key: StatKey | None = None) -> None:
        """A file this run just wrote (and renamed into place) under the lock; ``key``:
        its stat, when the writer took it after the last change (saves a stat)."""
        if key is None:
            try:
                key = stat_key(os.stat(os.path.join(item.dir, item.name)))
            except OSError:
                return
        self._set(item, key)

    def save(self, items: Iterable[Item] | None) -> None:
        """Write atomically, only if anything changed; with ``items`` (a full plan),
        forget entries of files that are no longer planned."""
        if items is not None and self.loaded:
            # The planned entries, copied (a dict per host, no set of 10,000 keys).
            kept: dict[str, dict[str, StatKey]] = {}
            n = 0
            for item in items:
                key = self.get(item)
                if key is not None:
                    kept.setdefault(item.host, {})[item.name] = key
                    n += 1
            for host, names in self.hosts.items():      # the signed lists' stat
                for name in self._entries if host in kept else ():
                    if name in names:
                        kept[host][name] = names[name]
                        n += 1
            if n != sum(map(len, self.hosts.values())):
                self.hosts, self.changed = kept, True
        if not self.changed:
            return
        with contextlib.suppress(OSError):
            atomic_write(self.path, _lines(self.hosts), 0o644)


def signed_dirs(cfg: Config, p: Plan, hosts: Sequence[str] = ()) -> dict[str, str]:
    """Host -> cache directory, for the hosts whose signed list there is to read: those
    given a secret (no list is signed for none), whose directory is there (not one renc
    has yet to make) and no symlink (never read through)."""
    return {h: d for h in (hosts or cfg.hosts) if cfg.hosts[h].needed
            and (d := os.path.join(cfg.cache_dir, h)) not in p.absent and d not in p.linked}


def _stat_keys(folder: str) -> tuple[StatKey, StatKey] | None:
    """The stat keys of a host's list and signature, if both are regular files."""
    try:
        a, b = (os.stat(os.path.join(folder, n), follow_symlinks=False) for n in signing.FILES)
    except OSError:
        return None
    return (stat_key(a), stat_key(b)) if S_ISREG(a.st_mode) and S_ISREG(b.st_mode) else None


_HEADER = b"vaultpy-verified 2\n"


def _lines(hosts: dict[str, dict[str, StatKey]]) -> Iterator[bytes]:
    """The index file, a host at a time, sorted (no churn, as git would show it)."""
    yield _HEADER
    for host in sorted(hosts):
        names = hosts[host]
        yield "".join(f"{host}/{name} {names[name].hex()}\n" for name in sorted(names)
                      ).encode()


def _read(path: Path) -> dict[str, dict[str, StatKey]]:
    """The index at ``path``, a line at a time (the whole file parsed at once was the
    peak of a large renc); a line that does not parse is dropped, as is an index of
    any other format (earlier versions wrote JSON): its files are verified again."""
    hosts: dict[str, dict[str, StatKey]] = {}
    with open_regular(path) as f:
        if f.readline() != _HEADER:
            return hosts
        for line in f:
            where, _, value = line.rpartition(b" ")
            host, slash, name = where.decode().partition("/")
            if not slash or len(value) != 2 * _STAT.size + 1:    # + the newline
                continue
            names = hosts.get(host)
            if names is None:
                names = hosts[host] = {}
            names[name] = a2b_hex(value[:-1])
    return hosts


def is_leftover(path: Path) -> bool:
    """A temporary file from an interrupted run."""
    return is_tmp(path.name)
