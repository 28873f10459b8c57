"""Replica policy as pure functions: prompt fingerprints, prefix-aware choice, the
autoscaler's decisions over a window, CPU sets."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from localserve.scheduling.replicas import (
    BLOCK_CHARS,
    PrefixMemory,
    QueueWindow,
    ScalePolicy,
    choose_replica,
    cpu_sets,
    prompt_blocks,
    scale_decision,
)


@dataclass
class FakeReplica:
    name: str
    in_flight: int = 0
    prefixes: PrefixMemory = field(default_factory=PrefixMemory)


SYSTEM = "You are a careful assistant. " * 40  # 1,160 characters: four whole blocks


def test_prompts_share_leading_blocks_exactly_while_their_text_agrees() -> None:
    first = prompt_blocks(SYSTEM + "user: hello")
    second = prompt_blocks(SYSTEM + "user: something else entirely, and longer" * 10)
    assert len(first) == len(SYSTEM + "user: hello") // BLOCK_CHARS
    assert first == second[: len(first)]
    changed = prompt_blocks("X" + SYSTEM[1:] + "user: hello")
    assert not set(changed) & set(first)  # chained: a change early changes every block


@given(st.text(max_size=2000), st.text(max_size=2000))
def test_shared_blocks_never_exceed_the_common_prefix(a: str, b: str) -> None:
    memory = PrefixMemory()
    memory.remember(prompt_blocks(a))
    common = 0
    while common < min(len(a), len(b)) and a[common] == b[common]:
        common += 1
    shared = memory.shared(prompt_blocks(b))
    assert shared * BLOCK_CHARS <= common
    # ... and the count is exact in whole blocks of the common prefix (within MAX_BLOCKS)
    assert shared == min(common // BLOCK_CHARS, len(prompt_blocks(a)), len(prompt_blocks(b)))


def test_a_request_goes_to_the_replica_holding_its_prompt_prefix() -> None:
    warm, cold = FakeReplica("warm", in_flight=3), FakeReplica("cold")
    warm.prefixes.remember(prompt_blocks(SYSTEM + "user: first question"))
    chosen = choose_replica([cold, warm], prompt_blocks(SYSTEM + "user: follow-up"))
    assert chosen is warm  # busier, but it holds the shared system prompt


def test_without_a_shared_prefix_the_least_busy_replica_is_chosen() -> None:
    busy, idle, idle_too = FakeReplica("busy", 2), FakeReplica("idle"), FakeReplica("idle2")
    assert choose_replica([busy, idle, idle_too], prompt_blocks("short")) is idle
    assert choose_replica([busy, idle_too, idle], prompt_blocks(SYSTEM)) is idle_too


def test_prefix_memory_forgets_least_recently_used_blocks() -> None:
    memory = PrefixMemory(capacity=4)
    old, new = prompt_blocks("a" * 4 * BLOCK_CHARS), prompt_blocks("b" * 4 * BLOCK_CHARS)
    memory.remember(old)
    memory.remember(new)
    assert memory.shared(new) == 4 and memory.shared(old) == 0


def test_choose_replica_refuses_an_empty_list() -> None:
    with pytest.raises(ValueError):
        choose_replica([], ())


def test_scale_up_when_requests_wait_longer_than_the_threshold() -> None:
    policy = ScalePolicy(max_replicas=3, wait_threshold_s=2.0, queue_threshold=100)
    window = QueueWindow(policy.window_s)
    for second in range(5):
        window.record_wait(float(second), 3.5)
    decision = scale_decision(policy, window, replicas=1, waiting=2, now=5.0)
    assert decision.add and "waited 3.5 s" in decision.reason


def test_scale_up_when_the_queue_is_deep() -> None:
    policy = ScalePolicy(max_replicas=2, queue_threshold=4)
    window = QueueWindow(policy.window_s)
    window.record_depth(1.0, 5)
    decision = scale_decision(policy, window, replicas=1, waiting=1, now=2.0)
    assert decision.add and "5 requests waiting" in decision.reason


@pytest.mark.parametrize(
    ("replicas", "waiting", "now", "why"),
    [
        (2, 5, 100.0, "at max_replicas"),
        (1, 0, 100.0, "nothing is waiting"),
        (1, 5, 10.0, "cooling down"),
    ],
)
def test_no_scale_up(replicas: int, waiting: int, now: float, why: str) -> None:
    policy = ScalePolicy(max_replicas=2, queue_threshold=1, cooldown_s=30.0)
    window = QueueWindow(policy.window_s)
    window.last_scale_up = 0.0
    window.record_wait(now, 60.0)
    decision = scale_decision(policy, window, replicas, waiting, now)
    assert not decision.add and why in decision.reason


def test_old_waits_leave_the_window() -> None:
    policy = ScalePolicy(max_replicas=2, wait_threshold_s=1.0, queue_threshold=100)
    window = QueueWindow(window_s=10.0)
    window.record_wait(0.0, 30.0)
    assert scale_decision(policy, window, 1, 1, now=5.0).add
    assert not scale_decision(policy, window, 1, 1, now=20.0).add


def test_min_replicas_is_kept() -> None:
    policy = ScalePolicy(min_replicas=2, max_replicas=3)
    decision = scale_decision(policy, QueueWindow(30.0), replicas=1, waiting=0, now=0.0)
    assert decision.add and "min_replicas" in decision.reason


@pytest.mark.parametrize(("low", "high"), [(-1, 2), (0, 0), (3, 2)])
def test_bad_replica_bounds_are_refused(low: int, high: int) -> None:
    with pytest.raises(ValueError):
        ScalePolicy(min_replicas=low, max_replicas=high)


@pytest.mark.parametrize(
    ("cpus", "replicas", "expected"),
    [
        ([0, 1], 2, [(0,), (1,)]),
        ([0, 1, 2, 3, 4], 2, [(0, 1, 2), (3, 4)]),
        ([0], 2, [(0,), (0,)]),
        ([0, 1, 2, 3], 1, [(0, 1, 2, 3)]),
    ],
)
def test_cpu_sets_split_the_cpus(
    cpus: list[int], replicas: int, expected: list[tuple[int, ...]]
) -> None:
    assert cpu_sets(cpus, replicas) == expected
