"""The renc pipeline (DESIGN §4): master secrets → per-host cache.

1. ``plan``     - hash master files, name every expected cache file (no crypto);
2. ``verify``   - files already present are done, unless damaged;
3. ``decrypt``  - each needed master once, in a worker, with identities loaded once
                  (a first run, before its lock file exists, encrypts everything
                  and publishes nothing until every master has decrypted);
4. ``encrypt``  - per secret, in worker processes; each output is written to a temp
                  name; while the workers go on, the parent makes finished batches
                  durable (one ``syncfs`` each) and, once it holds the lock, renames
                  them into place (a first run's renames wait for the end).
                  A host whose directory does not exist yet (a first run, a new
                  host) is written whole into a temp directory, renamed into place
                  once at the end: one rename for the host, not one per file;
5. ``prune``    - stale files and directories of removed hosts;
6. ``sign``     - with a signing key: each host's list of its files, signed where it
                  changed (vaultpy/signing.py; a file not verified against the last
                  signed list was re-encrypted in step 4, never signed as found);
7. ``report``   - a :class:`Result` the CLI renders as a table or JSON.

Any failure is collected per item; the cache is never left with an empty or
partial file under a final name.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from vaultpy import age, cache, identities, signing
from vaultpy._internal import forkpool, forksafe, fsutil, memo, sigint, timings, writes
from vaultpy._internal.record import field, mutable_record, record
from vaultpy.errors import Problem, VaultpyError, display_path, key_path, os_problem
from vaultpy.model import Config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

ProgressFn = Callable[[int, int], None]


@mutable_record
class Result:
    written: list[cache.Item] = field(default_factory=list)
    unchanged: list[cache.Item] = field(default_factory=list)
    repaired: list[cache.Item] = field(default_factory=list)
    pruned: list[Path] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    failed_items: set[tuple[str, str]] = field(default_factory=set)   # (host, id)
    signed: list[str] = field(default_factory=list)     # hosts whose list was signed anew
    # With a signing key: the SHA-256 of each file written ("host/name"), as the worker
    # wrote it, for the host's list (vaultpy/signing.py).
    digests: dict[str, str] = field(default_factory=dict)
    # Hosts whose files were re-encrypted because no list vouched for them, with why
    # ("SHA256SUMS missing": the first signed run), for the summary.
    unvouched: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, object]:
        """Paths sorted: the order workers finish in is no part of the answer."""
        return {
            "ok": self.ok,
            "written": sorted(str(i.path) for i in self.written),
            "repaired": sorted(str(i.path) for i in self.repaired),
            "unchanged": len(self.unchanged),
            "pruned": sorted(str(p) for p in self.pruned),
            "signed": sorted(self.signed),
            "failed": [p.as_dict() for p in self.failed],
        }


@record
class _Job:
    """Encrypt one master secret for several hosts (decrypting it once)."""

    secret_id: str
    master: Path
    source: str                      # the master's path as messages name it
    master_sha256: str
    targets: tuple[cache.Item, ...]
    # Per target: the temp directory its host is being built in (the file goes there
    # under its final name), or "" to write a temp file beside the final one.
    staged: tuple[str, ...] = ()
    # Whether each file's SHA-256 is wanted (a signed cache: the list names it).  The
    # worker hashes the bytes it has in hand: read back, a cold run's 10,000 files
    # cost 0.29 s of 1.3.
    digests: bool = False


# Identities are set in the parent before the worker pool forks, so workers
# inherit them in memory: no key material crosses a pipe, no second prompt.
_IDENTITIES: list[age.Identity] = []
# This run's --accept (ids, or [True] for all): read by _gate.
_ACCEPT: list[str | bool] = []
# The jobs of a pool's run, set before the pool forks: a worker is sent a job's index,
# not the job (10,000 pickled items cost the parent ~45 ms and the workers ~60 ms).
_JOBS: list[_Job] = []


# What a worker sends back per target: the target's index in its job, not a copy
# of the item (10,000 pickled copies would double the parent's memory); for a file
# written into a staged directory, its stat as written (a directory's rename changes
# no stat of the files in it: the verification index takes it as is); if the job
# asked for it, the SHA-256 of the bytes written (else "").
_Reply = tuple[int, str, Problem | None, cache.StatKey | None, str]


def _master_problem(path: Path, exc: OSError | VaultpyError) -> Problem:
    return (os_problem(path, exc, "read master file") if isinstance(exc, OSError)
            else exc.problems[0])


# The field of a master's failure (:func:`_run_job`); a cache file's names the item.
_NEEDED_BY = "needed by "


def _needed_by(problem: Problem, hosts: Sequence[str]) -> Problem:
    return Problem(problem.file, problem.message, _NEEDED_BY + ", ".join(hosts),
                   problem.hint)


def _failure(i: int, item: cache.Item, problem: Problem) -> _Reply:
    return (i, "", Problem(problem.file, problem.message,
                           key_path("hosts", item.host, "secrets", item.id), problem.hint),
            None, "")


def _run_job(job: _Job) -> list[_Reply]:
    """In a worker: decrypt one master, encrypt it for each target to a temp file."""
    if sigint.stopped():            # Ctrl-C was pressed: start no other job
        raise KeyboardInterrupt
    try:
        plaintext = _decrypt_master(job.master, job.source, job.master_sha256, job.secret_id)
    except (OSError, VaultpyError) as exc:
        # One line for the master, naming every host that misses it.
        problem = _needed_by(_master_problem(job.master, exc), [t.host for t in job.targets])
        return [(i, "", problem, None, "") for i in range(len(job.targets))]
    out: list[_Reply] = []
    tmp = ""
    try:
        for i, t in enumerate(job.targets):
            # Plain strings on this path: a pathlib join per file cost more than the I/O.
            staged = job.staged[i] if job.staged else ""
            tmp = (os.path.join(staged, t.name) if staged
                   else os.path.join(t.dir, fsutil.tmp_basename(t.name)))
            try:
                data = age.encrypt(plaintext, t.recipients)
                st = fsutil.write_new(tmp, data)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                out.append(_failure(i, t, os_problem(t.path, exc, "write cache file")))
            except Exception as exc:  # a pyrage error: report it, never crash the pool
                out.append(_failure(i, t, Problem(display_path(t.path),
                                                  f"encryption failed: {exc}")))
            else:
                out.append((i, tmp, None, cache.stat_key(st) if staged else None,
                            hashlib.sha256(data).hexdigest() if job.digests else ""))
    except BaseException:           # the parent never hears of these temp files
        for path in [tmp, *(done for _i, done, _problem, _st, _sha in out)]:
            if path:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        raise
    return out


_CHANGED = "changed while renc was running"


def _decrypt_master(master: Path, source: str, sha256: str, secret_id: str) -> bytes:
    """The plaintext of ``master``, secret ``secret_id``'s, as planned (its hash
    ``sha256``)."""
    data = fsutil.read_regular(master)[0]
    if hashlib.sha256(data).hexdigest() != sha256:
        raise VaultpyError(Problem(source, _CHANGED, "", "run vaultpy renc again"))
    return age.decrypt(data, _IDENTITIES, source, secret_id=secret_id)


def _worker_init(parent: int) -> None:
    """Workers leave Ctrl-C to the parent.  A terminal sends SIGINT to the whole
    process group; a worker it interrupted would print a traceback and could leave
    the file it was writing.  So a worker finishes its job (a few milliseconds), and
    the parent, which cancels the jobs not started, removes what the last ones wrote.
    A handler, not SIG_IGN: a plugin the worker runs must still die of Ctrl-C (an
    ignored signal would stay ignored across exec), and a plugin's question the worker
    waits on must still end (:func:`_worker_sigint`).  Workers are forked while the
    parent holds Ctrl-C back (:func:`sigint.held`), so none is interrupted before this
    handler is in place.

    A worker dies with its parent (``PR_SET_PDEATHSIG``): left behind, it would keep
    the unlocked keys in memory and the renc lock held."""
    import signal

    signal.signal(signal.SIGINT, _worker_sigint)
    sigint.forget()
    with contextlib.suppress(OSError, AttributeError):
        fsutil.libc_call("prctl", _PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:      # the parent died before prctl took effect
        os._exit(1)


_PR_SET_PDEATHSIG = 1


def _worker_sigint(_signum: int, _frame: object) -> None:
    """A worker's SIGINT: the job under way goes on, unless a plugin's question waits
    on the terminal (the user must not have to answer it to stop renc); no other job
    starts, and no later question is asked (:func:`sigint.stopped`)."""
    sigint.stop()
    if sigint.asking():
        raise KeyboardInterrupt


class _Publisher:
    """Makes finished temp files durable, and (with ``renames``) final, a batch at a
    time, while encryption goes on.

    Per batch: one ``syncfs`` (every byte of the batch durable; for a few files while
    other programs' data waits to be written, an fdatasync each instead:
    :func:`fsutil.sync_files`), then, if ``renames`` (the lock is held), its renames
    (each atomic, replacing a damaged file), then the index records them.  Without
    ``renames`` a batch is only made durable (:meth:`sync`), and every rename waits for
    :meth:`finish`.  The host
    directories are fsynced once, at the end (:meth:`finish`).  Until a temp file is
    renamed it is ``pending``: :meth:`discard` removes what is left on an interrupt.

    ``staging``: final host directory -> the temp directory it is being built in.
    Files written there need no rename of their own: they are synced with the batches,
    and :meth:`finish`, once every file is synced, renames each directory into place
    (never over one that appeared meanwhile: its files are then moved in one by one).
    """

    def __init__(self, cfg: Config, result: Result, index: cache.VerifiedIndex,
                 batch_files: int, batch_bytes: int, staging: dict[str, str],
                 renames: bool) -> None:
        self.cfg = cfg
        self.result = result
        self.index = index
        self.batch_files = batch_files
        self.batch_bytes = batch_bytes
        self.staging = staging
        self.renames = renames
        self.repaired = {(i.host, i.id) for i in result.repaired}
        self.pending: list[tuple[cache.Item, str]] = []
        self.unsynced = 0               # files written since the last sync (staged too)
        self.unsynced_bytes = 0
        self.fresh: list[str] = []      # their paths (more than FEW_FILES: a syncfs, no list)
        self.staged: dict[str, list[tuple[cache.Item, cache.StatKey]]] = {}
        self.dirs: set[str] = set()
        self.placed: set[str] = set()   # staged directories renamed into place
        # Failed files' final names in a staged directory: a worker that died mid-job
        # may have left them there, partial, and the directory's rename would put them
        # in place with it.  They are unlinked before the last syncfs (:meth:`finish`).
        self.dropped: list[str] = []
        self.broken: Problem | None = None   # syncfs or a rename failed: publish no more
        self.held: list[int] = []       # the staged directories' flocks (fsutil.hold_dir)

    def add(self, item: cache.Item, tmp: str, key: cache.StatKey | None) -> None:
        """A finished file: ``tmp`` to rename, or (``key`` given) one in a staged
        directory, which has no rename of its own (its directory's waits for the end)."""
        self.unsynced += 1
        self.unsynced_bytes += (item.payload or 0) + 256
        if len(self.fresh) <= fsutil.FEW_FILES:
            self.fresh.append(tmp)
        if key is not None:
            self.staged.setdefault(item.dir, []).append((item, key))
        else:
            self.pending.append((item, tmp))

    def flush_if_full(self) -> None:
        """Once a batch is written: durable now, while the workers go on, so that the
        sync at the end waits only for what came after the last batch, not for the
        whole run's bytes (a cold --jobs 2 run of 10,000 files: its last sync from
        ~0.13 s to ~0.02 s, the run 20-49 ms faster on 2 cores, though the writeback
        then competes with the workers)."""
        if self.unsynced >= self.batch_files or self.unsynced_bytes >= self.batch_bytes:
            if self.renames:
                self.flush()
            else:
                self.sync()

    def fail(self, item: cache.Item, problem: Problem) -> None:
        if problem not in self.result.failed:
            self.result.failed.append(problem)
        self.result.failed_items.add((item.host, item.id))
        built = self.staging.get(item.dir)
        if built is not None:
            self.dropped.append(os.path.join(built, item.name))

    def sync(self) -> None:
        """Make every file written since the last sync durable; rename none."""
        if self.unsynced and self.broken is None:
            try:
                fsutil.sync_files(self.cfg.cache_dir, self.fresh,
                                  sorted(self.staging.values()))
            except OSError as exc:
                self.broken = os_problem(self.cfg.cache_dir, exc, "finish writing the cache")
        self.unsynced = self.unsynced_bytes = 0
        self.fresh = []

    def flush(self) -> None:
        """Publish the pending batch.  A Ctrl-C during its syncfs leaves it pending
        (:meth:`discard` removes it); its renames are held whole, with their clean-up."""
        self.sync()                     # data durable before any rename
        with sigint.held():
            pending, self.pending = self.pending, []
            done = 0
            try:
                if self.broken is None:
                    for item, tmp in pending:
                        os.rename(tmp, os.path.join(item.dir, item.name))
                        done += 1
                        self._published(item)
            except OSError as exc:
                self.broken = os_problem(self.cfg.cache_dir, exc, "finish writing the cache")
            finally:
                for item, tmp in pending[done:]:
                    if self.broken is not None:
                        self.fail(item, self.broken)
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)

    def _published(self, item: cache.Item, key: cache.StatKey | None = None) -> None:
        self.dirs.add(item.dir)
        if (item.host, item.id) not in self.repaired:
            self.result.written.append(item)
        self.index.record(item, key)

    def finish(self, new_dirs: Sequence[Path] = ()) -> None:
        for path in self.dropped:   # before the syncfs: the unlinks durable with the rest
            with contextlib.suppress(OSError):
                os.unlink(path)
                self.unsynced += 1
        self.dropped = []
        self.flush()
        with sigint.held():
            for final, built in sorted(self.staging.items()):
                self._place(final, built)
        for d in sorted(self.dirs):
            self._durable_dir(d, {d})
        if self.placed:             # (placed ones have left self.staging)
            self._durable_dir(self.cfg.cache_dir, self.placed)
        # A first run's cache directory (and any parent it made): a syncfs after the
        # mkdir made its entry durable, an fdatasync per file does not
        # (fsutil.sync_files).  Without it, a crash could lose every file just written.
        for new in new_dirs:
            if not self._durable_dir(new.parent):
                break

    def _durable_dir(self, d: Path | str, holding: Collection[str] | None = None) -> bool:
        """fsync directory ``d``; when that fails, each written or repaired item whose
        directory is one of ``holding`` (default: all of them) fails: its file is in
        place, not known durable."""
        try:
            fsutil.fsync_path(Path(d), directory=True)
        except OSError as exc:
            problem = os_problem(d, exc, "finish writing the cache")
            for item in [*self.result.written, *self.result.repaired]:
                if holding is None or item.dir in holding:
                    self.fail(item, problem)
            return False
        return True

    def _place(self, final: str, built: str) -> None:
        """Rename the staged directory ``built`` to ``final`` (its files are durable:
        :meth:`finish` runs after the sync that covered the last of them)."""
        files = self.staged.pop(final, [])
        if self.broken is not None:
            for item, _key in files:
                self.fail(item, self.broken)
        if self.broken is not None or not files:
            return                      # discard() removes the directory
        try:
            fsutil.rename_new(built, final)
        except FileExistsError:         # made meanwhile (renc never removes it): file by file
            self._move_files(files, built)
            return
        except OSError as exc:
            problem = os_problem(final, exc, "finish writing the cache")
            for item, _key in files:
                self.fail(item, problem)
            return
        del self.staging[final]
        self.placed.add(final)
        for item, key in files:
            self._published(item, key)
        self.dirs.discard(final)        # its entries were synced in place; its parent is next

    def _move_files(self, files: list[tuple[cache.Item, cache.StatKey]], built: str) -> None:
        for item, _key in files:
            try:
                os.rename(os.path.join(built, item.name), os.path.join(item.dir, item.name))
            except OSError as exc:
                self.fail(item, os_problem(item.path, exc, "write cache file"))
            else:
                self._published(item)   # renamed: its ctime changed, so stat it again

    def discard(self) -> None:
        with sigint.held():        # a Ctrl-C must not cut this clean-up short
            for _item, tmp in self.pending:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            self.pending = []
            for built in self.staging.values():
                with contextlib.suppress(OSError):
                    fsutil.remove_tree(Path(built))
            self.staging.clear()
            for fd in self.held:
                os.close(fd)
            self.held = []


def _execute(jobs: list[_Job], workers: int, deliver: Callable[[_Job, list[_Reply]], None],
             *, may_fork: bool | None = None) -> None:
    """Run every job; hand each job's replies to ``deliver`` as soon as they arrive.
    ``may_fork``: :func:`_can_fork`'s answer, if the caller has it already."""
    if workers < 2 or len(jobs) < 2 or not (_can_fork() if may_fork is None else may_fork):
        _execute_here(jobs, deliver)
        return

    def delivered(n: int, replies: list[_Reply] | forkpool.Failed) -> None:
        job = jobs[n]
        if isinstance(replies, forkpool.Failed):        # a worker died (OOM, a signal)
            replies = [_failure(i, t, Problem(display_path(t.path),
                                              f"worker failed: {replies.reason}"))
                       for i, t in enumerate(job.targets)]
        deliver(job, replies)

    _JOBS[:] = jobs                 # before the workers fork
    try:
        forkpool.run(len(jobs), min(workers, len(jobs)), _run_job_at, delivered,
                     init=functools.partial(_worker_init, os.getpid()), abandon=_unlink)
    except forkpool.NoWorker:       # no process to spare (EAGAIN): the work is done here
        _execute_here(jobs, deliver)
    finally:
        _JOBS.clear()


def _execute_here(jobs: list[_Job], deliver: Callable[[_Job, list[_Reply]], None]) -> None:
    for job in jobs:
        with sigint.held():        # as a worker: a job, once begun, is delivered
            deliver(job, _run_job(job))


def _run_job_at(n: int) -> list[_Reply]:
    """In a worker: the job the parent set before forking it (:data:`_JOBS`)."""
    return _run_job(_JOBS[n])


def _unlink(replies: list[_Reply]) -> None:
    """A finished job's files, when the run stops before they are delivered."""
    for _i, tmp, _problem, _st, _sha in replies:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _can_fork() -> bool:
    """False when threads a plugin call left behind outlive the wait (:mod:`forksafe`):
    the caller then does the work itself."""
    return forksafe.settled(_FORK_WAIT)


_FORK_WAIT = 1.0      # seconds; ~100 ms in practice


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) or 1


def renc(cfg: Config, hosts: Sequence[str] = (), *, jobs: int | None = None,
         identity_files: Sequence[Path] = (),
         ask: age.PassphraseFn = age.passphrase_from_env_or_tty,
         progress: ProgressFn | None = None, clock: timings.Clock | None = None,
         accept: Collection[str] | bool = ()) -> Result:
    """Bring the cache of ``hosts`` (default: all) up to date with the master files.

    ``clock``: records how long each step took (``renc --timings``).  ``accept``: with
    a signing key, masters whose value renc may sign though nothing vouches for it
    (:func:`_gate`); True: all of them."""
    for h in hosts:
        if h not in cfg.hosts:
            raise VaultpyError(Problem(display_path(cfg.path), f"unknown host {h!r}",
                                       "hosts", "known hosts: " + ", ".join(cfg.hosts)))
    if not isinstance(accept, bool):
        for sid in accept:
            cfg.secret(sid)             # an unknown id: one line, with a close match
    workers = jobs or default_jobs()
    _ACCEPT[:] = [True] if accept is True else list(accept or ())
    try:
        with sigint.caught():
            return _renc(cfg, hosts, workers, identity_files, ask, progress,
                         clock or timings.Clock())
    finally:
        _ACCEPT.clear()


def _renc(cfg: Config, hosts: Sequence[str], workers: int, identity_files: Sequence[Path],
          ask: age.PassphraseFn, progress: ProgressFn | None, clock: timings.Clock
          ) -> Result:
    early: _Publisher | None = None
    # Every publisher this run makes, listed by _encrypt before anything is written:
    # a Ctrl-C as one is handed back (before the caller holds it) must not strand
    # its temp files.  Each is discarded at the end (a no-op once it has finished).
    pubs: list[_Publisher] = []
    # What this run's mkdir -p of the cache directory creates (a first run's): removed
    # again, if empty, unless the lock file is made in it.
    made = _absent(cfg.cache_dir)
    try:
        # A first run (no lock file yet) validates everything and unlocks keys before
        # it creates anything: bad input or a wrong key must not leave even a lock file
        # behind.  It also encrypts then, publishing nothing (:func:`_first_run`).
        first = None
        if not cfg.lock_path.exists():
            first, early = _first_run(cfg, hosts, identity_files, ask, workers, progress,
                                      clock, pubs)
        with contextlib.ExitStack() as stack:
            try:
                cfg.cache_dir.mkdir(parents=True, exist_ok=True)
                created = stack.enter_context(fsutil.locked(cfg.lock_path))
            except OSError as exc:      # read-only checkout, a directory in its place...
                raise VaultpyError(os_problem(cfg.lock_path, exc, "take the lock")) from None
            # What it made stays; each one's entry in its parent must be durable too
            # (:meth:`_Publisher.finish`: no syncfs may have covered the mkdir).
            new_dirs, made = made, []   # the lock file is in the cache directory now
            fills_first = _fills_first(cfg)
            # A write of several masters a killed writer left half done is finished
            # first (vaultpy/_internal/writes.py).
            finished = writes.finish(cfg)
            # A lock file this run created was never held by anyone else: no writer
            # can have changed a master or the cache since the first run's survey, so
            # its survey stands, and so do the files it wrote.  Otherwise both go.
            if first is not None and created and not finished:
                s = first
            else:
                if early is not None:
                    early.discard()
                    early = None
                s = _Survey.take(cfg, hosts, clock)
            del first
            result, index, p = s.result, s.index, s.plan
            if cfg.signing is not None:
                _gate(cfg, s)
                with clock.phase("unlock"):
                    _unlock_signing(cfg, s, identity_files, ask)
            if early is not None:
                with clock.phase("publish"):
                    _publish(early, result, new_dirs)
            elif s.todo:
                if not _IDENTITIES:
                    with clock.phase("unlock"):
                        _IDENTITIES[:] = identities.load(cfg, identity_files, ask)
                with clock.phase("encrypt"):
                    pub = _encrypt(cfg, p, s.todo, result, index, workers, progress,
                                   pubs)[0]
                with clock.phase("publish"):
                    _publish(pub, result, new_dirs)
            s.todo = []
            with clock.phase("prune"):
                _prune(cfg, p, result)
            if cfg.signing is not None:
                with clock.phase("sign"):
                    _sign(p, result, index, s.key)
                    _sign_masters(cfg, s)
            if result.ok:       # a failed run changes nothing it need not change
                with clock.phase("index"):
                    index.save(None if hosts else p.items)
                if fills_first:
                    # The cache's .gitignore, and the write journal's lines beside
                    # hosts.toml (an import killed before it wrote them left none).
                    from vaultpy.init import ignore_local_state

                    with contextlib.suppress(OSError):  # (doctor names what git shows)
                        ignore_local_state(cfg.root, cfg.cache_dir)
    finally:
        for each in pubs:
            each.discard()
        _remove_empty(made)             # (after the discard: its temp directories)
        _IDENTITIES.clear()
    return result


def _will_sign(s: _Survey) -> bool:
    """Whether any host's list changes in this run: a file to write, a stale file to
    prune in a host's directory, a host whose list is not signed, or one whose list
    names other files than those verified."""
    p, index = s.plan, s.index
    if s.todo or index.unsigned or s.masters_next != s.masters_found:
        return True
    dirs = {item.dir for item in p.items}
    if any(str(path.parent) in dirs for path in p.stale):
        return True
    verified: dict[str, set[str]] = {}
    for item in s.result.unchanged:
        verified.setdefault(item.host, set()).add(item.name)
    return any(set(index.signed(host)) != verified.get(host, set())
               for host in (index.signed_dirs or {}))


def _gate(cfg: Config, s: _Survey) -> None:
    """With a signing key: refuse, before anything is unlocked or written, to encrypt a
    master whose value nothing vouches for (vaultpy/signing.py: on the signed list of
    masters, written by vaultpy on this machine, or accepted with --accept).  Anyone
    can replace a master (it is encrypted to public keys), and a change to ciphertext
    is one no review can read: renc, holding the key, would sign it for the hosts.
    Also works out the list of masters this run leaves (``s.masters_next``)."""
    assert cfg.signing is not None
    p = s.plan
    try:
        found: dict[str, str] | None = signing.read_masters(cfg.cache_dir, cfg.signing.key)
    except signing.Unsigned:
        found = None
    s.masters_found = found
    # The values of the masters this run plans; every other declared master's stays as
    # signed (one no host needs yet, another host's with --host), a removed one's goes.
    nxt = {sid: sha for sid, sha in (found or {}).items() if sid in cfg.secrets}
    nxt.update((sid, m.sha256) for sid, m in p.masters.items())
    s.masters_next = nxt
    todo = sorted({item.id for item in s.todo})
    accept = set(_ACCEPT)
    if not todo or True in accept:
        return
    vouchers = signing.Vouchers(found)
    needed: dict[str, list[str]] = {}
    for item in s.todo:
        needed.setdefault(item.id, []).append(item.host)
    bad = []
    for sid in todo:
        if sid in accept or vouchers.vouch(sid, cfg.secrets[sid].file,
                                           p.masters[sid].sha256):
            continue
        shown = display_path(cfg.secrets[sid].file)
        bad.append(Problem(shown, "changed since the last signed renc, and not by vaultpy "
                           f"on this machine: renc would sign its value for "
                           f"{', '.join(sorted(set(needed[sid])))}, and a change to "
                           "ciphertext is one no review can read", key_path("secrets", sid),
                           f"look at it (vaultpy decrypt {sid}; git log -p -- {shown}); if "
                           f"the value is right, vaultpy renc --accept {sid}"))
    if bad:
        raise VaultpyError(bad)


def _sign_masters(cfg: Config, s: _Survey) -> None:
    """The signed list of masters, as this run leaves it, where it changed: a master
    whose files failed keeps the value last signed."""
    if s.masters_next is None or s.key is None:
        return
    failed = {sid for _host, sid in s.result.failed_items}
    nxt = dict(s.masters_next)
    for sid in failed & set(s.plan.masters):
        if s.masters_found is not None and sid in s.masters_found:
            nxt[sid] = s.masters_found[sid]
        else:
            nxt.pop(sid, None)
    if nxt == s.masters_found:
        return
    try:
        signing.write_masters(cfg.cache_dir, nxt, s.key)
    except OSError as exc:
        s.result.failed.append(os_problem(exc.filename or cfg.cache_dir / signing.MASTERS,
                                          exc, "sign the list of masters"))


def _unlock_signing(cfg: Config, s: _Survey, identity_files: Sequence[Path],
                    ask: age.PassphraseFn) -> None:
    """With a signing key and a list to sign, decrypt the key now, before anything is
    written: a run that cannot sign (a teammate without the master key) must change
    nothing, not publish and prune, then fail."""
    if cfg.signing is None or s.key is not None or not _will_sign(s):
        return
    if not _IDENTITIES:
        _IDENTITIES[:] = identities.load(cfg, identity_files, ask)
    from vaultpy import masters

    try:
        pem = masters.decrypt(cfg, cfg.signing.secret, _IDENTITIES)
    except VaultpyError as exc:
        p = exc.problems[0]
        raise VaultpyError(Problem(
            p.file, f"renc signs each host's cache with the key this master file holds "
            f"([vaultpy] signing_secret), and {p.message.removeprefix('needed by renc: ')}",
            "vaultpy.signing_secret", "only a holder of the master key can change what a "
            "host gets: ask one to run vaultpy renc, or give the master identity "
            "(-i FILE or VAULTPY_IDENTITY); nothing was written")) from None
    s.key = signing.private_key(cfg, pem)


def _sign(p: cache.Plan, result: Result, index: cache.VerifiedIndex,
          key: Ed25519PrivateKey | None) -> None:
    """Each host's list of its cache files, signed, where it changed (vaultpy/signing.py).

    Only files this run wrote, or verified against the signed list, are listed: a file
    that failed verification and could not be written again stays unlisted (activation
    refuses it), and nothing is trusted because it is there.  ``key``: decrypted by
    :func:`_unlock_signing` whenever a list was to change."""
    failed = result.failed_items
    written = {(i.host, i.name) for i in (*result.written, *result.repaired)
               if (i.host, i.id) not in failed}
    verified = {(i.host, i.name) for i in result.unchanged}
    by_host: dict[str, list[cache.Item]] = {}
    for item in p.items:
        by_host.setdefault(item.host, []).append(item)
    lists: dict[Path, str] = {}
    changed: list[signing.Signed] = []
    for host, items in sorted(by_host.items()):
        folder = Path(items[0].dir)
        if str(folder) in p.linked or not folder.is_dir():
            continue
        old = index.signed(host) if host not in index.unsigned and (
            str(folder) not in p.absent) else {}
        entries: dict[str, str] = {}
        for item in items:
            if (host, item.name) in written:
                digest = result.digests.get(item.key)
            elif (host, item.name) in verified:
                digest = old.get(item.name)
            else:
                digest = None
            if digest is not None:
                entries[item.name] = digest
        if entries == old and host not in index.unsigned and str(folder) not in p.absent:
            continue                    # the same list, signed already: no churn
        if key is None:     # (cannot be: _unlock_signing foresaw every change)
            result.failed.append(Problem(display_path(folder / signing.SUMS), "not signed: "
                                         "the signing key was not unlocked", "",
                                         "run vaultpy renc again"))
            continue
        changed.append(signing.host_list(folder, host, entries))
        lists[changed[-1][0]] = host
    if not changed or key is None:
        return
    failed_lists = signing.write_lists(changed, key, index.path.parent)
    repaired = {i.host for i in result.repaired}
    for path, host in lists.items():
        exc = failed_lists.get(path)
        if exc is not None:
            problem = os_problem(exc.filename or path, exc, "sign the cache")
            if problem not in result.failed:    # (one failed sync fails every list)
                result.failed.append(problem)
            continue
        index.record_signed(host, str(path.parent))
        result.signed.append(host)
        why = index.unsigned.get(host)
        if why is not None and host in repaired:
            result.unvouched[host] = f"{os.path.basename(why.path)} {why.reason}"


def _fills_first(cfg: Config) -> bool:
    """Whether this run is the first to fill a cache directory that has no .gitignore
    (a cache_dir set after ``vaultpy init``, which writes one into the default): no
    host's directory in it yet.  Such a run, if it succeeds, writes the .gitignore init
    would have, or git shows (and a commit carries) the lock, the index and the memo.
    One that holds hosts already, and no .gitignore, is the user's choice."""
    d = cfg.cache_dir
    if os.path.lexists(d / ".gitignore"):
        return False
    try:
        with os.scandir(d) as it:
            return not any(e.is_dir(follow_symlinks=False) and not fsutil.is_tmp(e.name)
                           for e in it)
    except OSError:
        return False


def _publish(pub: _Publisher, result: Result, new_dirs: Sequence[Path] = ()) -> None:
    """Make what the workers wrote final; the index records each file as it is.
    ``new_dirs``: the directories this run's mkdir -p of the cache created."""
    try:
        pub.finish(new_dirs)
    finally:
        pub.discard()                   # an interrupt: no temp file stays behind
    # A damaged file is repaired once its new copy is in place, not before; a file
    # whose directory's fsync failed is failed, not also written.
    failed = result.failed_items
    result.repaired = [i for i in result.repaired if (i.host, i.id) not in failed]
    result.written = [i for i in result.written if (i.host, i.id) not in failed]


@mutable_record
class _Survey:
    """The plan, and its items sorted into unchanged / repaired / to do."""

    result: Result
    index: cache.VerifiedIndex
    plan: cache.Plan
    todo: list[cache.Item]
    # With a signing key and a list to sign: the key, decrypted before anything is
    # written (:func:`_unlock_signing`).
    key: Ed25519PrivateKey | None = None
    # With a signing key: the signed list of masters as found (id -> SHA-256; None
    # when it is missing or not signed) and as this run leaves it (:func:`_gate`).
    masters_found: dict[str, str] | None = None
    masters_next: dict[str, str] | None = None

    @classmethod
    def take(cls, cfg: Config, hosts: Sequence[str], clock: timings.Clock) -> _Survey:
        with clock.phase("survey"):
            index = cache.VerifiedIndex(cfg.cache_dir,
                                        clock=memo.fs_clock(str(cfg.cache_dir)))
            result, p = Result(), cache.plan(cfg, hosts)
            if cfg.signing is not None:
                index.use_signatures(cfg.signing.key, cache.signed_dirs(cfg, p, hosts))
            return cls(result, index, p, _survey(cfg, hosts, result, index, p))


def _first_run(cfg: Config, hosts: Sequence[str], identity_files: Sequence[Path],
               ask: age.PassphraseFn, workers: int, progress: ProgressFn | None,
               clock: timings.Clock, pubs: list[_Publisher]
               ) -> tuple[_Survey, _Publisher | None]:
    """Before the lock file exists: survey, unlock the keys, and make sure every master
    the run needs decrypts; raise, having created nothing, when one does not.

    The check is the encryption itself: the workers decrypt each master once and write
    every file (into temp directories and temp names: nothing under a final path),
    and the publisher they filled is returned unfinished, for :func:`_renc` to finish
    once it holds the lock.  A master that fails stops the run and what was written
    goes (:func:`_renc` then removes the cache directory, if the run made it).  A
    plugin identity, say a hardware key, is thus asked once per master, as on any
    later run."""
    s = _Survey.take(cfg, hosts, clock)
    if not s.todo:
        return s, None
    if cfg.signing is not None:
        _gate(cfg, s)
    with clock.phase("unlock"):
        _IDENTITIES[:] = identities.load(cfg, identity_files, ask)
        _unlock_signing(cfg, s, identity_files, ask)
    # On any exception, _renc's finally discards the publisher (listed in ``pubs``)
    # and forgets the identities.
    try:
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise VaultpyError(os_problem(cfg.cache_dir, exc,
                                      "create the cache directory")) from None
    with clock.phase("encrypt"):
        pub, failed = _encrypt(cfg, s.plan, s.todo, s.result, s.index, workers,
                               progress, pubs, batches=False)
    if s.result.failed_items:
        _check_unwritten(cfg, s, failed)
    # A master that changed since the survey is no bad input: a writer that took the
    # lock (so made its file) changed it, and the run starts over under the lock.
    bad = [failed[sid] for sid in sorted(failed) if failed[sid].message != _CHANGED]
    if bad:
        raise VaultpyError(bad)
    return s, pub


def _absent(d: Path) -> list[Path]:
    """What ``mkdir -p d`` would create, deepest first."""
    made = []
    while not os.path.lexists(d):
        made.append(d)
        d = d.parent
    return made


def _remove_empty(made: list[Path]) -> None:
    """The directories :func:`_absent` listed, each left if anything is in it."""
    for d in made:
        with contextlib.suppress(OSError):
            os.rmdir(d)


def _check_unwritten(cfg: Config, s: _Survey, failed: dict[str, Problem]) -> None:
    """A worker that died (OOM, a signal) took its jobs' verdicts with it: each master
    none of whose files was written, and not known to fail, is decrypted here; those
    that fail are added to ``failed``."""
    needed: dict[str, list[str]] = {}
    for item in s.todo:
        needed.setdefault(item.id, []).append(item.host)
    written = {i.id for i in s.todo if (i.host, i.id) not in s.result.failed_items}
    for sid in sorted(needed.keys() - written - failed.keys()):
        path = cfg.secrets[sid].file
        try:
            _decrypt_master(path, display_path(path), s.plan.masters[sid].sha256, sid)
        except (OSError, VaultpyError) as exc:
            failed[sid] = _needed_by(_master_problem(path, exc), needed[sid])


def _refuse(cfg: Config, hosts: Sequence[str], p: cache.Plan) -> NoReturn:
    """Some master could not be read: nothing is written, for any host.  Every master
    found bad without a key is named, one read but no age file too (as its decryption
    would have said), else the advice below would send the user to a host that then
    fails on it.  Said once more, for the hosts that need none of them: their files
    were not renewed either (a whole renc or nothing, but for --host)."""
    damaged = {sid: m.format_error for sid, m in p.masters.items()
               if m.format_error is not None}
    lines = p.broken()
    needed: dict[str, list[str]] = {}
    for h in hosts or cfg.hosts:
        for sid in cfg.hosts[h].needed:
            if sid in damaged:
                needed.setdefault(sid, []).append(h)
    for sid, error in damaged.items():
        if sid not in needed:       # (planned masters are the chosen hosts' own)
            continue
        lines[sid] = _needed_by(Problem(display_path(cfg.secrets[sid].file),
                                        f"not a valid age file: {error}", "",
                                        age.DAMAGED_HINT), needed[sid])
    broken = lines.keys()
    named = {h for h in (hosts or cfg.hosts) if broken.isdisjoint(cfg.hosts[h].needed)}
    tail = ([Problem("renc", "nothing was written, for any host", "",
                     "fix the master files above; until then, vaultpy renc --host "
                     f"{min(named)} (and each other host that needs none of them) "
                     "renews that host alone")] if named else [])
    raise VaultpyError([*(lines[sid] for sid in sorted(lines)), *tail])


def _survey(cfg: Config, hosts: Sequence[str], result: Result, index: cache.VerifiedIndex,
            p: cache.Plan | None = None) -> list[cache.Item]:
    """Plan and sort items into unchanged / repaired (damaged) / todo."""
    p = p or cache.plan(cfg, hosts)
    if p.problems:
        _refuse(cfg, hosts, p)
    todo: list[cache.Item] = []
    absent, linked = p.absent, p.linked     # a first run's 10,000 items: no stat each
    for item in p.items:
        reason = (None if item.dir in linked        # never read through: blocked below
                  else "missing" if item.dir in absent else index.check(item))
        blocker = cache.blocker(item, reason, linked)
        if blocker is not None:         # renc never removes what it did not write
            # Through a linked folder, the path as written: display_path resolves the
            # folder, and named the link's target (another host's folder, /etc).
            shown = (f"{display_path(item.dir)}/{item.name}" if item.dir in linked
                     else display_path(item.path))
            result.failed.append(Problem(shown, "cannot write the cache "
                                         f"file: {blocker}",
                                         key_path("hosts", item.host, "secrets", item.id),
                                         cache.FIX_IN_THE_WAY))
            result.failed_items.add((item.host, item.id))
            continue
        if reason is None:
            result.unchanged.append(item)
        elif reason == "missing":
            todo.append(item)
        else:
            result.repaired.append(item)
    return todo + result.repaired


# A batch is made durable (and, with the lock held, published) once it holds 1/8 of
# the run (at least this much): big enough that syncfs calls stay few, small enough
# that most of them overlap encryption.
_BATCH_FILES = 256
_BATCH_BYTES = 8 << 20


def _encrypt(cfg: Config, p: cache.Plan, todo: list[cache.Item], result: Result,
             index: cache.VerifiedIndex, workers: int, progress: ProgressFn | None,
             pubs: list[_Publisher], batches: bool = True
             ) -> tuple[_Publisher, dict[str, Problem]]:
    """Encrypt every item of ``todo``.  Returns the publisher, which the caller must
    :meth:`~_Publisher.finish` or :meth:`~_Publisher.discard`, and the masters that
    could not be read or decrypted (secret id -> problem; their items failed).  The
    publisher is also added to ``pubs`` before anything is written, for the caller to
    discard if it never gets hold of it (a Ctrl-C as this returns).

    When workers run beside the parent, what they write is made durable a batch at a
    time while they go on (:meth:`_Publisher.flush_if_full`).  ``batches``: each batch
    is also renamed into place then (the lock is held).  Without it, nothing is
    published before the caller's ``finish``: the first run, whose lock is not held
    yet, writes this way (:func:`_first_run`)."""
    by_secret: dict[str, list[cache.Item]] = {}
    for item in todo:
        by_secret.setdefault(item.id, []).append(item)
    total = len(todo)
    total_bytes = sum((i.payload or 0) + 256 for i in todo)
    # Workers beside the parent (decided once: _can_fork may wait for threads)?
    parallel = workers > 1 and len(by_secret) > 1 and _can_fork()
    if parallel:
        pub = _Publisher(cfg, result, index, max(_BATCH_FILES, total // 8),
                         max(_BATCH_BYTES, total_bytes // 8), {}, batches)
    else:                       # nothing to overlap with: all at the end
        pub = _Publisher(cfg, result, index, total + 1, total_bytes + 1, {}, batches)
    pubs.append(pub)
    bad: dict[str, Problem] = {}
    done = 0

    def deliver(job: _Job, replies: list[_Reply]) -> None:
        nonlocal done
        for i, path, problem, key, digest in replies:
            item = job.targets[i]
            if problem is None:
                pub.add(item, path, key)
                if digest:
                    result.digests[item.key] = digest
            else:
                pub.fail(item, problem)
                # The master failed, whatever file its problem names: a plugin's PIN
                # that could not be asked for names where it would have come from.
                if problem.field.startswith(_NEEDED_BY):
                    bad[job.secret_id] = problem
        pub.flush_if_full()
        done += len(replies)
        if progress:
            progress(done, total)

    try:
        # A host without a directory is built in a temp one (a killed run leaves only
        # that, which the next full renc prunes), renamed into place at the end.
        new = [d for d in sorted({i.dir for i in todo}) if not os.path.lexists(d)]
        # Each new one holds a descriptor (its flock) until the run ends.
        fsutil.make_room(len(new))
        for d in new:
            built = os.path.join(cfg.cache_dir, fsutil.tmp_basename(os.path.basename(d)))
            # Held: a Ctrl-C during the mkdir is raised as it returns, which must
            # find the directory recorded, or nothing would remove it.
            with sigint.held():
                try:
                    os.mkdir(built, 0o755)
                    pub.staging[d] = built
                    # Flocked while it is built: a first run builds before it holds
                    # the lock, and a run that does must not prune it as a leftover.
                    # (NFS has no exclusive flock on a directory: built unguarded.)
                    with contextlib.suppress(OSError):
                        pub.held.append(fsutil.hold_dir(built))
                except OSError as exc:      # no inode left, a read-only file system
                    raise VaultpyError(os_problem(d, exc, "create the host's cache "
                                                  "directory")) from None
        staging = pub.staging
        jobs = [_Job(sid, cfg.secrets[sid].file, display_path(cfg.secrets[sid].file),
                     p.masters[sid].sha256, tuple(items),
                     tuple(staging.get(i.dir, "") for i in items) if staging else (),
                     cfg.signing is not None)
                for sid, items in sorted(by_secret.items(), key=_work, reverse=True)]
        _execute(jobs, workers if parallel else 1, deliver, may_fork=parallel)
    except BaseException:
        pub.discard()                   # an interrupt: no temp file stays behind
        raise
    return pub, bad


def _work(entry: tuple[str, list[cache.Item]]) -> tuple[int, int]:
    """A job's weight, to hand out the heaviest first (so the last job a worker takes
    is a light one, and no worker finishes long after the other): bytes to encrypt and
    write, then files."""
    items = entry[1]
    return sum((i.payload or 0) + 256 for i in items), len(items)


def _prune(cfg: Config, p: cache.Plan, result: Result) -> None:
    if p.foreign:
        # cache_dir holds what vaultpy never wrote: it may be no cache directory at all
        # (cache_dir = "~"), and a name there that looks like a removed host's, or a
        # host's own, may be the user's.  Nothing is deleted until it is sorted out.
        result.failed += [cache.foreign(path) for path in p.foreign]
        return
    dirs: set[Path] = set()
    for path in p.stale:
        m = cache.NAME_RE.fullmatch(path.name)
        if m and (path.parent.name, m.group("id")) in result.failed_items:
            continue            # keep the host's last good copy until renc succeeds
        try:
            fsutil.remove_tree(path)
        except OSError as exc:
            result.failed.append(os_problem(path, exc, "remove stale cache file"))
            continue
        dirs.add(path.parent)
        if not cache.is_leftover(path):
            result.pruned.append(path)
    for d in dirs:
        with contextlib.suppress(OSError):
            fsutil.fsync_path(d, directory=True)
