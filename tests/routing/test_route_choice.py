"""The weighted choice: shares follow the weights (statistically, seeded), a key always
lands on the same version, and raising a candidate's weight only moves keys to it."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from localserve.routing.choose import choose, pick_at, sticky_point
from localserve.routing.table import Target

ROOT = Path(__file__).resolve().parents[2]
SPLIT = [Target("a:v1", 90), Target("b:v2", 10)]


def test_unkeyed_requests_split_by_weight() -> None:
    rng = random.Random(1234)
    counts = Counter(choose(SPLIT, None, rng) for _ in range(20_000))
    share = counts["b:v2"] / 20_000
    # 10% expected; 5 standard deviations of a binomial(20000, 0.1) is about 1.1%.
    assert 0.089 < share < 0.111, counts
    assert set(counts) == {"a:v1", "b:v2"}


def test_the_same_seed_gives_the_same_sequence() -> None:
    first = [choose(SPLIT, None, random.Random(7)) for _ in range(50)]
    second = [choose(SPLIT, None, random.Random(7)) for _ in range(50)]
    assert first == second


def test_a_zero_weight_target_never_serves() -> None:
    targets = [Target("a:v1", 0), Target("b:v2", 3), Target("c:v3", 0)]
    rng = random.Random(5)
    assert {choose(targets, None, rng) for _ in range(2000)} == {"b:v2"}
    assert pick_at(targets, 0.0) == "b:v2" and pick_at(targets, 0.999999) == "b:v2"


def test_a_conversation_key_always_lands_on_one_version() -> None:
    rng = random.Random(99)
    for index in range(200):
        key = f"chat-{index}"
        assert len({choose(SPLIT, key, rng) for _ in range(20)}) == 1


def test_keys_spread_by_weight_too() -> None:
    counts = Counter(choose(SPLIT, f"user-{i}", random.Random(0)) for i in range(20_000))
    assert 0.089 < counts["b:v2"] / 20_000 < 0.111, counts


@pytest.mark.parametrize("steps", [(5, 25), (25, 50), (50, 100)])
def test_raising_the_candidate_share_moves_keys_only_towards_it(steps: tuple[int, int]) -> None:
    low, high = steps
    before = [Target("stable", 100 - low), Target("candidate", low)]
    after = (
        [Target("stable", 100 - high), Target("candidate", high)]
        if high < 100
        else [
            Target("stable", 0),
            Target("candidate", 100),
        ]
    )
    for index in range(2000):
        point = sticky_point(f"k{index}")
        if pick_at(before, point) == "candidate":
            assert pick_at(after, point) == "candidate"


def test_sticky_points_are_stable_across_processes() -> None:
    """sha256-based, not Python's salted hash(): a restart keeps every conversation put."""
    code = "from localserve.routing.choose import sticky_point; print(repr(sticky_point('chat-1')))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert float(out.stdout) == sticky_point("chat-1")
