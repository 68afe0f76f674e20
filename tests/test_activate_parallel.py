"""decrypt_secrets in several processes (vaultpy/activate/install.py).

With many secrets, forked helpers decrypt a share each and hand the plaintexts back
in shared memory; the activating process still creates every file.  These tests run
the real ``vaultpy activate`` on 50 secrets and check that helpers change nothing but
the time: the same generation, the same first error, and a helper killed with
SIGKILL mid-way costs nothing but a retry in the parent.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest
from activate_helpers import (
    HostRoot,
    activate,
    activate_cmd,
    activate_ok,
    make_host_root,
    vaultpy_env,
)
from conftest import ROOT, Repo
from open_gate import OpenGate

IDS = [f"s{i:02d}" for i in range(50)]    # 3 shares of >= PARALLEL_MIN / 2 each


@pytest.fixture
def world(make_repo: Callable[..., Repo]) -> tuple[Repo, dict[str, bytes]]:
    """One host, 50 secrets of mixed sizes (one of 300 KB), cache compiled."""
    vals = {sid: os.urandom(300_000 if sid == "s07" else 20 + 37 * i)
            for i, sid in enumerate(IDS)}
    repo = make_repo(hosts=1, secrets=vals, encrypt=False)
    master = pyrage.x25519.Recipient.from_str(repo.recipient)
    for sid, value in vals.items():
        (repo.root / "secrets" / f"{sid}.age").write_bytes(pyrage.encrypt(value, [master]))
    repo.ok("renc")
    return repo, vals


def generation(host: HostRoot) -> dict[str, tuple[bytes, int, int, int]]:
    gen = host.live.parent / os.readlink(host.live)
    out = {}
    for p in sorted(gen.iterdir()):
        if p.name.startswith(".vaultpy"):
            continue
        st = p.lstat()
        out[p.name] = (p.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
    return out


def cache_file(host: HostRoot, sid: str) -> Path:
    prof = json.loads(host.profile.read_text())
    entry = next(s for s in prof["secrets"] if s["id"] == sid)
    return (host.profile.parent / entry["file"]).resolve()


def share_of(host: HostRoot, sid: str, jobs: int = 2) -> int:
    """Which share (0: the activating process) ``sid`` falls in, as install._split
    deals them from the cache files as they are now (a FIFO counts as 0 bytes): each
    test below checks its premise with it, rather than trusting it."""
    from vaultpy.activate.install import _split

    prof = json.loads(host.profile.read_text())
    ids = [s["id"] for s in prof["secrets"]]
    sizes = {i: os.stat(cache_file(host, i)).st_size for i in ids}
    return next(k for k, share in enumerate(_split(ids, sizes, jobs)) if sid in share)


@pytest.mark.parametrize("jobs", ["2", "3"])
def test_helpers_build_the_same_generation_as_one_process(world: tuple[Repo, dict[str, bytes]],
                                                          tmp_path: Path, jobs: str) -> None:
    repo, vals = world
    one = make_host_root(repo, "host0", tmp_path / "one")
    many = make_host_root(repo, "host0", tmp_path / "many")
    proc1 = activate_ok(one.profile, one.root, "--jobs", "1", systemctl=shutil.which("true"))
    procn = activate_ok(many.profile, many.root, "--jobs", jobs,
                        systemctl=shutil.which("true"))
    assert b"50 decrypted\n" in proc1.stderr
    assert f"50 decrypted in {jobs} processes".encode() in procn.stderr
    got = generation(many)
    assert got == generation(one)
    assert len(got) == len(IDS)
    assert {name: data for name, (data, *_rest) in got.items()} == vals


def test_first_error_is_the_one_a_single_process_reports(world: tuple[Repo, dict[str, bytes]],
                                                         tmp_path: Path) -> None:
    """s03 is in the helper's share, s10 in the parent's: both damaged, the error
    names s03 (the first in order) exactly as a one-process run does, and the live
    generation stays the previous one."""
    repo, _vals = world
    results = {}
    for jobs in ("1", "2"):
        host = make_host_root(repo, "host0", tmp_path / f"root{jobs}")
        activate_ok(host.profile, host.root, systemctl=shutil.which("true"))
        before = generation(host)
        saved = {}
        for sid in ("s03", "s10"):
            path = cache_file(host, sid)
            saved[path] = path.read_bytes()
            path.write_bytes(saved[path][:-20] + bytes(20))     # payload damaged
        assert (share_of(host, "s03"), share_of(host, "s10")) == (1, 0)
        try:
            proc = activate(host.profile, host.root, "--jobs", jobs,
                            systemctl=shutil.which("true"))
        finally:
            for path, data in saved.items():
                path.write_bytes(data)
        assert proc.returncode == 1, proc.stderr.decode()
        assert b"Traceback" not in proc.stderr
        assert generation(host) == before
        results[jobs] = proc.stderr.decode().replace(str(host.root), "<root>")
    assert "'s03'" in results["2"] and "'s10'" not in results["2"]
    assert results["2"] == results["1"]


def _activate_gated(host: HostRoot, sid: str, on_open: Callable[[int, int], None]
                    ) -> tuple[int, bytes, list[int]]:
    """Activate with --jobs 2 while every open of ``sid``'s cache file waits at a gate
    (tests/open_gate.py): ``on_open(pid of the opener, pid of the activation)`` runs
    while the opener is held, then the open goes through.  (exit status, stderr, the
    pids that opened the file, in order.)"""
    path = cache_file(host, sid)
    assert share_of(host, sid) == 1, f"{sid} is not in the helper's share"
    gate = OpenGate(path)
    openers: list[int] = []
    try:
        proc = subprocess.Popen(activate_cmd(host.profile, host.root, "--jobs", "2",
                                             systemctl=shutil.which("true")),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                env=vaultpy_env(), cwd=ROOT)
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                held = gate.wait(min(deadline, time.monotonic() + 0.1))
                if held is not None:
                    event_fd, pid = held
                    openers.append(pid)
                    on_open(pid, proc.pid)
                    gate.allow(event_fd)
            _out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        gate.close()
    return proc.returncode, err, openers


def test_helper_killed_mid_share_is_redone_by_the_parent(world: tuple[Repo, dict[str, bytes]],
                                                         tmp_path: Path) -> None:
    """The helper whose share holds s05 is SIGKILLed as it opens s05's cache file.  The
    parent decrypts s05 and the rest of that share itself, and the generation is
    complete and right."""
    repo, vals = world
    host = make_host_root(repo, "host0", tmp_path / "root")
    killed: list[int] = []

    def kill_the_helper(pid: int, parent: int) -> None:
        if not killed:
            assert pid != parent, "the parent opened s05 first: no helper ran"
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    status, err, openers = _activate_gated(host, "s05", kill_the_helper)
    assert status == 0, err.decode()
    assert b"Traceback" not in err
    assert len(openers) == 2 and openers[0] == killed[0] != openers[1]
    assert {name: d for name, (d, *_rest) in generation(host).items()} == vals


def test_small_profiles_stay_in_one_process(world: tuple[Repo, dict[str, bytes]],
                                            tmp_path: Path) -> None:
    """--jobs is a ceiling: a profile below PARALLEL_MIN secrets forks nothing."""
    from vaultpy.activate.install import PARALLEL_MIN

    repo, _vals = world
    assert len(IDS) >= PARALLEL_MIN
    prof = json.loads((make_host_root(repo, "host0", tmp_path / "r").profile).read_text())
    prof["secrets"] = prof["secrets"][:PARALLEL_MIN - 1]
    host = make_host_root(repo, "host0", tmp_path / "small")
    for s in prof["secrets"]:
        s["file"] = str(cache_file(host, s["id"]))
    host.profile.write_text(json.dumps(prof))
    proc = activate_ok(host.profile, host.root, "--jobs", "4", systemctl=shutil.which("true"))
    assert f"{PARALLEL_MIN - 1} decrypted\n".encode() in proc.stderr


def test_what_a_helper_delivers_is_not_decrypted_again(world: tuple[Repo, dict[str, bytes]],
                                                       tmp_path: Path) -> None:
    """s05's cache file is opened once, by the helper whose share it is."""
    repo, vals = world
    host = make_host_root(repo, "host0", tmp_path / "root")
    def a_helper(pid: int, parent: int) -> None:
        assert pid != parent, "the parent opened s05: no helper did"

    status, err, openers = _activate_gated(host, "s05", a_helper)
    assert status == 0, err.decode()
    assert b"50 decrypted in 2 processes" in err
    assert len(openers) == 1
    assert {name: d for name, (d, *_rest) in generation(host).items()} == vals


def test_a_failure_does_not_wait_for_a_later_blocked_file(
        world: tuple[Repo, dict[str, bytes]], tmp_path: Path) -> None:
    """s02 (the parent's share) is damaged and s05 (the helper's) is a FIFO nobody
    writes: one process fails at s02 and never opens s05, so two must not wait for
    the helper stuck on it either."""
    repo, _vals = world
    errors = {}
    for jobs in ("1", "2"):
        host = make_host_root(repo, "host0", tmp_path / f"root{jobs}")
        damaged = cache_file(host, "s02")
        saved = damaged.read_bytes()
        damaged.write_bytes(saved[:-20] + bytes(20))
        fifo = cache_file(host, "s05")
        kept = fifo.read_bytes()
        fifo.unlink()
        os.mkfifo(fifo)
        assert (share_of(host, "s02"), share_of(host, "s05")) == (0, 1)
        try:
            proc = activate(host.profile, host.root, "--jobs", jobs,
                            systemctl=shutil.which("true"), timeout=60)
        finally:
            damaged.write_bytes(saved)
            fifo.unlink()
            fifo.write_bytes(kept)
        assert proc.returncode == 1, proc.stderr.decode()
        errors[jobs] = proc.stderr.decode().replace(str(host.root), "<root>")
    assert "'s02'" in errors["2"]
    assert errors["2"] == errors["1"]


def test_a_fifo_in_a_helper_s_share_is_a_clean_error_not_a_hang(
        world: tuple[Repo, dict[str, bytes]], tmp_path: Path) -> None:
    """s05 (the helper's share) is a FIFO nobody writes, and nothing fails before it:
    it was opened and waited on forever, by the helper and then by the parent's
    in-order pass.  Now both refuse it unread, and say so as one process does."""
    repo, _vals = world
    errors = {}
    for jobs in ("1", "2"):
        host = make_host_root(repo, "host0", tmp_path / f"root{jobs}")
        fifo = cache_file(host, "s05")
        fifo.unlink()
        os.mkfifo(fifo)
        assert share_of(host, "s05") == 1
        proc = activate(host.profile, host.root, "--jobs", jobs,
                        systemctl=shutil.which("true"), timeout=60)
        assert proc.returncode == 1, proc.stderr.decode()
        errors[jobs] = proc.stderr.decode().replace(str(host.root), "<root>")
        assert not host.live.exists()
    assert "'s05'" in errors["2"] and "not a regular file" in errors["2"]
    assert errors["2"] == errors["1"]


def test_shares_are_balanced_by_work_and_keep_the_order() -> None:
    """The benchmark's profile: every 100th secret is 1 MiB.  Dealt every other
    secret, all five landed in the helper's share (three times the bytes); dealt by
    work, the shares differ by less than one big secret, and small files of
    slightly different sizes (a grease stanza) still alternate."""
    from vaultpy.activate.install import _ITEM_COST, _split

    ids = [f"s{i:03d}" for i in range(500)]
    sizes = {sid: (1 << 20) if i % 100 == 99 else 300 + (i * 7919) % 200
             for i, sid in enumerate(ids)}
    shares = _split(ids, sizes, 2)
    assert sorted(shares[0] + shares[1]) == ids
    assert all(share == sorted(share) for share in shares)
    work = [sum(sizes[sid] + _ITEM_COST for sid in share) for share in shares]
    assert abs(work[0] - work[1]) < (1 << 20) + _ITEM_COST
    assert [sum(sizes[sid] > 1000 for sid in share) for share in shares] != [0, 5]
    assert shares[0][:4] == ["s000", "s002", "s004", "s006"]
    old = [ids[0::2], ids[1::2]]
    old_work = [sum(sizes[sid] + _ITEM_COST for sid in share) for share in old]
    assert abs(old_work[0] - old_work[1]) > 4 << 20        # what this replaced
