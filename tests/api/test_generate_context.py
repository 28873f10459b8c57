"""Ollama's `context` on /api/generate (issue 13), through the unmodified `ollama` client:
the done chunk returns the token ids of the prompt and the answer, and a request that
sends them back continues from them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import VOCAB, byte_token_id, write_tiny_gguf
from test_server_api import request

ollama = pytest.importorskip("ollama")

KEY = "context-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GREEDY = {"temperature": 0, "num_predict": 2}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    tmp = tmp_path_factory.mktemp("context")
    with running_daemon(tmp, api_key=KEY) as running:
        running.add_model("tiny", write_tiny_gguf(tmp / "a.gguf", "a"))
        yield running


@pytest.fixture
def client(daemon: DaemonThread) -> ollama.Client:
    return ollama.Client(host=daemon.base_url, headers=AUTH)


def post_json(base: str, path: str, body: Any) -> tuple[int, Any]:
    status, _, data = request(base, "POST", path, body, headers=AUTH)
    return status, json.loads(data) if data.strip() else None


def test_generate_returns_the_prompt_and_answer_tokens(client: ollama.Client) -> None:
    answer = client.generate(model="tiny", prompt="hi", raw=True, options=GREEDY)
    context = list(answer.context or [])
    assert answer.response == "aa"
    assert context[0] == 1  # BOS
    assert context[-2:] == [byte_token_id("a")] * 2
    # The tiny vocabulary is bytes (id = 3 + byte): the prompt's tokens spell it.
    prompt_bytes = bytes(token - byte_token_id("\0") for token in context[1:-2])
    assert prompt_bytes.decode().strip("\u2581 ") == "hi"


def test_a_streamed_generate_returns_context_in_its_done_chunk(client: ollama.Client) -> None:
    chunks = list(client.generate(model="tiny", prompt="hi", options=GREEDY, stream=True))
    assert all(not c.context for c in chunks[:-1])
    assert chunks[-1].done and chunks[-1].context
    assert list(chunks[-1].context)[-2:] == [byte_token_id("a")] * 2


def test_context_sent_back_continues_the_exchange(client: ollama.Client) -> None:
    first = client.generate(model="tiny", prompt="hi", raw=True, options=GREEDY)
    context = list(first.context or [])
    client.generate(model="tiny", keep_alive=0)  # unload: the next read starts afresh
    second = client.generate(model="tiny", prompt="yo", raw=True, context=context, options=GREEDY)
    continued = list(second.context or [])
    assert continued[: len(context)] == context
    prompt_tokens = len(continued) - (second.eval_count or 0)
    assert prompt_tokens > len(context)
    assert 1 not in continued[len(context) : prompt_tokens]  # no second BOS
    # Nothing was cached: every prompt token, the first exchange's included, was read.
    assert second.prompt_eval_count == prompt_tokens


@pytest.mark.parametrize("bad", ["1 2 3", [1, "2"], [-1], [1.5], [True], [VOCAB], {"a": 1}, 7])
def test_a_bad_context_is_a_400_naming_it(daemon: DaemonThread, bad: Any) -> None:
    status, answer = post_json(
        daemon.base_url, "/api/generate", {"model": "tiny", "prompt": "hi", "context": bad}
    )
    assert status == 400 and "context" in answer["error"], bad


def test_chat_refuses_context(daemon: DaemonThread) -> None:
    status, answer = post_json(
        daemon.base_url,
        "/api/chat",
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "context": [1]},
    )
    assert status == 400 and "'context'" in answer["error"]


@pytest.mark.cpu_heavy
def test_greedy_continuation_equals_one_request_with_the_whole_text(
    tmp_path: Path, smollm2_path: Path
) -> None:
    """SmolLM2, raw prompts: prompt B with the context of (A, answer X) gives the same
    greedy tokens as one request with A + X + B, where those tokenize the same (each read
    afresh: the model is unloaded in between)."""
    with running_daemon(tmp_path, api_key=KEY, default_num_ctx=512) as daemon:
        daemon.add_model("smollm2", smollm2_path)
        client = ollama.Client(host=daemon.base_url, headers=AUTH)
        options = {"temperature": 0, "num_predict": 6}
        first = client.generate(
            model="smollm2", prompt="The capital of France is", raw=True, options=options
        )
        client.generate(model="smollm2", keep_alive=0)
        follow_up = " The capital of Italy is"
        continued = client.generate(
            model="smollm2",
            prompt=follow_up,
            raw=True,
            context=list(first.context or []),
            options=options,
        )
        client.generate(model="smollm2", keep_alive=0)
        whole = client.generate(
            model="smollm2",
            prompt="The capital of France is" + first.response + follow_up,
            raw=True,
            options=options,
        )
    continued_ids = list(continued.context or [])
    whole_ids = list(whole.context or [])
    prompt_of = len(continued_ids) - (continued.eval_count or 0)
    assert continued.prompt_eval_count == prompt_of  # the context was read
    # Where the whole text tokenizes as the context and the follow-up did, it is exact.
    assert whole_ids[: len(whole_ids) - (whole.eval_count or 0)] == continued_ids[:prompt_of]
    assert continued.response == whole.response
