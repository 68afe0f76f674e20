"""How renc makes its files durable (vaultpy/_internal/fsutil.py ``sync_files``): one
``syncfs`` as a rule; for a few files while other programs' data waits to be written,
which a ``syncfs`` would wait for too, an fdatasync of each file and an fsync of each
folder.  Observed with the real strace; the cache is read back with the real age."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Repo, age_decrypt, need
from memo_helpers import copy_repo, full, settled

from vaultpy._internal import fsutil


@pytest.fixture
def repo(memo_template: Repo, tmp_path: Path) -> Repo:
    return copy_repo(memo_template, tmp_path / "repo")


# Whether other data waits is the kernel's count, which any syncfs on this machine (a
# test in the other worker) empties at any moment: the runs below are told what to see.
WAITING = "fsutil.OTHERS_WAITING = -1"


def test_another_program_s_unwritten_data_is_seen(disk_path: Path) -> None:
    """128 MiB written and not yet on disk (a download, a build) show in the count.
    (On a disk: a tmpfs's pages are never dirty.)"""
    big = disk_path / "download.bin"
    seen = []
    for _ in range(5):          # (another process's syncfs may write it back meanwhile)
        with open(big, "wb") as f:
            for _ in range(128):
                f.write(b"\xa5" * (1 << 20))
            f.flush()
            seen.append(fsutil.unwritten_bytes())
        big.unlink()            # (dirty pages of a removed file are never written)
        if seen[-1] >= 96 << 20:
            break
    assert max(seen) >= 96 << 20, seen


def traced(repo: Repo, tmp_path: Path, setup: str = "") -> list[str]:
    """``vaultpy renc`` under strace: its syncfs, fdatasync and fsync calls, in order.
    ``setup``: Python run first in the same process (to set a threshold)."""
    return [name for name, _path in traced_paths(repo, tmp_path, setup)]


def traced_paths(repo: Repo, tmp_path: Path, setup: str = "") -> list[tuple[str, str]]:
    """:func:`traced`, with the path of each call's descriptor (strace -y)."""
    out = tmp_path / "strace.out"
    code = (f"import sys\nfrom vaultpy._internal import fsutil\n{setup}\n"
            "sys.argv = ['vaultpy', 'renc']\nfrom vaultpy.__main__ import main\nmain()\n")
    proc = subprocess.run([need("strace"), "-f", "-qq", "-y", "-o", str(out), "-e",
                           "trace=syncfs,fdatasync,fsync", sys.executable, "-c", code],
                          cwd=repo.root, env={**os.environ, "NO_COLOR": "1", **repo.env},
                          capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    calls = []
    for line in out.read_text().splitlines():
        rest = line.split(None, 1)[1] if " " in line else ""
        name, _, args = rest.partition("(")
        if name in ("syncfs", "fdatasync", "fsync"):
            calls.append((name, args.split("<", 1)[1].split(">", 1)[0] if "<" in args else ""))
    return calls


def reads_back(repo: Repo, sid: str, plaintext: bytes) -> None:
    for host in repo.hosts.values():
        [path] = (repo.cache / host.name).glob(f"{sid}.*.age")
        assert age_decrypt(path, host.key) == plaintext
    assert not list(repo.cache.rglob("*vaultpy-tmp*"))
    assert full(repo, "check")[0] == 0


def test_a_changed_secret_waits_for_its_own_files_not_for_another_program_s(
        repo: Repo, tmp_path: Path) -> None:
    """The incremental path (one master changed): its 3 files, each fdatasync'd, and
    their 3 folders fsync'd, while another program's data waits: no syncfs."""
    settled(repo)
    repo.ok("encrypt", "alpha", input=b"alpha, rotated")
    calls = traced(repo, tmp_path, WAITING)
    assert "syncfs" not in calls, calls
    assert calls.count("fdatasync") == 3, calls
    assert calls.count("fsync") >= 3, calls
    reads_back(repo, "alpha", b"alpha, rotated")


def test_a_host_built_anew_too(repo: Repo, tmp_path: Path) -> None:
    """The full pipeline: a host's directory built whole in a temp directory, its
    files fdatasync'd and that directory fsync'd before it is renamed into place."""
    plain = {sid: age_decrypt(next((repo.cache / "host1").glob(f"{sid}.*.age")),
                              repo.hosts["host1"].key)
             for sid in ("alpha", "beta", "gamma")}
    shutil.rmtree(repo.cache / "host1")
    calls = traced(repo, tmp_path, WAITING)
    assert "syncfs" not in calls and calls.count("fdatasync") == 3, calls
    for sid, text in plain.items():
        [path] = (repo.cache / "host1").glob(f"{sid}.*.age")
        assert age_decrypt(path, repo.hosts["host1"].key) == text
    assert full(repo, "check")[0] == 0


@pytest.mark.parametrize("setup", [f"{WAITING}; fsutil.FEW_FILES = 2",  # 3 files: many
                                   "fsutil.OTHERS_WAITING = 1 << 62"],    # nothing waits
                         ids=["many-files", "nothing-waiting"])
def test_otherwise_one_syncfs(repo: Repo, tmp_path: Path, setup: str) -> None:
    settled(repo)
    repo.ok("encrypt", "beta", input=b"beta, rotated")
    calls = traced(repo, tmp_path, setup)
    assert calls.count("syncfs") == 2 and "fdatasync" not in calls, calls
    reads_back(repo, "beta", b"beta, rotated")


def test_a_first_run_s_new_cache_directory_is_durable_too(repo: Repo, tmp_path: Path
                                                          ) -> None:
    """A first run creates the cache directory itself (mkdir -p): its entry in its
    parent must be durable as the one syncfs made it, before the run says it wrote
    anything, or a crash could lose the whole cache the run reported written."""
    shutil.rmtree(repo.cache)
    calls = traced_paths(repo, tmp_path, WAITING)
    assert not any(name == "syncfs" for name, _ in calls), calls
    synced_dirs = {os.path.realpath(p) for name, p in calls if name == "fsync"}
    assert os.path.realpath(repo.cache) in synced_dirs, calls
    assert os.path.realpath(repo.cache.parent) in synced_dirs, calls
    assert full(repo, "check")[0] == 0
