"""The thread governor (localserve.runner.threads): how many llama.cpp threads to decode with
while other processes use cores, and the CPU sampler that measures that load."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from localserve.runner.threads import CpuSampler, ThreadGovernor

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
