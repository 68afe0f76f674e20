"""The incremental renc (vaultpy/_internal/delta.py): after a clean run is recorded in
the memo, a changed master is re-encrypted for its hosts without the CLI, with the
very output and cache a full run gives, and the memo it records is sound.

"Without the CLI" is observed (``python -X importtime``, see memo_helpers.from_memo);
the full run it is compared with is the same command with ``VAULTPY_NO_MEMO=1`` on a
copy of the same repository.  Cache files are read back with the real age CLI.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import Repo, age_decrypt
from memo_helpers import (
    copy_repo,
    from_memo,
    full,
    outputs,
    settled,
    trusted,
)

from vaultpy import identities
from vaultpy._internal import delta, memo


@pytest.fixture
def repo(memo_template: Repo, tmp_path: Path) -> Repo:
    return copy_repo(memo_template, tmp_path / "repo")


def change(repo: Repo, sid: str, plaintext: bytes) -> None:
    """A new value for ``sid``, written as an operator would (vaultpy encrypt)."""
    repo.ok("encrypt", sid, input=plaintext)


def only_name(repo: Repo, host: str, sid: str = "alpha") -> str:
    (only,) = (repo.cache / host).glob(f"{sid}.*.age")
    return only.name


def names(repo: Repo) -> dict[str, list[str]]:
    return {h: sorted(p.name for p in (repo.cache / h).iterdir()) for h in repo.hosts}


def same_text(a: Repo, b: Repo, text: str) -> str:
    return text.replace(str(a.root), "ROOT").replace(str(b.root), "ROOT")


def test_a_changed_master_is_reencrypted_without_the_cli(repo: Repo) -> None:
    settled(repo)
    before = names(repo)
    change(repo, "alpha", b"alpha, rotated\n")
    assert from_memo(repo, "renc")
    for host in repo.hosts.values():
        (new,) = [n for n in names(repo)[host.name] if n.startswith("alpha.")]
        assert new not in before[host.name]
        assert age_decrypt(repo.cache / host.name / new, host.key) == b"alpha, rotated\n"
        assert len(names(repo)[host.name]) == 3          # the old one is gone
    assert not list(repo.cache.rglob("*vaultpy-tmp*"))
    # The memo it recorded is sound: the next run is answered from it, and agrees
    # with a full run and a full check.
    assert trusted(repo, "renc")
    assert from_memo(repo, "renc")
    assert full(repo, "renc")[1].startswith("nothing to do: 9 cache files of 3 hosts")
    assert full(repo, "check")[0] == 0


@pytest.mark.parametrize("args", [("renc",), ("renc", "--json"), ("renc", "-j", "1")])
def test_output_and_cache_are_those_of_a_full_run(repo: Repo, memo_template: Repo, tmp_path: Path,
                                                  args: tuple[str, ...]) -> None:
    twin = copy_repo(memo_template, tmp_path / "twin")     # the same keys and masters
    settled(repo)
    change(repo, "beta", b"beta 2")
    shutil.copyfile(repo.root / "secrets" / "beta.age", twin.root / "secrets" / "beta.age")
    mine, theirs = outputs(repo.run(*args)), full(twin, *args)
    assert mine[0] == theirs[0] == 0
    assert same_text(repo, twin, mine[1]) == same_text(repo, twin, theirs[1])
    assert mine[2] == theirs[2] == ""
    assert names(repo) == names(twin)
    if "--json" in args:
        report = json.loads(mine[1])
        assert len(report["written"]) == len(report["pruned"]) == 3
        assert report["unchanged"] == 6
    else:
        assert mine[1].splitlines()[-1].split() == ["total", "3", "0", "6", "3"]
    assert trusted(repo, "renc")                      # and the run was incremental:
    assert not trusted(twin, "renc")                  # a full run that wrote records none


def test_changes_chain_and_each_run_records_the_next_state(repo: Repo) -> None:
    settled(repo)
    for n, sid in enumerate(["alpha", "beta", "alpha", "gamma"]):
        change(repo, sid, f"value {n}".encode())
        assert from_memo(repo, "renc"), (n, sid)
        assert trusted(repo, "renc")
    for host in repo.hosts.values():
        got = {n.split(".")[0]: age_decrypt(repo.cache / host.name / n, host.key)
               for n in names(repo)[host.name]}
        assert got == {"alpha": b"value 2", "beta": b"value 1", "gamma": b"value 3"}
    assert full(repo, "check")[0] == 0
    assert full(repo, "renc")[1].startswith("nothing to do")


def test_a_passing_check_is_enough_to_start_from(repo: Repo) -> None:
    repo.ok("check")                    # recorded by check alone (no renc entry)
    change(repo, "gamma", b"g2")
    assert from_memo(repo, "renc")
    assert full(repo, "check")[0] == 0


def test_a_touched_master_with_the_same_bytes_writes_nothing(repo: Repo) -> None:
    settled(repo)
    before = repo.cache_files()
    master = repo.root / "secrets" / "alpha.age"
    master.write_bytes(master.read_bytes())          # a new stat, the same content
    proc = repo.ok("renc")
    assert proc.stdout.decode().startswith("nothing to do: 9 cache files of 3 hosts")
    assert repo.cache_files() == before
    assert trusted(repo, "renc")                      # the new stat is recorded


@pytest.mark.parametrize("damage", ["not age", "other key", "missing"])
def test_a_master_that_does_not_decrypt_is_reported_by_the_full_run(
        repo: Repo, memo_template: Repo, tmp_path: Path, damage: str) -> None:
    twin = copy_repo(memo_template, tmp_path / "twin")
    settled(repo)
    master = repo.root / "secrets" / "beta.age"
    if damage == "not age":
        master.write_bytes(b"not an age file\n")
    elif damage == "other key":
        other = subprocess.run(["age-keygen"], capture_output=True, check=True)
        pub = other.stderr.decode().split("Public key: ")[1].strip()
        master.write_bytes(subprocess.run(["age", "-r", pub], input=b"x",
                                          capture_output=True, check=True).stdout)
    if damage == "missing":
        master.unlink()
        (twin.root / "secrets" / "beta.age").unlink()
    else:
        shutil.copyfile(master, twin.root / "secrets" / "beta.age")
    before = repo.cache_files()
    assert not from_memo(repo, "renc")
    mine, theirs = outputs(repo.run("renc")), full(twin, "renc")
    assert mine[0] == theirs[0] == 1
    assert same_text(repo, twin, mine[2]) == same_text(repo, twin, theirs[2])
    assert "Traceback" not in mine[2] and "beta.age" in mine[2]
    assert repo.cache_files() == before               # each host keeps its last good copy
    assert not list(repo.cache.rglob("*vaultpy-tmp*"))


def test_identities_unlocked_before_a_hand_over_are_kept(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """A master that does not decrypt ends the incremental run after the identities
    were loaded: the full run gets them (a passphrase is never asked twice)."""
    settled(repo)
    (repo.root / "secrets" / "alpha.age").write_bytes(b"age-encryption.org/v1\n-> X\n")
    monkeypatch.chdir(repo.root)
    monkeypatch.setenv("VAULTPY_IDENTITY", str(repo.identity))
    monkeypatch.setattr(identities, "_in_memory", [])
    assert memo.answer(["renc"]) is None
    assert len(identities._in_memory) == 1


@pytest.mark.parametrize("other", ["cache file removed", "cache file edited", "hosts.toml",
                                   "leftover beside masters", "stray file in cache"])
def test_anything_else_changed_runs_the_full_pipeline(repo: Repo, other: str) -> None:
    settled(repo)
    change(repo, "alpha", b"alpha 2")
    host0 = repo.cache / "host0"
    beta = next(host0.glob("beta.*.age"))
    if other == "cache file removed":
        beta.unlink()
    elif other == "cache file edited":
        with beta.open("r+b") as f:                   # in place: only its own stat changes
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))
    elif other == "hosts.toml":
        path = repo.root / "hosts.toml"
        path.write_text(path.read_text() + "\n# a comment\n")
    elif other == "leftover beside masters":
        (repo.root / "secrets" / ".alpha.age.vaultpy-tmp-0123456789ab").write_bytes(b"x")
    else:       # (named as renc names files: anything else is not vaultpy's to remove)
        (host0 / f"alpha.{'0' * 32}.age").write_text("x")
    assert not from_memo(repo, "renc")
    assert outputs(repo.run("renc"))[1].startswith("nothing to do")
    assert full(repo, "check")[0] == 0
    for host in repo.hosts.values():
        (new,) = (repo.cache / host.name).glob("alpha.*.age")
        assert age_decrypt(new, host.key) == b"alpha 2"


def test_too_many_files_are_left_to_the_worker_pool(
        repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    settled(repo)
    change(repo, "alpha", b"alpha 2")
    before = repo.cache_files()
    monkeypatch.chdir(repo.root)
    monkeypatch.setenv("VAULTPY_IDENTITY", str(repo.identity))
    monkeypatch.setattr(delta, "MAX_FILES", 2)       # alpha needs 3
    assert memo.answer(["renc"]) is None
    assert repo.cache_files() == before
    monkeypatch.setattr(delta, "MAX_FILES", 3)
    with open(os.devnull, "w") as devnull:
        monkeypatch.setattr(sys, "stdout", devnull)
        assert memo.answer(["renc"]) == 0
    assert repo.cache_files() != before


def test_an_in_place_edit_of_a_file_it_wrote_is_seen(repo: Repo) -> None:
    settled(repo)
    change(repo, "alpha", b"alpha 2")
    assert from_memo(repo, "renc")
    written = next((repo.cache / "host1").glob("alpha.*.age"))
    with written.open("r+b") as f:                   # in place: the same inode
        f.truncate(written.stat().st_size - 1)
    assert not from_memo(repo, "check")
    proc = repo.run("check")
    assert proc.returncode == 1 and "damaged" in proc.stdout.decode(), proc.stdout
    repo.ok("renc")                                  # repaired
    assert age_decrypt(next((repo.cache / "host1").glob("alpha.*.age")),
                       repo.hosts["host1"].key) == b"alpha 2"


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_killed_at_any_point_the_next_run_completes(repo: Repo, signed: bool) -> None:
    """SIGKILL the incremental run at random moments: every host always holds a
    complete cache file (the old or the new), and the next run finishes the job.  With
    a signing key, the kill can also land among the lists' writes (vaultpy/signing.py
    write_lists): the next run signs again, and check verifies every list."""
    rng = random.Random(os.urandom(8))
    env = {**os.environ, "NO_COLOR": "1", **repo.env}
    if signed:
        repo.ok("signing-key")
    # How long an incremental run takes on this machine: the kills land within that.
    # (A fixed 0-0.3 s let all 12 runs of a ~50 ms command finish unkilled ~10% of
    # the time.)  A run that ends before its kill shortens it: one measurement made
    # while the other test worker loaded the machine must not leave all 12 unkilled.
    repo.ok("renc")
    repo.ok("renc")
    change(repo, "alpha", b"timing\n")
    start = time.monotonic()
    repo.ok("renc")
    span = time.monotonic() - start
    killed, old = 0, b"timing\n"
    for n in range(12):
        repo.ok("renc")                 # twice: a run that wrote records no memo
        repo.ok("renc")
        assert trusted(repo, "renc")    # so the run killed below is incremental
        value = f"value {n}".encode()
        change(repo, "alpha", value)
        proc = subprocess.Popen([sys.executable, "-m", "vaultpy", "renc"], cwd=repo.root,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait = rng.uniform(0.0, span)
        time.sleep(wait)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        else:               # it ran in less: span was measured slow (a loaded moment)
            span = wait
        proc.wait()
        for host in repo.hosts.values():
            found = list((repo.cache / host.name).glob("alpha.*.age"))
            assert found
            assert all(age_decrypt(f, host.key) in (value, old) for f in found)
        repo.ok("renc")
        assert full(repo, "check")[0] == 0
        for host in repo.hosts.values():
            (only,) = (repo.cache / host.name).glob("alpha.*.age")
            assert age_decrypt(only, host.key) == value
        assert not list(repo.cache.rglob("*vaultpy-tmp*"))
        if signed:
            for host in repo.hosts.values():
                listed = (repo.cache / host.name / "SHA256SUMS").read_text()
                assert f"  {only_name(repo, host.name)}\n" in listed
        old = value
    assert killed >= 1


def test_with_the_scan_in_a_helper_process_too(repo: Repo) -> None:
    """Big caches are scanned by a forked helper while the run imports the crypto
    stack; here the threshold is lowered so that 9 files take that path."""
    settled(repo)
    change(repo, "alpha", b"alpha 3")
    code = ("import sys; from vaultpy._internal import memo; memo.PARALLEL_ENTRIES = 1; "
            "from vaultpy.__main__ import main; sys.argv = ['vaultpy', 'renc']; main()")
    env = {**os.environ, "NO_COLOR": "1", **repo.env}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code], cwd=repo.root,
                          env=env, capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert "vaultpy.cli" not in proc.stderr.decode()
    assert proc.stdout.decode().splitlines()[-1].split() == ["total", "3", "0", "6", "3"]
    assert trusted(repo, "renc")
    assert full(repo, "check")[0] == 0
    for host in repo.hosts.values():
        (new,) = (repo.cache / host.name).glob("alpha.*.age")
        assert age_decrypt(new, host.key) == b"alpha 3"


# ------------------------------------------------------------------ failures once published


def in_process(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(repo.root)
    monkeypatch.setenv("VAULTPY_IDENTITY", str(repo.identity))
    monkeypatch.delenv("VAULTPY_NO_MEMO", raising=False)


def test_an_old_file_that_cannot_be_removed_is_reported_not_handed_over(
        repo: Repo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """Found in review: a failure after the first rename used to hand over to the
    full run, whose report then left out what was already published."""
    settled(repo)
    change(repo, "alpha", b"alpha 2")
    in_process(repo, monkeypatch)
    stuck = next((repo.cache / "host1").glob("alpha.*.age"))
    real_unlink = os.unlink

    def unlink(path: object, *a: object, **k: object) -> None:
        if str(path) == str(stuck):
            raise PermissionError(1, "Operation not permitted", str(path))
        real_unlink(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    assert memo.answer(["renc"]) == 1                  # answered here, exit 1
    out, err = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert rows["total"] == ["3", "0", "6", "2"]
    assert rows["host1"] == ["1", "0", "2", "0"]
    assert err.splitlines()[0] == "1 failed"
    assert "cannot remove stale cache file: Operation not permitted" in err
    assert not trusted(repo, "renc")                  # a failed run records nothing
    monkeypatch.setattr(os, "unlink", real_unlink)
    assert outputs(repo.run("renc"))[1].splitlines()[-1].split() == ["total", "0", "0", "9", "1"]
    assert full(repo, "check")[0] == 0


@pytest.mark.parametrize("fail_at", [1, 2])
def test_a_rename_that_fails(repo: Repo, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str], fail_at: int) -> None:
    """The first rename failing hands over (nothing is published yet); a later one
    fails that file and the rest, as the full pipeline's publisher does."""
    settled(repo)
    before = repo.cache_files()
    change(repo, "alpha", b"alpha 2")
    in_process(repo, monkeypatch)
    real_rename, calls = os.rename, []

    def rename(src: str, dst: str) -> None:
        calls.append(dst)
        if len(calls) == fail_at:
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    code = memo.answer(["renc", "--json"])
    out, err = capsys.readouterr()
    assert not list(repo.cache.rglob("*vaultpy-tmp*"))
    if fail_at == 1:
        assert code is None and out == err == ""
        assert repo.cache_files() == before
    else:
        assert code == 1
        report = json.loads(out)
        assert len(report["written"]) == len(report["pruned"]) == 1 and not report["ok"]
        assert report["failed"][0]["message"] == ("cannot finish writing the cache: "
                                                  "No space left on device")
        assert err.count("\n") == 1 and "free some disk space" in err
        for host in repo.hosts.values():      # every host has exactly one complete file
            (only,) = (repo.cache / host.name).glob("alpha.*.age")
            assert age_decrypt(only, host.key) in (b"alpha\n", b"alpha 2")
    monkeypatch.setattr(os, "rename", real_rename)
    repo.ok("renc")
    assert full(repo, "check")[0] == 0


def test_identities_that_do_not_load_fail_as_a_full_run_does(
        repo: Repo, memo_template: Repo, tmp_path: Path) -> None:
    twin = copy_repo(memo_template, tmp_path / "twin")
    settled(repo)
    change(repo, "beta", b"beta 2")
    shutil.copyfile(repo.root / "secrets" / "beta.age", twin.root / "secrets" / "beta.age")
    gone = {"VAULTPY_IDENTITY": str(tmp_path / "no-such-key.txt")}
    mine = outputs(repo.run("renc", env=gone))
    theirs = outputs(twin.run("renc", env={**gone, "VAULTPY_NO_MEMO": "1"}))
    assert mine[0] == theirs[0] == 1
    assert mine[1:] == theirs[1:] and "no-such-key.txt" in mine[2]
    assert from_memo(repo, "renc", env=gone)          # answered without the CLI


@pytest.mark.usefixtures("syncfs_as_the_rule")
def test_a_failed_sync_after_the_renames_reports_no_file_written(
        repo: Repo, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
        ) -> None:
    """The syncfs that makes the renames durable fails: the new files are in place but
    not known durable.  As the full pipeline does when a directory's fsync fails, the
    run fails and lists them as failed only, not also as written."""
    settled(repo)
    change(repo, "alpha", b"alpha 2")
    in_process(repo, monkeypatch)
    from vaultpy._internal import fsutil

    real_syncfs, calls = fsutil.syncfs, []

    def syncfs(path: object) -> None:
        calls.append(path)
        if len(calls) == 2:                 # the first makes the new files' bytes durable
            raise OSError(5, "Input/output error")
        real_syncfs(path)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil, "syncfs", syncfs)
    assert memo.answer(["renc", "--json"]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert not report["ok"] and report["written"] == []
    assert report["failed"][0]["message"] == ("cannot finish writing the cache: "
                                              "Input/output error")
    assert err.count("\n") == 1
    assert not trusted(repo, "renc")
    monkeypatch.setattr(fsutil, "syncfs", real_syncfs)
    repo.ok("renc")
    assert full(repo, "check")[0] == 0
