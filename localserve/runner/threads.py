"""Fewer llama.cpp threads while that decodes faster: next to a truly busy program.

llama.cpp's CPU threads wait for each other at every step of a decode (barriers that spin).
When another program holds one of the cores those threads need, a step waits for a
descheduled thread, and decode speed collapses: measured here on 2 cores with SmolLM2, a
2-thread runner fell from ~120 to 30-45 tok/s while one other process was busy, where a
1-thread runner kept ~80. But CPU used by others is not always contention: a client on the
same machine reading the streams (and the daemon relaying them) uses most of a core in short
bursts and sleeps in between, and there two threads still decode much faster than one. So
the load of other programs only proposes a thread count, and measured decode steps decide:

- `CpuSampler` measures the load of other processes on the CPUs this process may use (its
  affinity, e.g. a container's cpuset): all CPU time there minus this process's. A runner
  thread samples it four times a second, also while the runner idles.
- `ThreadGovernor` turns that load into a proposal: as many threads as the cores others
  leave free, with hysteresis so it does not flap.
- `ThreadPolicy` decides. Fewer threads than now are taken only after a trial: generation
  steps alternate between the two counts, and steps of the same shape (the same
  sequences, no prompt tokens) are compared by their median decode time; a count
  TRIAL_CLEAR slower loses after TRIAL_CLEAR_AFTER steps each (next to a busy program a
  2-thread step takes several times longer), a close call is settled after TRIAL_SAMPLES
  each, and the other count must be TRIAL_MARGIN faster. A rejected proposal is tried
  again after RETRY_S, doubling up to RETRY_MAX_S, or at once when the load grows by
  another core's worth. More threads are taken back at once when others' load falls.
  After an idle spell the runner starts from the proposal of the moment, untried: a
  client reading the streams goes quiet with them, so the load then is others' own (and
  a prompt read with two threads fighting a busy program is the slowest thing of all).
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

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


# A trial alternates the two counts step by step (so both see the same drift, and another
# runner's own trials alike), starting with the one on trial.
TRIAL_CLEAR_AFTER = 2  # steps per count after which a clear loser loses
TRIAL_CLEAR = 1.5  # ...when this much slower
TRIAL_SAMPLES = 6  # steps per count that settle a close call
TRIAL_MAX_STEPS = 200  # a trial that found too few comparable steps is dropped
TRIAL_MARGIN = 0.05  # the other count must be this much faster to be taken
RETRY_S = 1.0
RETRY_MAX_S = 8.0
RETRY_LOAD_STEP = 1.0  # cores of extra load that make a rejected proposal worth a new trial
IDLE_GAP_S = 0.5  # no step for this long: idle, the next work starts from the proposal


class Step(Protocol):
    """What a decode step did (localserve.runner.engine.StepStats)."""

    @property
    def tokens(self) -> int: ...
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def sequences(self) -> int: ...
    @property
    def decode_s(self) -> float: ...


@dataclass
class _Trial:
    base: int  # the chosen count
    other: int  # the count on trial
    arm: int  # the count of the block under way
    shape: tuple[int, int] | None = None  # (sequences, tokens) of the steps compared
    samples: dict[int, list[float]] = field(default_factory=dict)
    steps: int = 0


@dataclass
class _Rejection:
    at: float  # when the count may be tried again
    wait_s: float
    load: float  # others' load when it lost


class ThreadPolicy:
    """The thread count for each decode step, from proposals (others' load, through a
    ThreadGovernor) and trials (measured decode steps)."""

    def __init__(
        self, max_threads: int, cores: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.governor = ThreadGovernor(max_threads, cores)
        self.max_threads = self.governor.max_threads
        self.clock = clock
        self.chosen = self.max_threads  # the count outside trials
        self.threads = self.max_threads  # the count of the next (or current) step
        self.proposed = self.max_threads
        self.load = 0.0
        self._trial: _Trial | None = None
        self._rejected: dict[int, _Rejection] = {}
        self._last_step = -1e18
        self._generating = False  # the last step decoded generated tokens only
        self.decisions: list[str] = []  # why `chosen` changed, newest last (for the log)

    @property
    def trying(self) -> bool:
        return self._trial is not None

    def reading(self, other_cores: float) -> None:
        """A new sample of other processes' load, in cores."""
        self.load = other_cores
        self.proposed = self.governor.update(other_cores)

    def next_threads(self) -> int:
        """The count for the step about to run."""
        now = self.clock()
        if now - self._last_step > IDLE_GAP_S:
            # After an idle spell the load is others' own (a client reading our streams
            # has gone quiet with them): start from the proposal, no trial needed.
            self._trial = None
            self._generating = False
            if self.proposed != self.chosen:
                self._choose(self.proposed, f"after an idle spell, others use {self.load:.1f}")
            self._last_step = now
        if self._trial is None:
            self._consider(now)
        self.threads = self._trial.arm if self._trial is not None else self.chosen
        return self.threads

    def observe(self, step: Step) -> None:
        """The step that ran with `self.threads`."""
        self._last_step = self.clock()
        self._generating = step.prompt_tokens == 0 and step.tokens > 0
        trial = self._trial
        if trial is None:
            return
        trial.steps += 1
        shape = (step.sequences, step.tokens)
        if self._generating and step.decode_s > 0:
            if trial.shape is None:
                trial.shape = shape
            if shape == trial.shape:
                trial.samples.setdefault(trial.arm, []).append(step.decode_s)
                trial.arm = trial.other if trial.arm == trial.base else trial.base
                self._maybe_decide(trial)
        if self._trial is trial and trial.steps > TRIAL_MAX_STEPS:
            self._trial = None
            self._reject(trial.other, "the trial found too few comparable steps")

    def _consider(self, now: float) -> None:
        proposed = self.proposed
        if proposed > self.chosen:
            self._choose(proposed, f"others' load fell to {self.load:.1f} cores")
        elif proposed < self.chosen and self._generating:  # trials compare generation steps
            rejected = self._rejected.get(proposed)
            if (
                rejected is None
                or now >= rejected.at
                or self.load >= rejected.load + RETRY_LOAD_STEP
            ):
                self._trial = _Trial(base=self.chosen, other=proposed, arm=proposed)

    def _maybe_decide(self, trial: _Trial) -> None:
        """A clear winner after TRIAL_CLEAR_AFTER steps each, a close call by the medians of
        TRIAL_SAMPLES steps each."""
        base_samples = trial.samples.get(trial.base, [])
        other_samples = trial.samples.get(trial.other, [])
        if min(len(base_samples), len(other_samples)) < TRIAL_CLEAR_AFTER:
            return
        base = statistics.median(base_samples)
        other = statistics.median(other_samples)
        clear = other * TRIAL_CLEAR <= base or other >= base * TRIAL_CLEAR
        if not clear and min(len(base_samples), len(other_samples)) < TRIAL_SAMPLES:
            return
        self._trial = None
        why = (
            f"{trial.other} threads decoded a step in {other * 1000:.1f} ms, {trial.base} in "
            f"{base * 1000:.1f} ms (others' load {self.load:.1f} cores)"
        )
        if other < base * (1.0 - TRIAL_MARGIN):
            self._rejected.pop(trial.other, None)
            self._choose(trial.other, why)
        else:
            self._reject(trial.other, why)

    def _reject(self, count: int, why: str) -> None:
        before = self._rejected.get(count)
        wait_s = min(before.wait_s * 2, RETRY_MAX_S) if before is not None else RETRY_S
        self._rejected[count] = _Rejection(self.clock() + wait_s, wait_s, self.load)
        self.decisions.append(f"{self.chosen} threads, not {count}: {why}")

    def _choose(self, count: int, why: str) -> None:
        self.chosen = count
        self.decisions.append(f"{count} threads: {why}")
