"""The no-op memo: answer an unchanged ``renc`` or ``check`` without loading hosts.toml.

A full ``renc`` that found nothing to do, or a ``check`` that passed, records in
``<cache_dir>/.vaultpy-memo`` (git-ignored, like the lock and the verification index)
a digest of the stat of everything its answer depended on:

* files, stat'ed: hosts.toml, every master file, every template's own file (``file =``),
  the rotation journal (or its absence), and vaultpy's own modules (other code never
  trusts this memo);
* directories whose entry *names* matter: the secrets directory and every folder
  holding a master file (leftover temp files);
* directories whose entries matter *with their stat*: the cache directory and every
  host's cache directory.

The next run with exactly the same stats prints the same answer without importing the
CLI, parsing hosts.toml or hashing masters: like ``git status`` trusting its index, or
``make`` trusting timestamps.  Soundness rests on two rules:

1. the snapshot is taken *before* the run reads anything (hosts.toml is stat'ed before it
   is loaded), so a change during the run shows as a different stat or name;
2. the run first reads the file system's clock (the cache directory's mtime, touched),
   and an input whose mtime or ctime is not strictly older than that is never trusted:
   a change within the same timestamp tick as the snapshot cannot hide.

Anything unexpected - no memo, another version, a damaged file, an option the fast path
does not know - falls back to the full run.  ``VAULTPY_NO_MEMO=1`` turns it off.

The memo also keeps what :mod:`vaultpy._internal.delta` needs to re-encrypt changed
masters without the CLI: each file's stat line, the folders' scans (:class:`Rest`), and
a plan skeleton.  Big caches are scanned with a forked helper (:class:`_Helper`).

This module must stay cheap to import: the standard library only, nothing from vaultpy.
"""

from __future__ import annotations

# The C module behind signal (which imports enum: ~6 ms): only its functions are used.
import _signal  # type: ignore[import-not-found]
import contextlib
import marshal
import os
import sys
from array import array
from stat import S_ISDIR, S_ISLNK, S_ISREG

try:                        # hashlib would load OpenSSL: 4 ms of a 60 ms run
    from _blake2 import blake2b
except ImportError:         # pragma: no cover - CPython always has it
    from hashlib import blake2b

TYPE_CHECKING = False       # typing itself costs 4 ms to import
if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from vaultpy.model import Config

FILENAME = ".vaultpy-memo"
FORMAT = 3
# Bookkeeping files of the cache directory that are not inputs of any answer (the
# lock, cache.INDEX: literals here, see tests/test_memo.py, to keep imports cheap).
OWN_FILES = frozenset({FILENAME, ".vaultpy-verified", ".vaultpy.lock"})
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _code_files() -> list[str]:
    out = []
    for sub in ("", "_internal"):
        folder = os.path.join(_PACKAGE, sub)
        out += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                if n.endswith(".py")]
    return out


def file_lines(paths: Sequence[str]) -> tuple[list[str], int]:
    """Each file's :func:`stat_line` (its errno when it cannot be stat'ed), and the
    newest mtime/ctime seen."""
    lines: list[str] = []
    newest = 0
    stat = os.stat
    for path in paths:
        try:
            st = stat(path)
        except OSError as exc:
            lines.append(f"-{exc.errno}")
            continue
        lines.append(stat_line(st))
        newest = max(newest, st.st_mtime_ns, st.st_ctime_ns)
    return lines, newest


def stat_line(st: os.stat_result) -> str:
    """What the memo holds of an input file's stat."""
    return (f"{st.st_mode} {st.st_dev} {st.st_ino} {st.st_size} "
            f"{st.st_mtime_ns} {st.st_ctime_ns}")


def head() -> tuple[str, int]:
    """The digest of who runs which code (:func:`_who`, vaultpy's own modules), and the
    newest mtime/ctime among those modules."""
    code = _code_files()
    lines, newest = file_lines(code)
    h = blake2b(digest_size=20)
    h.update(_who().encode("utf-8", "surrogateescape"))
    h.update(_joined(code, lines))
    return h.hexdigest(), newest


def files_digest(head_value: str, files: Sequence[str], lines: Sequence[str]) -> str:
    h = blake2b(head_value.encode(), digest_size=20)
    h.update(_joined(files, lines))
    return h.hexdigest()


def _joined(paths: Sequence[str], lines: Sequence[str]) -> bytes:
    return "".join(f"{p}\0{ln}\n" for p, ln in zip(paths, lines, strict=True)).encode(
        "utf-8", "surrogateescape")


# A scanned folder: its entries (sorted, bookkeeping files left out) and the numbers of
# their lstat the digest holds, packed as it holds them: n mtimes, then n ctimes, n sizes,
# n inodes, n modes (all in nanoseconds or plain integers).
Scan = tuple[list[str], array]  # type: ignore[type-arg]
_FIELDS = 5
_MODES = 4                      # the section of the modes


def entry_mode(scan: Scan, i: int) -> int:
    """The mode of a scan's ``i``-th entry."""
    return int(scan[1][_MODES * len(scan[0]) + i])


class Rest:
    """The state of the folders: the entry names of ``listed`` ones (kept in
    :attr:`names`), the entries with their stat of ``scanned`` ones (:attr:`scans`, for
    the folders asked for), and the digest of it all (:attr:`value`)."""

    def __init__(self, names: dict[str, str], scans: dict[str, Scan | None],
                 parts: dict[str, bytes], newest: int, entries: int) -> None:
        self.names, self.scans, self.parts = names, scans, parts
        self.newest, self.entries = newest, entries
        h = blake2b(digest_size=20)
        for folder, listing in names.items():
            h.update(f"{folder}\0{listing}\n".encode("utf-8", "surrogateescape"))
        for part in parts.values():
            h.update(part)
        self.value = h.hexdigest()

    @classmethod
    def take(cls, listed: Sequence[str], scanned: Sequence[str], *,
             keep: Collection[str] = (), entries: object = 0) -> Rest | None:
        """None when the state cannot be trusted: an entry vanished while scanning, or
        a symlink (renc and check read through it).  ``keep``: the scanned folders
        whose :attr:`scans` the caller needs.  ``entries``: see :meth:`start`."""
        return cls.start(listed, scanned, keep=keep, entries=entries).finish()

    @classmethod
    def start(cls, listed: Sequence[str], scanned: Sequence[str], *,
              keep: Collection[str] = (), entries: object = 0) -> Scanning:
        """:meth:`take` in two steps, so that the caller can work meanwhile.

        ``entries``: how many entries the last record saw.  From
        :data:`PARALLEL_ENTRIES` on, a forked helper starts scanning the folders at
        once, taking them one (or, past :data:`_TOKENS` folders, one run) at a time
        from a queue that :meth:`Scanning.finish` joins: whichever process is free
        takes the next, so the two end together however long the caller works
        meanwhile (or is held up by the machine)."""
        helper = None
        if isinstance(entries, int) and entries >= PARALLEL_ENTRIES and len(scanned) >= 4:
            helper = _Helper.start(list(scanned), keep)
        return Scanning(listed, scanned, keep, helper)

    def updated(self, changes: dict[str, dict[str, os.stat_result | None]]) -> Rest | None:
        """This state with entries of scanned folders replaced (a stat) or removed
        (None); the folders changed must have been kept (see :meth:`take`).
        ``newest`` stays an upper bound: it never decreases."""
        from bisect import bisect_left

        scans, parts = dict(self.scans), dict(self.parts)
        newest, entries = self.newest, self.entries
        for folder, changed in changes.items():
            scan = scans.get(folder)
            if scan is None or any(st is not None and S_ISLNK(st.st_mode)
                                   for st in changed.values()):
                return None
            old, numbers = scan
            n = len(old)
            names = list(old)
            sections = [numbers[k * n:(k + 1) * n] for k in range(_FIELDS)]
            try:
                for name, st in changed.items():      # few: edit in place, in C
                    i = bisect_left(names, name)
                    present = i < len(names) and names[i] == name
                    if st is None:
                        if present:
                            del names[i]
                            for section in sections:
                                del section[i]
                        continue
                    row = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_mode)
                    if not present:
                        names.insert(i, name)
                    for section, value in zip(sections, row, strict=True):
                        if present:
                            section[i] = value
                        else:
                            section.insert(i, value)
            except OverflowError:
                return None
            packed = array("q")
            for section in sections:
                packed.extend(section)
            scans[folder] = new = (names, packed)
            parts[folder], folder_newest = _part(folder, new)
            newest = max(newest, folder_newest)
            entries += len(names) - n
        return Rest(self.names, scans, parts, newest, entries)


class Scanning:
    """A scan begun by :meth:`Rest.start`: :meth:`finish` it, or :meth:`cancel` it."""

    def __init__(self, listed: Sequence[str], scanned: Sequence[str], keep: Collection[str],
                 helper: _Helper | None) -> None:
        self.listed, self.scanned, self.keep, self.helper = listed, scanned, keep, helper

    def finish(self) -> Rest | None:
        names: dict[str, str] = {}
        for folder in self.listed:
            try:
                # Each entry's type too (from the directory itself, no stat): a stray
                # master warns only as a regular file, and a directory turned into a
                # symlink (secrets -> elsewhere) is refused by the full command.
                with os.scandir(folder) as it:
                    found = sorted(f"{e.name}/{_type(e)}" for e in it if e.name not in OWN_FILES)
                # a temp-named entry is a leftover only as a regular file: its type counts
                kinds = [_kind(os.path.join(folder, n.rpartition("/")[0])) for n in found
                         if _TMP in n]
                names[folder] = "\0".join(found) + "\0" + " ".join(kinds)
            except OSError as exc:
                names[folder] = f"-{exc.errno}"
        helper = self.helper
        done: dict[str, _Folder] = {}
        try:
            if helper is not None:
                while folders := helper.take():
                    if not _scan_into(done, folders):
                        return None
                got = helper.collect()
                if isinstance(got, str):        # _UNTRUSTED
                    return None
                for folder, one in (got or {}).items():
                    done.setdefault(folder, one)
            # All of them without a helper; with one, what it took but did not send
            # (it failed): nothing is left out.
            if not _scan_into(done, [f for f in self.scanned if f not in done]):
                return None
        finally:
            self.cancel()
        return Rest(names, {f: done[f][2] if f in self.keep else None for f in self.scanned},
                    {f: done[f][0] for f in self.scanned},
                    max((d[1] for d in done.values()), default=0),
                    sum(d[3] for d in done.values()))

    def cancel(self) -> None:
        """Stop the helper, if any (it only stats: nothing to clean up)."""
        if self.helper is not None:
            self.helper.close(kill=True)
            self.helper = None


# From this many cache entries on (the last record's count), a forked helper shares
# the stats (Rest.start): lstat is most of a no-op run, and on 2 cores the two overlap.
# (Threads do not help: each stat returns into a wait for the GIL.)
PARALLEL_ENTRIES = 2048
# The helper's queue holds at most this many tokens of 2 bytes (one per folder, or per
# run of folders when there are more): 4 KiB, what a pipe holds at the least.
_TOKENS = 2048

# A scanned folder's digest, its newest mtime/ctime, its scan, its number of entries.
_Folder = tuple[bytes, int, Scan | None, int]
_UNTRUSTED = "untrusted"


def _scan_into(done: dict[str, _Folder], folders: list[str]) -> bool:
    """Scan ``folders`` into ``done``; False as soon as one cannot be trusted."""
    for folder in folders:
        one = _folder(folder)
        if one is None:
            return False
        done[folder] = one
    return True


def _digest(data: bytes) -> bytes:
    return blake2b(data, digest_size=20).digest()


def _folder(folder: str) -> _Folder | None:
    """What the memo holds of a scanned folder; None when it cannot be trusted."""
    try:
        scan = _scan(folder)
    except _Untrusted:
        return None
    except OSError as exc:
        return _digest(f"{folder}\0-{exc.errno}\n".encode("utf-8", "surrogateescape")), 0, \
            None, 0
    digest_value, newest = _part(folder, scan)
    return digest_value, newest, scan, len(scan[0])


def _part(folder: str, scan: Scan) -> tuple[bytes, int]:
    """The digest of a scanned folder, and its newest mtime/ctime."""
    names, numbers = scan
    n = len(names)
    head = f"{folder}\0{n}\0".encode("utf-8", "surrogateescape")
    body = "\0".join(names).encode("utf-8", "surrogateescape")
    return _digest(head + body + numbers.tobytes()), max(numbers[:2 * n], default=0)


class _Untrusted(Exception):
    """A folder changed while it was read (an entry vanished), or holds a symlink."""


def _scan(folder: str) -> Scan:
    """Raises OSError when ``folder`` cannot be opened, :class:`_Untrusted` when it
    changes while it is read or holds a symlink."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            entries = sorted(os.listdir(fd))
            sts = [os.stat(n, dir_fd=fd, follow_symlinks=False) for n in entries]
        except OSError:
            raise _Untrusted(folder) from None
    finally:
        os.close(fd)
    if OWN_FILES.intersection(entries):   # bookkeeping files do not count - as files
        kept = [(n, st) for n, st in zip(entries, sts, strict=True)
                if not (n in OWN_FILES and S_ISREG(st.st_mode))]
        entries, sts = [n for n, _ in kept], [st for _, st in kept]
    modes = [s.st_mode for s in sts]
    if any(S_ISLNK(m) for m in modes):
        raise _Untrusted(folder)       # read through by renc and check: never trusted
    try:
        numbers = array("q", [s.st_mtime_ns for s in sts])
        for values in ([s.st_ctime_ns for s in sts], [s.st_size for s in sts],
                       [s.st_ino for s in sts], modes):
            numbers.extend(values)
    except OverflowError:               # an inode number past 2**63: not worth a memo
        raise _Untrusted(folder) from None
    return entries, numbers


class _Helper:
    """A forked process scanning folders.  Both it and this process take them from a
    queue (:meth:`take`): a pipe filled, before the fork, with one 2-byte token per
    folder (or run of folders), each read whole by one of the two.  It sends back
    (marshal, over a pipe) the digests of the folders it took, and the scans of those in
    ``keep`` (names and packed numbers, as bytes); it leaves only through ``os._exit``."""

    def __init__(self, folders: list[str], pid: int, fd: int, queue: int) -> None:
        self.folders, self.pid, self.fd, self.queue = folders, pid, fd, queue
        self.runs = min(len(folders), _TOKENS)
        self.status: int | None = None

    def take(self) -> list[str]:
        """The next folders in the queue, [] once it is empty."""
        try:
            token = os.read(self.queue, 2)
        except OSError:
            return []
        if len(token) != 2:
            return []
        i, n, k = int.from_bytes(token, "little"), len(self.folders), self.runs
        return self.folders[i * n // k:(i + 1) * n // k]

    @classmethod
    def start(cls, folders: list[str], keep: Collection[str]) -> _Helper | None:
        runs = min(len(folders), _TOKENS)
        try:
            queue, filler = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:
            return None
        try:
            try:
                tokens = b"".join(i.to_bytes(2, "little") for i in range(runs))
                full = os.write(filler, tokens) == len(tokens)  # never blocks: all or none
            finally:
                os.close(filler)            # (so that the queue ends: read gives b"")
            r, w = os.pipe() if full else (-1, -1)
        except OSError:
            full = False
        except BaseException:               # a Ctrl-C: nothing left open
            os.close(queue)
            raise
        if not full:
            os.close(queue)
            return None
        # The helper must never run the caller's code: SIGINT (sent to the whole process
        # group by Ctrl-C), SIGTERM and SIGHUP are blocked across fork() and stay blocked
        # in it until os._exit.  (_signal: the signal module would import enum.)
        held = {_signal.SIGINT, _signal.SIGTERM, _signal.SIGHUP}
        mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, held)
        try:
            pid = os.fork()
        except OSError:
            for fd in (r, w, queue):
                os.close(fd)
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
            return None
        if pid == 0:                                     # the helper
            code = 1
            try:
                os.close(r)
                mine = cls(folders, 0, -1, queue)        # (pid 0: no process of its own)
                out: list[object] | None = []
                while out is not None and (taken := mine.take()):
                    for folder in taken:
                        one = _folder(folder)
                        if one is None:
                            out = None
                            break
                        scan = one[2]
                        kept = (None if scan is None or folder not in keep
                                else ("\0".join(scan[0]), scan[1].tobytes()))
                        out.append((folder, one[0], one[1], one[3], kept))
                view = memoryview(marshal.dumps(out))
                while view:
                    view = view[os.write(w, view):]
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        helper = cls(folders, pid, r, queue)
        try:        # a Ctrl-C held back since the fork is raised here: the helper goes
            _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        except BaseException:
            helper.close(kill=True)
            raise
        return helper

    def collect(self) -> dict[str, _Folder] | str | None:
        """The helper's folders, :data:`_UNTRUSTED`, or None if it failed."""
        chunks = []
        try:
            while chunk := os.read(self.fd, 1 << 16):
                chunks.append(chunk)
        except OSError:
            return None
        self.close()
        if self.status != 0:
            return None
        try:
            out = marshal.loads(b"".join(chunks))
        except (ValueError, EOFError, TypeError):
            return None
        if out is None:
            return _UNTRUSTED
        got: dict[str, _Folder] = {}
        for folder, digest_value, newest, count, kept in out:
            scan = None
            if kept is not None:
                numbers = array("q")
                numbers.frombytes(kept[1])
                scan = (kept[0].split("\0") if count else [], numbers)
            got[folder] = (digest_value, newest, scan, count)
        return got if got.keys() <= set(self.folders) else None

    def close(self, kill: bool = False) -> None:
        for fd in (self.fd, self.queue):
            if fd >= 0:
                os.close(fd)
        self.fd = self.queue = -1
        if self.status is None and self.pid > 0:     # (pid 0: no process of its own)
            if kill:
                with contextlib.suppress(OSError):
                    os.kill(self.pid, _signal.SIGKILL)
            try:
                self.status = os.waitpid(self.pid, 0)[1]
            except ChildProcessError:
                self.status = -1


def digest(files: Sequence[str], listed: Sequence[str], scanned: Sequence[str],
           unless: str | None = None, entries: object = 0) -> tuple[str, str, int]:
    """(digest of the files alone, digest of the folders, newest mtime/ctime seen).

    With ``unless``: when the files' digest differs from it, stop there (the folders'
    digest is then ""): a changed master is found in 500 stats, not 10,500.  The
    folders' digest is also "" when they cannot be trusted (see :meth:`Rest.take`).

    On a big cache the helper starts first, and scans folders while this process stats
    vaultpy's modules and the files; then both take what is left.
    """
    scanning: Scanning | None = None
    try:
        scanning = Rest.start(listed, scanned, entries=entries)
        head_value, newest = head()
        lines, files_newest = file_lines(files)
        files_value = files_digest(head_value, files, lines)
        newest = max(newest, files_newest)
        if unless is not None and files_value != unless:
            return files_value, "", newest
        rest = scanning.finish()
    finally:
        if scanning is not None:
            scanning.cancel()
    if rest is None:
        return files_value, "", newest
    return files_value, rest.value, max(newest, rest.newest)


_TMP = ".vaultpy-tmp-"      # fsutil.TMP_MARK, not imported: fsutil takes ~25 ms to load


def _type(entry: os.DirEntry[str]) -> str:
    """An entry's type as its directory tells it (a stat only where it does not)."""
    return ("l" if entry.is_symlink() else "d" if entry.is_dir(follow_symlinks=False)
            else "f" if entry.is_file(follow_symlinks=False) else "o")


def _kind(path: str) -> str:
    try:
        return f"{os.lstat(path).st_mode}:{int(os.path.isfile(path))}"
    except OSError as exc:
        return f"-{exc.errno}"


def _who() -> str:
    """What the same files mean depends on who reads them and how paths expand: the
    user, groups and capabilities (permission to read), HOME (``~`` in hosts.toml),
    and the Python running vaultpy."""
    # (read as bytes: a text file would import the ascii codec, 0.2 ms)
    status = (_read_regular("/proc/self/status") or b"").decode("ascii", "replace")
    caps = next((ln for ln in status.splitlines() if ln.startswith("CapEff:")), "")
    return (f"{os.geteuid()} {os.getegid()} {sorted(os.getgroups())} {caps.strip()} "
            f"{os.path.expanduser('~')} {sys.version}\n")


def _version() -> str:
    from vaultpy import __version__

    return __version__


# --------------------------------------------------------------------------- recording


def fs_clock(folder: str) -> int | None:
    """The file system's idea of now: the new mtime of ``folder`` (the cache directory),
    touched.  Nothing is created or removed; no input's stat includes that folder's own
    (its entries are what counts)."""
    try:
        os.utime(folder)
        st = os.stat(folder, follow_symlinks=False)
    except OSError:
        return None
    return st.st_mtime_ns if S_ISDIR(st.st_mode) else None


class Snapshot:
    """One run's claim to the memo: begun before hosts.toml is read (:func:`begin`),
    captured once the configuration names the inputs, committed if the run was clean."""

    def __init__(self, config: str, cache_dir: str, since: int, pre: tuple[int, ...]) -> None:
        self.config, self.cache_dir, self.since, self.pre = config, cache_dir, since, pre
        self.lists: dict[str, list[str]] | None = None
        self.files_value = self.value = ""
        self.extra: dict[str, object] = {}

    def capture(self, cfg: Config) -> None:
        """Digest the inputs ``cfg`` names, before the run reads any of them."""
        if (str(cfg.path) != self.config or cfg.nixos is not None   # inputs: Nix's, unknown
                or os.path.realpath(cfg.cache_dir) != os.path.realpath(self.cache_dir)
                or _stat(self.config) != self.pre):
            return                  # hosts.toml changed, or the memo would live elsewhere
        # A template's own file is read with hosts.toml, before this stats it: the stat
        # recorded must be of what was read (a symlink retargeted in between would have
        # the memo vouch for a file no run read).
        for h in cfg.hosts.values():
            for t in h.templates:
                if t.source is not None and _stat(str(t.source)) != t.source_stat:
                    return
        self.lists = inputs(cfg)
        head_value, newest = head()
        lines, files_newest = file_lines(self.lists["files"])
        expected = sum(len(h.needed) for h in cfg.hosts.values())
        rest = Rest.take(self.lists["listed"], self.lists["scanned"], entries=expected)
        if (rest is None or max(newest, files_newest, rest.newest) >= self.since
                or not _one_clock(self.cache_dir, self.lists["files"])):
            self.lists = None       # an input is changing (or did in this very tick)
            return
        self.files_value = files_digest(head_value, self.lists["files"], lines)
        self.value = rest.value
        self.extra = {"head": head_value, "stats": lines, "plan": skeleton(cfg),
                      "entries": rest.entries}

    def commit(self, command: str, facts: dict[str, int] | None = None) -> None:
        """The run ended clean: record that ``command`` had nothing to do."""
        if self.lists is None or _building(self.cache_dir):
            return
        old = _load(os.path.join(self.cache_dir, FILENAME))
        entries: dict[str, object] = {}
        kept = (old.get("ok") if old is not None and old.get("digest") == self.value
                and old.get("files_digest") == self.files_value else None)
        if isinstance(kept, dict):       # the same state: keep what other commands said
            entries = {k: v for k, v in kept.items() if k != command}
        entries[command] = {"since": self.since, **(facts or {})}
        write(self.cache_dir, {"config": self.config, **self.lists, **self.extra,
                               "files_digest": self.files_value, "digest": self.value,
                               "ok": entries})


def inputs(cfg: Config) -> dict[str, list[str]]:
    """What a run's answer depends on (see the module's docstring): ``files``, stat'ed;
    ``listed`` folders, their entries' names; ``scanned`` folders, their entries' stat."""
    from vaultpy._internal.writes import JOURNAL as WRITES
    from vaultpy.recovery import JOURNAL

    files = [str(cfg.path), str(cfg.root / JOURNAL), str(cfg.root / WRITES),
             *(str(s.file) for s in cfg.secrets.values()),
             # templates' own files: their placeholders decide what a host needs
             *(str(t.source) for h in cfg.hosts.values() for t in h.templates
               if t.source is not None)]
    # hosts.toml's folder too: check and renc count the temp files of a killed
    # hosts.toml write, or of a write journal killed before its rename, there
    # and every folder from the repository down to the cache directory: one turned
    # into a symlink is refused by the full command (model._linked_below)
    chain = [str(p) for p in cfg.cache_dir.parents if p == cfg.root or cfg.root in p.parents]
    listed = [str(cfg.root), str(cfg.secrets_dir), *chain,
              *(str(s.file.parent) for s in cfg.secrets.values())]
    scanned = [str(cfg.cache_dir), *(str(cfg.cache_dir / h) for h in cfg.hosts)]
    return {"files": sorted(set(files)), "listed": sorted(set(listed)),
            "scanned": sorted(set(scanned))}


def _building(cache_dir: str) -> bool:
    """Whether a temp host directory is in the cache directory.  renc and check pass
    over one a first run holds the flock of (it is being built): an answer no stat
    shows, for the flock goes with a killed run and leaves a leftover.  (A leftover
    fails check, and renc removes it before it records: only those remain.)"""
    try:
        return any(_TMP in n and os.path.isdir(os.path.join(cache_dir, n))
                   for n in os.listdir(cache_dir))
    except OSError:
        return True


def write(cache_dir: str, memo: dict[str, object]) -> None:
    """Replace the memo (a failure to write costs only the shortcut)."""
    from pathlib import Path

    from vaultpy._internal.fsutil import atomic_write

    memo = {"format": FORMAT, "vaultpy": _version(), **memo}
    with contextlib.suppress(OSError):
        atomic_write(Path(cache_dir, FILENAME), marshal.dumps(memo), 0o644)


def skeleton(cfg: Config) -> dict[str, object]:
    """What :mod:`vaultpy._internal.delta` needs of hosts.toml to re-encrypt a changed
    master without loading it: each host's recipients, and which hosts need which
    secret (indices into ``hosts``)."""
    hosts = list(cfg.hosts.values())
    secrets: dict[str, list[object]] = {}
    for i, host in enumerate(hosts):
        for sid in host.needed:
            entry = secrets.setdefault(sid, [str(cfg.secrets[sid].file), []])
            entry[1].append(i)          # type: ignore[attr-defined]
    return {"cache_dir": str(cfg.cache_dir),
            "identity": None if cfg.identity is None else str(cfg.identity),
            "hosts": [[h.name, list(h.recipients)] for h in hosts], "secrets": secrets,
            "people": cfg.people(),
            # With a signing key, what the incremental renc needs to sign as renc does.
            "signing": None if cfg.signing is None else {
                "key": cfg.signing.key, "id": cfg.signing.secret,
                "file": str(cfg.secrets[cfg.signing.secret].file)}}


def _one_clock(cache_dir: str, files: Sequence[str]) -> bool:
    """The racy-clean rule compares with the clock of cache_dir's file system: inputs
    on another one (another disk, NFS) could be stamped by another clock."""
    try:
        dev = os.stat(cache_dir).st_dev
    except OSError:
        return False
    for path in files:
        try:
            if os.stat(path).st_dev != dev:
                return False
        except FileNotFoundError:
            continue
        except OSError:
            return False
    return True


def begin(repo: object) -> Snapshot | None:
    """Start a snapshot for a run on ``repo`` (the -C value, or None for the current
    directory), or None when no memo can be kept."""
    if os.environ.get("VAULTPY_NO_MEMO"):
        return None
    config = _hosts_toml(None if repo is None else str(repo))
    if config is None:
        return None
    pre = _stat(config)
    cache_dir = _cache_dir(config)
    since = fs_clock(cache_dir)
    if since is None or not pre:
        return None
    return Snapshot(config, cache_dir, since, pre)


def _stat(path: str) -> tuple[int, ...]:
    try:
        st = os.stat(path)
    except OSError:
        return ()
    return stat_key(st)


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    """What tells one state of a file from another, for :meth:`Snapshot.capture`."""
    return (st.st_mode, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# --------------------------------------------------------------------------- answering


def _load(path: str) -> dict[str, object] | None:
    """The memo, or None.  marshal, not json: it is built in, where json would import
    ``re`` (~8 ms of a 70 ms run); like a .pyc file, the memo is local derived state,
    and one damaged or written by another Python is refused, never trusted."""
    data = _read_regular(path)
    if data is None:
        return None
    try:
        raw = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    return raw if isinstance(raw, dict) else None


def _read_regular(path: str) -> bytes | None:
    """The bytes of the regular file at ``path``, or None: a FIFO planted there must
    not block the run (it is opened non-blocking and never read).  The rule of
    ``fsutil.read_regular``, without importing it (see the module's docstring)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _strings(value: object) -> list[str] | None:
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def _parse_args(argv: Sequence[str]) -> tuple[str, str | None, bool] | None:
    """(command, -C value, --json) for the invocations the memo can answer."""
    repo: str | None = None
    command: str | None = None
    json_out = False
    args = list(argv)
    while args:
        a = args.pop(0)
        if a in ("-C", "--repo") and args:
            repo = args.pop(0)
        elif a.startswith("--repo="):
            repo = a.removeprefix("--repo=")
        elif command is None and a in ("renc", "check"):
            command = a
        elif command is not None and a == "--json":
            json_out = True
        elif command == "renc" and a in ("-j", "--jobs") and args and _count(args[0]):
            args.pop(0)                         # --jobs cannot matter when nothing is to do
        elif not (command == "renc" and a.startswith("--jobs=") and _count(a[7:])):
            return None
    if command is None or repo == "":
        return None
    return command, repo, json_out


def _count(text: str) -> bool:
    return text.isascii() and text.isdigit() and int(text) >= 1


def _hosts_toml(repo: str | None) -> str | None:
    """hosts.toml's path exactly as model.load names it (cfg.path): the memo of one
    repository is never found through another (say, a symlinked hosts.toml)."""
    if repo is not None:
        path = os.path.join(repo, "hosts.toml") if os.path.isdir(repo) else repo
        if not os.path.isfile(path):
            return None
        return _absolute(path)
    here = os.getcwd()                     # already resolved, like Path.cwd().resolve()
    while True:
        candidate = os.path.join(here, "hosts.toml")
        if os.path.isfile(candidate):
            return candidate
        # As model.find: stopped (with an error the full command says) by anything else
        # named hosts.toml, a killed import's journal, or the top of a git repository.
        if any(os.path.lexists(os.path.join(here, n))
               for n in ("hosts.toml", ".vaultpy-writes", ".git")):
            return None
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def _absolute(path: str) -> str:
    """``str(Path(path).absolute())`` without importing pathlib: "." and empty parts
    dropped, ".." and symlinks kept."""
    full = path if path.startswith("/") else os.getcwd() + "/" + path
    return "/" + "/".join(p for p in full.split("/") if p not in ("", "."))


def _cache_dir(config: str) -> str:
    """Where the memo should be: the configured cache_dir when one plain line
    ``cache_dir = "..."`` says so, else the default (a wrong guess only misses)."""
    root = os.path.dirname(config)
    try:
        text = (_read_regular(config) or b"").decode("utf-8")
    except ValueError:
        text = ""
    given = "secrets/cache"
    if "cache_dir" in text:                 # no `re`: its import alone costs 4 ms
        found = []
        for line in text.splitlines():
            key, eq, value = line.partition("=")
            value = value.split("#", 1)[0].strip()
            if (eq and key.strip() == "cache_dir" and len(value) >= 2 and value[0] == '"'
                    and value[-1] == '"' and '"' not in value[1:-1] and "\\" not in value):
                found.append(value[1:-1])
        if len(found) == 1:
            given = found[0]
    return os.path.normpath(os.path.join(root, os.path.expanduser(given)))


def lookup(command: str, config: str, cache_dir: str | None = None,
           memo: dict[str, object] | None = None) -> dict[str, object] | None:
    """What the memo recorded for ``command`` having nothing to do, if it still holds
    (``cache_dir``: where the memo is, when the caller has already worked it out;
    ``memo``: the memo, when the caller has already loaded it)."""
    if memo is None:
        memo = _load(os.path.join(cache_dir or _cache_dir(config), FILENAME))
    if memo is None or memo.get("format") != FORMAT or memo.get("vaultpy") != _version():
        return None
    entries = memo.get("ok")
    entry = entries.get(command) if isinstance(entries, dict) else None
    files, listed = _strings(memo.get("files")), _strings(memo.get("listed"))
    scanned = _strings(memo.get("scanned"))
    if (not isinstance(entry, dict) or not isinstance(entry.get("since"), int)
            or files is None or listed is None or scanned is None
            or memo.get("config") != config or config not in files):
        return None
    expected = memo.get("files_digest")
    if not isinstance(expected, str):
        return None
    _files_value, value, newest = digest(files, listed, scanned, unless=expected,
                                         entries=memo.get("entries"))
    if not value or value != memo.get("digest") or newest >= entry["since"]:
        return None                 # changed, changing, or racily clean
    return entry


def rich_colours(stream: object) -> bool | None:
    """Whether rich would colour ``stream``; None when that is not obvious (then the
    full command answers: rich's own rules have more cases than are worth copying)."""
    if os.environ.get("NO_COLOR"):
        return False
    if any(os.environ.get(v) is not None for v in
           ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "JUPYTER_COLUMNS")):
        return None
    isatty = getattr(stream, "isatty", None)
    if not (isatty and isatty()):
        return False
    return True if os.environ.get("TERM") not in (None, "", "dumb", "unknown") else None


def _may_lock(cache_dir: str) -> bool:
    """A full renc opens its lock file read-write even when it has nothing to do: if it
    could not, it would not say "nothing to do" either (its lock is not in the digest)."""
    lock = os.path.join(cache_dir, ".vaultpy.lock")
    eff = os.access in os.supports_effective_ids
    if os.path.lexists(lock):
        return (not os.path.islink(lock) and os.path.isfile(lock)
                and os.access(lock, os.R_OK | os.W_OK, effective_ids=eff))
    return os.access(cache_dir, os.W_OK | os.X_OK, effective_ids=eff)


def answer(argv: Sequence[str]) -> int | None:
    """Exit status after answering from the memo, or None: run the full command."""
    if os.environ.get("VAULTPY_NO_MEMO"):
        return None
    try:
        parsed = _parse_args(argv)
        if parsed is None:
            return None
        command, repo, json_out = parsed
        config = _hosts_toml(repo)
        if config is None:
            return None
        cache_dir = _cache_dir(config)          # reads hosts.toml: once
        raw = _load(os.path.join(cache_dir, FILENAME))
        entry = lookup(command, config, cache_dir, raw) if raw is not None else None
        if entry is None and command == "renc" and raw is not None:
            from vaultpy._internal import delta  # a master changed, nothing else did?

            return delta.answer(config, cache_dir, json_out, raw)
        if entry is None:
            return None
        plan = raw.get("plan") if raw is not None else None
        if not isinstance(plan, dict):
            return None
        people = plan.get("people")             # hosts.toml's entries: hosts, people
        files, hosts = entry.get("files", 0), entry.get("hosts", len(plan["hosts"]))
        if not (isinstance(files, int) and isinstance(hosts, int) and isinstance(people, int)
                and 0 <= people <= hosts) or (command == "renc" and not _may_lock(cache_dir)):
            return None
        color = rich_colours(sys.stderr) if command == "check" and not json_out else False
        if color is None:
            return None
    except Exception:       # never worse than the full run
        return None
    if command == "renc":
        if json_out:
            sys.stdout.write(as_json(renc_noop_json(files)))
        else:
            sys.stdout.write(renc_noop_line(files, hosts, people) + "\n")
    elif json_out:
        sys.stdout.write(as_json({"ok": True, "problems": [], "warnings": []}))
    else:
        sys.stderr.write(check_ok_line(bool(color), hosts, people) + "\n")
    return 0


# The answers, shared with the full commands so that both print the very same thing.
# ``hosts``: hosts.toml's entries, ``people`` of them a person's (user = true).
def check_ok_tail(hosts: int, people: int) -> str:
    who = ("every person" if people and people == hosts
           else "every host and person" if people else "every host")
    return f": {who} has every secret; nothing stale"


def check_ok_line(color: bool, hosts: int, people: int) -> str:
    return ("\x1b[32mok\x1b[0m" if color else "ok") + check_ok_tail(hosts, people)


def renc_noop_line(files: int, hosts: int, people: int) -> str:
    return (f"nothing to do: {files} cache file{'s' if files != 1 else ''} of "
            f"{entries(hosts, people)} up to date")


def signed_line(hosts: Sequence[str]) -> str:
    """renc's line for the hosts whose list of cache files it signed (vaultpy/signing.py)."""
    return "signed the list of " + (", ".join(hosts) if len(hosts) <= 4
                                    else f"{len(hosts)} hosts")


def entries(hosts: int, people: int) -> str:
    """"18 hosts and 2 people", "1 host", "1 person": hosts.toml's entries, counted."""
    machines = hosts - people
    parts = [f"{machines} host{'s' if machines != 1 else ''}"] if machines or not people else []
    if people:
        parts.append(f"{people} {'person' if people == 1 else 'people'}")
    return " and ".join(parts)


def as_json(data: dict[str, object]) -> str:
    """``--json`` output, exactly as the CLI prints it."""
    import json

    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def renc_noop_json(files: int) -> dict[str, object]:
    # (no memo is recorded while a warning stands)
    return {"failed": [], "ok": True, "pruned": [], "repaired": [], "signed": [],
            "unchanged": files, "warnings": [], "written": []}


RENC_COLUMNS = ("written", "repaired", "unchanged", "pruned")


def renc_table(rows: dict[str, list[int]]) -> str:
    """What renc did, a row per host (counts in :data:`RENC_COLUMNS` order) and a total:
    plain aligned text, for people and for ``awk`` alike."""
    body = [[host, *map(str, counts)] for host, counts in sorted(rows.items())]
    totals = [sum(c[i] for c in rows.values()) for i in range(len(RENC_COLUMNS))]
    table = [["host", *RENC_COLUMNS], *body, ["total", *map(str, totals)]]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join([row[0].ljust(widths[0]),
                                *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
                     for row in table)
