"""renc's pipeline internals (in process): batches published while encryption goes on
(syncfs before every rename, directories fsynced after), interrupts leave no temp
file, a first run's encryption is its check that every master decrypts, and a lock
file the run created itself lets it reuse its first-run survey and files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pyrage
import pytest
from conftest import Repo, age_decrypt

from vaultpy import cache, model
from vaultpy import renc as pipeline
from vaultpy._internal import fsutil
from vaultpy.errors import VaultpyError

# Faults are injected into syncfs, the path renc takes as a rule (conftest.py).
pytestmark = pytest.mark.usefixtures("syncfs_as_the_rule")

SECRETS = {f"s{i}": f"pipeline secret {i}\n".encode() for i in range(6)} | {
    "big": os.urandom(100_000)}


def _temps(repo: Repo) -> list[Path]:
    return [p for p in repo.cache.rglob("*") if fsutil.TMP_MARK in p.name]


def _assert_complete(repo: Repo) -> None:
    for host in repo.hosts.values():
        files = sorted((repo.cache / host.name).iterdir())
        assert sorted(f.name.split(".")[0] for f in files) == sorted(SECRETS)
        for f in files:
            assert age_decrypt(f, host.key) == SECRETS[f.name.split(".")[0]]


def _hosts_exist(repo: Repo) -> None:
    """Empty host directories: files are then written beside their final names and
    renamed one by one (a new host is built whole in a temp directory instead)."""
    for h in repo.hosts:
        (repo.cache / h).mkdir(parents=True, exist_ok=True)


def _log_fsyncs(monkeypatch: pytest.MonkeyPatch, events: list[Any]) -> None:
    """Append ("fsync", path) to ``events`` after each fsync renc makes."""
    real = fsutil.fsync_path

    def fsync_path(path: Path, directory: bool = False) -> None:
        real(path, directory)
        events.append(("fsync", str(path)))

    monkeypatch.setattr(pipeline.fsutil, "fsync_path", fsync_path)


def _interrupted_at_third_delivery(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run renc --jobs 2 with a Ctrl-C in the parent as it takes the third job's files."""
    calls = []
    real = pipeline._Publisher.flush_if_full

    def flush_if_full(self: pipeline._Publisher) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(pipeline._Publisher, "flush_if_full", flush_if_full)
    with pytest.raises(KeyboardInterrupt):
        _renc(repo, 2)


def _renc(repo: Repo, jobs: int = 2) -> pipeline.Result:
    return pipeline.renc(model.load(repo.root), jobs=jobs, identity_files=[repo.identity])


@pytest.fixture
def repo(make_repo: Any, monkeypatch: pytest.MonkeyPatch) -> Repo:
    r: Repo = make_repo(hosts=3, secrets=SECRETS)
    monkeypatch.chdir(r.root)
    return r


@pytest.mark.parametrize("jobs", [1, 2])
def test_every_rename_follows_a_syncfs_that_saw_its_temp_file(repo, monkeypatch, jobs):
    """Tiny batches: many publishes.  Each rename's source existed when the latest
    syncfs ran (its bytes were durable), every host directory is fsynced after its
    last rename, and the index vouches for every file written."""
    _hosts_exist(repo)
    monkeypatch.setattr(pipeline, "_BATCH_FILES", 1)
    monkeypatch.setattr(pipeline, "_BATCH_BYTES", 1)
    events: list[tuple[str, Any]] = []
    real_syncfs, real_rename = fsutil.syncfs, os.rename
    _log_fsyncs(monkeypatch, events)

    def syncfs(path: Path) -> None:
        real_syncfs(path)
        events.append(("syncfs", {str(p) for p in _temps(repo)}))

    def rename(src: str, dst: str) -> None:
        real_rename(src, dst)
        if str(dst).endswith(".age"):       # a cache file (not the index, say)
            events.append(("rename", (src, dst)))

    monkeypatch.setattr(pipeline.fsutil, "syncfs", syncfs)
    monkeypatch.setattr(pipeline.os, "rename", rename)

    result = _renc(repo, jobs)

    assert result.ok, result.failed
    assert len(result.written) == len(SECRETS) * len(repo.hosts)
    synced: set[str] = set()
    renamed: dict[str, int] = {}
    for n, (kind, what) in enumerate(events):
        if kind == "syncfs":
            synced = what
        elif kind == "rename":
            assert what[0] in synced, f"renamed before a syncfs saw it: {what[0]}"
            renamed[os.path.dirname(what[1])] = n
    syncs = sum(kind == "syncfs" for kind, _ in events)
    assert syncs > 1 if jobs > 1 else syncs == 1        # batches overlap the workers
    for d, last in renamed.items():
        assert any(k == "fsync" and w == d and n > last for n, (k, w) in enumerate(events))
    assert _temps(repo) == []
    _assert_complete(repo)
    index = cache.VerifiedIndex(repo.cache)
    assert all(index.check(i) is None and i in index for i in result.written)


def test_interrupt_while_publishing_leaves_no_temp_file(repo, monkeypatch):
    """Ctrl-C in the parent after some batches were published: every temp file is
    gone (published ones, pending ones, and those of jobs not yet delivered), and
    every final name is complete."""
    _hosts_exist(repo)
    monkeypatch.setattr(pipeline, "_BATCH_FILES", 1)
    monkeypatch.setattr(pipeline, "_BATCH_BYTES", 1)
    _interrupted_at_third_delivery(repo, monkeypatch)
    assert _temps(repo) == []
    published = [p for h in repo.hosts for p in (repo.cache / h).iterdir()]
    assert published                                  # two batches made it
    for p in published:
        host = repo.hosts[p.parent.name]
        assert age_decrypt(p, host.key) == SECRETS[p.name.split(".")[0]]
    monkeypatch.undo()
    monkeypatch.chdir(repo.root)
    assert _renc(repo, 2).ok                          # and the next run completes it
    _assert_complete(repo)


def test_a_failed_publish_keeps_nothing_half_done(repo, monkeypatch):
    """syncfs fails for a batch: the run fails, no temp file stays, nothing of that
    batch is under a final name, and the index is not saved."""
    _hosts_exist(repo)

    def syncfs(path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(pipeline.fsutil, "syncfs", syncfs)
    result = _renc(repo, 2)
    assert not result.ok
    assert any("cannot finish writing the cache" in p.message for p in result.failed)
    assert result.written == []
    assert _temps(repo) == []
    assert not any((repo.cache / h).exists() and any((repo.cache / h).iterdir())
                   for h in repo.hosts)
    assert not (repo.cache / cache.INDEX).exists()


def _first_run(repo: Repo) -> None:
    """Back to a repository renc has never run in: no cache, no lock file."""
    fsutil.remove_tree(repo.cache)


@pytest.mark.parametrize("jobs", [1, 2])
def test_first_run_decrypts_each_master_once(repo, monkeypatch, tmp_path, jobs):
    """A first run's check that every master decrypts is the encryption itself: each
    master is decrypted once, by the process that encrypts it, and the cache is
    complete.  (With a plugin identity: tests/test_plugin.py.)"""
    _first_run(repo)
    log = tmp_path / "decrypted"
    real_decrypt = pipeline.age.decrypt

    def counting(data: bytes, ids: Any, source: str, **kwargs: Any) -> bytes:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)   # workers too
        os.write(fd, f"{source}\n".encode())
        os.close(fd)
        return real_decrypt(data, ids, source, **kwargs)

    monkeypatch.setattr(pipeline.age, "decrypt", counting)
    assert _renc(repo, jobs).ok
    assert sorted(log.read_text().split()) == sorted(f"secrets/{s}.age" for s in SECRETS)
    _assert_complete(repo)


@pytest.mark.parametrize("jobs", [1, 2])
def test_first_run_names_every_master_that_does_not_decrypt(repo, jobs):
    """The first run's check (in worker processes with --jobs 2) reports each bad
    master once, in id order, naming the hosts that need it, and creates nothing."""
    _first_run(repo)
    for sid in ("s4", "s1"):
        (repo.root / "secrets" / f"{sid}.age").write_bytes(b"age-encryption.org/v1\njunk\n")
    with pytest.raises(VaultpyError) as err:
        _renc(repo, jobs)
    problems = err.value.problems
    assert [p.file for p in problems] == ["secrets/s1.age", "secrets/s4.age"]
    for p in problems:
        assert p.field == "needed by " + ", ".join(sorted(repo.hosts))
    assert not repo.cache.exists()


def _tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("jobs", [1, 2])
def test_first_run_with_a_bad_master_leaves_a_cloned_cache_as_it_was(repo, jobs):
    """A fresh clone (a committed cache, no lock file: it is git-ignored) where one
    master changed and another is damaged: the first run encrypts the changed one
    before it meets the damaged one, then removes what it wrote.  Not a byte of the
    cache changes, and no lock file is made."""
    assert _renc(repo, jobs).ok
    (repo.cache / ".vaultpy.lock").unlink()
    before = _tree(repo.cache)
    (repo.root / "secrets" / "s1.age").write_bytes(
        pyrage.encrypt(b"new value", [pyrage.x25519.Recipient.from_str(repo.recipient)]))
    (repo.root / "secrets" / "s4.age").write_bytes(b"age-encryption.org/v1\njunk\n")
    with pytest.raises(VaultpyError) as err:
        _renc(repo, jobs)
    assert [p.file for p in err.value.problems] == ["secrets/s4.age"]
    assert _tree(repo.cache) == before


_PARENT: list[int] = []


def _dies_in_a_worker(job: Any) -> Any:
    if os.getpid() not in _PARENT:
        os._exit(9)
    return _real_run_job(job)


_real_run_job = pipeline._run_job


def test_first_run_finds_a_bad_master_when_its_workers_die(repo, monkeypatch):
    """Every worker of a first run dies (OOM killer, a signal) before it reads its
    master, so no master was checked by the encryption: the parent checks them itself,
    and a damaged one stops the run as it would have, creating nothing."""
    _first_run(repo)
    (repo.root / "secrets" / "s4.age").write_bytes(b"age-encryption.org/v1\njunk\n")
    _PARENT[:] = [os.getpid()]
    monkeypatch.setattr(pipeline, "_run_job", _dies_in_a_worker)
    with pytest.raises(VaultpyError) as err:
        _renc(repo, 2)
    assert [p.file for p in err.value.problems] == ["secrets/s4.age"]
    assert err.value.problems[0].field == "needed by " + ", ".join(sorted(repo.hosts))
    assert not repo.cache.exists()


def test_first_run_starts_over_when_a_writer_changes_a_master_meanwhile(repo, monkeypatch):
    """`vaultpy encrypt` runs while a first run encrypts: it takes the lock (making the
    lock file) and replaces a master the run surveyed.  That is no bad input: the run
    starts over under the lock, as whenever another process made the lock file, and
    the cache gets the new value."""
    _first_run(repo)
    real_load = pipeline.identities.load

    def then_a_writer(*args: Any) -> Any:
        loaded = real_load(*args)
        repo.ok("encrypt", "s1", input=b"written meanwhile\n")
        return loaded

    monkeypatch.setattr(pipeline.identities, "load", then_a_writer)
    assert _renc(repo, 2).ok
    for host in repo.hosts.values():
        [f] = (repo.cache / host.name).glob("s1.*")
        assert age_decrypt(f, host.key) == b"written meanwhile\n"
    assert _temps(repo) == []


def test_first_run_plans_once_when_it_created_the_lock(repo, monkeypatch):
    """The lock file a first run creates was never held by anyone: the survey made
    before it stands.  A lock file someone else made in between means a new plan."""
    plans = []
    real = cache.plan

    def counting(cfg: model.Config, hosts: Any = None) -> cache.Plan:
        plans.append(1)
        return real(cfg, hosts)

    monkeypatch.setattr(pipeline.cache, "plan", counting)
    _first_run(repo)
    assert _renc(repo, 2).ok
    assert len(plans) == 1
    _assert_complete(repo)

    plans.clear()
    fsutil.remove_tree(repo.cache)
    real_first = pipeline._first_run

    def then_someone_locks(*args: Any) -> Any:
        s = real_first(*args)
        repo.cache.mkdir(parents=True, exist_ok=True)
        with fsutil.locked(repo.cache / ".vaultpy.lock") as created:
            assert created
        return s

    monkeypatch.setattr(pipeline, "_first_run", then_someone_locks)
    assert _renc(repo, 2).ok
    assert len(plans) == 2
    _assert_complete(repo)
    assert _temps(repo) == []       # what the first run wrote before it was discarded


def test_locked_says_whether_it_created_the_lock_file(tmp_path):
    lock = tmp_path / "lock"
    with fsutil.locked(lock) as created:
        assert created and lock.is_file()
    with fsutil.locked(lock) as created:
        assert not created
    assert sorted(os.listdir(tmp_path)) == ["lock"]      # no temp file left beside it


def test_index_vouches_only_for_the_file_it_read(repo, monkeypatch):
    """A host directory swapped between the lstat and the read (another process):
    the intact copy read must not make the index vouch for the damaged file that the
    lstat saw.  The index keeps no device number, and a rename keeps ctimes."""
    assert _renc(repo).ok
    cfg = model.load(repo.root)
    item = next(i for i in cache.plan(cfg).items if i.host == "host0")
    live = repo.cache / "host0"
    good, bad = repo.cache / "host0.good", repo.cache / "host0.bad"
    path = live / item.name
    data = path.read_bytes()
    os.link(path, repo.cache / "kept")            # the intact copy keeps its own inode
    path.unlink()
    path.write_bytes(data[:-5])                   # the live file: damaged, a new inode
    good.mkdir()
    os.link(repo.cache / "kept", good / item.name)
    real = cache._verify_read

    def swapped(*args: Any) -> Any:
        live.rename(bad)
        good.rename(live)
        try:
            return real(*args)
        finally:
            live.rename(good)
            bad.rename(live)

    (cfg.cache_dir / cache.INDEX).unlink()          # nothing vouched for yet
    index = cache.VerifiedIndex(cfg.cache_dir)
    monkeypatch.setattr(cache, "_verify_read", swapped)
    assert index.check(item) is None              # it did read an intact file...
    monkeypatch.setattr(cache, "_verify_read", real)
    assert item not in index            # ...but not the one the lstat saw
    assert "damaged" in (index.check(item) or "")


# ------------------------------------------------- hosts built whole in a temp directory

@pytest.mark.parametrize("jobs", [1, 2])
def test_a_new_host_is_built_whole_then_renamed_into_place(repo, monkeypatch, jobs):
    """A host without a cache directory: its files go into a temp directory under
    their final names (no temp file, no rename of their own), one syncfs makes them
    durable, then one rename per host puts the directory in place and the cache
    directory is fsynced.  The index takes each file's stat as the worker wrote it,
    and that stat is the file's."""
    _first_run(repo)
    events: list[tuple[str, str]] = []
    real_syncfs, real_rename, real_new = fsutil.syncfs, os.rename, fsutil.rename_new
    _log_fsyncs(monkeypatch, events)

    def syncfs(path: Path) -> None:
        real_syncfs(path)
        events.append(("syncfs", str(path)))

    def rename(src: str, dst: str) -> None:
        real_rename(src, dst)
        events.append(("rename", str(dst)))

    def rename_new(src: str, dst: str) -> None:
        assert fsutil.TMP_MARK in os.path.basename(src)
        assert len(os.listdir(src)) == len(SECRETS)        # whole, before it goes in
        real_new(src, dst)
        events.append(("rename_new", str(dst)))

    real_save = cache.VerifiedIndex.save

    def save(self: cache.VerifiedIndex, items: Any) -> None:
        events.append(("save", ""))
        real_save(self, items)

    monkeypatch.setattr(pipeline.fsutil, "syncfs", syncfs)
    monkeypatch.setattr(pipeline.os, "rename", rename)
    monkeypatch.setattr(pipeline.fsutil, "rename_new", rename_new)
    monkeypatch.setattr(cache.VerifiedIndex, "save", save)
    result = _renc(repo, jobs)
    assert result.ok, result.failed
    assert len(result.written) == len(SECRETS) * len(repo.hosts)
    kinds = [k for k, w in events if k != "rename" or w.endswith(".age")]
    assert kinds.count("syncfs") == 1 and kinds.count("rename") == 0
    placed = [w for k, w in events if k == "rename_new"]
    assert sorted(placed) == sorted(str(repo.cache / h) for h in repo.hosts)
    first = next(n for n, (k, _) in enumerate(events) if k == "rename_new")
    assert events.index(("syncfs", str(repo.cache))) < first
    last = max(n for n, (k, _) in enumerate(events) if k == "rename_new")
    assert ("fsync", str(repo.cache)) in events[last:events.index(("save", ""))]
    assert _temps(repo) == []
    _assert_complete(repo)
    index = cache.VerifiedIndex(repo.cache)
    for item in result.written:
        assert index.get(item) == cache.stat_key(os.stat(item.path))


def _without_hosts(repo: Repo, first: bool) -> list[str] | None:
    """A run that builds every host's directory: a first run (None: it must leave no
    cache at all when it fails), or a later one, with the lock file, whose host
    directories were removed (what it must leave: the names there now)."""
    if first:
        _first_run(repo)
        return None
    assert _renc(repo, 2).ok
    for h in repo.hosts:
        fsutil.remove_tree(repo.cache / h)
    return _names(repo)


def _names(repo: Repo) -> list[str] | None:
    return sorted(os.listdir(repo.cache)) if repo.cache.exists() else None


_FIRST = pytest.mark.parametrize("first", [True, False], ids=["first-run", "lock-held"])


@_FIRST
def test_an_interrupted_first_run_puts_no_host_directory_in_place(repo, monkeypatch, first):
    """Ctrl-C while renc builds new host directories: no host directory exists at all
    (none is half-filled), no temp directory is left (a first run leaves no cache
    directory at all), and the next run builds them all."""
    left = _without_hosts(repo, first)
    _interrupted_at_third_delivery(repo, monkeypatch)
    assert _names(repo) == left
    monkeypatch.undo()
    monkeypatch.chdir(repo.root)
    assert _renc(repo, 2).ok
    _assert_complete(repo)
    assert _temps(repo) == []


def test_a_host_directory_made_meanwhile_gets_the_files_one_by_one(repo, monkeypatch):
    """Someone creates a host's directory while renc builds it (renc never removes
    what it did not write): that host's files are renamed into it one by one, each
    recorded with its stat after the rename, and what was there stays."""
    _first_run(repo)
    real_new = fsutil.rename_new
    host = sorted(repo.hosts)[0]

    def rename_new(src: str, dst: str) -> None:
        if os.path.basename(dst) == host:
            os.mkdir(dst)
            Path(dst, "notes.txt").write_text("mine\n")
        real_new(src, dst)

    monkeypatch.setattr(pipeline.fsutil, "rename_new", rename_new)
    result = _renc(repo, 2)
    assert result.ok, result.failed
    assert (repo.cache / host / "notes.txt").read_text() == "mine\n"
    assert _temps(repo) == []
    index = cache.VerifiedIndex(repo.cache)
    for item in result.written:
        assert index.get(item) == cache.stat_key(os.stat(item.path))
    (repo.cache / host / "notes.txt").unlink()
    _assert_complete(repo)


@pytest.mark.parametrize("path", ["syncfs", "fdatasync"])
def test_a_failed_sync_puts_no_new_host_in_place(repo, monkeypatch, path):
    """The last sync fails on a first run, by either of sync_files's paths (one syncfs;
    an fdatasync per file while other data waits to be written): no host directory is
    renamed into place (its files' bytes may not be on disk), no temp directory stays."""
    _first_run(repo)

    def fail(*args: object) -> None:
        raise OSError(5, "Input/output error")

    if path == "syncfs":
        monkeypatch.setattr(pipeline.fsutil, "syncfs", fail)
    else:
        monkeypatch.setattr(pipeline.fsutil, "unwritten_bytes", lambda: 1 << 40)
        monkeypatch.setattr(pipeline.fsutil.os, "fdatasync", fail)
    result = _renc(repo, 2)
    assert not result.ok and result.written == []
    assert any("cannot finish writing the cache" in p.message for p in result.failed)
    assert sorted(p.name for p in repo.cache.iterdir()) == [".vaultpy.lock"]


@pytest.mark.parametrize(("step", "first"), [("_encrypt", False), ("_encrypt", True),
                                             ("_first_run", True)])
def test_a_ctrl_c_as_the_files_are_handed_back_leaves_no_temp_file(repo, monkeypatch,
                                                                   step, first):
    """Ctrl-C lands as a step that wrote temp files (temp directories on a first run)
    returns them, before its caller holds them: they are removed all the same, and
    the next run completes the cache.  (Found by the Ctrl-C soak test in CI: 24 temp
    files left after an incremental run.)"""
    if first:
        _first_run(repo)
    else:
        assert _renc(repo, 2).ok
        for sid in ("s1", "big"):               # new masters, same values: files to write
            (repo.root / "secrets" / f"{sid}.age").write_bytes(pyrage.encrypt(
                SECRETS[sid], [pyrage.x25519.Recipient.from_str(repo.recipient)]))
    real = getattr(pipeline, step)

    def returns_then_ctrl_c(*args: Any, **kwargs: Any) -> Any:
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, step, returns_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        _renc(repo, 2)
    assert _temps(repo) == []
    monkeypatch.undo()
    monkeypatch.chdir(repo.root)
    assert _renc(repo, 2).ok
    _assert_complete(repo)
    assert _temps(repo) == []


def test_a_killed_first_run_leaves_a_temp_directory_check_names_and_renc_removes(repo):
    """What SIGKILL leaves of a first run is a temp host directory: check names it as
    such (not as a removed host), and the next full renc removes it."""
    assert _renc(repo, 2).ok
    left = repo.cache / fsutil.tmp_basename(sorted(repo.hosts)[0])
    left.mkdir()
    (left / "s0.0123456789abcdef0123456789abcdef.age").write_bytes(b"half")
    proc = repo.run("check")
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert f"{left.name}: leftover temporary directory (a new host's cache" in out
    assert "not in hosts.toml" not in out
    result = _renc(repo, 2)
    assert result.ok and result.pruned == [] and not left.exists()


def test_a_failed_fsync_of_the_cache_directory_fails_the_new_hosts(repo, monkeypatch):
    """The publisher itself fsyncs the cache directory once new hosts are renamed into
    place (the index's own save, which swallows its errors, is not what makes those
    renames durable): when that fsync fails, the new hosts' files are failed."""
    _first_run(repo)
    real_fsync = fsutil.fsync_path

    def fsync_path(path: Path, directory: bool = False) -> None:
        if directory and os.path.samefile(path, repo.cache):
            raise OSError(5, "Input/output error")
        real_fsync(path, directory)

    monkeypatch.setattr(pipeline.fsutil, "fsync_path", fsync_path)
    result = _renc(repo, 2)
    assert not result.ok
    assert any("cannot finish writing the cache" in p.message for p in result.failed)
    assert {h for h, _sid in result.failed_items} == set(repo.hosts)
    assert result.written == []         # failed, so not also reported as written
    assert not (repo.cache / cache.INDEX).exists()


def test_a_failed_fsync_of_a_host_directory_fails_its_files_only(repo, monkeypatch):
    """Files renamed into an existing host directory whose fsync then fails are failed,
    and reported once: not also as written (or repaired)."""
    _hosts_exist(repo)
    assert _renc(repo, 2).ok
    first, second, _third = repo.hosts
    for host in (first, second):
        for f in (repo.cache / host).glob("s[01].*"):
            f.write_bytes(b"damaged")
    next((repo.cache / first).glob("s2.*")).unlink()
    real_fsync = fsutil.fsync_path

    def fsync_path(path: Path, directory: bool = False) -> None:
        if directory and os.path.samefile(path, repo.cache / first):
            raise OSError(5, "Input/output error")
        real_fsync(path, directory)

    monkeypatch.setattr(pipeline.fsutil, "fsync_path", fsync_path)
    result = _renc(repo, 2)
    assert not result.ok
    assert sorted(result.failed_items) == [(first, "s0"), (first, "s1"), (first, "s2")]
    assert sorted((i.host, i.id) for i in result.repaired) == [(second, "s0"), (second, "s1")]
    assert result.written == []
    reported = result.as_dict()
    assert not {str(repo.cache / first)} & {str(Path(p).parent) for p in
                                             [*reported["written"], *reported["repaired"]]}


_WORKER_PARENT: list[int] = []


def _half_written_then_dead(path: str, data: bytes, mode: int = 0o644) -> os.stat_result:
    """A worker killed (OOM killer, a signal) half way through one host's big file."""
    if (os.getpid() != _WORKER_PARENT[0] and os.path.basename(path).startswith("big.")
            and fsutil.TMP_MARK in os.path.dirname(path)):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        os.write(fd, data[:len(data) // 2])
        os._exit(9)
    return _real_write_new(path, data, mode)


_real_write_new = fsutil.write_new


def test_a_worker_dying_while_building_a_new_host_leaves_no_partial_file(repo, monkeypatch):
    """A worker dies mid-write into a new host's temp directory (under the file's final
    name): its files are failed, and none of them goes into place with the directory,
    so no partial file ever has a final name; the next run completes the cache."""
    _first_run(repo)
    _WORKER_PARENT[:] = [os.getpid()]
    monkeypatch.setattr(pipeline.fsutil, "write_new", _half_written_then_dead)
    result = _renc(repo, 2)
    assert not result.ok
    assert any("worker failed" in p.message for p in result.failed)
    for host in repo.hosts.values():
        d = repo.cache / host.name
        for f in sorted(d.iterdir()) if d.exists() else []:
            sid = f.name.split(".")[0]
            assert age_decrypt(f, host.key) == SECRETS[sid]       # complete
            assert (host.name, sid) not in result.failed_items, f"failed, yet in place: {f}"
    assert [p for p in repo.cache.iterdir() if fsutil.TMP_MARK in p.name] == []
    monkeypatch.undo()
    monkeypatch.chdir(repo.root)
    assert _renc(repo, 2).ok
    _assert_complete(repo)


@_FIRST
def test_a_host_directory_that_cannot_be_made_is_one_line(repo, monkeypatch, first):
    """mkdir of a new host's temp directory fails (no inode left): one problem naming
    the host's directory, not an internal error; nothing is left behind."""
    import errno

    left = _without_hosts(repo, first)
    real_mkdir = os.mkdir
    made: list[str] = []

    def mkdir(path: Any, mode: int = 0o777, **kw: Any) -> None:
        if fsutil.TMP_MARK in os.path.basename(str(path)):
            if made:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            made.append(str(path))
        real_mkdir(path, mode, **kw)

    monkeypatch.setattr(pipeline.os, "mkdir", mkdir)
    with pytest.raises(VaultpyError) as err:
        _renc(repo, 2)
    [problem] = err.value.problems
    assert "cannot create the host's cache directory" in problem.message
    assert "No space left on device" in problem.message
    assert _names(repo) == left


@_FIRST
def test_ctrl_c_during_a_new_host_mkdir_leaves_no_temp_directory(repo, monkeypatch, first):
    """SIGINT lands while the mkdir of a new host's temp directory runs (Python raises
    it as the call returns): the directory is still removed, nothing else is made.
    Seen once in ~16 random Ctrl-Cs of the fault tests, as a leftover directory."""
    import signal

    left = _without_hosts(repo, first)
    real_mkdir = os.mkdir
    temp_dirs: list[str] = []

    def mkdir(path: Any, mode: int = 0o777, **kw: Any) -> None:
        real_mkdir(path, mode, **kw)
        if fsutil.TMP_MARK in os.path.basename(str(path)):
            temp_dirs.append(str(path))
            if len(temp_dirs) == 2:
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(pipeline.os, "mkdir", mkdir)
    with pytest.raises(KeyboardInterrupt):
        _renc(repo, 2)
    assert len(temp_dirs) == 2
    assert _names(repo) == left


def test_a_host_run_removes_that_hosts_leftover_temp_directory(repo):
    """renc --host X removes what a killed run left of X's new directory (and only
    X's: another host's waits for a run that covers it, or a full one)."""
    assert _renc(repo, 2).ok
    first, second = sorted(repo.hosts)[:2]
    left = {h: repo.cache / fsutil.tmp_basename(h) for h in (first, second)}
    for d in left.values():
        d.mkdir()
        (d / "s0.0123456789abcdef0123456789abcdef.age").write_bytes(b"half")
    result = pipeline.renc(model.load(repo.root), [first], jobs=2,
                           identity_files=[repo.identity])
    assert result.ok and result.pruned == []
    assert not left[first].exists() and left[second].exists()
    assert _renc(repo, 2).ok and not left[second].exists()


def test_items_of_a_host_without_a_directory_are_missing_without_a_stat(repo, monkeypatch):
    """A first run's items (10,000 in the benchmark) all lie in directories that do not
    exist yet: the plan saw that once, the survey does not stat each file."""
    assert _renc(repo).ok
    first, second, third = repo.hosts
    fsutil.remove_tree(repo.cache / second)
    stale = f"s0.{'0' * 32}.age"                  # named as renc names files: stale
    (repo.cache / third / stale).write_text("stale")
    next((repo.cache / third).glob("s1.*")).unlink()
    damaged = next((repo.cache / third).glob("s2.*"))
    damaged.write_bytes(b"damaged")
    checked = []
    real = cache.VerifiedIndex.check

    def check(self: cache.VerifiedIndex, item: cache.Item) -> str | None:
        checked.append(item.host)
        return real(self, item)

    monkeypatch.setattr(cache.VerifiedIndex, "check", check)
    result = _renc(repo)
    assert result.ok
    assert sorted(set(checked)) == sorted({first, third})
    assert len(checked) == 2 * len(SECRETS)
    assert {(i.host, i.id) for i in result.repaired} == {(third, "s2")}
    assert sorted((i.host, i.id) for i in result.written) == sorted(
        [(second, sid) for sid in SECRETS] + [(third, "s1")])
    assert [p.name for p in result.pruned] == [stale]
    _assert_complete(repo)


def test_the_heaviest_jobs_are_handed_out_first(make_repo, monkeypatch):
    """Workers take jobs in the order given: the heaviest (bytes to encrypt) go first,
    so the last job of a run is a light one and no worker finishes long after the
    other.  (Every job here has one file per host: by id, "z9" would come last.)"""
    repo = make_repo(hosts=2, secrets={"a0": b"a\n", "a1": b"b\n", "z9": os.urandom(50_000),
                                       "m5": os.urandom(5_000)})
    monkeypatch.chdir(repo.root)
    order: list[list[str]] = []
    real = pipeline._execute

    def spy(jobs: Any, workers: int, deliver: Any, **kw: Any) -> None:
        order.append([j.secret_id for j in jobs])
        real(jobs, workers, deliver, **kw)

    monkeypatch.setattr(pipeline, "_execute", spy)
    assert _renc(repo, 2).ok
    assert [o[:2] for o in order] == [["z9", "m5"]]


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("jobs", [1, 2])
def test_host_directories_are_flocked_while_they_are_built(repo, monkeypatch, jobs):
    """A first run builds its host directories before it holds the lock: each is
    flocked meanwhile (so a run that holds the lock does not take it for a killed run's
    leftover), and the flocks go with the run: no descriptor is left open."""
    _first_run(repo)
    seen: list[bool] = []
    real = pipeline._execute

    def spy(jobs_: Any, workers: int, deliver: Any, **kw: Any) -> None:
        built = [p for p in repo.cache.iterdir() if fsutil.TMP_MARK in p.name]
        assert len(built) == len(repo.hosts)
        seen.extend(fsutil.in_use(p) for p in built)
        real(jobs_, workers, deliver, **kw)

    monkeypatch.setattr(pipeline, "_execute", spy)
    before = _fds()
    assert _renc(repo, jobs).ok
    assert seen == [True] * len(repo.hosts)
    assert _fds() == before
    _assert_complete(repo)
    assert not any(fsutil.in_use(repo.cache / h) for h in repo.hosts)


def test_a_directory_being_built_is_neither_pruned_nor_reported(repo):
    """A temp host directory someone holds the flock of is a first run's work in
    progress: a full renc leaves it, and check does not call it a leftover.  Once the
    flock is gone it is a leftover: check reports it, renc removes it."""
    from vaultpy import check

    assert _renc(repo, 2).ok
    building = repo.cache / fsutil.tmp_basename("h-new")
    building.mkdir()
    (building / f"s1.{'0' * 32}.age").write_bytes(b"partial")   # as renc names files
    fd = fsutil.hold_dir(building)
    try:
        assert _renc(repo, 2).ok
        assert building.is_dir()
        assert check.check(model.load(repo.root)) == []
    finally:
        os.close(fd)
    [problem] = check.check(model.load(repo.root))
    assert problem.message.startswith("leftover temporary directory")
    assert _renc(repo, 2).ok
    assert not building.exists()


def test_a_first_run_of_more_hosts_than_free_descriptors(repo):
    """Each host directory being built holds a descriptor (its flock) until the run
    ends: a first run of a big fleet must not fail for want of descriptors while the
    hard limit has room (a soft limit of 1024 is common)."""
    import resource

    pubkey = repo.hosts["host0"].pubkey
    with open(repo.root / "hosts.toml", "a") as f:
        for i in range(60):
            f.write(f'\n[hosts.more{i}]\npubkey = "{pubkey}"\nsecrets = ["s0"]\n')
    _first_run(repo)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (_fds() + 40, hard))
    try:
        result = _renc(repo, 1)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result.ok, result.failed
    assert len([p for p in repo.cache.iterdir() if p.name.startswith("more")]) == 60


def test_a_file_system_without_flock_on_directories_still_builds(repo, monkeypatch):
    """NFS emulates flock with POSIX locks, and an exclusive one needs a descriptor
    open for writing, which a directory never is (flock(2)): there, holding a host
    directory being built fails with EBADF.  The flock only guards against another
    run's prune: without it the run goes on, as it did before there was one."""
    import errno
    import fcntl
    import stat

    real = fcntl.flock

    def nfs_flock(fd: int, op: int) -> None:
        if op & fcntl.LOCK_EX and stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        real(fd, op)

    monkeypatch.setattr(fsutil.fcntl, "flock", nfs_flock)
    _first_run(repo)
    before = _fds()
    assert _renc(repo, 2).ok
    assert _fds() == before
    _assert_complete(repo)


def test_no_process_to_spare_and_the_work_is_done_here(repo, monkeypatch):
    """fork() failing for every worker (EAGAIN at the process limit) is no failure:
    renc encrypts in its own process, as with --jobs 1."""
    _first_run(repo)

    def fork() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", fork)
    result = _renc(repo, 2)
    assert result.ok, result.failed
    _assert_complete(repo)


@pytest.mark.parametrize("jobs", [1, 2])
@pytest.mark.parametrize("secrets", [SECRETS, {}], ids=["work", "no-work"])
def test_a_first_run_that_cannot_make_its_lock_file_leaves_nothing(make_repo, monkeypatch,
                                                                   secrets, jobs):
    """A first run encrypts before it takes the lock; when the lock file cannot then be
    made (no inode left), everything it wrote goes, the cache directory it made too.
    With no master to encrypt (no secret yet) the cache directory is made only for the
    lock file, and goes the same way.  The next run succeeds."""
    import errno

    r: Repo = make_repo(hosts=2, secrets=secrets)
    monkeypatch.chdir(r.root)
    _first_run(r)
    real_locked = pipeline.fsutil.locked

    def locked(path: Path, *args: Any, **kw: Any) -> Any:
        if path.name == ".vaultpy.lock":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real_locked(path, *args, **kw)

    monkeypatch.setattr(pipeline.fsutil, "locked", locked)
    with pytest.raises(VaultpyError) as err:
        _renc(r, jobs)
    [problem] = err.value.problems
    assert "cannot take the lock" in problem.message, problem
    assert not r.cache.exists(), sorted(p.name for p in r.cache.iterdir())
    monkeypatch.setattr(pipeline.fsutil, "locked", real_locked)
    assert _renc(r, jobs).ok
    assert (r.cache / ".vaultpy.lock").exists()


@pytest.mark.parametrize("layout", ["first-run", "first-run-hosts-exist", "lock-held"])
def test_batches_are_made_durable_while_the_workers_go_on(repo, monkeypatch, layout):
    """With workers beside the parent, each batch is synced as the parent takes it,
    so the sync at the end waits for the last batch only.  Before the lock is held
    nothing is published meanwhile: no cache file renamed, no host directory in
    place; and the last syncfs comes after the last file was handed back, before any
    rename."""
    if layout == "lock-held":
        assert _renc(repo, 2).ok
        for h in repo.hosts:
            fsutil.remove_tree(repo.cache / h)
    else:
        _first_run(repo)
        if layout == "first-run-hosts-exist":          # a clone: no lock, host dirs
            _hosts_exist(repo)
    monkeypatch.setattr(pipeline, "_BATCH_FILES", 1)
    monkeypatch.setattr(pipeline, "_BATCH_BYTES", 1)
    events: list[tuple[str, bool]] = []
    real_syncfs, real_rename, real_new = fsutil.syncfs, os.rename, fsutil.rename_new
    real_add = pipeline._Publisher.add
    lock = model.load(repo.root).lock_path

    def add(self: pipeline._Publisher, *args: Any) -> None:
        real_add(self, *args)
        events.append(("add", lock.exists()))

    def syncfs(path: Path) -> None:
        real_syncfs(path)
        events.append(("syncfs", lock.exists()))

    def rename(src: str, dst: str) -> None:
        real_rename(src, dst)
        if str(dst).endswith(".age"):
            events.append(("rename", lock.exists()))

    def rename_new(src: str, dst: str) -> None:
        real_new(src, dst)
        events.append(("rename", lock.exists()))

    monkeypatch.setattr(pipeline._Publisher, "add", add)
    monkeypatch.setattr(pipeline.fsutil, "syncfs", syncfs)
    monkeypatch.setattr(pipeline.os, "rename", rename)
    monkeypatch.setattr(pipeline.fsutil, "rename_new", rename_new)
    result = _renc(repo, 2)
    assert result.ok, result.failed
    kinds = [kind for kind, _ in events]
    assert kinds.count("add") == len(SECRETS) * len(repo.hosts)
    last_add = len(kinds) - 1 - kinds[::-1].index("add")
    assert kinds[:last_add].count("syncfs") >= 2, kinds    # durable a batch at a time
    first_rename = kinds.index("rename")
    assert "syncfs" in kinds[last_add:first_rename]        # all of it, before a rename
    if layout != "lock-held":               # nothing in place before the lock is held
        assert all(held for kind, held in events if kind == "rename")
    _assert_complete(repo)


def test_without_workers_a_first_run_syncs_once(repo, monkeypatch):
    """--jobs 2 where no worker can be forked (threads a plugin left): the parent does
    the work, so nothing runs beside a mid-run sync: one sync, at the end."""
    _first_run(repo)
    monkeypatch.setattr(pipeline, "_BATCH_FILES", 1)
    monkeypatch.setattr(pipeline, "_BATCH_BYTES", 1)
    monkeypatch.setattr(pipeline, "_can_fork", lambda: False)
    calls: list[int] = []
    real = fsutil.syncfs

    def syncfs(path: Path) -> None:
        real(path)
        calls.append(os.getpid())

    monkeypatch.setattr(pipeline.fsutil, "syncfs", syncfs)
    assert _renc(repo, 2).ok
    assert calls == [os.getpid()]
    _assert_complete(repo)
