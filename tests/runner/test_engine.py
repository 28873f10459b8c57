"""The batching engine (localserve.runner.engine.Engine) in this process, stepped by hand: what
one step reads, decodes and sends, in the default (throughput) mode and the batch-invariant
mode; and that a cached prompt, in whole or in part, gives the same tokens as a fresh read.

Tiny models (tests/gguf_factory.py) show scheduling and counting; token equality uses
SmolLM2 (short generations)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localserve.runner.engine import FA_TILE_ROWS, Engine, StepStats, common_prefix
from localserve.runner.protocol import RunnerFrame

CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
SYSTEM = "<|im_start|>system\nYou are a careful assistant. " + " ".join(
    f"Rule {n}: answer in one short sentence." for n in range(8)
)


class Harness:
    """An engine, the frames it sent, and helpers to run requests to the end."""

    def __init__(self) -> None:
        self.frames: list[RunnerFrame] = []
        self.engine = Engine(self.frames.append)
        self.steps: list[StepStats] = []

    def step(self) -> StepStats:
        stats = self.engine.step()
        self.steps.append(stats)
        return stats

    def run(self) -> None:
        while self.engine.has_work:
            self.step()

    def text(self, request_id: str) -> str:
        return "".join(
            f["texts"].get(request_id, "") for f in self.frames if f["event"] == "tokens"
        )

    def done(self, request_id: str) -> dict[str, Any]:
        for frame in self.frames:
            if frame["event"] in ("done", "error") and frame.get("id") == request_id:
                return dict(frame)
        raise AssertionError(f"{request_id} has not finished")

    def answer(self, request_id: str, prompt: str, **options: Any) -> tuple[str, int]:
        """Run one request alone: (its text, its prompt_eval_count)."""
        self.engine.submit(request_id, prompt, options)
        self.run()
        done = self.done(request_id)
        assert done["event"] == "done", done
        return self.text(request_id), int(done["prompt_eval_count"])


@pytest.fixture
def engine() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(path: Path, *, num_parallel: int = 4, num_ctx: int = 512, **load: Any) -> Harness:
        harness = Harness()
        harness.engine.load(
            str(path), num_ctx=num_ctx, num_parallel=num_parallel, num_threads=2, **load
        )
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.engine.close()


# ---- what a step does (tiny model) ---------------------------------------------------------


def test_four_prompts_arriving_together_are_read_in_one_decode(
    engine: Callable[..., Harness], tiny_model: Callable[..., Path]
) -> None:
    run = engine(tiny_model("b"))
    prompts = [f"{word} prompt " + "x" * (10 * i) for i, word in enumerate("ABCD")]
    for i, prompt in enumerate(prompts):
        run.engine.submit(f"r{i}", prompt, {"num_predict": 3})
    first = run.step()
    assert first.decodes == 1
    assert first.prompt_tokens == sum(len(run.engine.tokenize(p)) for p in prompts)
    # All four first tokens come out of that one step, in one frame.
    assert run.frames == [{"event": "tokens", "texts": {f"r{i}": "b" for i in range(4)}}]
    run.run()
    assert [run.text(f"r{i}") for i in range(4)] == ["bbb"] * 4


def test_generating_tokens_and_a_new_prompt_share_one_decode_unless_batch_invariant(
    engine: Callable[..., Harness], tiny_model: Callable[..., Path]
) -> None:
    for batch_invariant, decodes in ((False, 1), (True, 2)):
        run = engine(tiny_model("b"), batch_invariant=batch_invariant)
        run.engine.submit("first", "hello", {"num_predict": 50})
        run.step()
        run.engine.submit("second", "a new short prompt", {"num_predict": 5})
        step = run.step()
        assert (step.sequences, step.decodes) == (2, decodes), batch_invariant
        assert step.prompt_tokens > 0
        run.run()
        assert (run.text("first"), run.text("second")) == ("b" * 50, "b" * 5)


def test_requests_that_arrived_while_the_first_was_read_are_read_together_next(
    engine: Callable[..., Harness], tiny_model: Callable[..., Path]
) -> None:
    """A burst: the first request's prompt read starts at once; the others arrive during
    that step (the runner hands them over after it). Sent before its first token, they are
    its companions and share one step; requests sent after it get the small busy budget."""
    for arrived_during_the_read in (True, False):
        run = engine(tiny_model("b"))
        sent = time.perf_counter_ns()
        run.engine.submit("first", "hello", {"num_predict": 50})
        run.step()
        # The step budgets as if a prompt token took 1/160 s: a busy step reads 16
        # tokens, a companion step 64 (the two prompts are 23 tokens each, 17 to read
        # when their start is copied from the first's KV).
        run.engine._s_per_token = 0.1 / 16
        for i in range(2):
            received = sent if arrived_during_the_read else None
            run.engine.submit(f"r{i}", "xy"[i] * 19, {"num_predict": 2}, received_ns=received)
        run.frames.clear()
        run.step()
        started = {r for f in run.frames if f["event"] == "tokens" for r in f["texts"]} - {"first"}
        assert started == ({"r0", "r1"} if arrived_during_the_read else set())
        run.run()
        assert [run.text(f"r{i}") for i in range(2)] == ["bb"] * 2


def test_each_step_sends_one_frame_with_the_text_of_every_sequence(
    engine: Callable[..., Harness], tiny_model: Callable[..., Path]
) -> None:
    run = engine(tiny_model("b"))
    for i, word in enumerate("ABC"):
        run.engine.submit(f"r{i}", f"{word} go", {"num_predict": 4})
    run.run()
    assert [f["event"] for f in run.frames] == ["tokens"] * 4 + ["done"] * 3
    for frame in run.frames[:4]:
        assert frame == {"event": "tokens", "texts": {"r0": "b", "r1": "b", "r2": "b"}}


def test_a_long_prompt_is_read_in_chunks_of_the_step_budget_never_leaving_one_token(
    engine: Callable[..., Harness], tiny_model: Callable[..., Path]
) -> None:
    run = engine(tiny_model("b"), num_parallel=1, num_ctx=2048, num_batch=64)
    prompt = "y" * (64 * 3)  # byte tokens: 193 with BOS, so 64 + 64 + 63 + ... not 1 left
    count = len(run.engine.tokenize(prompt))
    run.engine.submit("long", prompt, {"num_predict": 2})
    run.run()
    reads = [s.prompt_tokens for s in run.steps if s.prompt_tokens]
    assert sum(reads) == count
    assert all(2 <= n <= 64 for n in reads)
    assert run.text("long") == "bb"


def test_identical_prompts_arriving_together_are_read_once_and_copied(
    engine: Callable[..., Harness], tiny_model: Callable[..., Path]
) -> None:
    run = engine(tiny_model("b"))
    prompt = "the same prompt, sent by four clients at once"
    count = len(run.engine.tokenize(prompt))
    for i in range(4):
        run.engine.submit(f"r{i}", prompt, {"num_predict": 3})
    first = run.step()
    assert (first.prompt_tokens, first.sequences) == (count, 1)  # one read for all four
    # The other three copy its KV and sample from its logits: all first tokens at once.
    assert run.frames == [{"event": "tokens", "texts": {f"r{i}": "b" for i in range(4)}}]
    assert run.step().prompt_tokens == 0
    run.run()
    assert [run.text(f"r{i}") for i in range(4)] == ["bbb"] * 4
    assert [run.done(f"r{i}")["prompt_eval_count"] for i in range(4)] == [count, 0, 0, 0]
    assert [run.done(f"r{i}")["prompt_tokens"] for i in range(4)] == [count] * 4


def test_the_same_prompt_again_is_answered_without_a_decode_before_its_first_token(
    engine: Callable[..., Harness], tiny_model: Callable[..., Path]
) -> None:
    run = engine(tiny_model("b"), num_parallel=1)
    prompt = "a question asked twice"
    run.answer("first", prompt, num_predict=4)
    run.engine.submit("again", prompt, {"num_predict": 4})
    before = len(run.frames)
    assert run.step().prompt_tokens == 0
    # Its first token went out before the step's decode (a frame of its own), then the next.
    assert run.frames[before:] == [
        {"event": "tokens", "texts": {"again": "b"}},
        {"event": "tokens", "texts": {"again": "b"}},
    ]
    run.run()
    assert run.text("again") == "bbbb"
    assert run.done("again")["prompt_eval_count"] == 0
    # A prompt that only starts with it evaluates its own last two tokens at least.
    assert run.answer("longer", prompt + "?!", num_predict=1)[1] >= 2


def test_a_busy_slots_shared_prefix_is_copied_for_a_new_request(
    engine: Callable[..., Harness], tiny_model: Callable[..., Path]
) -> None:
    run = engine(tiny_model("b"), num_parallel=2)
    system = "A long system prompt that every conversation starts with. " * 2
    run.engine.submit("chat1", system + "First question?", {"num_predict": 40})
    run.step()
    run.engine.submit("chat2", system + "Another one entirely?", {"num_predict": 2})
    run.run()
    first = run.engine.tokenize(system + "First question?")
    second = run.engine.tokenize(system + "Another one entirely?")
    shared = common_prefix(first, second)
    assert shared > len(system)
    assert run.done("chat2")["prompt_eval_count"] == len(second) - shared
    assert run.text("chat2") == "bb"


# ---- a cached prompt gives the same tokens (SmolLM2, alone) -------------------------------

GREEDY: dict[str, Any] = {"temperature": 0, "num_predict": 16}
SEEDED: dict[str, Any] = {"temperature": 0.9, "top_k": 60, "seed": 42, "num_predict": 16}


# The modes in which a cached prompt reads exactly as a fresh one. With flash attention
# (the default) llama.cpp's CPU kernel takes another path from FA_TILE_ROWS rows of a
# sequence on, so the two rows re-read of a cached prompt may differ in their last bits.
CACHE_EXACT_MODES = {
    "throughput-no-flash-attn": {"flash_attn": False},
    "invariant": {"batch_invariant": True},
}


@pytest.mark.parametrize("mode", list(CACHE_EXACT_MODES))
@pytest.mark.parametrize("options", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_a_cached_prompt_gives_the_same_tokens_as_a_fresh_read(
    engine: Callable[..., Harness], smollm2_path: Path, mode: str, options: dict[str, Any]
) -> None:
    color = CHATML.format("Name a color.")
    other = SYSTEM + "<|im_end|>\n" + CHATML.format("Name an animal.")
    fresh = engine(smollm2_path, num_parallel=1, **CACHE_EXACT_MODES[mode])
    expected, counted = fresh.answer("a", color, **options)
    fresh_other = engine(smollm2_path, num_parallel=1, **CACHE_EXACT_MODES[mode])
    expected_other, counted_other = fresh_other.answer("b", other, **options)

    cached = engine(smollm2_path, num_parallel=1, **CACHE_EXACT_MODES[mode])
    assert cached.answer("none", color, **options) == (expected, counted)  # no reuse
    text, evaluated = cached.answer("full", color, **options)  # all of it cached
    assert (text, evaluated) == (expected, 0)  # its first token from the logits kept
    # All of it cached inside a longer prompt's KV (no logits kept for it): two evaluated.
    cached.answer("longer", color + "Blue is", **options)
    text, evaluated = cached.answer("inside", color, **options)
    assert (text, evaluated) == (expected, 2)
    # Partial: the system prompt of an earlier request is reused, the question read.
    cached.answer("warm", SYSTEM + "<|im_end|>\n" + CHATML.format("Name a tree."), **options)
    text, evaluated = cached.answer("part", other, **options)
    assert text == expected_other
    assert 2 <= evaluated < counted_other - 50
    # And the same request again gives the same tokens run after run.
    assert cached.answer("again", color, **options)[0] == expected


@pytest.mark.parametrize("options", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_with_flash_attention_a_request_gives_the_same_tokens_run_after_run(
    engine: Callable[..., Harness], smollm2_path: Path, options: dict[str, Any]
) -> None:
    color = SYSTEM + "<|im_end|>\n" + CHATML.format("Name a color.")
    expected, counted = engine(smollm2_path, num_parallel=1).answer("a", color, **options)
    assert counted >= FA_TILE_ROWS  # read fresh on the tiled kernel's path
    assert engine(smollm2_path, num_parallel=1).answer("b", color, **options) == (
        expected,
        counted,
    )
    run = engine(smollm2_path, num_parallel=1)
    assert run.answer("first", color, **options) == (expected, counted)
    assert run.answer("again", color, **options) == (expected, 0)  # from the logits kept
    run.answer("between", CHATML.format("Name an animal."), **options)
    assert run.answer("later", color, **options)[0] == expected


def test_a_copied_prefix_gives_the_same_tokens_as_a_fresh_read(
    engine: Callable[..., Harness], smollm2_path: Path
) -> None:
    """Batch-invariant mode: a request that copies a busy slot's system prompt matches the
    same request read afresh."""
    other = SYSTEM + "<|im_end|>\n" + CHATML.format("Name an animal.")
    fresh = engine(smollm2_path, num_parallel=2, batch_invariant=True)
    expected, counted = fresh.answer("b", other, **SEEDED)
    run = engine(smollm2_path, num_parallel=2, batch_invariant=True)
    run.engine.submit("busy", SYSTEM + "<|im_end|>\n" + CHATML.format("Tell a story."), SEEDED)
    run.step()
    run.engine.submit("copy", other, SEEDED)
    run.run()
    assert run.text("copy") == expected
    assert run.done("copy")["prompt_eval_count"] < counted - 50
