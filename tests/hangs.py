"""A test that hangs fails, with what it was waiting on, instead of running into CI's
time limit with nothing to show.

Each test (setup, call and teardown) runs under a timer, ``VAULTPY_TEST_TIMEOUT``
seconds (600 unless set).  When it fires:

1. every thread's stack and the test's process tree (state, kernel wait channel,
   command line of each descendant) are taken down;
2. every descendant process is killed: what the test waits on (a CLI run, a worker,
   a server) ends, the wait returns, and the test fails with that record as its
   report, the rest of the suite running on;
3. if the test still runs ``VAULTPY_TEST_GRACE`` seconds (30) later, the hang is in
   this process: the record goes to ``VAULTPY_TEST_HANGS`` (a directory; .ci/run
   prints it) and the process exits.  Its descendants are gone, so nothing keeps
   pytest-xdist's pipe to this worker open (a forked child inherits it): the
   controller sees the worker die, reports the test as crashed, and goes on.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

LIMIT = float(os.environ.get("VAULTPY_TEST_TIMEOUT", "600"))
GRACE = float(os.environ.get("VAULTPY_TEST_GRACE", "30"))
HANGS = Path(os.environ.get("VAULTPY_TEST_HANGS", "/tmp/vaultpy-test-hangs"))


def _children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            out.setdefault(ppid, []).append(int(entry))
    return out


def children(pid: int) -> set[int]:
    """``pid``'s children, zombies too."""
    return set(_children_map().get(pid, []))


def descendants(pid: int) -> list[int]:
    """``pid``'s descendants, parents before their children."""
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        for child in kids.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def _describe(pid: int) -> str:
    def read(name: str) -> str:
        try:
            return Path(f"/proc/{pid}/{name}").read_bytes().replace(b"\0", b" ").decode(
                errors="replace").strip()
        except OSError:
            return "?"
    stat = read("stat")
    state = stat.rsplit(")", 1)[1].split()[0] if ")" in stat else "?"
    return f"  {pid} [{state}] waits in {read('wchan') or '-'}: {read('cmdline')[:300]}"


def _stacks() -> str:
    with tempfile.TemporaryFile() as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        return f.read().decode(errors="replace")


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):     # gone already
            os.kill(pid, signal.SIGKILL)


class _Dog:
    def __init__(self) -> None:
        self.record: str | None = None     # for the test's report, once
        self.timers: list[threading.Timer] = []

    def start(self, nodeid: str) -> None:
        self.record = None
        bite = threading.Timer(LIMIT, self._bite, (nodeid,))
        bite.name = "hang guard"
        bite.daemon = True
        self.timers = [bite]
        bite.start()

    def stop(self) -> None:
        """Cancelled and gone: a test that counts threads sees the same ones from its
        start to its end (a cancelled timer once ended during one, failing it)."""
        for timer in self.timers:
            timer.cancel()
        for timer in self.timers:
            if timer is not threading.current_thread():
                timer.join()

    def _bite(self, nodeid: str) -> None:
        me = os.getpid()
        pids = descendants(me)
        self.record = record = "\n".join([
            f"{nodeid} still ran after {LIMIT:.0f} s; what it waited on was killed.",
            f"processes (this one first):\n{_describe(me)}",
            *(_describe(pid) for pid in pids),
            f"stacks:\n{_stacks()}"])
        _kill(pids)
        last = threading.Timer(GRACE, self._give_up, (nodeid, record))
        last.name = "hang guard, last"
        last.daemon = True
        self.timers.append(last)
        last.start()

    def _give_up(self, nodeid: str, bitten: str) -> None:
        record = (f"{bitten}\n{nodeid} was still running {GRACE:.0f} s after that:"
                  f" the hang is in the test process; it exits.\nstacks now:\n{_stacks()}")
        HANGS.mkdir(parents=True, exist_ok=True)
        name = f"{os.getpid()}-{nodeid.replace('/', '_').replace('::', '-')[:150]}.txt"
        (HANGS / name).write_text(record)
        _kill(descendants(os.getpid()))
        os._exit(70)


_dog = _Dog()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    _dog.start(item.nodeid)
    try:
        yield
    finally:
        _dog.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[None]:
    outcome = yield
    record, _dog.record = _dog.record, None
    if record is None:
        return
    report = outcome.get_result()
    then = f"\n\nthe test then ended with:\n{report.longrepr}" if report.longrepr else ""
    report.outcome = "failed"
    report.longrepr = record + then
