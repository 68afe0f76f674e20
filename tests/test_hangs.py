"""tests/hangs.py, the suite's guard against a hung test, on real hangs: a test waiting
on a child that never ends fails with what it waited on and the suite goes on; a
test hung in its own process, with a forked child holding pytest-xdist's pipe (what
once ran CI into its time limit), ends as a crashed worker, its record on disk."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent

CONFTEST = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from hangs import pytest_runtest_makereport, pytest_runtest_protocol  # noqa: F401
"""

HUNG = """
import os, subprocess, threading, time

def test_waits_on_a_child():
    subprocess.run(["sleep", "3600"])

def test_after_it():
    pass

def test_hangs_itself_with_a_forked_child():
    if os.fork() == 0:
        time.sleep(3600)
        os._exit(0)
    threading.Event().wait()

def test_last():
    pass
"""


def _pytest(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_hung.py").write_text(HUNG)
    env = os.environ | {"VAULTPY_TEST_TIMEOUT": "3", "VAULTPY_TEST_GRACE": "2",
                        "VAULTPY_TEST_HANGS": str(tmp_path / "hangs")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), *args, str(tmp_path)],
                          env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    return proc, time.monotonic() - start


def test_a_test_waiting_on_a_child_fails_with_what_it_waited_on(tmp_path: Path) -> None:
    proc, took = _pytest(tmp_path, "-k", "waits or after")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 1 passed" in proc.stdout
    assert "test_waits_on_a_child still ran after 3 s" in proc.stdout
    assert "sleep 3600" in proc.stdout              # the process tree, and in it the child
    assert "in test_waits_on_a_child" in proc.stdout    # the stacks
    assert took < 60
    assert not (tmp_path / "hangs").exists()


def test_a_hang_in_the_test_process_is_a_crashed_worker_the_suite_goes_on(
        tmp_path: Path) -> None:
    proc, took = _pytest(tmp_path, "-n", "1", "-k", "itself or last")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "crashed" in out and "1 failed, 1 passed" in out, out
    [record] = (tmp_path / "hangs").iterdir()
    text = record.read_text()
    assert "the hang is in the test process" in text
    assert "threading.py" in text and "in test_hangs_itself_with_a_forked_child" in text
    assert took < 120
