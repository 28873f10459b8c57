"""Continuous batching in the runner (localserve.runner.engine): parallel slots, per-sequence
sampling, cancellation, prompt-prefix reuse, and the text stream that feeds the tokens out.

Tiny models (tests/gguf_factory.py) always answer one character, so they show scheduling
and counting; sampling equality and JSON mode use the real SmolLM2 (short generations).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import runner_harness

from localserve.runner.errors import RequestError
from localserve.runner.protocol import Frame
from localserve.runner.sampling import SamplingOptions
from localserve.runner.slots import common_prefix, prompt_chunk
from localserve.runner.text import TextStream

TIMEOUT_S = 120.0
CHATML = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


class Runner(runner_harness.RunnerProcess):
    """A runner with frames sorted by request id, so several requests can run at once."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        super().__init__(env, log, TIMEOUT_S)
        self.frames: dict[str, list[Frame]] = {}
        self.order: list[Frame] = []  # every frame, in arrival order
        assert self.recv()["event"] == "ready"

    def load(
        self,
        path: Path,
        num_ctx: int = 512,
        num_parallel: int = 4,
        *,
        batch_invariant: bool = False,
    ) -> Frame:
        self.send(
            {
                "op": "load",
                "path": str(path),
                "num_ctx": num_ctx,
                "num_threads": 2,
                "num_parallel": num_parallel,
                "batch_invariant": batch_invariant,
            }
        )
        frame = self.recv()
        assert frame["event"] == "loaded", frame
        assert frame["batch_invariant"] is batch_invariant
        return frame

    def generate(self, request_id: str, prompt: str, fmt: Any = None, **options: Any) -> None:
        message: Frame = {"op": "generate", "id": request_id, "prompt": prompt, "options": options}
        if fmt is not None:
            message["format"] = fmt
        self.send(message)

    def pump(self) -> Frame:
        """Receive one frame and file it under its request id."""
        frame = self.recv()
        self.order.append(frame)
        if "id" in frame:
            self.frames.setdefault(str(frame["id"]), []).append(frame)
        return frame

    def finished(self, request_id: str) -> bool:
        frames = self.frames.get(request_id, [])
        return bool(frames) and frames[-1]["event"] in ("done", "error")

    def wait(self, *request_ids: str) -> dict[str, tuple[str, Frame]]:
        """(text, final frame) for each request, once all have finished."""
        while not all(self.finished(r) for r in request_ids):
            self.pump()
        results = {}
        for request_id in request_ids:
            frames = self.frames[request_id]
            text = "".join(f["text"] for f in frames if f["event"] == "token")
            results[request_id] = (text, frames[-1])
        return results

    def stats(self) -> Frame:
        self.send({"op": "stats"})
        while True:
            frame = self.pump()
            if frame["event"] == "stats":
                return frame


@pytest.fixture
def start_runner(tmp_path: Path, subprocess_env: dict[str, str]) -> Iterator[Callable[[], Runner]]:
    yield from runner_harness.runner_starter(Runner, subprocess_env, tmp_path)


# ---- the text stream ---------------------------------------------------------------------


def test_text_stream_holds_an_incomplete_utf8_sequence_until_it_is_complete() -> None:
    stream = TextStream()
    data = "é✓🙂".encode()
    out = [stream.push(data[i : i + 1])[0] for i in range(len(data))]
    assert "".join(out) == "é✓🙂"
    assert all(piece in ("", "é", "✓", "🙂") for piece in out)
    assert stream.flush() == ("", False)


def test_text_stream_replaces_invalid_bytes_instead_of_failing() -> None:
    stream = TextStream()
    text, _ = stream.push(b"a\xffb")
    assert text == "a\ufffdb"
    stream.push(b"\xe2\x9c")  # cut off at the end of generation
    assert stream.flush() == ("\ufffd", False)


def test_text_stream_holds_a_possible_stop_string_then_releases_it_when_ruled_out() -> None:
    stream = TextStream(["</end>"])
    assert stream.push(b"hello </") == ("hello ", False)
    assert stream.push(b"en") == ("", False)
    assert stream.push(b"ough") == ("</enough", False)


def test_text_stream_cuts_at_a_stop_string_split_across_pieces() -> None:
    stream = TextStream(["STOP", "\n\n"])
    assert stream.push(b"one ST") == ("one ", False)
    assert stream.push(b"OP and more") == ("", True)
    stream = TextStream(["STOP", "\n\n"])
    assert stream.push(b"a\n") == ("a", False)
    assert stream.push(b"\nb") == ("", True)


def test_text_stream_flush_releases_held_text_at_the_end() -> None:
    stream = TextStream(["xyz"])
    assert stream.push(b"abcxy") == ("abc", False)
    assert stream.flush() == ("xy", False)


def test_common_prefix_counts_shared_leading_tokens() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([7, 8], [7, 8]) == 2


def test_a_prompt_chunk_never_leaves_one_token_and_is_never_a_single_token_cut() -> None:
    assert prompt_chunk(100, 512) == 100  # all of it
    assert prompt_chunk(100, 40) == 40
    assert prompt_chunk(41, 40) == 39  # not 40, which would leave one token
    assert prompt_chunk(100, 1) == 0  # a one-token cut waits for a larger budget
    assert prompt_chunk(2, 1) == 0
    assert prompt_chunk(1, 1) == 1  # a one-token prompt is all there is


def test_sampling_options_map_a_negative_seed_to_random_and_refuse_bad_values() -> None:
    assert SamplingOptions.from_options({"seed": -1}).seed == 0xFFFFFFFF
    assert SamplingOptions.from_options({"seed": 42, "temperature": 0}).temperature == 0.0
    with pytest.raises(RequestError):
        SamplingOptions.from_options({"top_k": "many"})


# ---- slots and scheduling (tiny model) -----------------------------------------------------


def test_load_reports_the_slot_count_and_the_per_slot_context(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    loaded = runner.load(tiny_model("b"), num_ctx=256, num_parallel=3)
    assert (loaded["slots"], loaded["n_ctx"]) == (3, 256)
    stats = runner.stats()
    assert (stats["slots"], stats["slots_busy"]) == (3, 0)


def test_requests_run_concurrently_in_their_slots_and_stats_count_busy_ones(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    runner.load(tiny_model("b"), num_ctx=4096, num_parallel=4)
    for i in range(4):
        runner.generate(f"r{i}", f"prompt {i}", num_predict=2000 + i)
    while not all(f"r{i}" in runner.frames for i in range(4)):
        runner.pump()  # every request streams before any has finished
    assert not any(runner.finished(f"r{i}") for i in range(4))
    assert runner.stats()["slots_busy"] == 4
    results = runner.wait("r0", "r1", "r2", "r3")
    for i in range(4):
        text, done = results[f"r{i}"]
        assert text == "b" * (2000 + i)
        assert (done["done_reason"], done["eval_count"]) == ("length", 2000 + i)
    assert runner.stats()["slots_busy"] == 0


def test_requests_beyond_the_slots_wait_for_a_free_one(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    runner.load(tiny_model("b"), num_parallel=2)
    for i in range(5):
        runner.generate(f"q{i}", "hi", num_predict=5)
    results = runner.wait(*(f"q{i}" for i in range(5)))
    assert all(text == "bbbbb" for text, _ in results.values())


def test_cancelling_one_of_four_frees_its_slot_and_leaves_the_others_whole(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    runner.load(tiny_model("b"), num_ctx=8192, num_parallel=4)
    for i in range(4):
        runner.generate(f"c{i}", f"go {i}", num_predict=3000)
    while "c2" not in runner.frames:
        runner.pump()
    runner.send({"op": "cancel", "id": "c2"})
    while not runner.finished("c2"):
        runner.pump()
    cancelled = runner.frames["c2"][-1]
    assert (cancelled["event"], cancelled["done_reason"]) == ("done", "cancel")
    assert cancelled["eval_count"] < 3000
    assert not any(runner.finished(f"c{i}") for i in (0, 1, 3))
    # The freed slot takes a new request at once, while the others still run.
    runner.generate("next", "again", num_predict=3)
    results = runner.wait("next", "c0", "c1", "c3")
    assert results["next"][0] == "bbb"
    for i in (0, 1, 3):
        text, done = results[f"c{i}"]
        assert (text, done["done_reason"]) == ("b" * 3000, "length")
    position = {id(f): n for n, f in enumerate(runner.order)}
    assert position[id(runner.frames["next"][-1])] < position[id(runner.frames["c0"][-1])]


def test_cancelling_a_request_that_waits_for_a_slot_answers_at_once(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    runner.load(tiny_model("b"), num_ctx=8192, num_parallel=1)
    runner.generate("busy", "x", num_predict=4000)
    runner.generate("queued", "y", num_predict=5)
    runner.send({"op": "cancel", "id": "queued"})
    while not runner.finished("queued"):
        runner.pump()
    assert runner.frames["queued"] == [
        {
            "event": "done",
            "id": "queued",
            "done_reason": "cancel",
            "prompt_tokens": 0,
            "prompt_eval_count": 0,
            "prompt_eval_duration": 0,
            "eval_count": 0,
            "eval_duration": 0,
        }
    ]
    assert not runner.finished("busy")
    runner.send({"op": "cancel", "id": "busy"})
    runner.wait("busy")


def test_a_continued_prompt_reuses_its_slot_and_evaluates_only_new_tokens(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    runner.load(tiny_model("b"), num_parallel=2)
    first = "Hello,there.Howareyou?"
    runner.generate("t1", first, num_predict=4)
    answer, done1 = runner.wait("t1")["t1"]
    assert answer == "bbbb"
    extra = "Fine,andyou?"
    runner.generate("t2", first + answer + extra, num_predict=2)
    _, done2 = runner.wait("t2")["t2"]
    # Byte tokens: the last answer token was never decoded, so it is evaluated with `extra`.
    assert done2["prompt_eval_count"] == len(extra) + 1
    assert done1["prompt_eval_count"] > len(first)
    # The same prompt again: only its last two tokens are evaluated (for fresh logits that
    # match an uncached read: a one-token chunk would take another path in llama.cpp).
    runner.generate("t3", first, num_predict=1)
    assert runner.wait("t3")["t3"][1]["prompt_eval_count"] == 2


def test_an_unrelated_prompt_takes_an_empty_slot_and_keeps_the_cached_one(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    runner.load(tiny_model("b"), num_parallel=2)
    chat = "A long conversation that we will continue."
    runner.generate("a", chat, num_predict=2)
    runner.wait("a")
    runner.generate("other", "Something else entirely.", num_predict=2)
    runner.wait("other")
    runner.generate("a2", chat + "bb" + "more", num_predict=2)
    assert runner.wait("a2")["a2"][1]["prompt_eval_count"] == len("more") + 1


def test_context_window_is_per_slot(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    assert runner.load(tiny_model("b"), num_ctx=64, num_parallel=2)["n_ctx"] == 64
    runner.generate("x", "hi", num_predict=1000)
    runner.generate("y", "hi", num_predict=1000)
    results = runner.wait("x", "y")
    for text, done in results.values():
        assert done["done_reason"] == "length"
        assert 0 < len(text) < 64
    runner.generate("big", "z" * 100, num_predict=2)
    _, frame = runner.wait("big")["big"]
    assert (frame["event"], frame["kind"]) == ("error", "bad_request")


# ---- sampling equality (batch-invariant mode) and JSON mode (SmolLM2) -----------------------

PROMPTS = [
    CHATML.format("Write one sentence about the sea."),
    CHATML.format("Name a colour and say why you like it."),
    CHATML.format("Tell me a fact about owls."),
    CHATML.format(
        "Describe a rainy morning in a small town. "
        + " ".join(f"Mention detail number {n}, about the people and the shops." for n in range(12))
    ),
]


def _sampled(runner: Runner, prefix: str, indices: list[int], num_predict: int = 24) -> None:
    for i in indices:
        runner.generate(
            f"{prefix}{i}",
            PROMPTS[i],
            temperature=0.9,
            top_k=60,
            seed=1000 + i,
            num_predict=num_predict,
        )


def test_concurrent_seeded_requests_match_the_same_requests_run_one_at_a_time(
    start_runner: Callable[[], Runner], smollm2_path: Path
) -> None:
    solo = start_runner()
    solo.load(smollm2_path, num_ctx=512, num_parallel=4, batch_invariant=True)
    alone = {}
    for i in range(4):
        _sampled(solo, "s", [i])
        alone[i] = solo.wait(f"s{i}")[f"s{i}"][0]
    together = start_runner()
    together.load(smollm2_path, num_ctx=512, num_parallel=4, batch_invariant=True)
    _sampled(together, "t", [0, 1, 2, 3])
    results = together.wait("t0", "t1", "t2", "t3")
    assert len(set(alone.values())) == 4  # the seeds do make different texts
    for i in range(4):
        assert results[f"t{i}"][0] == alone[i], i


def test_requests_joining_mid_stream_still_match_their_solo_runs(
    start_runner: Callable[[], Runner], smollm2_path: Path
) -> None:
    runner = start_runner()
    runner.load(smollm2_path, num_ctx=512, num_parallel=4, batch_invariant=True)
    _sampled(runner, "solo", [3])
    alone = runner.wait("solo3")
    fresh = start_runner()
    fresh.load(smollm2_path, num_ctx=512, num_parallel=4, batch_invariant=True)
    _sampled(fresh, "first", [0], num_predict=200)
    while "first0" not in fresh.frames:
        fresh.pump()
    _sampled(fresh, "late", [3])  # its prompt is read in chunks between decode steps
    results = fresh.wait("late3")
    assert results["late3"][0] == alone["solo3"][0]
    fresh.send({"op": "cancel", "id": "first0"})
    fresh.wait("first0")


def test_cancelling_one_of_four_leaves_the_other_three_texts_unchanged(
    start_runner: Callable[[], Runner], smollm2_path: Path
) -> None:
    solo = start_runner()
    solo.load(smollm2_path, num_ctx=512, num_parallel=4, batch_invariant=True)
    _sampled(solo, "s", [0, 1, 3])
    alone = solo.wait("s0", "s1", "s3")
    runner = start_runner()
    runner.load(smollm2_path, num_ctx=512, num_parallel=4, batch_invariant=True)
    _sampled(runner, "c", [0, 1])
    _sampled(runner, "c", [3])
    runner.generate("c2", PROMPTS[2], seed=7, num_predict=500)
    while "c2" not in runner.frames:
        runner.pump()
    runner.send({"op": "cancel", "id": "c2"})
    results = runner.wait("c0", "c1", "c2", "c3")
    assert results["c2"][1]["done_reason"] == "cancel"
    for i in (0, 1, 3):
        assert results[f"c{i}"][0] == alone[f"s{i}"][0], i


def test_json_mode_and_plain_requests_batched_together_are_each_valid(
    start_runner: Callable[[], Runner], smollm2_path: Path
) -> None:
    runner = start_runner()
    runner.load(smollm2_path, num_ctx=512, num_parallel=4)
    schema = {
        "type": "object",
        "properties": {"sunny": {"type": "boolean"}, "degrees": {"type": "integer"}},
        "required": ["sunny", "degrees"],
    }
    ask = CHATML.format("What is the weather like today? Answer in JSON.")
    person = CHATML.format("Give a JSON object with the name and age of a person.")
    runner.generate("json", person, fmt="json", temperature=0, num_predict=96)
    runner.generate("schema", ask, fmt=schema, temperature=0, num_predict=96)
    runner.generate("plain1", PROMPTS[0], temperature=0, num_predict=24)
    runner.generate("plain2", PROMPTS[1], temperature=0.7, seed=3, num_predict=24)
    results = runner.wait("json", "schema", "plain1", "plain2")
    assert results["json"][1]["done_reason"] == "stop"
    assert isinstance(json.loads(results["json"][0]), dict)
    value = json.loads(results["schema"][0])
    assert isinstance(value["sunny"], bool) and isinstance(value["degrees"], int)
    for name in ("plain1", "plain2"):
        text, done = results[name]
        assert done["event"] == "done" and text.strip()
        assert not text.lstrip().startswith("{")


def test_an_invalid_schema_is_a_bad_request(
    start_runner: Callable[[], Runner], tiny_model: Callable[..., Path]
) -> None:
    runner = start_runner()
    runner.load(tiny_model("b"))
    runner.generate("bad", "hi", fmt={"type": "object", "properties": {"x": {"$ref": "#/nope"}}})
    _, frame = runner.wait("bad")["bad"]
    assert (frame["event"], frame["kind"]) == ("error", "bad_request")


# ---- through the daemon --------------------------------------------------------------------


def _chat(base: str, body: dict[str, Any]) -> dict[str, Any]:
    import urllib.request

    request = urllib.request.Request(
        base + "/api/chat", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
        result: dict[str, Any] = json.loads(response.read())
    return result


def test_parallel_chats_through_the_daemon_finish_and_later_turns_hit_the_prefix_cache(
    tmp_path: Path, smollm2_path: Path
) -> None:
    from daemon_harness import running_daemon

    system = "You are a helpful assistant. " + " ".join(
        f"Rule {i}: answer briefly and politely." for i in range(20)
    )
    with running_daemon(tmp_path, num_parallel=4) as daemon:
        daemon.add_model("smol", smollm2_path)
        options = {"temperature": 0, "num_predict": 12}
        results: dict[int, dict[str, Any]] = {}

        def first_turn(i: int) -> None:
            messages = [
                {"role": "system", "content": system},
                {"role": "user", "content": f"Give me a word that rhymes with number {i}."},
            ]
            results[i] = _chat(
                daemon.base_url,
                {"model": "smol", "messages": messages, "stream": False, "options": options},
            )
            results[i]["messages"] = messages

        threads = [threading.Thread(target=first_turn, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT_S)
        assert len(results) == 4
        assert all(r["done"] and r["message"]["content"] for r in results.values())
        assert max(r["prompt_eval_count"] for r in results.values()) > 200
        first_turn(9)
        turn1 = results[9]
        messages = [
            *turn1["messages"],
            turn1["message"],
            {"role": "user", "content": "And another one?"},
        ]
        turn2 = _chat(
            daemon.base_url,
            {"model": "smol", "messages": messages, "stream": False, "options": options},
        )
        assert turn2["done"]
        # Only the end of the last answer and the new message are evaluated.
        assert turn2["prompt_eval_count"] < 40, turn2["prompt_eval_count"]
