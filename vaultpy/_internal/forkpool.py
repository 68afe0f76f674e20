"""Run numbered jobs in forked worker processes: the small pool renc needs.

Not :class:`concurrent.futures.ProcessPoolExecutor`: its parent side (a manager
thread, a feeder thread, a future and a pickled call per job) cost the parent ~0.3 ms
of CPU per job, ~0.2 s of a 500-secret first run on two cores the workers needed, and
importing it cost ~20 ms.  Here the parent writes job numbers and reads results.

* Jobs are the numbers ``0 .. n-1``.  They go out in that order through one pipe, four
  bytes each: a free worker reads the next one (the caller lists the heaviest first).
* A worker sends each job's result back on a pipe of its own, a pickle with its length
  in front, and calls ``deliver`` in the parent as it arrives.
* A worker that dies (the OOM killer, a signal) loses only the job it held: the other
  workers take the rest, and that job is delivered as :class:`Failed`.
* A job that raises KeyboardInterrupt in its worker (Ctrl-C) stops that worker and
  raises KeyboardInterrupt in the parent.
* When the parent stops early (``deliver`` raised, Ctrl-C), the jobs no worker has
  taken are withdrawn from the pipe, each worker finishes the job it holds, and the
  results nobody will deliver go to ``abandon`` (to remove what they wrote).

Workers exit with :func:`os._exit`: the parent's ``finally`` blocks and exit handlers
never run twice.
"""

from __future__ import annotations

# signal itself imports enum (~6 ms); only these functions of its C module are used.
import _signal  # type: ignore[import-not-found]
import contextlib
import os
import pickle
import selectors
import struct
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

from vaultpy._internal import sigint
from vaultpy._internal.record import mutable_record, record

T = TypeVar("T")

_NUM = struct.Struct("=I")
_CHUNK = 4096                   # PIPE_BUF: a write this size is whole or not at all
_OK, _RAISED, _STOPPED = 0, 1, 2


@record
class Failed:
    """A job that gave no result: its worker died, or it raised."""

    reason: str


class NoWorker(OSError):
    """Not one worker could be forked (EAGAIN, ENOMEM): no job ran."""


@mutable_record
class _Worker:
    pid: int
    fd: int                         # the read end of its result pipe
    buf: bytearray


def run(n: int, workers: int, work: Callable[[int], T],
        deliver: Callable[[int, T | Failed], None], *,
        init: Callable[[], None] = lambda: None,
        abandon: Callable[[T], None] = lambda _result: None) -> None:
    """Run ``work(i)`` for each ``i`` in ``range(n)`` in ``workers`` forked processes
    (each runs ``init`` first) and ``deliver(i, result)`` here, once per job, as results
    arrive."""
    workers = min(workers, n)
    jobs_r, jobs_w = os.pipe()
    pool: list[_Worker] = []
    ready: deque[tuple[int, int, Any]] = deque()    # results read, not yet delivered
    undelivered = set(range(n))
    deaths: list[str] = []
    sel = selectors.DefaultSelector()
    feed = memoryview(b"".join(_NUM.pack(i) for i in range(n)))
    try:
        _flush_std_streams()    # or a worker that flushes writes it again
        with sigint.held():     # a Ctrl-C mid-fork: every worker made is known
            for _ in range(workers):
                res_r, res_w = os.pipe()
                # Signals blocked across the fork: the child must handle none (a
                # KeyboardInterrupt raised into the caller's code, there) before it is
                # in _worker and init has set its handlers; the parent none before it
                # knows the child (outside sigint's policy, held() holds nothing).
                mask = _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
                try:
                    pid = os.fork()
                except OSError as exc:  # EAGAIN, ENOMEM: go on with the workers made
                    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
                    os.close(res_r)
                    os.close(res_w)
                    if not pool:
                        raise NoWorker(exc.errno, exc.strerror) from exc
                    break
                if pid == 0:        # the child
                    _worker(jobs_r, res_w, (res_r, jobs_w), mask, work, init)
                try:
                    os.close(res_w)
                    pool.append(_Worker(pid, res_r, bytearray()))
                    sel.register(res_r, selectors.EVENT_READ)
                finally:
                    _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        os.set_blocking(jobs_w, False)
        feed = _feed(jobs_w, feed)
        if feed:
            sel.register(jobs_w, selectors.EVENT_WRITE)
        else:
            with sigint.held():     # closed and known as closed, together
                jobs_w = _closed(jobs_w)
        live = len(pool)
        # Until the last worker is gone: once it is, nobody reads the job numbers not
        # yet fed (the pipe stays full), and waiting to write them would never end.
        while live:
            for key, _events in sel.select():
                if key.fd == jobs_w:
                    feed = _feed(jobs_w, feed)
                    if not feed:
                        sel.unregister(jobs_w)
                        with sigint.held():
                            jobs_w = _closed(jobs_w)
                    continue
                worker = next(w for w in pool if w.fd == key.fd)
                if _read(worker, deaths):
                    sel.unregister(worker.fd)
                    live -= 1
                with sigint.held():     # out of the buffer and into ``ready`` together
                    ready.extend(_frames(worker))
                while ready:
                    i, status, value = ready[0]
                    if status == _STOPPED:
                        raise KeyboardInterrupt
                    deliver(i, value if status == _OK else Failed(value))
                    undelivered.discard(i)
                    ready.popleft()
        # Every worker is gone: the jobs they held when they died, and any no worker
        # was left to take, have no result.
        reason = "; ".join(dict.fromkeys(deaths)) or "its worker exited early"
        for i in sorted(undelivered):
            deliver(i, Failed(reason))
            undelivered.discard(i)
    except BaseException:
        with sigint.held():
            _stop(jobs_r, jobs_w, pool, ready, undelivered, abandon)
            jobs_w = -1
        raise
    finally:
        with sigint.held():         # a Ctrl-C must not cut the closing short
            sel.close()
            for fd in (jobs_r, jobs_w, *(w.fd for w in pool)):
                if fd >= 0:
                    os.close(fd)
            for w in pool:
                _reap(w)


def _closed(fd: int) -> int:
    os.close(fd)
    return -1


def _feed(fd: int, feed: memoryview) -> memoryview:
    """Write as many whole chunks of job numbers as the pipe takes; the rest."""
    while feed:
        try:
            done = os.write(fd, feed[:_CHUNK])
        except BlockingIOError:
            break
        feed = feed[done:]
    return feed


def _read(w: _Worker, deaths: list[str]) -> bool:
    """Read what ``w`` sent; True at its end (it exited: reaped, a death recorded)."""
    # Held: a Ctrl-C handled as read() returns would drop the bytes read, and with
    # them results that then are neither delivered nor abandoned.
    with sigint.held():
        data = os.read(w.fd, 1 << 16)
        w.buf += data
    if data:
        return False
    status = _reap(w)
    if status:
        deaths.append(status)
    return True


def _frames(w: _Worker) -> list[tuple[int, int, Any]]:
    """The whole results in ``w``'s buffer, taken out of it."""
    out = []
    buf = w.buf
    start = 0
    while len(buf) - start >= _NUM.size:
        (size,) = _NUM.unpack_from(buf, start)
        end = start + _NUM.size + size
        if len(buf) < end:
            break
        out.append(pickle.loads(buf[start + _NUM.size:end]))
        start = end
    del buf[:start]
    return out


def _reap(w: _Worker) -> str:
    """Wait for ``w`` (once); how it ended if not with status 0."""
    if w.pid <= 0:
        return ""
    try:
        _pid, status = os.waitpid(w.pid, 0)
    except ChildProcessError:
        status = 0
    w.pid = 0
    if os.WIFSIGNALED(status):
        import signal

        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"its worker was killed by {name}"
    code = os.waitstatus_to_exitcode(status)
    return f"its worker exited with status {code}" if code else ""


def _stop(jobs_r: int, jobs_w: int, pool: list[_Worker], ready: deque[tuple[int, int, Any]],
          undelivered: set[int], abandon: Callable[[Any], None]) -> None:
    """Withdraw the jobs not taken, let each worker end the one it holds, and hand
    every result not delivered (or cut short while it was) to ``abandon``."""
    if jobs_w >= 0:
        os.close(jobs_w)        # the pipe now ends where the jobs end
    while os.read(jobs_r, 1 << 16):
        pass
    for w in pool:
        while w.pid > 0 and not _read(w, []):
            pass
        ready.extend(_frames(w))
    for i, status, value in ready:
        if status == _OK and i in undelivered:
            abandon(value)


def _worker(jobs: int, out: int, parents: tuple[int, ...], mask: Any,
            work: Callable[[int], T], init: Callable[[], None]) -> NoReturn:
    """In a worker: take job numbers until the pipe ends, send back each result.
    ``parents``: the parent's descriptors to close; ``mask``: the signal mask to restore
    once ``init`` has run (until then every signal waits)."""
    code = 0
    try:
        for fd in parents:
            os.close(fd)
        _no_stdin()
        init()
        _signal.pthread_sigmask(_signal.SIG_SETMASK, mask)
        while (i := _take(jobs)) is not None:
            stop = False
            try:
                msg: tuple[int, int, object] = (i, _OK, work(i))
            except KeyboardInterrupt:
                msg, stop = (i, _STOPPED, None), True
            except Exception as exc:
                msg = (i, _RAISED, f"it raised {type(exc).__name__}: {exc}")
            try:
                frame = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:    # a result that cannot be sent: say why
                frame = pickle.dumps((i, _RAISED, f"its result could not be sent: {exc}"))
            view = memoryview(_NUM.pack(len(frame)) + frame)
            while view:
                view = view[os.write(out, view):]
            if stop:
                break
    except BaseException:
        code = 1
    finally:
        try:
            _flush_std_streams()    # os._exit flushes nothing
        finally:
            os._exit(code)


def _take(jobs: int) -> int | None:
    """In a worker: the next job number; None once the pipe has ended."""
    data = b""
    while len(data) < _NUM.size:
        more = os.read(jobs, _NUM.size - len(data))
        if not more:            # (a number cut short: never seen, they go in whole)
            return None
        data += more
    i: int = _NUM.unpack(data)[0]
    return i


def _no_stdin() -> None:
    """What multiprocessing did in a child: sys.stdin reads nothing (the parent's is a
    copy, with what the parent buffered: each worker would read the same lines)."""
    if sys.stdin is None:
        return
    with contextlib.suppress(OSError, ValueError):
        sys.stdin.close()
    with contextlib.suppress(OSError):
        sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115


def _flush_std_streams() -> None:
    """What multiprocessing did before a fork and as a child exits."""
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:
                stream.flush()
        except (OSError, ValueError):   # closed, a broken pipe
            pass
