"""The scheduler's estimate of an embedding context (gguf_facts) against what a real
runner grows by when it embeds with SmolLM2."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import runner_harness

from localserve.store.gguf_facts import estimate_embedding_context_bytes, read_model_facts


@pytest.fixture
def runner(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> Iterator[runner_harness.RunnerProcess]:
    starter: Iterator[Callable[[], runner_harness.RunnerProcess]] = runner_harness.runner_starter(
        runner_harness.RunnerProcess, subprocess_env, tmp_path
    )
    start = next(starter)
    proc = start()
    assert proc.recv()["event"] == "ready"
    yield proc
    for _ in starter:  # the starter's clean-up
        pass


@pytest.mark.cpu_heavy
@pytest.mark.parametrize("num_ctx", [1024, 4096])
def test_embedding_context_estimate_covers_what_the_runner_grows_by(
    runner: runner_harness.RunnerProcess, smollm2_path: Path, num_ctx: int
) -> None:
    runner.send({"op": "load", "path": str(smollm2_path), "num_ctx": num_ctx, "num_threads": 1})
    loaded = runner.recv()
    assert loaded["event"] == "loaded", loaded
    runner.send({"op": "stats"})
    before = runner.recv()["rss"]
    text = "hello world " * 300  # 600 tokens: several full micro-batches
    runner.send({"op": "embed", "id": "e", "inputs": [text], "truncate": True})
    frame = runner.recv()
    assert frame["event"] == "embeddings", frame
    runner.send({"op": "stats"})
    grown = runner.recv()["rss"] - before
    estimate = estimate_embedding_context_bytes(
        read_model_facts(smollm2_path), num_ctx, loaded["embed_batch"]
    )
    # An estimate the scheduler can plan with: never under what it grew by, not far over.
    assert grown <= estimate <= 1.5 * grown, (grown, estimate)
