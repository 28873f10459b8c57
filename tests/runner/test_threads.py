"""The thread policy (localserve.runner.threads): how many llama.cpp threads to decode with
while other processes use cores. The governor proposes from the load that the CPU sampler
measures; the policy decides from measured decode steps (a fake clock and fake steps here;
tests/runner/test_runner.py runs it next to really busy processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from localserve.runner.threads import (
    TRIAL_CLEAR_AFTER,
    TRIAL_SAMPLES,
    CpuSampler,
    ThreadGovernor,
    ThreadPolicy,
)

SPIN = "import time\nend = time.time() + 30\nwhile time.time() < end: pass\n"


def test_a_busy_core_takes_a_thread_and_gives_it_back_once_free() -> None:
    governor = ThreadGovernor(max_threads=2, cores=2)
    seen = [governor.update(load) for load in (0.1, 0.5, 0.7, 0.9, 0.5, 0.45, 0.35, 0.1)]
    # 0.5 of a core is not enough to give one up; 0.7 is; it comes back only below 0.4.
    assert seen == [2, 2, 1, 1, 1, 1, 2, 2]


def test_threads_follow_the_free_cores_on_a_big_machine() -> None:
    governor = ThreadGovernor(max_threads=8, cores=16)
    seen = [governor.update(load) for load in (1.0, 8.0, 8.7, 12.0, 15.9, 20.0, 3.0)]
    assert seen == [8, 8, 7, 4, 1, 1, 8]


@pytest.mark.parametrize("load", [0.0, 0.3, 1.0, 5.0, 100.0])
def test_never_more_than_configured_nor_fewer_than_one(load: float) -> None:
    for cores in (1, 2, 4):
        for max_threads in (1, 2, 8):
            threads = ThreadGovernor(max_threads, cores).update(load)
            assert 1 <= threads <= max_threads


@pytest.mark.cpu_heavy
def test_the_sampler_sees_another_busy_process_but_not_this_one() -> None:
    sampler = CpuSampler()
    assert sampler.other_cores() is None  # the first call only sets the baseline
    spinner = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(1.0)
        sampler.other_cores()  # from here on the other process is surely spinning
        time.sleep(1.0)
        other = sampler.other_cores()
    finally:
        spinner.kill()
        spinner.wait()
    assert other is not None and other >= 0.5
    # This process spinning is not "other" load.
    sampler.other_cores()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        pass
    own = sampler.other_cores()
    assert own is not None and own < other


# ---- the policy: proposals from the load, decisions from measured steps --------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Step:
    decode_s: float
    sequences: int = 4
    tokens: int = 4
    prompt_tokens: int = 0


def run_steps(
    policy: ThreadPolicy, clock: FakeClock, step_s: dict[int, float], count: int
) -> list[int]:
    """`count` generation steps, each taking `step_s[threads]`; the threads of each."""
    used = []
    for _ in range(count):
        threads = policy.next_threads()
        used.append(threads)
        clock.now += step_s[threads]
        policy.observe(Step(step_s[threads]))
    return used


def test_a_busy_looking_machine_takes_threads_only_when_fewer_decode_faster() -> None:
    """A client reading the streams uses most of a core, but two threads still decode
    faster than one: the proposal of one thread is tried and rejected."""
    clock = FakeClock()
    policy = ThreadPolicy(max_threads=2, cores=2, clock=clock)
    run_steps(policy, clock, {2: 0.010, 1: 0.018}, 5)
    policy.reading(0.9)
    assert policy.proposed == 1
    used = run_steps(policy, clock, {2: 0.010, 1: 0.018}, 40)
    assert 1 in used  # the trial ran...
    assert used[-10:] == [2] * 10  # ...and two threads stayed
    assert policy.chosen == 2


def test_a_truly_busy_machine_takes_threads_after_a_trial() -> None:
    clock = FakeClock()
    policy = ThreadPolicy(max_threads=2, cores=2, clock=clock)
    run_steps(policy, clock, {2: 0.010, 1: 0.018}, 5)
    policy.reading(1.0)
    used = run_steps(policy, clock, {2: 0.060, 1: 0.015}, 40)
    assert used[-10:] == [1] * 10
    assert policy.chosen == 1
    # Once the others stop, the cores are taken back at once (no trial needed).
    policy.reading(0.0)
    assert run_steps(policy, clock, {2: 0.010, 1: 0.018}, 1) == [2]


def test_a_rejected_proposal_is_tried_again_later_or_when_the_load_grows() -> None:
    clock = FakeClock()
    policy = ThreadPolicy(max_threads=2, cores=2, clock=clock)
    fast_with_two = {2: 0.010, 1: 0.018}
    run_steps(policy, clock, fast_with_two, 5)
    policy.reading(0.9)
    run_steps(policy, clock, fast_with_two, 40)
    assert policy.chosen == 2
    # Within the retry delay, the same load proposes the same count: no new trial.
    assert set(run_steps(policy, clock, fast_with_two, 50)) == {2}
    # A truly busy program joins (another core's worth of load): tried again at once.
    policy.reading(1.9)
    used = run_steps(policy, clock, {2: 0.080, 1: 0.015}, 40)
    assert used[-10:] == [1] * 10


def test_after_an_idle_spell_the_steps_use_the_proposal_of_the_moment_untried() -> None:
    """Idle, the load is others' own (a client reading the streams is quiet too)."""
    clock = FakeClock()
    policy = ThreadPolicy(max_threads=2, cores=2, clock=clock)
    policy.reading(1.0)  # others busy while the runner idles
    clock.now += 5.0
    assert run_steps(policy, clock, {2: 0.060, 1: 0.015}, 50) == [1] * 50
    policy.reading(0.0)  # and quiet again during the next idle spell
    clock.now += 5.0
    assert run_steps(policy, clock, {2: 0.010, 1: 0.018}, 5) == [2] * 5


def test_a_clearly_slower_count_loses_after_a_block_a_close_call_takes_longer() -> None:
    clock = FakeClock()
    policy = ThreadPolicy(max_threads=2, cores=2, clock=clock)
    run_steps(policy, clock, {2: 0.010, 1: 0.018}, 5)
    policy.reading(0.9)
    used = run_steps(policy, clock, {2: 0.010, 1: 0.030}, 20)
    assert used.count(1) == TRIAL_CLEAR_AFTER  # three times slower: dropped at once
    # Once the retry delay is over it is tried again: a close call, settled by more steps.
    assert set(run_steps(policy, clock, {2: 0.010, 1: 0.011}, 50)) == {2}
    used = run_steps(policy, clock, {2: 0.010, 1: 0.011}, 100)
    assert used.count(1) == TRIAL_SAMPLES
    assert policy.chosen == 2


def test_steps_that_read_prompts_or_change_shape_are_not_compared() -> None:
    clock = FakeClock()
    policy = ThreadPolicy(max_threads=2, cores=2, clock=clock)
    run_steps(policy, clock, {2: 0.010, 1: 0.018}, 5)
    policy.next_threads()
    policy.observe(Step(0.05, prompt_tokens=64, tokens=64))  # a prompt arrives
    policy.reading(1.0)
    for _ in range(40):  # prompt reads only: no trial, nothing decided
        assert policy.next_threads() == 2
        clock.now += 0.05
        policy.observe(Step(0.05, prompt_tokens=64, tokens=64))
    assert policy.chosen == 2
    # Generation steps of changing shapes (sequences joining): not compared either.
    for sequences in range(1, 41):
        policy.next_threads()
        clock.now += 0.05
        policy.observe(Step(0.05, sequences=sequences, tokens=sequences))
    assert policy.chosen == 2
