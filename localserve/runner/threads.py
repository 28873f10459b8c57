"""Fewer llama.cpp threads while other programs keep cores busy.

llama.cpp's CPU threads wait for each other at every step of a decode (OpenMP barriers that
spin). When another program holds one of the cores those threads need, a step waits for a
descheduled thread, and decode speed collapses: measured here on 2 cores with SmolLM2, a
2-thread runner fell from ~120 to 30-45 tok/s while one other process was busy, where a
1-thread runner kept ~80. So a runner thread samples the CPU four times a second (also
while the runner idles, so the first step of a new request knows the load of the moment)
and the runner decodes with at most as many threads as there are cores that other
processes leave free, never more than configured and never fewer than one
(`llama_set_n_threads`, applied between decode steps).

`CpuSampler` measures the load of other processes on the CPUs this process may use (its
affinity, e.g. a container's cpuset): all CPU time there minus this process's.
`ThreadGovernor` turns that into a thread count, with hysteresis so it does not flap.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

# A core counts as taken once other processes use this much of it...
TAKE_CORE_AT = 0.6
# ...and as free again once their use falls below this.
FREE_CORE_AT = 0.4
SAMPLE_INTERVAL_S = 0.25


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity: a container's cpuset, `taskset`)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(psutil.cpu_count() or 1))


def _busy_seconds(cpus: list[int]) -> float:
    """CPU seconds all processes have used on `cpus` since boot."""
    per_cpu = psutil.cpu_times(percpu=True)
    busy = 0.0
    for index in cpus:
        if index < len(per_cpu):
            times = per_cpu[index]
            busy += sum(times) - times.idle - getattr(times, "iowait", 0.0)
    return busy


@dataclass
class CpuSampler:
    """Cores' worth of CPU that other processes used, on the CPUs this process may use,
    since the previous sample."""

    process: psutil.Process = field(default_factory=psutil.Process)
    clock: Callable[[], float] = time.monotonic
    cpus: list[int] = field(default_factory=usable_cpus)
    _last: tuple[float, float, float] | None = None

    def _read(self) -> tuple[float, float, float]:
        own = self.process.cpu_times()
        return self.clock(), _busy_seconds(self.cpus), own.user + own.system

    def restart(self) -> None:
        """Forget the previous sample (and re-read the affinity): measure from now."""
        self.cpus = usable_cpus()
        self._last = self._read()

    def other_cores(self) -> float | None:
        """None on the first call (nothing to compare with yet)."""
        now = self._read()
        last, self._last = self._last, now
        if last is None or now[0] <= last[0]:
            return None
        wall = now[0] - last[0]
        others = (now[1] - last[1]) - (now[2] - last[2])
        return max(0.0, others / wall)


@dataclass
class ThreadGovernor:
    """The thread count for the next decodes, from other processes' load in cores.

    A core counts as taken by others once their load passes TAKE_CORE_AT of it; while we
    run below `max_threads`, it counts as taken until their load falls under FREE_CORE_AT.
    """

    max_threads: int
    cores: int
    threads: int = 0

    def __post_init__(self) -> None:
        self.max_threads = max(1, self.max_threads)
        self.threads = self.max_threads

    def update(self, other_cores: float) -> int:
        def fitting(taken: int) -> int:
            return min(self.max_threads, max(1, self.cores - taken))

        fewer = fitting(int(other_cores + 1.0 - TAKE_CORE_AT))
        more = fitting(int(other_cores + 1.0 - FREE_CORE_AT))
        if fewer < self.threads:
            self.threads = fewer
        elif more > self.threads:
            self.threads = more
        return self.threads
