"""Where a run's time went: named phases, each with its wall time and the CPU time
spent meanwhile by this process and the worker processes it reaped (``renc
--timings``).  Taking a phase costs two clock reads and two ``getrusage`` calls."""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Iterator

from vaultpy._internal.record import record


@record
class Phase:
    name: str
    wall: float         # seconds
    cpu: float          # seconds: user + system, this process and children it reaped


def _cpu() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class Clock:
    """Phases in the order they ended.  A phase that runs twice (a first run's survey
    taken again under the lock) is listed twice: the table shows what happened."""

    def __init__(self) -> None:
        self.phases: list[Phase] = []
        self._wall, self._cpu = time.perf_counter(), _cpu()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), _cpu()
        try:
            yield
        finally:
            self.phases.append(Phase(name, time.perf_counter() - wall, _cpu() - cpu))

    def total(self) -> Phase:
        """Everything since the clock started, phases or not."""
        return Phase("total", time.perf_counter() - self._wall, _cpu() - self._cpu)


def table(phases: list[Phase], total: Phase) -> str:
    """Milliseconds, aligned, with the time no phase accounts for as ``other``."""
    other = Phase("other", max(0.0, total.wall - sum(p.wall for p in phases)),
                  max(0.0, total.cpu - sum(p.cpu for p in phases)))
    rows = [(p.name, f"{p.wall * 1000:.1f}", f"{p.cpu * 1000:.1f}")
            for p in (*phases, other, total)]
    rows.insert(0, ("phase", "wall ms", "CPU ms"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(f"{n:<{widths[0]}}  {w:>{widths[1]}}  {c:>{widths[2]}}"
                     for n, w, c in rows)


def as_list(phases: list[Phase], total: Phase) -> list[dict[str, object]]:
    return [{"phase": p.name, "wall_s": round(p.wall, 6), "cpu_s": round(p.cpu, 6)}
            for p in (*phases, total)]
