"""The worker pool renc encrypts with (vaultpy/_internal/forkpool.py): real forks,
real pipes, real SIGKILLs."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from vaultpy._internal import forkpool, sigint


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)             # an unreaped (zombie) child still answers
    except ProcessLookupError:
        return False
    return True


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _collect(n: int, workers: int, work, **kw) -> dict[int, object]:
    got: dict[int, object] = {}

    def deliver(i: int, result: object) -> None:
        assert i not in got, f"job {i} delivered twice"
        got[i] = result

    forkpool.run(n, workers, work, deliver, **kw)
    return got


def test_every_job_runs_once_in_a_worker_even_past_a_pipe_s_capacity():
    """20,000 job numbers are 80 KB: more than a pipe holds (64 KiB), so the parent
    feeds them as the workers take them."""
    before = _fds()
    got = _collect(20_000, 2, lambda i: (i * i, os.getpid()))
    assert sorted(got) == list(range(20_000))
    assert all(got[i][0] == i * i for i in got)                 # type: ignore[index]
    pids = {got[i][1] for i in got}                             # type: ignore[index]
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    assert not any(_alive(p) for p in pids)                     # reaped
    assert _fds() == before


def test_init_runs_in_each_worker_before_its_jobs():
    state: list[str] = []
    got = _collect(8, 2, lambda i: list(state), init=lambda: state.append("ready"))
    assert all(v == ["ready"] for v in got.values())
    assert state == []                                          # not in the parent


def test_no_jobs_fork_nothing():
    before = _fds()
    assert _collect(0, 4, lambda i: i) == {}
    assert _fds() == before


def test_a_job_that_raises_fails_alone():
    def work(i: int) -> int:
        if i == 3:
            raise ValueError("bad input")
        return i
    got = _collect(10, 2, work)
    assert got.pop(3) == forkpool.Failed("it raised ValueError: bad input")
    assert got == {i: i for i in range(10) if i != 3}


def test_a_worker_killed_mid_job_loses_only_that_job():
    def work(i: int) -> int:
        if i == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.005)
        return i
    got = _collect(40, 2, work)
    assert got.pop(5) == forkpool.Failed("its worker was killed by SIGKILL")
    assert got == {i: i for i in range(40) if i != 5}           # the other took the rest


def test_when_every_worker_dies_every_job_is_still_answered():
    got = _collect(10, 2, lambda i: os.kill(os.getpid(), signal.SIGKILL))
    assert sorted(got) == list(range(10))
    assert set(got.values()) == {forkpool.Failed("its worker was killed by SIGKILL")}


@pytest.fixture
def deadline():
    """A run that hangs fails the test (TimeoutError) instead of the suite."""
    def expired(_signum: int, _frame: object) -> None:
        raise TimeoutError("forkpool.run hung")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, 20)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("how", ["killed", "failed init"])
def test_when_every_worker_dies_with_jobs_not_fed_yet_the_run_ends(deadline, how):
    """20,000 job numbers do not fit in the pipe: once the last worker is gone nobody
    takes them, and the parent must not wait to feed the rest."""
    before = _fds()
    if how == "killed":
        got = _collect(20_000, 2, lambda i: os.kill(os.getpid(), signal.SIGKILL))
        reason = "its worker was killed by SIGKILL"
    else:
        got = _collect(20_000, 2, lambda i: i, init=lambda: os._exit(1))
        reason = "its worker exited with status 1"
    assert sorted(got) == list(range(20_000))
    assert set(got.values()) == {forkpool.Failed(reason)}
    assert _fds() == before


@pytest.mark.parametrize("fails", [1, 2])
def test_a_fork_that_fails_leaks_nothing(monkeypatch, fails):
    """fork() can fail (EAGAIN: the process limit; ENOMEM).  The second worker's
    failure leaves the run to the first; the first's fails the run.  Either way the
    pipe made for it is closed."""
    real_fork, calls = os.fork, []

    def fork() -> int:
        calls.append(1)
        if len(calls) == fails:
            raise BlockingIOError(11, "Resource temporarily unavailable")
        return real_fork()

    monkeypatch.setattr(os, "fork", fork)
    before = _fds()
    if fails == 1:
        with pytest.raises(forkpool.NoWorker) as raised:
            _collect(10, 2, lambda i: i)
        assert raised.value.errno == 11
    else:
        got = _collect(10, 2, lambda i: (i, os.getpid()))
        assert sorted(got) == list(range(10))
        pids = {got[i][1] for i in got}                         # type: ignore[index]
        assert len(pids) == 1 and not any(_alive(p) for p in pids)
    assert _fds() == before


def test_a_result_that_cannot_be_sent_fails_its_job_alone():
    got = _collect(6, 2, lambda i: (lambda: i) if i == 1 else i)     # a lambda: no pickle
    failed = got.pop(1)
    assert isinstance(failed, forkpool.Failed)
    assert failed.reason.startswith("its result could not be sent: ")
    assert got == {i: i for i in range(6) if i != 1}


def test_a_job_number_cut_short_ends_the_worker():
    r, w = os.pipe()
    os.write(w, bytes([7, 0, 0, 0, 9, 0]))
    os.close(w)
    try:
        assert forkpool._take(r) == 7
        assert forkpool._take(r) is None          # two bytes, then the end
    finally:
        os.close(r)


def test_a_worker_that_exits_is_reported_with_its_status():
    got = _collect(3, 1, lambda i: os._exit(3))
    assert set(got.values()) == {forkpool.Failed("its worker exited with status 3")}


def test_a_failing_init_fails_the_jobs_instead_of_running_them(tmp_path: Path):
    ran = tmp_path / "ran"

    def init() -> None:
        raise RuntimeError("no keys")

    got = _collect(4, 2, lambda i: ran.touch(), init=init)
    assert not ran.exists()
    assert set(got.values()) == {forkpool.Failed("its worker exited with status 1")}


def _recording(log: Path):
    def record(i: int) -> int:
        with open(log, "a") as f:       # one short append per job: whole lines
            f.write(f"{i} {os.getpid()}\n")
        time.sleep(0.02)
        return i
    return record


def _ran(log: Path) -> list[tuple[int, int]]:
    return [(int(i), int(pid)) for i, pid in (ln.split() for ln in log.read_text().splitlines())]


@pytest.mark.parametrize("stop", [OSError("disk full"), KeyboardInterrupt()])
def test_when_deliver_raises_the_jobs_not_taken_are_withdrawn(tmp_path: Path, stop):
    """Each job that ran is delivered or abandoned (the one whose delivery was cut
    short too); the jobs no worker had taken never run; no worker is left."""
    before = _fds()
    log = tmp_path / "ran"
    delivered: list[int] = []
    abandoned: list[int] = []

    def deliver(i: int, result: object) -> None:
        if len(delivered) == 3:
            raise stop
        delivered.append(i)

    with pytest.raises(type(stop)):
        forkpool.run(200, 2, _recording(log), deliver, abandon=abandoned.append)
    ran = _ran(log)
    assert len(ran) < 50, ran           # 20 ms each: the workers held a few at most
    assert sorted(delivered + abandoned) == sorted(i for i, _pid in ran)
    assert not any(_alive(pid) for _i, pid in ran)
    assert _fds() == before


def test_ctrl_c_in_a_job_stops_the_run_here(tmp_path: Path):
    """A worker's KeyboardInterrupt (renc's workers raise it at their next job once
    Ctrl-C came) is raised here, after the clean-up."""
    log = tmp_path / "ran"
    record = _recording(log)
    delivered: list[int] = []
    abandoned: list[int] = []

    def work(i: int) -> int:
        if i == 2:
            raise KeyboardInterrupt
        return record(i)

    with pytest.raises(KeyboardInterrupt):
        forkpool.run(200, 2, work, lambda i, r: delivered.append(i),
                     abandon=abandoned.append)
    ran = _ran(log)
    assert len(ran) < 50, ran
    assert sorted(delivered + abandoned) == sorted(i for i, _pid in ran)
    assert not any(_alive(pid) for _i, pid in ran)


@pytest.mark.parametrize("step", ["read", "_frames"])
def test_ctrl_c_as_results_are_read_loses_none(tmp_path: Path, monkeypatch, step):
    """A Ctrl-C handled (as CPython does) as the parent's ``read`` of a worker's pipe
    returns, or as whole results come out of that worker's buffer (``_frames``), before
    the parent holds them: each result is still delivered or abandoned, or its job's
    files would stay (renc: temp files left behind; ``_frames`` found by
    tests/test_ctrl_c_everywhere.py)."""
    log = tmp_path / "ran"
    delivered: list[int] = []
    abandoned: list[int] = []
    owner = os if step == "read" else forkpool
    parent, real, pressed = os.getpid(), getattr(owner, step), []

    def returns_then_ctrl_c(*args: object) -> object:
        out = real(*args)
        if os.getpid() == parent and out and not pressed:
            pressed.append(step)
            os.kill(parent, signal.SIGINT)      # the terminal's Ctrl-C, right now
        return out

    monkeypatch.setattr(owner, step, returns_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt), sigint.caught():
        forkpool.run(200, 2, _recording(log), lambda i, r: delivered.append(i),
                     abandon=abandoned.append)
    assert pressed
    ran = _ran(log)
    assert sorted(delivered + abandoned) == sorted(i for i, _pid in ran)
    assert not any(_alive(pid) for _i, pid in ran)


@pytest.mark.parametrize("when", ["the job pipe is closed", "the run's pipes are closed"])
def test_ctrl_c_as_the_parent_closes_a_pipe(tmp_path: Path, monkeypatch, when):
    """A Ctrl-C handled as close() returns: the descriptor closed must be known as
    closed (or _stop closes it again: EBADF, and the clean-up stops there), and the
    rest must still be closed (in a library caller's process they would leak)."""
    log = tmp_path / "ran"
    delivered: list[int] = []
    abandoned: list[int] = []
    parent, pressed = os.getpid(), []
    real_pipe, real_close, real_set_blocking = os.pipe, os.close, os.set_blocking
    fds: dict[str, int] = {}

    def pipe() -> tuple[int, int]:
        r, w = real_pipe()
        fds.setdefault("jobs_r", r)
        return r, w

    def set_blocking(fd: int, blocking: bool) -> None:
        fds.setdefault("jobs_w", fd)
        real_set_blocking(fd, blocking)

    def close(fd: int) -> None:
        real_close(fd)
        target = fds.get("jobs_w" if when == "the job pipe is closed" else "jobs_r")
        if os.getpid() == parent and fd == target and not pressed:
            pressed.append(fd)
            os.kill(parent, signal.SIGINT)      # the terminal's Ctrl-C, right now

    monkeypatch.setattr(os, "pipe", pipe)
    monkeypatch.setattr(os, "set_blocking", set_blocking)
    monkeypatch.setattr(os, "close", close)
    before = _fds()
    with pytest.raises(KeyboardInterrupt), sigint.caught():
        forkpool.run(20, 2, _recording(log), lambda i, r: delivered.append(i),
                     abandon=abandoned.append)
    assert pressed
    ran = _ran(log) if log.exists() else []     # (withdrawn before any was taken)
    assert sorted(delivered + abandoned) == sorted(i for i, _pid in ran)
    assert not any(_alive(pid) for _i, pid in ran)
    assert _fds() == before


_ESCAPE = r"""
import os, signal, sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[1])
from vaultpy._internal import forkpool

parent, real_fork, forks = os.getpid(), os.fork, []

def fork():
    pid = real_fork()
    forks.append(pid)
    if pid == 0 and len(forks) == 1:        # a Ctrl-C reaches the new worker at once
        os.kill(os.getpid(), signal.SIGINT)
    return pid

os.fork = fork
got = {}
try:
    forkpool.run(10, 2, lambda i: i, got.__setitem__)
finally:
    if os.getpid() != parent:
        print("a worker ran the caller's code", flush=True)
print(sorted(got))
"""


def test_a_ctrl_c_before_the_worker_s_own_handler_stays_in_the_worker():
    """Outside renc's policy (forkpool.run called as it is; renc from a thread other
    than the main one, whose policy then is no handler) a Ctrl-C reaching a worker as
    it is forked must not raise KeyboardInterrupt in the caller's code, in the child:
    that would run the caller's clean-up there (renc's: removing the parent's temp
    files) and take the parent's job numbers from the pipe."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", _ESCAPE, root], capture_output=True,
                          timeout=60)
    out = proc.stdout.decode()
    assert "caller's code" not in out, (out, proc.stderr.decode())
    assert out.splitlines()[-1] == str(list(range(10))), out
    assert proc.returncode == 0, proc.stderr.decode()


_STREAMS = r"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[1])
from vaultpy._internal import forkpool

sys.stdout.write("before the pool;")        # a pipe: block-buffered, not written yet

def work(i):
    print(f"job {i}", flush=i == 0)         # a worker's own output, flushed or not
    return i

forkpool.run(4, 2, work, lambda i, r: None)
print("after the pool")
"""


def test_each_line_written_once_and_none_lost():
    """As multiprocessing did: what the parent had buffered is written before the fork
    (or a worker that flushes writes it again), and what a worker buffered is written
    before it exits (os._exit flushes nothing)."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    proc = subprocess.run([sys.executable, "-c", _STREAMS, root], capture_output=True,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert out.count("before the pool;") == 1, out
    assert sorted(ln for ln in out.split("before the pool;")[1].splitlines()
                  if ln.startswith("job ")) == [f"job {i}" for i in range(4)], out
    assert out.endswith("after the pool\n"), out


_STDIN = r"""
import sys, time
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path.insert(0, sys.argv[1])
from vaultpy._internal import forkpool

first = sys.stdin.readline()        # buffers the lines after it, here

def work(i):
    time.sleep(0.2)                 # one job per worker
    return sys.stdin.readline()

got = {}
forkpool.run(2, 2, work, got.__setitem__)
print(repr(first), repr(got[0]), repr(got[1]), repr(sys.stdin.readline()))
"""


def test_workers_read_no_stdin():
    """As multiprocessing's workers: stdin is the parent's.  A worker reading it would
    read the parent's buffered copy, each worker the same lines (renc: the same answer
    read from stdin for two plugins' questions, a wrong PIN to a hardware key)."""
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parent.parent)
    proc = subprocess.run([sys.executable, "-c", _STDIN, root], capture_output=True,
                          input=b"one\ntwo\nthree\n", timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode() == "'one\\n' '' '' 'two\\n'\n"
