"""The renc pipeline (DESIGN §4): master secrets → per-host cache.

1. ``plan``     - hash master files, name every expected cache file (no crypto);
2. ``verify``   - files already present are done, unless damaged;
3. ``decrypt``  - each needed master once, in a worker, with identities loaded once;
4. ``encrypt``  - per host, in worker processes; each output is written to a temp
                  name, one ``syncfs`` makes the batch durable, then renames;
5. ``prune``    - stale files and directories of removed hosts;
6. ``report``   - a :class:`Result` the CLI renders as a table or JSON.

Any failure is collected per item; the cache is never left with an empty or
partial file under a final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing
import os
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from vaultpy import age, cache, identities
from vaultpy._internal import fsutil
from vaultpy.errors import Problem, VaultpyError, display_path, os_problem
from vaultpy.model import Config

ProgressFn = Callable[[int, int], None]


@dataclass
class Result:
    written: list[cache.Item] = field(default_factory=list)
    unchanged: list[cache.Item] = field(default_factory=list)
    repaired: list[cache.Item] = field(default_factory=list)
    pruned: list[Path] = field(default_factory=list)
    failed: list[Problem] = field(default_factory=list)
    failed_items: set[tuple[str, str]] = field(default_factory=set)   # (host, id)

    @property
    def ok(self) -> bool:
        return not self.failed

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "written": [str(i.path) for i in self.written],
            "repaired": [str(i.path) for i in self.repaired],
            "unchanged": len(self.unchanged),
            "pruned": [str(p) for p in self.pruned],
            "failed": [p.as_dict() for p in self.failed],
        }


@dataclass(frozen=True)
class _Job:
    """Encrypt one master secret for several hosts (decrypting it once)."""

    secret_id: str
    master: Path
    master_sha256: str
    targets: tuple[cache.Item, ...]


# Identities are set in the parent before the worker pool forks, so workers
# inherit them in memory: no key material crosses a pipe, no second prompt.
_IDENTITIES: list[age.Identity] = []
# First runs decrypt every master before creating anything (see _decrypts_or_raise);
# the plaintexts, keyed by id with the hash of the master they came from, are
# inherited by the workers too, so no master is decrypted twice.
_PLAINTEXTS: dict[str, tuple[str, bytes]] = {}


Outcome = tuple[cache.Item, str, Problem | None]   # (item, temp file, failure)
# What a worker sends back: the target's index in its job, not a copy of the item
# (10,000 pickled copies would double the parent's memory).
_Reply = tuple[int, str, Problem | None]


def _failure(i: int, item: cache.Item, problem: Problem) -> _Reply:
    return (i, "", Problem(problem.file, problem.message,
                           f"hosts.{item.host}.{item.id}", problem.hint))


def _run_job(job: _Job) -> list[_Reply]:
    """In a worker: decrypt one master, encrypt it for each target to a temp file."""
    try:
        known = _PLAINTEXTS.get(job.secret_id)
        if known is not None and known[0] == job.master_sha256:
            plaintext = known[1]
        else:
            data = job.master.read_bytes()
            if hashlib.sha256(data).hexdigest() != job.master_sha256:
                raise VaultpyError(Problem(display_path(job.master), "changed while renc "
                                           "was running", "", "run vaultpy renc again"))
            plaintext = age.decrypt(data, _IDENTITIES, display_path(job.master))
    except (OSError, VaultpyError) as exc:
        # One line for the master, naming every host that misses it.
        first = (os_problem(job.master, exc, "read master file") if isinstance(exc, OSError)
                 else exc.problems[0])
        hosts = ", ".join(t.host for t in job.targets)
        problem = Problem(first.file, first.message, f"needed by {hosts}", first.hint)
        return [(i, "", problem) for i in range(len(job.targets))]
    out: list[_Reply] = []
    for i, t in enumerate(job.targets):
        # Plain strings on this path: a pathlib join per file cost more than the I/O.
        tmp = os.path.join(t.dir, f".{t.name}{fsutil.TMP_MARK}{secrets.token_hex(6)}")
        try:
            fsutil.write_new(tmp, age.encrypt(plaintext, t.recipients))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            out.append(_failure(i, t, os_problem(t.path, exc, "write cache file")))
        except Exception as exc:  # a pyrage error: report it, never crash the pool
            out.append(_failure(i, t, Problem(display_path(t.path),
                                              f"encryption failed: {exc}")))
        else:
            out.append((i, tmp, None))
    return out


def _resolve(job: _Job, replies: list[_Reply]) -> list[Outcome]:
    return [(job.targets[i], tmp, problem) for i, tmp, problem in replies]


def _execute(jobs: list[_Job], workers: int, progress: ProgressFn | None,
             total: int) -> list[Outcome]:
    results: list[Outcome] = []
    done = 0
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            part = _resolve(job, _run_job(job))
            results.extend(part)
            done += len(part)
            if progress:
                progress(done, total)
        return results
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as pool:
        futures: list[Future[list[_Reply]]] = [
            pool.submit(_run_job, j) for j in jobs]
        try:
            for fut, job in zip(futures, jobs, strict=True):
                try:
                    part = _resolve(job, fut.result())
                except Exception as exc:  # a worker died (OOM, signal)
                    part = _resolve(job, [_failure(i, t, Problem(display_path(t.path),
                                                                 f"worker failed: {exc}"))
                                          for i, t in enumerate(job.targets)])
                results.extend(part)
                done += len(part)
                if progress:
                    progress(done, total)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            for _item, tmp, _err in results:
                if tmp:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
            raise
    return results


def default_jobs() -> int:
    return len(os.sched_getaffinity(0)) or 1


def renc(cfg: Config, hosts: Sequence[str] = (), *, jobs: int | None = None,
         identity_files: Sequence[Path] = (),
         ask: age.PassphraseFn = age.passphrase_from_env_or_tty,
         progress: ProgressFn | None = None) -> Result:
    """Bring the cache of ``hosts`` (default: all) up to date with the master files."""
    for h in hosts:
        if h not in cfg.hosts:
            raise VaultpyError(Problem(display_path(cfg.path), f"unknown host {h!r}",
                                       "hosts", "known hosts: " + ", ".join(cfg.hosts)))
    # On a first run, validate everything and unlock keys before creating anything:
    # bad input or a wrong key must not leave even a lock file behind.
    first_run = not cfg.lock_path.exists()
    first_todo = (_survey(cfg, hosts, Result(), cache.VerifiedIndex(cfg.cache_dir))
                  if first_run else [])
    if first_todo:
        _IDENTITIES[:] = identities.load(cfg, identity_files, ask)
        _decrypts_or_raise(cfg, first_todo)
    try:
        cfg.cache_dir.mkdir(parents=True, exist_ok=True)
        with fsutil.locked(cfg.lock_path):
            result = Result()
            index = cache.VerifiedIndex(cfg.cache_dir)
            p = cache.plan(cfg, hosts)
            todo = _survey(cfg, hosts, result, index, p)
            if todo:
                if not _IDENTITIES:
                    _IDENTITIES[:] = identities.load(cfg, identity_files, ask)
                _encrypt_all(cfg, p, todo, result, jobs or default_jobs(), progress)
                for item in result.written + result.repaired:
                    if (item.host, item.id) not in result.failed_items:
                        index.record(item)
            _prune(cfg, p, result)
            if result.ok:       # a failed run changes nothing it need not change
                index.save(None if hosts else p.items)
    finally:
        _IDENTITIES.clear()
        _PLAINTEXTS.clear()
    return result


def _decrypts_or_raise(cfg: Config, todo: list[cache.Item]) -> None:
    """First run: every master it needs must decrypt before the lock file is created
    (a corrupt master or a wrong key is bad input, and bad input changes nothing)."""
    needed: dict[str, list[str]] = {}
    for item in todo:
        needed.setdefault(item.id, []).append(item.host)
    problems: list[Problem] = []
    for sid, names in sorted(needed.items()):
        path = cfg.secrets[sid].file
        try:
            data = path.read_bytes()
            # Kept for the workers (inherited through fork): decrypted once, not twice
            # (a hardware key would otherwise ask for every touch twice).
            _PLAINTEXTS[sid] = (hashlib.sha256(data).hexdigest(),
                                age.decrypt(data, _IDENTITIES, display_path(path)))
        except (OSError, VaultpyError) as exc:
            first = (os_problem(path, exc, "read master file") if isinstance(exc, OSError)
                     else exc.problems[0])
            problems.append(Problem(first.file, first.message,
                                    f"needed by {', '.join(names)}", first.hint))
    if problems:
        _IDENTITIES.clear()
        _PLAINTEXTS.clear()
        raise VaultpyError(problems)


def _survey(cfg: Config, hosts: Sequence[str], result: Result, index: cache.VerifiedIndex,
            p: cache.Plan | None = None) -> list[cache.Item]:
    """Plan and sort items into unchanged / repaired (damaged) / todo."""
    p = p or cache.plan(cfg, hosts)
    if p.problems:
        raise VaultpyError(p.problems)
    todo: list[cache.Item] = []
    for item in p.items:
        reason = index.check(item)
        if reason is None:
            result.unchanged.append(item)
        elif reason == "missing":
            todo.append(item)
        else:
            result.repaired.append(item)
    return todo + result.repaired


def _encrypt_all(cfg: Config, p: cache.Plan, todo: list[cache.Item], result: Result,
                 workers: int, progress: ProgressFn | None) -> None:
    by_secret: dict[str, list[cache.Item]] = {}
    for item in todo:
        by_secret.setdefault(item.id, []).append(item)
    created = [cfg.cache_dir / h for h in sorted({i.host for i in todo})
               if not (cfg.cache_dir / h).exists()]
    for d in created:
        d.mkdir(mode=0o755, exist_ok=True)
    try:
        _encrypt_jobs(cfg, p, todo, by_secret, result, workers, progress)
    finally:
        for d in created:               # a failed first run leaves no empty directory
            with contextlib.suppress(OSError):
                d.rmdir()


def _encrypt_jobs(cfg: Config, p: cache.Plan, todo: list[cache.Item],
                  by_secret: dict[str, list[cache.Item]], result: Result, workers: int,
                  progress: ProgressFn | None) -> None:
    jobs = [_Job(sid, cfg.secrets[sid].file, p.masters[sid].sha256, tuple(items))
            for sid, items in sorted(by_secret.items(), key=lambda kv: -len(kv[1]))]
    ready: list[tuple[cache.Item, str]] = []
    for item, tmp, problem in _execute(jobs, workers, progress, len(todo)):
        if problem is None:
            ready.append((item, tmp))
        else:
            if problem not in result.failed:
                result.failed.append(problem)
            result.failed_items.add((item.host, item.id))
    if not ready:
        return
    try:
        fsutil.syncfs(cfg.cache_dir)            # data durable before any rename
        for item, tmp in ready:
            os.rename(tmp, os.path.join(item.dir, item.name))   # atomic; replaces a damaged file
            if item not in result.repaired:
                result.written.append(item)
        for host in {i.host for i, _ in ready}:
            fsutil.fsync_path(cfg.cache_dir / host, directory=True)
    except OSError as exc:
        for item, tmp in ready:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            result.failed_items.add((item.host, item.id))
        result.failed.append(os_problem(cfg.cache_dir, exc, "finish writing the cache"))


def _prune(cfg: Config, p: cache.Plan, result: Result) -> None:
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
