"""Token log-probabilities, token prefixes (Ollama's `context`) and returned token ids in
the runner (issue 13): `logprobs`, `prefix` and `return_tokens` on a generate op.

The logprob of a token is the log-softmax of the model's raw logits; an oracle test checks
the values against llama-cpp-python's own evaluation of the same model and tokens.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import runner_harness
from gguf_factory import VOCAB, byte_token_id

from localserve.runner.protocol import Frame

TIMEOUT_S = 120.0
CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


class Runner(runner_harness.RunnerProcess):
    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(env, log, TIMEOUT_S)
        assert self.recv()["event"] == "ready"

    def load(self, path: Path, num_parallel: int = 2) -> None:
        self.send(
            {
                "op": "load",
                "path": str(path),
                "num_ctx": 512,
                "num_threads": 2,
                "num_parallel": num_parallel,
            }
        )
        frame = self.recv()
        assert frame["event"] == "loaded", frame

    def run(self, request_id: str, prompt: str, **fields: Any) -> tuple[list[Frame], Frame]:
        """Send one generate op; its token frames and its final frame."""
        options = {"temperature": 0, "num_predict": 4, **fields.pop("options", {})}
        self.send(
            {"op": "generate", "id": request_id, "prompt": prompt, "options": options, **fields}
        )
        tokens: list[Frame] = []
        while True:
            frame = self.recv()
            assert frame.get("id") == request_id, frame
            if frame["event"] == "token":
                tokens.append(frame)
            else:
                return tokens, frame


@pytest.fixture
def start_runner(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Callable[[], Runner]]:
    yield from runner_harness.runner_starter(Runner, subprocess_env, tmp_path)


@pytest.fixture
def tiny(start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]) -> Runner:
    runner = start_runner()
    runner.load(tiny_model("b"))
    return runner


def _entries(tokens: list[Frame]) -> list[dict[str, Any]]:
    return [entry for frame in tokens for entry in frame.get("logprobs", [])]


def _log_softmax(logits: Any) -> Any:
    values = np.asarray(logits, dtype=np.float64)
    peak = values.max()
    return values - (peak + math.log(float(np.exp(values - peak).sum())))


def test_greedy_logprobs_name_the_chosen_token_as_the_most_likely(tiny: Runner) -> None:
    tokens, done = tiny.run("r1", "hello", logprobs=3)
    assert done["event"] == "done" and done["eval_count"] == 4
    entries = _entries(tokens)
    assert len(entries) == 4  # one per generated token
    for entry in entries:
        assert entry["token"] == "b" and entry["bytes"] == [ord("b")]
        top = entry["top_logprobs"]
        assert len(top) == 3
        assert top[0]["token"] == "b" and top[0]["logprob"] == entry["logprob"]
        assert entry["logprob"] == max(t["logprob"] for t in top)
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1.0 + 1e-9
        assert entry["logprob"] <= 0.0


def test_logprob_values_match_a_direct_llama_cpp_evaluation(
    tiny: Runner, tiny_model: Callable[..., Path]
) -> None:
    """The oracle: llama-cpp-python reads the same prompt; its logits' log-softmax."""
    from llama_cpp import Llama

    tokens, _ = tiny.run("r1", "hello", logprobs=5, options={"num_predict": 1})
    (entry,) = _entries(tokens)
    llm = Llama(str(tiny_model("b")), n_ctx=512, logits_all=True, verbose=False)
    try:
        prompt = llm.tokenize(b"hello", add_bos=True, special=True)
        llm.eval(prompt)
        expected = _log_softmax(llm.scores[llm.n_tokens - 1])
    finally:
        llm.close()
    chosen = byte_token_id("b")
    assert math.isclose(entry["logprob"], expected[chosen], rel_tol=1e-4, abs_tol=1e-5)
    others = [t["logprob"] for t in entry["top_logprobs"][1:]]
    runner_up = np.sort(np.delete(expected, chosen))[::-1][:4]
    assert np.allclose(others, runner_up, rtol=1e-4, atol=1e-4)
    assert len(entry["top_logprobs"]) == 5 and entry["top_logprobs"][0]["token"] == "b"


def test_zero_alternatives_still_report_the_chosen_token(tiny: Runner) -> None:
    tokens, _ = tiny.run("r1", "hello", logprobs=0, options={"num_predict": 2})
    entries = _entries(tokens)
    assert len(entries) == 2 and all(e["top_logprobs"] == [] for e in entries)


def test_no_logprobs_frames_unless_asked(tiny: Runner) -> None:
    tiny.run("r1", "hello")
    assert all("logprobs" not in frame for frame in tiny.wire if frame.get("event") == "tokens")


def test_sampled_logprobs_are_those_before_temperature(tiny: Runner) -> None:
    """At temperature 2 the chosen token's logprob is still the model's own (unscaled)."""
    greedy, _ = tiny.run("r1", "hello", logprobs=1, options={"num_predict": 1})
    hot, _ = tiny.run(
        "r2", "hello", logprobs=1, options={"num_predict": 1, "temperature": 2.0, "seed": 3}
    )
    (cold_entry,) = _entries(greedy)
    (hot_entry,) = _entries(hot)
    assert hot_entry["top_logprobs"][0]["logprob"] == cold_entry["logprob"]


def test_bad_logprobs_counts_are_refused(tiny: Runner) -> None:
    for bad in (21, -1, "3", True):
        _, frame = tiny.run("bad", "hello", logprobs=bad)
        assert frame["event"] == "error" and frame["kind"] == "bad_request"
        assert "logprobs" in frame["message"]


def test_return_tokens_gives_the_prompt_and_answer_ids(tiny: Runner) -> None:
    _, done = tiny.run("r1", "hi", return_tokens=True, options={"num_predict": 3})
    bos = 1
    b = byte_token_id("b")
    assert done["tokens"][0] == bos
    assert done["tokens"][-3:] == [b, b, b]
    assert len(done["tokens"]) == done["prompt_tokens"] + 3
    _, plain = tiny.run("r2", "hi", options={"num_predict": 3})
    assert "tokens" not in plain


def test_a_prefix_is_read_before_the_prompt_without_a_second_bos(tiny: Runner) -> None:
    _, first = tiny.run("r1", "hi", return_tokens=True, options={"num_predict": 2})
    context = first["tokens"]
    _, second = tiny.run("r2", "yo", prefix=context, return_tokens=True)
    tokens = second["tokens"]
    assert tokens[: len(context)] == context
    rest = tokens[len(context) : second["prompt_tokens"]]
    assert 1 not in rest  # no BOS in the middle
    assert second["prompt_tokens"] == len(context) + len(rest) and rest
    # Its prompt is the first exchange and more: the first's KV is reused.
    assert second["prompt_eval_count"] < second["prompt_tokens"]


@pytest.mark.parametrize("bad", [[VOCAB], [-1], ["1"], [1.5], [True]])
def test_a_prefix_outside_the_vocabulary_is_refused_naming_context(
    tiny: Runner, bad: list[Any]
) -> None:
    _, frame = tiny.run("bad", "hi", prefix=bad)
    assert frame["event"] == "error" and frame["kind"] == "bad_request"
    assert "context" in frame["message"]


@pytest.mark.cpu_heavy
def test_smollm2_logprobs_match_llama_cpp_token_by_token(
    start_runner: Callable[[], Runner], smollm2_path: Path
) -> None:
    """Real logits: every generated token's logprob and its top 5 agree with a direct
    llama-cpp-python evaluation of the prompt and the answer so far."""
    from llama_cpp import Llama

    runner = start_runner()
    runner.load(smollm2_path, num_parallel=1)
    prompt = CHATML.format("Name a color.")
    tokens, done = runner.run(
        "r1", prompt, logprobs=5, return_tokens=True, options={"num_predict": 6}
    )
    entries = _entries(tokens)
    ids = done["tokens"]
    generated = ids[done["prompt_tokens"] :]
    assert len(entries) == len(generated) >= 1
    # Flash attention as the runner has it (its default): the kernels differ in their
    # rounding by more than the tolerance (0.03 in a logprob measured).
    llm = Llama(
        str(smollm2_path),
        n_ctx=512,
        n_threads=2,
        logits_all=True,
        flash_attn=True,
        verbose=False,
    )
    try:
        llm.eval(ids[: done["prompt_tokens"]])
        for token, entry in zip(generated, entries, strict=True):
            expected = _log_softmax(llm.scores[llm.n_tokens - 1])
            assert entry["logprob"] == max(t["logprob"] for t in entry["top_logprobs"])
            assert math.isclose(entry["logprob"], expected[token], abs_tol=2e-3)
            top_expected = np.sort(expected)[::-1][:5]
            got = [t["logprob"] for t in entry["top_logprobs"]]
            assert np.allclose(got, top_expected, atol=2e-3)
            assert sum(math.exp(v) for v in got) <= 1.0 + 1e-9
            llm.eval([token])
    finally:
        llm.close()
