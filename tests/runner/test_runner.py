"""The runner process (`python -m localserve.runner.main --fd N`) over a real socket pair, and the
framing it speaks. Tiny models always answer with their own character."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import runner_harness

from localserve.runner.protocol import (
    HEADER,
    MAX_FRAME,
    Frame,
    ProtocolError,
    encode_frame,
    read_frame,
    recv_frame,
)
from localserve.runner.threads import FREE_CORE_AT

TinyModelFactory = Callable[..., Path]
TIMEOUT_S = 30.0


class RunnerProcess(runner_harness.RunnerProcess):
    """A runner driven one request at a time."""

    def load(self, path: Path, num_ctx: int = 512) -> Frame:
        self.send({"op": "load", "path": str(path), "num_ctx": num_ctx, "num_threads": 1})
        return self.recv()

    def generate(self, request_id: str, prompt: str, **options: Any) -> None:
        options.setdefault("seed", 1)
        self.send({"op": "generate", "id": request_id, "prompt": prompt, "options": options})

    def collect(self, request_id: str) -> tuple[list[str], Frame]:
        """Token texts until the request's done or error frame."""
        texts: list[str] = []
        while True:
            frame = self.recv()
            assert frame.get("id") == request_id, frame
            if frame["event"] == "token":
                texts.append(frame["text"])
            else:
                return texts, frame


@pytest.fixture
def start_runner(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> Iterator[Callable[[], RunnerProcess]]:
    yield from runner_harness.runner_starter(RunnerProcess, subprocess_env, tmp_path)


@pytest.fixture
def runner(start_runner: Callable[[], RunnerProcess]) -> RunnerProcess:
    """A runner that has said `ready`."""
    proc = start_runner()
    ready = proc.recv()
    assert ready == {"event": "ready", "pid": proc.proc.pid}
    return proc


@pytest.fixture
def loaded(runner: RunnerProcess, tiny_model: TinyModelFactory) -> RunnerProcess:
    """A runner with a tiny model that answers "b"."""
    frame = runner.load(tiny_model("b"))
    assert frame["event"] == "loaded", frame
    return runner


# ---- lifecycle -----------------------------------------------------------------------------


def test_runner_says_ready_with_its_pid(start_runner: Callable[[], RunnerProcess]) -> None:
    proc = start_runner()
    assert proc.recv() == {"event": "ready", "pid": proc.proc.pid}


def test_load_reports_timing_memory_and_context(
    runner: RunnerProcess, tiny_model: TinyModelFactory
) -> None:
    frame = runner.load(tiny_model("a"), num_ctx=512)
    assert frame["event"] == "loaded"
    assert frame["load_duration"] > 0
    assert frame["rss"] > 0
    assert frame["n_ctx"] == 512
    assert frame["n_gpu_layers"] == 0
    assert frame["threads"] == 1


def test_load_reports_llama_cpp_progress_before_loaded(
    runner: RunnerProcess, tiny_model: TinyModelFactory
) -> None:
    assert runner.load(tiny_model("a"))["event"] == "loaded"
    progress = runner.load_progress
    assert progress, "no load_progress frame before loaded"
    assert progress == sorted(progress) and len(set(progress)) == len(progress)
    assert all(0.0 <= p <= 1.0 for p in progress)
    assert progress[-1] == 1.0


def test_shutdown_exits_zero(loaded: RunnerProcess) -> None:
    loaded.send({"op": "shutdown"})
    assert loaded.wait() == 0


def test_runner_exits_when_the_daemon_goes_away(loaded: RunnerProcess) -> None:
    loaded.sock.close()
    assert loaded.wait() == 0


def test_stats_reports_resident_memory(loaded: RunnerProcess) -> None:
    loaded.send({"op": "stats"})
    frame = loaded.recv()
    assert frame["event"] == "stats"
    assert frame["rss"] > 0


def test_stats_answers_before_any_model_is_loaded(runner: RunnerProcess) -> None:
    runner.send({"op": "stats"})
    assert runner.recv()["rss"] > 0


# ---- generation ----------------------------------------------------------------------------


def test_generate_streams_the_models_answer_and_counts_tokens(loaded: RunnerProcess) -> None:
    loaded.generate("r1", "Hello there", num_predict=7)
    texts, done = loaded.collect("r1")
    assert "".join(texts) == "b" * 7
    assert done["event"] == "done"
    assert done["done_reason"] == "length"
    assert done["eval_count"] == 7
    assert done["prompt_eval_count"] > 0
    for key in ("prompt_eval_duration", "eval_duration"):
        assert isinstance(done[key], int)
        assert done[key] >= 0


def test_each_model_answers_with_its_own_character(
    start_runner: Callable[[], RunnerProcess], tiny_model: TinyModelFactory
) -> None:
    for char in "xq":
        proc = start_runner()
        proc.recv()
        assert proc.load(tiny_model(char))["event"] == "loaded"
        proc.generate("r", "hi", num_predict=3)
        texts, _ = proc.collect("r")
        assert "".join(texts) == char * 3


def test_requests_queue_and_keep_their_ids(loaded: RunnerProcess) -> None:
    loaded.generate("first", "one", num_predict=2)
    loaded.generate("second", "two", num_predict=3)
    first, done_first = loaded.collect("first")
    second, done_second = loaded.collect("second")
    assert (len(first), done_first["eval_count"]) == (2, 2)
    assert (len(second), done_second["eval_count"]) == (3, 3)


def test_num_predict_zero_generates_nothing(loaded: RunnerProcess) -> None:
    loaded.generate("r0", "hi", num_predict=0)
    texts, done = loaded.collect("r0")
    assert texts == []
    assert done["eval_count"] == 0


def test_stop_sequence_ends_generation_with_reason_stop(loaded: RunnerProcess) -> None:
    loaded.generate("rs", "hi", num_predict=20, stop=["bbb"])
    texts, done = loaded.collect("rs")
    assert done["done_reason"] == "stop"
    assert "bbb" not in "".join(texts)


def test_generation_stops_when_the_context_window_is_full(
    runner: RunnerProcess, tiny_model: TinyModelFactory
) -> None:
    assert runner.load(tiny_model("b"), num_ctx=64)["n_ctx"] == 64
    runner.generate("full", "hi", num_predict=1000)
    texts, done = runner.collect("full")
    assert done["event"] == "done"
    assert done["done_reason"] == "length"
    assert 0 < len(texts) < 64


def test_cancel_mid_generation_ends_with_reason_cancel(
    runner: RunnerProcess, tiny_model: TinyModelFactory
) -> None:
    assert runner.load(tiny_model("b"), num_ctx=8192)["event"] == "loaded"
    runner.generate("long", "hi", num_predict=100_000)
    assert runner.recv()["event"] == "token"
    runner.send({"op": "cancel", "id": "long"})
    texts, done = runner.collect("long")
    assert done["event"] == "done"
    assert done["done_reason"] == "cancel"
    assert done["eval_count"] < 8000
    # The runner goes on serving.
    runner.generate("after", "hi", num_predict=2)
    texts, done = runner.collect("after")
    assert (texts, done["done_reason"]) == (["b", "b"], "length")


def test_cancel_of_an_unknown_request_is_harmless(loaded: RunnerProcess) -> None:
    loaded.send({"op": "cancel", "id": "nobody"})
    loaded.generate("r", "hi", num_predict=2)
    _, done = loaded.collect("r")
    assert done["done_reason"] == "length"


@pytest.mark.parametrize("prompt_chars", [100, 300, 2000])
def test_prompt_longer_than_the_context_is_a_bad_request(
    runner: RunnerProcess, tiny_model: TinyModelFactory, prompt_chars: int
) -> None:
    # num_ctx=64 is below llama.cpp's own minimum context (256): the limit must still hold.
    assert runner.load(tiny_model("b"), num_ctx=64)["event"] == "loaded"
    runner.generate("big", "x" * prompt_chars, num_predict=5)
    texts, frame = runner.collect("big")
    assert texts == []
    assert frame["event"] == "error"
    assert frame["kind"] == "bad_request"
    assert "num_ctx" in frame["message"]
    # Still usable afterwards.
    runner.generate("small", "hi", num_predict=2)
    texts, _ = runner.collect("small")
    assert "".join(texts) == "bb"


def test_generate_before_load_is_an_error(runner: RunnerProcess) -> None:
    runner.generate("early", "hi", num_predict=2)
    _, frame = runner.collect("early")
    assert frame["event"] == "error"
    assert "no model loaded" in frame["message"]


def test_unknown_op_is_a_bad_request(loaded: RunnerProcess) -> None:
    loaded.send({"op": "dance", "id": "d1"})
    frame = loaded.recv()
    assert (frame["event"], frame["id"], frame["kind"]) == ("error", "d1", "bad_request")


# ---- load failures -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["not_gguf", "cut_tensor_data", "corrupt_header", "missing"])
def test_loading_a_broken_file_fails_and_the_runner_exits_non_zero(
    runner: RunnerProcess, tiny_model: TinyModelFactory, tmp_path: Path, variant: str
) -> None:
    good = tiny_model("a").read_bytes()
    path = tmp_path / "broken.gguf"
    if variant == "not_gguf":
        path.write_bytes(b"not a model at all\n" * 100)
    elif variant == "cut_tensor_data":
        path.write_bytes(good[:-4096])
    elif variant == "corrupt_header":
        path.write_bytes(good[:8] + (2**40).to_bytes(8, "little") + good[16:])
    frame = runner.load(path)
    assert frame["event"] == "error"
    assert frame["kind"] == "load_failed"
    assert frame["message"]
    assert str(path) not in frame["message"]
    assert runner.wait() != 0


def test_a_context_llama_cpp_cannot_make_is_its_own_error_kind_without_the_path(
    runner: RunnerProcess, smollm2_path: Path
) -> None:
    """The model loads, but a KV cache of 2 x 4M tokens (about 100 GB) cannot be made."""
    load = {"op": "load", "path": str(smollm2_path), "num_ctx": 2**22, "num_threads": 1}
    runner.send({**load, "num_parallel": 2})
    frame = runner.recv()
    assert (frame["event"], frame["kind"]) == ("error", "context_failed")
    assert "id" not in frame
    assert "context" in frame["message"]
    assert str(smollm2_path.parent) not in frame["message"]
    assert smollm2_path.name not in frame["message"]
    assert runner.wait() != 0


# ---- embeddings ----------------------------------------------------------------------------


def test_embed_returns_one_normalised_vector_per_input(loaded: RunnerProcess) -> None:
    loaded.send({"op": "embed", "id": "e1", "inputs": ["hello", "world", "!"]})
    frame = loaded.recv()
    assert frame["event"] == "embeddings", frame
    assert frame["id"] == "e1"
    vectors = frame["embeddings"]
    assert len(vectors) == 3
    for vector in vectors:
        assert len(vector) == 64
        assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-3)
    assert frame["prompt_eval_count"] > 0


def test_embed_then_generate_still_works(loaded: RunnerProcess) -> None:
    loaded.send({"op": "embed", "id": "e", "inputs": ["x"]})
    assert loaded.recv()["event"] == "embeddings"
    loaded.generate("g", "hi", num_predict=2)
    texts, _ = loaded.collect("g")
    assert "".join(texts) == "bb"


def test_embed_refuses_an_overlong_input_without_truncate(
    runner: RunnerProcess, tiny_model: TinyModelFactory
) -> None:
    assert runner.load(tiny_model("b"), num_ctx=64)["event"] == "loaded"
    runner.send({"op": "embed", "id": "e", "inputs": ["y" * 500], "truncate": False})
    frame = runner.recv()
    assert (frame["event"], frame["kind"]) == ("error", "bad_request")


def test_inputs_embedded_together_match_each_embedded_alone(loaded: RunnerProcess) -> None:
    texts = ["hello", "a somewhat longer input about something", "!", "x" * 300]
    loaded.send({"op": "embed", "id": "all", "inputs": texts})
    together = loaded.recv()["embeddings"]
    for i, text in enumerate(texts):
        loaded.send({"op": "embed", "id": f"one{i}", "inputs": [text]})
        alone = loaded.recv()["embeddings"][0]
        assert max(abs(a - b) for a, b in zip(together[i], alone, strict=True)) < 1e-5, i


def test_a_long_embedding_does_not_stall_a_running_generation(
    runner: RunnerProcess, tiny_model: TinyModelFactory
) -> None:
    """The embedding is read in chunks between decode steps: the generation goes on."""
    loaded = runner.load(tiny_model("b", context_length=4096), num_ctx=4096)
    assert loaded["event"] == "loaded"
    runner.generate("gen", "hi", num_predict=3000)
    assert runner.recv()["event"] == "token"
    runner.send({"op": "embed", "id": "long", "inputs": ["y" * 3000]})
    between = 0
    while True:
        frame = runner.recv()
        if frame.get("id") == "long":
            assert frame["event"] == "embeddings", frame
            break
        assert (frame["id"], frame["event"]) == ("gen", "token"), frame
        between += 1
    chunks = -(-frame["prompt_eval_count"] // loaded["embed_batch"])
    assert chunks >= 20
    assert between >= chunks - 1  # a generated token between every two chunks
    runner.send({"op": "cancel", "id": "gen"})
    _, done = runner.collect("gen")
    assert done["done_reason"] == "cancel"


def test_a_long_input_is_embedded_in_chunks_as_in_one_pass_without_ballooning(
    runner: RunnerProcess, smollm2_path: Path
) -> None:
    """SmolLM2: a 700-token input read 128 tokens at a time gives the vector that one pass
    over it gives (llama-cpp-python's Llama.embed, mean pooling), and the runner grows by
    far less than the one-pass buffers would take (logits for every token alone: 150 MB)."""
    import llama_cpp

    text = " ".join(f"word{i % 97} is here" for i in range(140))
    loaded = runner.load(smollm2_path, num_ctx=768)
    assert (loaded["event"], loaded["embed_batch"]) == ("loaded", 128)
    runner.send({"op": "stats"})
    before = runner.recv()["rss"]
    runner.send({"op": "embed", "id": "e", "inputs": [text]})
    frame = runner.recv()
    assert frame["event"] == "embeddings", frame
    runner.send({"op": "stats"})
    grown = runner.recv()["rss"] - before
    assert 512 < frame["prompt_eval_count"] < 768
    assert grown < 120 * 2**20, grown
    reference = llama_cpp.Llama(
        model_path=str(smollm2_path),
        n_ctx=768,
        n_batch=768,
        n_ubatch=768,
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        verbose=False,
    )
    try:
        expected = reference.embed(text, normalize=True)
    finally:
        reference.close()
    got = frame["embeddings"][0]
    assert len(got) == len(expected)
    assert sum(a * b for a, b in zip(got, expected, strict=True)) > 0.9999


# ---- framing -------------------------------------------------------------------------------


def test_frames_round_trip_over_a_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        messages = [{"op": "x", "id": "1", "text": "héllo ✓"}, {"event": "done", "n": [1, 2]}]
        left.sendall(b"".join(encode_frame(m) for m in messages))
        assert [recv_frame(right), recv_frame(right)] == messages
        left.close()
        assert recv_frame(right) is None  # clean end of stream


def test_frame_header_is_big_endian_length() -> None:
    frame = encode_frame({"a": 1})
    (length,) = HEADER.unpack(frame[: HEADER.size])
    assert length == len(frame) - HEADER.size
    assert frame[:4] == length.to_bytes(4, "big")


@pytest.mark.parametrize(
    "payload",
    [
        HEADER.pack(MAX_FRAME + 1),  # absurd length
        HEADER.pack(10) + b"{}",  # stream ends inside the body
        b"\x00\x00",  # stream ends inside the header
        HEADER.pack(2) + b"[]",  # not an object
    ],
)
def test_malformed_frames_are_protocol_errors(payload: bytes) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(payload)
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError):
            recv_frame(right)


async def test_async_reader_decodes_frames_and_a_clean_end() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(encode_frame({"event": "token", "id": "1", "text": "b"}))
    reader.feed_data(encode_frame({"event": "done", "id": "1"}))
    reader.feed_eof()
    assert await read_frame(reader) == {"event": "token", "id": "1", "text": "b"}
    assert await read_frame(reader) == {"event": "done", "id": "1"}
    assert await read_frame(reader) is None


@pytest.mark.parametrize(
    "payload",
    [HEADER.pack(MAX_FRAME + 1), HEADER.pack(10) + b"{}", b"\x00\x00", HEADER.pack(2) + b"[]"],
)
async def test_async_reader_refuses_malformed_frames(payload: bytes) -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(payload)
    reader.feed_eof()
    with pytest.raises(ProtocolError):
        await read_frame(reader)


def test_load_accepts_a_multi_gpu_tensor_split(
    runner: RunnerProcess, tiny_model: TinyModelFactory
) -> None:
    """The scheduler's per-GPU split reaches llama.cpp (a CPU build ignores it)."""
    runner.send(
        {
            "op": "load",
            "path": str(tiny_model("a")),
            "num_ctx": 512,
            "num_threads": 1,
            "tensor_split": [0.25, 0.75],
        }
    )
    assert runner.recv()["event"] == "loaded"
    runner.generate("r1", "x", num_predict=3)
    texts, done = runner.collect("r1")
    assert "".join(texts) == "aaa" and done["event"] == "done"


def test_load_progress_is_throttled_but_keeps_the_end() -> None:
    from localserve.runner.main import LoadProgress

    sent: list[Frame] = []
    progress = LoadProgress(sent.append, step=0.25, interval_s=3600)
    for i in range(101):
        progress(i / 100)
    values = [frame["progress"] for frame in sent]
    assert values == [0.0, 0.25, 0.5, 0.75, 1.0]
    progress(1.0)  # a repeated end is not sent twice
    assert len(sent) == 5


def _stats_while_generating(runner: RunnerProcess, request_id: str) -> Frame:
    """Run one generation and ask for stats while it decodes; the stats frame."""
    runner.generate(request_id, "hi", num_predict=300)
    stats: Frame | None = None
    tokens = 0
    while True:
        frame = runner.recv()
        if frame["event"] == "token":
            tokens += 1
            if tokens == 10:  # a few decode steps in
                runner.send({"op": "stats"})
        elif frame["event"] == "stats":
            stats = frame
        elif frame["event"] in ("done", "error"):
            assert frame["event"] == "done", frame
            if stats is not None:
                return stats


# The adaptive-thread tests pin the runner and the busy processes to two CPUs, so they mean
# the same on any machine: the runner's governor counts only the CPUs it may run on.
TWO_CPUS = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []


@pytest.fixture
def adaptive(runner: RunnerProcess, tiny_model: TinyModelFactory) -> RunnerProcess:
    """A runner on two CPUs with 2 threads and the thread governor on."""
    if len(TWO_CPUS) < 2:
        pytest.skip("needs two CPUs it may pin processes to")
    os.sched_setaffinity(runner.proc.pid, TWO_CPUS)
    load = {"op": "load", "path": str(tiny_model("b")), "num_ctx": 512, "num_threads": 2}
    runner.send({**load, "adapt_threads": True})
    assert runner.recv()["event"] == "loaded"
    return runner


@contextlib.contextmanager
def machine_held_by_others() -> Iterator[None]:
    """Four spinning processes on the runner's two CPUs: at most one core is left to it."""
    spin = "import time\nend = time.time() + 60\nwhile time.time() < end: pass\n"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(4)]
    try:
        for spinner in spinners:
            os.sched_setaffinity(spinner.pid, TWO_CPUS)
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


@pytest.mark.cpu_heavy
def test_an_adaptive_runner_gives_up_threads_while_other_processes_hold_the_cores(
    adaptive: RunnerProcess,
) -> None:
    assert _stats_while_generating(adaptive, "quiet")["threads"] == 2
    with machine_held_by_others():
        deadline = time.monotonic() + 30
        threads = [_stats_while_generating(adaptive, "busy-0")["threads"]]
        while threads[-1] != 1 and time.monotonic() < deadline:
            threads.append(_stats_while_generating(adaptive, f"busy-{len(threads)}")["threads"])
    assert threads[-1] == 1, threads
    deadline = time.monotonic() + 30
    loads: list[float] = []
    while (after := _stats_while_generating(adaptive, "after"))["threads"] != 2:
        loads.append(after["others_load"])
        if time.monotonic() >= deadline:
            _fail_unless_others_stayed_busy(loads)


def _fail_unless_others_stayed_busy(loads: list[float]) -> None:
    """The runner kept one thread: a fault if the machine was mostly quiet by its own
    readings; if other programs (not this test's) kept the cores busy, nothing was shown."""
    quiet = statistics.median(loads) < FREE_CORE_AT
    assert not quiet, f"the runner kept one thread while others used {loads} cores"
    pytest.skip(f"other programs kept this machine's cores busy ({loads} cores)")


@pytest.mark.cpu_heavy
def test_a_runner_back_from_idle_knows_the_load_of_the_moment(adaptive: RunnerProcess) -> None:
    _stats_while_generating(adaptive, "before")
    with machine_held_by_others():
        time.sleep(1.0)  # the runner idles while the machine gets busy...
        # ...and its first steps of new work already use one thread (a prompt read with
        # both threads fighting the others for the cores is the slowest thing of all).
        assert _stats_while_generating(adaptive, "busy")["threads"] == 1
    time.sleep(1.0)  # idle again while the machine quiets down
    after = _stats_while_generating(adaptive, "after")
    if after["threads"] != 2:
        _fail_unless_others_stayed_busy([after["others_load"]])


def test_a_fixed_runner_keeps_its_threads(
    runner: RunnerProcess, tiny_model: TinyModelFactory
) -> None:
    runner.send({"op": "load", "path": str(tiny_model("b")), "num_ctx": 512, "num_threads": 2})
    assert runner.recv()["event"] == "loaded"
    assert _stats_while_generating(runner, "r")["threads"] == 2
