"""Replicas of one model, as pure policy: which replica a request goes to, and when the
scheduler should add or remove one. The scheduler owns every decision; it asks here.

Routing: each replica remembers fingerprints of the prompts it served recently (hashes
of the prompt text's leading blocks, `prompt_blocks`), so a request goes to the replica
that holds the longest prefix of its prompt (its KV cache is still there: a continuing
chat reads only its new tokens), else to the least busy one.

Autoscaling: the scheduler records how long each granted request waited and how many
were waiting (`QueueWindow`); `scale_decision` asks for a replica while requests waited
longer than the threshold over the window and fewer than `max_replicas` run. A replica
idle for its keep-alive goes away as any model does (scale to zero is the keep-alive);
`min_replicas` keeps some.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

BLOCK_CHARS = 256  # a prompt's fingerprint: one hash per this many leading characters
MAX_BLOCKS = 64  # of one prompt (prefixes past 16 K characters count as equal)
REMEMBERED_BLOCKS = 4096  # per replica, least recently used forgotten first


def prompt_blocks(prompt: str) -> tuple[str, ...]:
    """Chained hashes of the prompt's whole leading blocks: two prompts share the first k
    entries exactly when they share their first k * BLOCK_CHARS characters."""
    digests: list[str] = []
    running = hashlib.blake2b(digest_size=12)
    whole = min(len(prompt) // BLOCK_CHARS, MAX_BLOCKS)
    for index in range(whole):
        running.update(prompt[index * BLOCK_CHARS : (index + 1) * BLOCK_CHARS].encode())
        digests.append(running.copy().hexdigest())
    return tuple(digests)


@dataclass
class PrefixMemory:
    """The prompt blocks one replica served lately (bounded, least recently used out)."""

    capacity: int = REMEMBERED_BLOCKS
    _blocks: OrderedDict[str, None] = field(default_factory=OrderedDict)

    def remember(self, blocks: Sequence[str]) -> None:
        for block in blocks:
            self._blocks[block] = None
            self._blocks.move_to_end(block)
        while len(self._blocks) > self.capacity:
            self._blocks.popitem(last=False)

    def shared(self, blocks: Sequence[str]) -> int:
        """How many leading blocks of a prompt this replica holds."""
        count = 0
        for block in blocks:
            if block not in self._blocks:
                break
            count += 1
        return count


class Replica(Protocol):
    @property
    def in_flight(self) -> int: ...

    @property
    def prefixes(self) -> PrefixMemory: ...


R = TypeVar("R", bound=Replica)


def choose_replica(replicas: Sequence[R], blocks: Sequence[str]) -> R:
    """The replica holding the longest prefix of the prompt; among equals (or when none
    holds any), the least busy; then the first."""
    if not replicas:
        raise ValueError("no replica to choose from")
    return max(
        enumerate(replicas),
        key=lambda item: (item[1].prefixes.shared(blocks), -item[1].in_flight, -item[0]),
    )[1]


@dataclass(frozen=True)
class ScalePolicy:
    """When to add a replica: requests waited over `wait_threshold_s` (the median over
    `window_s`) or `queue_threshold` requests were waiting, with fewer than
    `max_replicas` running; `cooldown_s` between two scale-ups of one model."""

    min_replicas: int = 1
    max_replicas: int = 1
    wait_threshold_s: float = 2.0
    queue_threshold: int = 4
    window_s: float = 30.0
    cooldown_s: float = 30.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1:
            raise ValueError("min_replicas must be >= 0 and max_replicas >= 1")
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")


@dataclass
class QueueWindow:
    """Recent waits and queue depths of one model, over a sliding window."""

    window_s: float
    waits: deque[tuple[float, float]] = field(default_factory=deque)  # (when, seconds)
    depths: deque[tuple[float, int]] = field(default_factory=deque)
    last_scale_up: float = float("-inf")

    def record_wait(self, now: float, waited_s: float) -> None:
        self.waits.append((now, waited_s))
        self._trim(now)

    def record_depth(self, now: float, depth: int) -> None:
        self.depths.append((now, depth))
        self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.window_s
        while self.waits and self.waits[0][0] < horizon:
            self.waits.popleft()
        while self.depths and self.depths[0][0] < horizon:
            self.depths.popleft()

    def median_wait(self, now: float) -> float:
        self._trim(now)
        if not self.waits:
            return 0.0
        ordered = sorted(w for _, w in self.waits)
        return ordered[len(ordered) // 2]

    def peak_depth(self, now: float) -> int:
        self._trim(now)
        return max((d for _, d in self.depths), default=0)


@dataclass(frozen=True)
class ScaleDecision:
    add: bool
    reason: str


def scale_decision(
    policy: ScalePolicy, window: QueueWindow, replicas: int, waiting: int, now: float
) -> ScaleDecision:
    """Whether to add a replica now, and why (or why not)."""
    if replicas < policy.min_replicas:
        return ScaleDecision(True, f"below min_replicas ({replicas} < {policy.min_replicas})")
    if replicas >= policy.max_replicas:
        return ScaleDecision(False, f"at max_replicas ({policy.max_replicas})")
    if now - window.last_scale_up < policy.cooldown_s:
        return ScaleDecision(False, "cooling down after the last scale-up")
    if waiting == 0:
        return ScaleDecision(False, "nothing is waiting")
    median = window.median_wait(now)
    if median > policy.wait_threshold_s:
        return ScaleDecision(
            True,
            f"requests waited {median:.1f} s (median over {policy.window_s:.0f} s) > "
            f"{policy.wait_threshold_s:.1f} s",
        )
    peak = max(window.peak_depth(now), waiting)
    if peak >= policy.queue_threshold:
        return ScaleDecision(True, f"{peak} requests waiting >= {policy.queue_threshold}")
    return ScaleDecision(False, "waits are under the thresholds")


def cpu_sets(cpus: Sequence[int], replicas: int) -> list[tuple[int, ...]]:
    """Split the CPUs into `replicas` disjoint sets (LOCALSERVE_CPU_REPLICAS): replica i
    gets the i-th set; fewer CPUs than replicas share round-robin."""
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    if not cpus:
        return [() for _ in range(replicas)]
    if len(cpus) < replicas:
        return [(cpus[i % len(cpus)],) for i in range(replicas)]
    size, extra = divmod(len(cpus), replicas)
    sets: list[tuple[int, ...]] = []
    start = 0
    for index in range(replicas):
        end = start + size + (1 if index < extra else 0)
        sets.append(tuple(cpus[start:end]))
        start = end
    return sets
