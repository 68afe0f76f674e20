"""The no-op memo (vaultpy/_internal/memo.py): an unchanged ``renc``/``check`` answers
without the CLI, and every kind of change anywhere the answer depends on is seen.

"Answered from the memo" is observed, not assumed: the run is repeated under
``python -X importtime`` and must not have imported ``vaultpy.cli``.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import Repo
from memo_helpers import MEMO, copy_repo, from_memo, full, outputs, settled, trusted

from vaultpy import model
from vaultpy._internal import memo


@pytest.fixture
def repo(memo_template: Repo, tmp_path: Path) -> Repo:
    return copy_repo(memo_template, tmp_path / "repo")


@pytest.mark.parametrize("args", [("renc",), ("renc", "--json"), ("check",),
                                  ("check", "--json"), ("renc", "-j", "2"),
                                  ("-C", "ROOT", "check"), ("renc", "--repo=ROOT")])
def test_memo_answers_exactly_like_the_full_command(repo: Repo, args: tuple[str, ...]
                                                    ) -> None:
    args = tuple(a.replace("ROOT", str(repo.root)) for a in args)
    settled(repo)
    assert from_memo(repo, *args, cwd=repo.root / "secrets")
    assert outputs(repo.run(*args)) == full(repo, *args)
    assert full(repo, *args)[0] == 0


@pytest.mark.parametrize(("people", "entries", "who"), [
    (("host2",), "2 hosts and 1 person", "every host and person"),
    (("host0", "host1", "host2"), "3 people", "every person")])
def test_people_are_counted_as_people_by_the_memo_as_by_the_full_command(
        repo: Repo, people: tuple[str, ...], entries: str, who: str) -> None:
    """A person's entry (user = true) is not a host: renc and check say so, from the
    full command, from the memo, and from an incremental renc alike."""
    text = (repo.root / "hosts.toml").read_text()
    for name in people:
        text = text.replace(f"[hosts.{name}]\n", f"[hosts.{name}]\nuser = true\n")
    repo.write_hosts(text)
    settled(repo)
    for args in (("renc",), ("check",)):
        assert from_memo(repo, *args)
        assert outputs(repo.run(*args)) == full(repo, *args)
    assert full(repo, "renc")[1] == f"nothing to do: 9 cache files of {entries} up to date\n"
    assert full(repo, "check")[2] == f"ok: {who} has every secret; nothing stale\n"
    # the incremental renc (a master's stat changed, its bytes did not: nothing to write)
    os.utime(repo.root / "secrets" / "beta.age")
    incremental = subprocess.run([sys.executable, "-X", "importtime", "-m", "vaultpy", "renc"],
                                 capture_output=True, cwd=repo.root,
                                 env={**os.environ, "NO_COLOR": "1", **repo.env})
    assert "vaultpy._internal.delta" in incremental.stderr.decode()
    assert "vaultpy.cli" not in incremental.stderr.decode()
    assert incremental.stdout.decode() == full(repo, "renc")[1]


def test_a_run_that_wrote_files_records_nothing(repo: Repo) -> None:
    shutil.rmtree(repo.cache / "host0")
    repo.ok("renc")
    assert not (repo.cache / MEMO).exists()
    repo.ok("renc")
    assert (repo.cache / MEMO).exists() and from_memo(repo, "renc")
    assert not trusted(repo, "check")          # check has not passed on this state yet


def cache_file(repo: Repo, host: str = "host1", sid: str = "beta") -> Path:
    (path,) = (repo.cache / host).glob(f"{sid}.*.age")
    return path


def same_size_same_mtime(path: Path, change: Callable[[bytes], bytes]) -> None:
    """Rewrite ``path`` in place, same length, mtime put back: only ctime tells."""
    st = path.stat()
    data = path.read_bytes()
    new = change(data)
    assert len(new) == len(data) and new != data
    with open(path, "r+b") as f:
        f.write(new)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def flip_last_byte(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


MUTATIONS: dict[str, Callable[[Repo], None]] = {
    "hosts.toml edited in place (same size, same mtime)": lambda r: same_size_same_mtime(
        r.root / "hosts.toml", lambda d: d.replace(b'"beta", "gamma"', b'"gamma", "beta"', 1)),
    "master file re-encrypted": lambda r: r.ok("encrypt", "beta", input=b"new beta"),
    "master file damaged in place": lambda r: same_size_same_mtime(
        r.root / "secrets" / "gamma.age", flip_last_byte),
    "cache file damaged in place (same size, same mtime)": lambda r: same_size_same_mtime(
        cache_file(r), lambda d: b"b" + d[1:]),
    "cache file truncated": lambda r: os.truncate(cache_file(r), 40),
    "cache file deleted": lambda r: cache_file(r).unlink(),
    "stray file in a host's cache": lambda r: (r.cache / "host0" / "old.0123.age")
    .write_bytes(b"x"),
    "cache directory of a host removed from hosts.toml": lambda r: (
        r.cache / "gone").mkdir(),
    "host cache directory deleted": lambda r: shutil.rmtree(r.cache / "host2"),
    "leftover temp file beside the masters": lambda r: (
        r.root / "secrets" / ".alpha.age.vaultpy-tmp-0123456789ab").write_bytes(b"x"),
    "leftover temp file in the cache": lambda r: (
        r.cache / ".x.vaultpy-tmp-0123456789ab").write_bytes(b"x"),
    "unfinished master rotation": lambda r: (
        r.root / ".vaultpy-rotation.jsonl").write_text("{}\n"),
    "interrupted write of several files": lambda r: (
        r.root / ".vaultpy-writes").write_text('{"format": 1, "renames": []}\n'),
    "leftover temp file of hosts.toml": lambda r: (
        r.root / ".hosts.toml.vaultpy-tmp-0123456789ab").write_bytes(b"x"),
    "leftover temp file of a write journal beside hosts.toml": lambda r: (
        r.root / "..vaultpy-writes.vaultpy-tmp-0123456789ab").write_bytes(b"x"),
    "master file replaced by another (rename)": lambda r: os.replace(
        r.root / "secrets" / "alpha.age", r.root / "secrets" / "beta.age"),
}


@pytest.mark.parametrize("name", list(MUTATIONS))
def test_every_change_the_answer_depends_on_is_seen(repo: Repo, name: str) -> None:
    settled(repo)
    MUTATIONS[name](repo)
    assert not trusted(repo, "check") and not trusted(repo, "renc"), name
    if not name.startswith("hosts.toml"):         # that edit only reorders a list
        assert repo.run("check").returncode == 1, name


def test_an_input_as_new_as_the_snapshot_is_never_trusted(repo: Repo) -> None:
    """The racy-clean rule, on its own: with `since` no newer than an input's ctime,
    the same digest must not be trusted."""
    settled(repo)
    path = repo.cache / MEMO
    data = marshal.loads(path.read_bytes())
    newest = max(max(os.stat(f).st_ctime_ns, os.stat(f).st_mtime_ns)
                 for f in data["files"] if os.path.exists(f))
    for since in (newest, newest - 1):
        data["ok"]["check"]["since"] = since
        path.write_bytes(marshal.dumps(data))
        assert not from_memo(repo, "check")
    data["ok"]["check"]["since"] = newest + 10**12
    path.write_bytes(marshal.dumps(data))
    # every other input is older than `since` here (the cache files included)
    assert from_memo(repo, "check")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other version", "other config",
                                    "not a dict", "wrong types", "no since"])
def test_a_damaged_or_foreign_memo_is_ignored(repo: Repo, damage: str) -> None:
    settled(repo)
    path = repo.cache / MEMO
    text = path.read_bytes()
    data = marshal.loads(text)
    if damage == "garbage":
        path.write_bytes(os.urandom(200))
    elif damage == "truncated":
        path.write_bytes(text[: len(text) // 2])
    elif damage == "other version":
        path.write_bytes(marshal.dumps({**data, "vaultpy": "0.0.0"}))
    elif damage == "other config":
        path.write_bytes(marshal.dumps({**data, "config": "/elsewhere/hosts.toml"}))
    elif damage == "not a dict":
        path.write_bytes(marshal.dumps([1, 2]))
    elif damage == "wrong types":
        path.write_bytes(marshal.dumps({**data, "files": "abc", "ok": ["renc"]}))
    else:
        del data["ok"]["renc"]["since"]
        path.write_bytes(marshal.dumps(data))
    assert not from_memo(repo, "renc")
    assert outputs(repo.run("renc")) == full(repo, "renc")


@pytest.mark.parametrize("args", [("renc", "--host", "host0"), ("check", "--strict"),
                                  ("renc", "--jobs", "0"), ("renc", "--nope"),
                                  ("check", "--recipient-coverage"), ("status",)])
def test_options_the_memo_cannot_answer_run_in_full(repo: Repo, args: tuple[str, ...]) -> None:
    settled(repo)
    assert not from_memo(repo, *args)


def test_memo_off_switch(repo: Repo) -> None:
    settled(repo)
    assert not from_memo(repo, "renc", env={"VAULTPY_NO_MEMO": "1"})


def test_check_is_not_remembered_when_time_alone_can_change_it(repo: Repo) -> None:
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace("[secrets.alpha]", "[secrets.alpha]\nrotate_days = 30"))
    repo.ok("renc")
    repo.ok("check")
    assert not trusted(repo, "check")
    assert trusted(repo, "renc")


def test_a_custom_cache_dir_is_found(repo: Repo) -> None:
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace("[vaultpy]\n", '[vaultpy]\ncache_dir = "build/cache"  # x\n'))
    repo.ok("renc")
    repo.ok("renc")
    repo.ok("check")
    assert (repo.root / "build" / "cache" / MEMO).exists()
    assert from_memo(repo, "renc") and from_memo(repo, "check")


def test_a_failing_check_records_nothing(repo: Repo) -> None:
    cache_file(repo).unlink()
    assert repo.run("check").returncode == 1
    assert repo.run("check").returncode == 1
    assert not (repo.cache / MEMO).exists()


# ------------------------------------------------------------------ in-process: the snapshot


def test_a_hosts_toml_changed_after_the_snapshot_began_is_not_recorded(repo: Repo) -> None:
    snap = memo.begin(repo.root)
    assert snap is not None
    path = repo.root / "hosts.toml"
    path.write_text(path.read_text() + "\n")      # between begin() and loading
    snap.capture(model.load(repo.root))
    snap.commit("check")
    assert not (repo.cache / MEMO).exists()


def test_a_change_during_the_run_outdates_what_it_records(repo: Repo) -> None:
    snap = memo.begin(repo.root)
    assert snap is not None
    snap.capture(model.load(repo.root))
    cache_file(repo).unlink()                    # the run would have seen this...
    snap.commit("check")                         # ...but records the state before it
    assert (repo.cache / MEMO).exists()
    assert not from_memo(repo, "check")
    assert repo.run("check").returncode == 1


def test_the_digest_covers_vaultpy_itself(repo: Repo, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """Another version of the code (even unreleased) never trusts this memo."""
    fake = tmp_path / "pkg"
    (fake / "_internal").mkdir(parents=True)
    (fake / "renc.py").write_text("x = 1\n")
    monkeypatch.setattr(memo, "_PACKAGE", str(fake))
    before = memo.digest([], [], [])
    (fake / "renc.py").write_text("x = 2\n")
    assert memo.digest([], [], []) != before


def test_a_killed_snapshot_leaves_only_a_leftover_renc_removes(repo: Repo) -> None:
    """The clock file of a run killed inside memo.begin() is an ordinary leftover."""
    settled(repo)
    (repo.cache / f"{MEMO}.vaultpy-tmp-0123456789ab").mkdir()
    assert not from_memo(repo, "check")
    assert repo.run("check").returncode == 1
    repo.ok("renc")
    assert repo.run("check").returncode == 0
    assert not list(repo.cache.glob("*vaultpy-tmp*"))


def test_hosts_toml_found_from_a_subdirectory_and_through_c(repo: Repo) -> None:
    settled(repo)
    assert from_memo(repo, "check", cwd=repo.cache / "host0")
    assert from_memo(repo, "-C", str(repo.root / "hosts.toml"), "renc", cwd=Path("/"))
    assert from_memo(repo, "renc", "-C", str(repo.root), cwd=Path("/"))


def test_a_memo_that_cannot_be_written_costs_only_the_shortcut(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    from vaultpy._internal import fsutil


    def refuse(*_a: object, **_k: object) -> None:
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(fsutil, "atomic_write", refuse)
    snap = memo.begin(repo.root)
    assert snap is not None
    snap.capture(model.load(repo.root))
    snap.commit("check")                         # no exception, nothing written
    assert not (repo.cache / MEMO).exists()
    assert not list(repo.cache.glob("*vaultpy-tmp*"))


# ------------------------------------------------------------------ found in review


def test_a_bookkeeping_name_that_is_not_a_file_counts(repo: Repo) -> None:
    settled(repo)
    (repo.cache / ".vaultpy-verified").unlink()
    (repo.cache / ".vaultpy-verified").mkdir()
    assert not trusted(repo, "check")
    assert repo.run("check").returncode == 1


def test_a_lock_renc_cannot_take_is_a_clean_error_not_a_memo_answer(repo: Repo) -> None:
    settled(repo)
    (repo.cache / ".vaultpy.lock").unlink()
    (repo.cache / ".vaultpy.lock").mkdir()
    assert not from_memo(repo, "renc")
    proc = repo.run("renc")
    assert proc.returncode == 1, proc.stderr.decode()
    assert b".vaultpy.lock" in proc.stderr and b"Traceback" not in proc.stderr
    assert b"internal error" not in proc.stderr


def test_another_reader_never_trusts_the_memo(repo: Repo) -> None:
    """Permission to read is part of the answer: root without its capabilities (as
    setpriv leaves it) may not read what root with them could."""
    settled(repo)
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv (util-linux)")
    assert not from_memo(repo, "check",
                         prefix=(setpriv, "--inh-caps=-all", "--bounding-set=-all"))


def test_another_home_never_trusts_the_memo(repo: Repo, tmp_path: Path) -> None:
    """``~`` in hosts.toml paths expands differently for another HOME."""
    settled(repo)
    assert not from_memo(repo, "check", env={"HOME": str(tmp_path)})


def test_a_symlinked_hosts_toml_does_not_share_another_repos_memo(
        repo: Repo, tmp_path: Path) -> None:
    shared = tmp_path / "shared-cache"
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace("[vaultpy]\n", f'[vaultpy]\ncache_dir = "{shared}"\n'))
    repo.ok("renc")
    settled(repo)
    other = tmp_path / "other"
    (other / "secrets").mkdir(parents=True)
    (other / "hosts.toml").symlink_to(repo.root / "hosts.toml")
    assert not from_memo(repo, "check", cwd=other)
    proc = repo.run("check", cwd=other)
    assert proc.returncode == 1 and b"master file is missing" in proc.stdout


def test_a_temp_named_entry_that_changes_type_is_seen(repo: Repo) -> None:
    left = repo.root / "secrets" / ".alpha.age.vaultpy-tmp-0123456789ab"
    left.mkdir()                     # a directory: not a leftover file
    settled(repo)
    left.rmdir()
    left.write_bytes(b"junk")        # a leftover file: check must say so
    assert not trusted(repo, "check")
    assert repo.run("check").returncode == 1


def test_a_symlinked_cache_file_is_never_trusted(repo: Repo, tmp_path: Path) -> None:
    """A symlink in a cache file's place fails check, from the memo or not, until renc
    replaces it (its target can change without the link's stat)."""
    settled(repo)
    path = cache_file(repo)
    target = tmp_path / "elsewhere.age"
    path.rename(target)
    path.symlink_to(target)
    before = target.read_bytes()
    assert not trusted(repo, "renc") and not trusted(repo, "check")
    assert repo.run("check").returncode == 1
    assert not trusted(repo, "check")
    repo.ok("renc")
    assert not path.is_symlink() and target.read_bytes() == before
    settled(repo)


def test_forced_colours_are_left_to_rich(repo: Repo) -> None:
    settled(repo)
    assert not from_memo(repo, "check", env={"NO_COLOR": "", "FORCE_COLOR": "1"})
    assert from_memo(repo, "check", env={"FORCE_COLOR": "1"})     # NO_COLOR=1 wins
    assert from_memo(repo, "check", "--json", env={"NO_COLOR": "", "FORCE_COLOR": "1"})


def test_the_memos_literal_names_are_the_projects(repo: Repo) -> None:
    """memo.py spells these out instead of importing their modules (start-up time)."""
    from vaultpy import cache
    from vaultpy._internal import fsutil

    assert memo._TMP == fsutil.TMP_MARK
    lock = model.load(repo.root).lock_path.name
    assert {lock, cache.INDEX, memo.FILENAME} == memo.OWN_FILES
    from vaultpy._internal import delta, writes

    assert (lock, writes.JOURNAL) == (delta._LOCK, delta._WRITES)
    assert writes.JOURNAL == cache._WRITES_JOURNAL == model._WRITES
    assert writes.JOURNAL not in memo.OWN_FILES      # an interrupted write is no no-op


# ------------------------------------------------------------------ the scan's helper process


def recorded(repo: Repo) -> dict[str, object]:
    raw = memo._load(str(repo.cache / MEMO))
    assert raw is not None
    return raw


def scan(raw: dict[str, object], **kw: object) -> memo.Rest | None:
    return memo.Rest.start(raw["listed"], raw["scanned"], **kw).finish()  # type: ignore[arg-type]


def scanned_by_the_helper(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders the helper sends back (collected in this process)."""
    theirs: list[str] = []
    real = memo._Helper.collect

    def collect(self: memo._Helper) -> object:
        got = real(self)
        theirs.extend(got if isinstance(got, dict) else ())
        return got

    monkeypatch.setattr(memo._Helper, "collect", collect)
    return theirs


@pytest.mark.parametrize("busy", [0.0, 0.3])
def test_a_helper_process_scans_to_the_very_same_state(
        repo: Repo, monkeypatch: pytest.MonkeyPatch, busy: float) -> None:
    settled(repo)
    raw = recorded(repo)
    alone = scan(raw, keep=set(raw["scanned"]))        # type: ignore[arg-type]
    monkeypatch.setattr(memo, "PARALLEL_ENTRIES", 1)
    forks: list[int] = []
    real_fork = os.fork
    monkeypatch.setattr(os, "fork", lambda: forks.append(1) or real_fork())
    theirs = scanned_by_the_helper(monkeypatch)
    scanning = memo.Rest.start(raw["listed"], raw["scanned"],  # type: ignore[arg-type]
                               keep=set(raw["scanned"]), entries=9)  # type: ignore[arg-type]
    time.sleep(busy)                   # the caller's own work, before it joins the scan
    helped = scanning.finish()
    assert forks == [1]
    if busy:                           # the helper scanned meanwhile (all, unless slowed)
        assert theirs
    assert alone is not None and helped is not None
    assert helped.value == alone.value == raw["digest"]
    assert (helped.newest, helped.entries) == (alone.newest, alone.entries)
    assert {f: (s[0], list(s[1])) for f, s in helped.scans.items() if s} == \
        {f: (s[0], list(s[1])) for f, s in alone.scans.items() if s}


def test_a_slow_helper_leaves_the_folders_to_this_process(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The folders are shared out as they are taken, not in halves fixed at the start:
    a helper held up (by the machine, say) takes only what it has time for."""
    settled(repo)
    raw = recorded(repo)
    monkeypatch.setattr(memo, "PARALLEL_ENTRIES", 1)
    parent, real = os.getpid(), memo._folder

    def slow_in_the_helper(folder: str) -> object:
        if os.getpid() != parent:
            time.sleep(0.5)
        return real(folder)

    monkeypatch.setattr(memo, "_folder", slow_in_the_helper)
    theirs = scanned_by_the_helper(monkeypatch)
    rest = scan(raw, keep=set(raw["scanned"]), entries=9)  # type: ignore[arg-type]
    assert rest is not None and rest.value == raw["digest"]
    assert len(raw["scanned"]) >= 4 and len(theirs) <= 1  # type: ignore[arg-type]


def open_fds() -> dict[str, str]:
    out = {}
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            out[fd] = os.readlink(f"/proc/self/fd/{fd}")
    return out


def test_a_ctrl_c_while_the_queue_is_filled_leaves_nothing_open(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    settled(repo)
    raw = recorded(repo)
    monkeypatch.setattr(memo, "PARALLEL_ENTRIES", 1)
    before = open_fds()

    def interrupted(fd: int, data: bytes) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        memo.Rest.start(raw["listed"], raw["scanned"], entries=9)  # type: ignore[arg-type]
    monkeypatch.undo()
    assert open_fds() == before


def test_a_ctrl_c_held_back_across_the_fork_takes_the_helper_with_it(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGINT is blocked across fork(): one that came meanwhile is raised as the mask is
    restored, before the caller holds the helper to cancel it.  The helper must not
    outlive that, nor its pipes (found in review: it blocked writing its answer, the
    delta run's lock file inherited)."""
    settled(repo)
    raw = recorded(repo)
    monkeypatch.setattr(memo, "PARALLEL_ENTRIES", 1)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    armed = [True]
    real_fork = os.fork

    def fork_with_ctrl_c() -> int:
        if armed[0]:
            armed[0] = False
            # pending: blocked in this thread across the fork (to this thread: another
            # of pytest's, unblocked, would take it at once)
            signal.pthread_kill(threading.get_ident(), signal.SIGINT)
        return real_fork()

    monkeypatch.setattr(os, "fork", fork_with_ctrl_c)
    before = open_fds()
    try:
        with pytest.raises(KeyboardInterrupt) as got:
            memo.Rest.start(raw["listed"], raw["scanned"],  # type: ignore[arg-type]
                            keep=set(raw["scanned"]), entries=9)  # type: ignore[arg-type]
        assert got.traceback[-1].name == "start"       # as the mask is restored
    finally:
        signal.signal(signal.SIGINT, old)
    assert not armed[0]
    assert open_fds() == before
    with pytest.raises(ChildProcessError):     # reaped: no child of this process is left
        os.waitpid(-1, os.WNOHANG)


def test_many_folders_are_queued_in_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """More folders than the queue has tokens: each token stands for a run of them, and
    every folder is in exactly one run."""
    monkeypatch.setattr(memo, "_TOKENS", 7)
    folders = [f"/nowhere/{i}" for i in range(30)]
    r, w = os.pipe()
    os.write(w, b"".join(i.to_bytes(2, "little") for i in range(7)))
    os.close(w)
    helper = memo._Helper(folders, 0, -1, r)
    runs = []
    while taken := helper.take():
        runs.append(taken)
    os.close(r)
    assert len(runs) == 7 and [f for run in runs for f in run] == folders


def test_a_helper_that_fails_is_made_up_for(repo: Repo, monkeypatch: pytest.MonkeyPatch
                                            ) -> None:
    settled(repo)
    raw = recorded(repo)
    monkeypatch.setattr(memo, "PARALLEL_ENTRIES", 1)

    class Broken:                    # the helper cannot send its answer: it exits 1
        loads = staticmethod(marshal.loads)

        @staticmethod
        def dumps(_value: object) -> bytes:
            raise ValueError("no")

    monkeypatch.setattr(memo, "marshal", Broken)
    rest = scan(raw, entries=9)
    assert rest is not None and rest.value == raw["digest"]

    def no_fork() -> int:
        raise OSError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(os, "fork", no_fork)
    rest = scan(raw, entries=9)
    assert rest is not None and rest.value == raw["digest"]


def test_a_symlink_in_the_helpers_share_is_never_trusted(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    settled(repo)
    raw = recorded(repo)
    monkeypatch.setattr(memo, "PARALLEL_ENTRIES", 1)
    for folder in raw["scanned"][1::2]:                # type: ignore[index]
        os.symlink("/etc/hostname", os.path.join(folder, "link"))
        assert scan(raw, entries=9) is None
        scanning = memo.Rest.start(raw["listed"], raw["scanned"],  # type: ignore[arg-type]
                                   entries=9)
        time.sleep(0.2)                 # (the helper scans them all, that one included)
        assert scanning.finish() is None
        assert scan(raw) is None
        os.unlink(os.path.join(folder, "link"))
        assert scan(raw, entries=9) is not None


def test_the_helper_is_not_interrupted_by_ctrl_c(repo: Repo, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:
    """SIGINT reaches the whole process group; the helper holds it blocked until it
    exits, so it never unwinds into the caller's code (found in review)."""
    settled(repo)
    raw = recorded(repo)
    monkeypatch.setattr(memo, "PARALLEL_ENTRIES", 1)
    real = memo._folder

    def slow(folder: str) -> object:
        time.sleep(0.3)
        return real(folder)

    monkeypatch.setattr(memo, "_folder", slow)      # the helper inherits it
    scanning = memo.Rest.start(raw["listed"], raw["scanned"], entries=9)  # type: ignore[arg-type]
    helper = scanning.helper
    assert helper is not None
    time.sleep(0.1)
    os.kill(helper.pid, signal.SIGINT)
    monkeypatch.setattr(memo, "_folder", real)
    rest = scanning.finish()
    assert rest is not None and rest.value == raw["digest"]
    assert helper.status is not None
    assert os.WIFEXITED(helper.status) and os.WEXITSTATUS(helper.status) == 0


def test_ctrl_c_on_the_fast_path_is_one_line(repo: Repo) -> None:
    """Found in review: a Ctrl-C while the memo answered printed a traceback."""
    settled(repo)
    code = ("import sys\nfrom vaultpy._internal import memo\n"
            "def interrupted(argv):\n    raise KeyboardInterrupt\n"
            "memo.answer = interrupted\nsys.argv = ['vaultpy', 'renc']\n"
            "from vaultpy.__main__ import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo.root, capture_output=True,
                          env={**os.environ, **repo.env}, timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (130, b"", b"interrupted\n")


def test_a_directory_being_built_is_not_remembered(repo: Repo) -> None:
    """renc and check pass over a temp host directory a first run holds the flock of;
    that answer rests on the flock, which no stat shows: once the run is gone (killed),
    the directory is a leftover, and the memo must not answer as if it were not."""
    from vaultpy._internal import fsutil

    building = repo.cache / fsutil.tmp_basename("host9")
    building.mkdir()
    fd = fsutil.hold_dir(building)
    try:
        time.sleep(0.05)                 # the racy-clean rule: let the clock pass it
        repo.ok("renc")
        repo.ok("check")
    finally:
        os.close(fd)                     # the first run was killed
    assert full(repo, "check")[0] == 1
    assert outputs(repo.run("check")) == full(repo, "check")
    repo.ok("renc")
    assert not building.exists()


# ---------------------------------------------------------------- a review's attacks


@pytest.mark.parametrize("make", ["dir", "dangling", "journal"])
def test_a_hosts_toml_below_that_stops_the_search_stops_the_memo_too(repo: Repo,
                                                                      make: str) -> None:
    """model.find stops at anything named hosts.toml, or a killed import's journal, in
    a folder below: the memo found the repository's hosts.toml above it and said ok."""
    docs = repo.root / "docs"
    docs.mkdir()                    # (a new folder in the repository's top is a miss)
    settled(repo)
    assert from_memo(repo, "check", cwd=docs)
    if make == "dir":
        (docs / "hosts.toml").mkdir()
    elif make == "dangling":
        (docs / "hosts.toml").symlink_to("nowhere")
    else:       # (whether it would create hosts.toml: the full command reads it)
        (docs / ".vaultpy-writes").write_text("not a journal\n")
    assert not from_memo(repo, "check", cwd=docs)
    for args in (("check",), ("renc",), ("check", "--json")):
        assert outputs(repo.run(*args, cwd=docs)) == full_in(repo, docs, *args), args


def full_in(repo: Repo, cwd: Path, *args: str) -> tuple[int, str, str]:
    return outputs(repo.run(*args, cwd=cwd, env={"VAULTPY_NO_MEMO": "1"}))


def test_a_stray_master_that_became_a_file_is_warned_of(repo: Repo) -> None:
    """A stray master warns only as a regular file: a directory of that name replaced
    by one kept the folder's names, and the memo said ok without the warning."""
    stray = repo.root / "secrets" / "old.age"
    stray.mkdir()
    settled(repo)
    stray.rmdir()
    stray.write_bytes(b"x")
    for args in (("check",), ("check", "--json"), ("renc",)):
        got = outputs(repo.run(*args))
        assert got == full(repo, *args), args
        assert "old.age" in got[1] + got[2], got


def test_a_folder_turned_into_a_symlink_is_not_trusted(repo: Repo, tmp_path: Path) -> None:
    """secrets/ moved elsewhere and linked back: the full command refuses a cache behind
    a symlink; the memo said "nothing to do", and an incremental renc wrote there."""
    settled(repo)
    repo.ok("encrypt", "beta", input=b"beta 2")         # a change delta would write
    moved = tmp_path / "moved"
    (repo.root / "secrets").rename(moved)
    (repo.root / "secrets").symlink_to(moved)
    before = sorted(p.name for p in moved.rglob("*"))
    for args in (("renc",), ("check",)):
        got = outputs(repo.run(*args))
        assert got == full(repo, *args), args
        assert got[0] == 1 and "is a symlink" in got[1] + got[2], got
    assert sorted(p.name for p in moved.rglob("*")) == before


def test_an_incremental_renc_that_cannot_load_keys_still_prints_its_json(repo: Repo) -> None:
    settled(repo)
    repo.ok("encrypt", "beta", input=b"beta 2")
    env = {"VAULTPY_IDENTITY": "/nonexistent/key"}
    fast = outputs(repo.run("renc", "--json", env=env))
    slow = outputs(repo.run("renc", "--json", env={**env, "VAULTPY_NO_MEMO": "1"}))
    assert fast == slow and fast[0] == 1 and '"ok": false' in fast[1], fast


@pytest.mark.parametrize("command", ["renc", "check"])
def test_an_answer_that_cannot_be_written_says_so_as_the_cli_does(repo: Repo,
                                                                  command: str) -> None:
    settled(repo)
    args = [sys.executable, "-m", "vaultpy", command, *(["--json"] if command == "check"
                                                           else [])]
    runs = []
    for extra in ({}, {"VAULTPY_NO_MEMO": "1"}):
        with open("/dev/full", "wb") as out:
            proc = subprocess.run(args, stdout=out, stderr=subprocess.PIPE, cwd=repo.root,
                                  env={**os.environ, "NO_COLOR": "1", **repo.env, **extra})
        runs.append((proc.returncode, proc.stderr.decode()))
    assert runs[0] == runs[1], runs
    assert runs[0][0] == 74 and "cannot write the output" in runs[0][1], runs
    assert "Traceback" not in runs[0][1]
