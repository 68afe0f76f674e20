"""The incremental renc: only some master files changed since the memo was recorded.

``vaultpy edit db`` then ``vaultpy renc``: the full pipeline (:mod:`vaultpy.renc`)
would load hosts.toml, hash every master and check every cache file, work in
proportion to the repository.  When the memo (:mod:`vaultpy._internal.memo`) holds a
clean state, and under the renc lock everything it covers still has the same stat
except some master files, this module does only what that change needs, in steps:

1. ``survey``  - the memo's state holds but for those masters; the memo's plan skeleton
                 (each host's recipients, which hosts need which secret) says what to do;
2. ``encrypt`` - each changed master read and decrypted once, encrypted for each host
                 that needs it into a temp file;
3. ``publish`` - one ``syncfs``, the renames, the host's previous files removed, one
                 ``syncfs``: the same order and durability as the full pipeline (and
                 as it, an fdatasync per file and an fsync per folder instead while
                 other data waits to be written: ``fsutil.sync_files``);
                 and, with a signing key (vaultpy/signing.py), each written host's list
                 and the list of masters signed anew (their checks, and the key, done
                 in ``encrypt``, before anything is published);
4. ``record``  - the state after: the state before plus exactly this run's changes,
                 re-stat'ed once the file system's clock has passed them, so the next
                 unchanged run is a memo hit (the memo's racy-clean rule, unchanged);
5. ``report``  - the full run's very output.

Anything it does not expect - more than :data:`MAX_FILES` files to write, a master
that does not decrypt, a cache file out of place - ends it before anything is
published, and the full pipeline runs and reports instead (with the identities
already unlocked: no second prompt).  Once a file is published, failures are this
run's to report, exactly as the full pipeline would (:meth:`Run.publish`).  The
verification index is not touched: the next full run reads and verifies the few files
written here, once.
"""

from __future__ import annotations

import contextlib  # loaded by memo already
import hashlib
import os
import sys
import time
from bisect import bisect_left
from stat import S_ISREG

from vaultpy._internal import memo, sigint

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vaultpy import age
    from vaultpy.errors import Problem

# Beyond this many files the full pipeline's worker processes are the faster way.
MAX_FILES = 256
_LOCK = ".vaultpy.lock"
_WRITES = ".vaultpy-writes"     # writes.JOURNAL: an interrupted write the full run finishes
                                # (beside hosts.toml; in the cache, from older versions)
_CLOCK_WAIT_S = 0.1      # for the clock to pass this run's writes, else record nothing


class Recorded:
    """The memo as recorded by a clean ``renc`` or ``check``, its fields type-checked."""

    def __init__(self, raw: dict[str, object]) -> None:
        """Raises ValueError (or TypeError) when anything is missing or malformed."""
        self.raw = raw
        self.files = _strings(raw["files"])
        self.listed = _strings(raw["listed"])
        self.scanned = _strings(raw["scanned"])
        self.stats = _strings(raw["stats"])
        self.head = _string(raw["head"])
        self.digest = _string(raw["digest"])       # of the folders
        ok = raw["ok"]
        if not (isinstance(ok, dict) and any(
                isinstance(ok.get(c), dict) and isinstance(ok[c].get("since"), int)
                for c in ("renc", "check"))) or len(self.stats) != len(self.files):
            raise ValueError("no clean run recorded")
        # A passing check means renc has nothing to do too: every planned file present
        # and verified, nothing stale (the same plan, the same verification).
        plan = raw["plan"]
        if not isinstance(plan, dict):
            raise ValueError("no plan")
        self.cache_dir = _string(plan["cache_dir"])
        identity = plan["identity"]
        self.identity = None if identity is None else _string(identity)
        signed = plan.get("signing")
        if signed is not None and not (isinstance(signed, dict) and all(
                isinstance(signed.get(k), str) for k in ("key", "id", "file"))):
            raise ValueError("bad signing entry")
        self.signing: dict[str, str] | None = signed
        self.hosts = [(_string(h[0]), tuple(_strings(h[1]))) for h in plan["hosts"]]
        self.people = plan["people"]
        if not (isinstance(self.people, int) and 0 <= self.people <= len(self.hosts)):
            raise ValueError("bad count of people")
        self.secrets: dict[str, tuple[str, list[int]]] = {}
        self.needs = [0] * len(self.hosts)      # how many secrets each host needs
        for sid, (file, indices) in dict(plan["secrets"]).items():
            if (not isinstance(indices, list) or not indices
                    or not set(map(type, indices)) <= {int}
                    or min(indices) < 0 or max(indices) >= len(self.hosts)):
                raise ValueError("bad host index")
            self.secrets[_string(sid)] = (_string(file), indices)
            for i in indices:
                self.needs[i] += 1
        self.masters = {file for file, _ in self.secrets.values()}
        self.items = sum(self.needs)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value


def _strings(value: object) -> list[str]:
    if not isinstance(value, list):
        raise ValueError("not a list")
    return [_string(v) for v in value]


class _Write:
    """One cache file this run replaces: ``old`` by ``new`` in ``folder``."""

    def __init__(self, host: str, folder: str, old: str, new: str, tmp: str,
                 sha: str = "") -> None:
        self.host, self.folder, self.old, self.new, self.tmp = host, folder, old, new, tmp
        self.sha = sha              # of the new file's bytes (a signed cache lists it)
        self.pruned = False         # the old file is removed


class Run:
    def __init__(self, rec: Recorded, cache_dir: str, clock0: int) -> None:
        self.rec, self.cache_dir = rec, cache_dir
        self.clock0 = clock0        # the file system's clock before anything was stat'ed
        self.rest: memo.Rest | None = None
        self.todo: list[tuple[str, str, list[int]]] = []     # (id, master, host indices)
        self.read: dict[str, str] = {}      # master -> the stat line of the bytes read
        self.read_newest = 0
        self.keys: list[age.Identity] | None = None
        self.writes: list[_Write] = []
        self.temps: set[str] = set()
        # What this run changed: folder -> entry -> its lstat after, or None (removed).
        self.ours: dict[str, dict[str, os.stat_result | None]] = {}
        self.published: list[_Write] = []
        self.unsynced = False
        self.failed: list[Problem] = []     # after publishing began: reported, not handed over
        self.failed_record = False
        self.fatal: list[Problem] = []      # the full run's answer too (identities)
        # A signed cache: the key, the verified lists of the hosts written (folder ->
        # (host, name -> SHA-256)) and of masters, the masters' new values, and the
        # hosts whose list was signed anew.
        self.sign_key: Ed25519PrivateKey | None = None
        self.lists: dict[str, tuple[str, dict[str, str]]] = {}
        self.masters: dict[str, str] = {}
        self.new_values: dict[str, str] = {}
        self.signed: list[str] = []

    # 1 ---------------------------------------------------------------------- survey
    def survey(self, scanning: memo.Scanning) -> bool:
        """Whether the recorded state holds, but for some masters' stat.  ``scanning``:
        the cache's scan, begun (after :attr:`clock0`) in a helper process."""
        rec = self.rec
        head_value, _ = memo.head()
        if head_value != rec.head:
            return False
        lines, _ = memo.file_lines(rec.files)
        changed = {f for f, now, then in zip(rec.files, lines, rec.stats, strict=True)
                   if now != then}
        if not changed or not changed <= rec.masters:   # hosts.toml, the journal: full run
            return False
        self.todo = [(sid, file, hosts) for sid, (file, hosts) in sorted(rec.secrets.items())
                     if file in changed]
        if sum(len(hosts) for _sid, _file, hosts in self.todo) > MAX_FILES:
            return False
        _import_crypto()            # while the helper stats the cache
        self.rest = scanning.finish()
        return self.rest is not None and self.rest.value == rec.digest

    # 2 --------------------------------------------------------------------- encrypt
    def encrypt(self) -> bool:
        """Every changed master read and named first, then decrypted once and encrypted
        for each host into temp files.  False: hand over (nothing is published)."""
        from vaultpy import age
        from vaultpy._internal import fsutil, names
        from vaultpy.errors import VaultpyError, display_path

        jobs: list[tuple[str, bytes, list[tuple[str, str, str, str, tuple[str, ...]]]]] = []
        for sid, master, hosts in self.todo:
            try:
                data, st = fsutil.read_regular(master)
            except OSError:
                return False
            self.read[master] = memo.stat_line(st)
            self.read_newest = max(self.read_newest, st.st_mtime_ns, st.st_ctime_ns)
            sha = hashlib.sha256(data).hexdigest()
            targets = []
            for i in hosts:
                host, recipients = self.rec.hosts[i]
                folder = os.path.join(self.rec.cache_dir, host)
                old = self._current(folder, sid)
                if old is None:
                    return False
                new = names.cache_name(sid, sha, recipients)
                if new != old:              # else touched, not changed
                    targets.append((host, folder, old, new, recipients))
            if targets:
                jobs.append((master, data, targets))
                self.new_values[sid] = sha
        if jobs and not self._unlock():
            return False
        assert self.keys is not None or not jobs
        if jobs and self.rec.signing is not None and not self._signable(jobs):
            return False
        for master, data, targets in jobs:
            try:
                plaintext = age.decrypt(data, self.keys or [], display_path(master))
            except (VaultpyError, ValueError):
                return False
            for host, folder, old, new, recipients in targets:
                tmp = os.path.join(folder, fsutil.tmp_basename(new))
                self.temps.add(tmp)
                try:
                    ciphertext = age.encrypt(plaintext, recipients)
                    fsutil.write_new(tmp, ciphertext)
                except (VaultpyError, OSError, ValueError):
                    return False
                listed = (hashlib.sha256(ciphertext).hexdigest()    # (signed caches only)
                          if self.sign_key is not None else "")
                self.writes.append(_Write(host, folder, old, new, tmp, listed))
        return True

    def _signable(self, jobs: list[tuple[str, bytes, list[tuple[str, str, str, str,
                                                                tuple[str, ...]]]]]) -> bool:
        """A signed cache (vaultpy/signing.py): what the full pipeline would check before
        it signs, checked here before anything is published, else hand over (the full
        run then refuses, or repairs, and says why): each new master value vouched for
        (the last vaultpy wrote for it here, or the signed list of masters), the lists
        of masters and of each host written verified, the key decrypted and the one
        hosts.toml names."""
        from pathlib import Path

        from vaultpy import age, signing

        sig = self.rec.signing
        assert sig is not None and self.keys is not None
        try:
            self.masters = signing.read_masters(Path(self.rec.cache_dir), sig["key"])
            vouchers = signing.Vouchers(self.masters)
            by_file = {file: sid for sid, (file, _hosts) in self.rec.secrets.items()}
            for master, _data, _targets in jobs:
                sid = by_file[master]
                if not vouchers.vouch(sid, master, self.new_values[sid]):
                    return False
                for host, folder, old, _new, _recipients in _targets:
                    if folder not in self.lists:
                        self.lists[folder] = (host, signing.read_signed(folder, host,
                                                                        sig["key"]))
                    if old not in self.lists[folder][1]:
                        return False
            from vaultpy._internal import fsutil

            pem = age.decrypt(fsutil.read_regular(sig["file"])[0], self.keys, sig["file"])
            key = signing.load_private(pem, sig["key"])
        except Exception:       # anything unexpected: the full run does it, and says so
            return False
        self.sign_key = key
        return True

    def _unlock(self) -> bool:
        """Load the identities as a full run would.  If that fails, the full run would
        fail the same way at the same point (the state is clean but for the masters):
        its problems are this run's answer, and nobody is asked twice."""
        from pathlib import Path

        from vaultpy import identities
        from vaultpy.errors import VaultpyError

        configured = self.rec.identity
        try:
            self.keys = identities.load_configured(None if configured is None
                                                   else Path(configured))
        except VaultpyError as exc:
            self.fatal = exc.problems
            return False
        return True

    def _current(self, folder: str, sid: str) -> str | None:
        """The one cache file of ``sid`` in ``folder`` (a clean state has exactly one)."""
        from vaultpy._internal import names

        assert self.rest is not None
        scan = self.rest.scans.get(folder)
        if scan is None:
            return None
        entries = scan[0]
        prefix = sid + "."
        found = []
        i = bisect_left(entries, prefix)
        while i < len(entries) and entries[i].startswith(prefix):
            m = names.NAME_RE.fullmatch(entries[i])
            if m and m.group("id") == sid and S_ISREG(memo.entry_mode(scan, i)):
                found.append(entries[i])
            i += 1
        return found[0] if len(found) == 1 else None

    # 3 --------------------------------------------------------------------- publish
    def publish(self) -> bool:
        """Durable new files, then the renames, then the old files go (as renc: a
        crash anywhere leaves each host a complete file, the old or the new).

        False (hand over) only while nothing is published.  A failure after the first
        rename is this run's to report, as the full pipeline reports it: a rename that
        fails fails it and every later file (their temp files go, each host keeps its
        old file); an old file that cannot be removed fails alone."""
        if not self.writes:
            return True
        from vaultpy._internal import fsutil

        try:
            fsutil.sync_files(self.cache_dir, [w.tmp for w in self.writes])
        except OSError:
            return False
        with sigint.held():         # from the first rename on, a Ctrl-C waits for the end
            done = self._renames()
            if done and self.sign_key is not None:
                self._sign()
            return done

    def _sign(self) -> None:
        """The lists of the hosts written, and of masters, signed anew as renc signs
        them: each old file's entry goes, each new file's comes (a file whose rename
        failed keeps its old one, still in place).  A write that fails is reported; the
        next full renc finds the list unsigned and re-encrypts that host's files."""
        from pathlib import Path

        from vaultpy import signing
        from vaultpy.errors import os_problem

        assert self.sign_key is not None
        for w in self.published:
            entries = self.lists[w.folder][1]
            entries.pop(w.old, None)
            entries[w.new] = w.sha
        written = sorted({w.folder for w in self.published})
        failed = signing.write_lists([signing.host_list(Path(folder), *self.lists[folder])
                                      for folder in written], self.sign_key,
                                     Path(self.rec.cache_dir))
        for folder in written:
            host = self.lists[folder][0]
            exc = failed.get(Path(folder, signing.SUMS))
            if exc is not None:
                self._fail(os_problem(exc.filename or folder, exc, "sign the cache"))
                continue
            self.signed.append(host)
            for name in signing.FILES:
                self._ours(folder, name, os.path.join(folder, name))
            self._ours(self.rec.cache_dir, host, folder)    # (its stat, after the lists)
        self.signed.sort()
        unpublished = {w.new.rpartition(".")[0].rpartition(".")[0]
                       for w in self.writes if w not in self.published}
        for sid, sha in self.new_values.items():
            if sid not in unpublished:
                self.masters[sid] = sha
        try:
            signing.write_masters(Path(self.rec.cache_dir), self.masters, self.sign_key)
        except OSError as exc:
            self._fail(os_problem(exc.filename or self.rec.cache_dir, exc,
                                  "sign the list of masters"))
            return
        for name in (signing.MASTERS, signing.MASTERS_SIGNATURE):
            self._ours(self.rec.cache_dir, name, os.path.join(self.rec.cache_dir, name))

    def _renames(self) -> bool:
        from vaultpy._internal import fsutil
        from vaultpy.errors import os_problem

        published: list[_Write] = []
        for w in self.writes:
            final = os.path.join(w.folder, w.new)
            try:
                os.rename(w.tmp, final)
            except OSError as exc:
                if not published:
                    return False
                self._fail(os_problem(self.cache_dir, exc, "finish writing the cache"))
                break       # this file and the later ones stay unpublished
            self.temps.discard(w.tmp)
            published.append(w)
            self._ours(w.folder, w.new, final)
        self.published = published
        for w in published:
            path = os.path.join(w.folder, w.old)
            try:
                os.unlink(path)
            except OSError as exc:
                self._fail(os_problem(path, exc, "remove stale cache file"))
                continue
            w.pruned = True
            self.ours[w.folder][w.old] = None
        try:                                        # the renames and removals too
            fsutil.sync_files(self.cache_dir, [], sorted({w.folder for w in published}))
        except OSError as exc:
            self._fail(os_problem(self.cache_dir, exc, "finish writing the cache"))
            self.unsynced = True    # in place, not known durable: failed, not written
        for w in published:
            self._ours(self.rec.cache_dir, w.host, w.folder)
        return True

    def _ours(self, folder: str, name: str, path: str) -> None:
        try:
            self.ours.setdefault(folder, {})[name] = os.lstat(path)
        except OSError:
            self.failed_record = True

    def _fail(self, problem: Problem) -> None:
        if problem not in self.failed:
            self.failed.append(problem)

    def discard(self) -> None:
        for tmp in self.temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.temps.clear()

    # 4 ---------------------------------------------------------------------- record
    def record(self) -> None:
        """Record the state after this run: the state surveyed plus this run's changes.

        No second scan is needed.  Every entry this run did not change had, when the
        memo was recorded, a stat older than that memo's clock, so older than the clock
        this run read before surveying (:attr:`clock0`): any change since then gives
        it a newer stat, which the next lookup sees.  The same holds for the masters
        read here, if they were older than :attr:`clock0` when read.  What this run
        wrote was stat'ed after its last change; the clock recorded is read once the
        file system's clock has moved past those stats (the racy-clean rule)."""
        rec, before = self.rec, self.rest
        assert before is not None
        if self.failed or self.failed_record:
            return                  # as a full run: a failed run records nothing
        if self.read_newest >= self.clock0:
            return                  # a master changed in the very tick it was read
        newest_ours = max((max(st.st_mtime_ns, st.st_ctime_ns)
                           for entries in self.ours.values() for st in entries.values()
                           if st is not None), default=0)
        deadline = time.monotonic() + _CLOCK_WAIT_S
        while True:
            clock = memo.fs_clock(self.cache_dir)
            if clock is None or (clock <= newest_ours and time.monotonic() > deadline):
                return
            if clock > newest_ours:
                break
            time.sleep(0.001)
        after = before.updated(self.ours)
        if after is None or after.newest >= clock:
            return
        lines = [self.read.get(f, then) for f, then in zip(rec.files, rec.stats, strict=True)]
        memo.write(self.cache_dir, {
            **{k: v for k, v in rec.raw.items() if k not in ("format", "vaultpy")},
            "stats": lines, "files_digest": memo.files_digest(rec.head, rec.files, lines),
            "digest": after.value, "entries": after.entries,
            "ok": {"renc": {"since": clock, "files": rec.items, "hosts": len(rec.hosts)}}})

    # 5 ---------------------------------------------------------------------- report
    def report(self, json_out: bool) -> tuple[str, str, int]:
        """(stdout, stderr, exit status), as the full run would print and end."""
        rec = self.rec
        if not self.writes:
            if json_out:
                return memo.as_json(memo.renc_noop_json(rec.items)), "", 0
            return memo.renc_noop_line(rec.items, len(rec.hosts), rec.people) + "\n", "", 0
        problems = _lines(self.failed)
        code = 1 if self.failed else 0
        written = [] if self.unsynced else self.published
        if json_out:
            return memo.as_json({
                "failed": [p.as_dict() for p in self.failed], "ok": not self.failed,
                "repaired": [], "signed": self.signed,
                "unchanged": rec.items - len(self.writes),
                "pruned": sorted(os.path.join(w.folder, w.old) for w in self.published
                                 if w.pruned),
                "warnings": [],             # as the memo it runs from: none stood
                "written": sorted(os.path.join(w.folder, w.new) for w in written),
            }), problems, code
        rows = {host: [0, 0, n, 0] for (host, _), n in zip(rec.hosts, rec.needs, strict=True)
                if n}
        for w in self.writes:
            rows[w.host][2] -= 1
        for w in self.published:
            rows[w.host][0] += not self.unsynced
            rows[w.host][3] += w.pruned
        failed = f"{len(self.failed)} failed\n" if self.failed else ""
        signed = memo.signed_line(self.signed) + "\n" if self.signed else ""
        return memo.renc_table(rows) + "\n" + signed, failed + problems, code


def _lines(problems: list[Problem]) -> str:
    """Problems as the CLI prints them: one line each (colour aside)."""
    return "".join(f"{p}\n" for p in problems)


def _import_crypto() -> None:
    """What :meth:`Run.encrypt` needs: not :mod:`vaultpy.cache` (the plan, json)."""
    import vaultpy._internal.fsutil
    import vaultpy._internal.names
    import vaultpy.age
    import vaultpy.identities  # noqa: F401


def answer(config: str, cache_dir: str, json_out: bool, raw: dict[str, object]
           ) -> int | None:
    """Exit status after an incremental renc, or None: run the full pipeline.
    ``raw``: the memo as loaded from ``cache_dir``."""
    lock = os.path.join(cache_dir, _LOCK)
    journals = (os.path.join(os.path.dirname(config), _WRITES),
                os.path.join(cache_dir, _WRITES))
    if (raw.get("format") != memo.FORMAT or raw.get("vaultpy") != memo._version()
            or raw.get("config") != config or not os.path.isfile(lock) or os.path.islink(lock)
            or any(map(os.path.lexists, journals))
            or not memo._may_lock(cache_dir)):
        return None             # no clean state recorded, or a first run
    try:
        listed, scanned = _strings(raw["listed"]), _strings(raw["scanned"])
    except (KeyError, ValueError):
        return None
    from vaultpy._internal import fsutil

    try:
        with fsutil.locked(lock):
            clock0 = memo.fs_clock(cache_dir)
            if clock0 is None or any(map(os.path.lexists, journals)):
                return None     # (a writer killed while this waited for the lock)
            # A helper process stats the cache (it shares the lock's open file
            # meanwhile, and only stats) while this one checks the masters and imports;
            # then this one takes its share of what is left.
            run: Run | None = None
            scanning: memo.Scanning | None = None
            try:
                scanning = memo.Rest.start(listed, scanned, keep=set(scanned),
                                           entries=raw.get("entries"))
                try:
                    run = Run(Recorded(raw), cache_dir, clock0)
                except (KeyError, ValueError, TypeError, IndexError):
                    return None
                if not (run.survey(scanning) and run.encrypt() and run.publish()):
                    if run.fatal:
                        if json_out:    # as the full command: its result, and the problems
                            sys.stdout.write(memo.as_json({
                                "failed": [], "ok": False, "pruned": [], "repaired": [],
                                "signed": [], "unchanged": 0, "written": [],
                                "problems": [p.as_dict() for p in run.fatal]}))
                        sys.stderr.write(_lines(run.fatal))
                        return 1
                    if run.keys is not None:
                        from vaultpy import identities

                        identities.use_loaded(run.keys)
                    return None
            finally:
                with sigint.held():     # a Ctrl-C must not cut the clean-up short
                    if scanning is not None:
                        scanning.cancel()
                    if run is not None:
                        run.discard()
            with contextlib.suppress(Exception):    # published: the memo is only a shortcut
                run.record()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    out, err, code = run.report(json_out)
    sys.stdout.write(out)
    sys.stdout.flush()
    sys.stderr.write(err)
    return code
