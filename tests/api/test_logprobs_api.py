"""Token log-probabilities through the unmodified `openai` and `ollama` clients (issue 13):
OpenAI chat (`logprobs`, `top_logprobs`), legacy completions (`logprobs: N`) and Ollama's
generate and chat (`logprobs`, `top_logprobs`), streamed and not.

The tiny model always answers "a" with logit 64 against 0 for every other token, so its
logprobs are known exactly; an oracle test checks them against llama-cpp-python, and a
SmolLM2 test (cpu_heavy) does so token by token on real text.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import VOCAB, write_tiny_gguf
from test_server_api import request

ollama = pytest.importorskip("ollama")
openai = pytest.importorskip("openai")

USER = {"role": "user", "content": "hi"}
# The daemon gets an API key and every client sends it (the key checks stay out of the way).
KEY = "logprobs-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
# The tiny model: logit 64 (less an RMS-norm epsilon) for "a", 0 for the VOCAB - 1 others.
LOGPROB_A = -math.log1p((VOCAB - 1) * math.exp(-64.0))
LOGPROB_OTHER = -64.0 + LOGPROB_A


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    tmp = tmp_path_factory.mktemp("logprobs")
    with running_daemon(tmp, api_key=KEY) as running:
        running.add_model("tiny", write_tiny_gguf(tmp / "a.gguf", "a"))
        yield running


@pytest.fixture
def oai(daemon: DaemonThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.base_url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def client(daemon: DaemonThread) -> ollama.Client:
    return ollama.Client(host=daemon.base_url, headers=AUTH)


def post_json(base: str, path: str, body: Any) -> tuple[int, Any]:
    status, _, data = request(base, "POST", path, body, headers=AUTH)
    return status, json.loads(data) if data.strip() else None


def _check_entry(token: str, logprob: float, top: list[tuple[str, float]], count: int) -> None:
    """One token's entry: the greedy choice is the most likely; probabilities sum <= 1."""
    assert token == "a"
    assert math.isclose(logprob, LOGPROB_A, abs_tol=1e-6)
    assert len(top) == count
    if count:
        assert top[0] == (token, logprob)
        assert logprob == max(value for _, value in top)
        assert all(math.isclose(v, LOGPROB_OTHER, rel_tol=1e-4) for _, v in top[1:])
    assert sum(math.exp(value) for _, value in top) <= 1.0 + 1e-9


# ---- OpenAI chat -----------------------------------------------------------------------------


def test_openai_chat_returns_logprobs_with_top_alternatives(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(
        model="tiny",
        messages=[USER],  # type: ignore[list-item]
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=4,
    )
    choice = answer.choices[0]
    assert choice.message.content == "aaa"
    assert choice.logprobs is not None and choice.logprobs.content is not None
    content = choice.logprobs.content
    assert len(content) == 3 == answer.usage.completion_tokens  # type: ignore[union-attr]
    for entry in content:
        assert entry.bytes == [ord("a")]
        top = [(alt.token, alt.logprob) for alt in entry.top_logprobs]
        _check_entry(entry.token, entry.logprob, top, 4)


def test_openai_chat_streams_logprobs_with_each_content_chunk(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="tiny",
            messages=[USER],  # type: ignore[list-item]
            max_tokens=4,
            temperature=0,
            logprobs=True,
            stream=True,
        )
    )
    entries = [
        entry
        for chunk in chunks
        for choice in chunk.choices
        if choice.logprobs is not None and choice.logprobs.content
        for entry in choice.logprobs.content
    ]
    text = "".join(c.delta.content or "" for chunk in chunks for c in chunk.choices)
    assert text == "aaaa" and len(entries) == 4
    for entry in entries:
        _check_entry(entry.token, entry.logprob, [], 0)  # logprobs without alternatives


def test_openai_chat_without_logprobs_answers_null(oai: openai.OpenAI) -> None:
    answer = oai.chat.completions.create(
        model="tiny",
        messages=[USER],  # type: ignore[list-item]
        max_tokens=1,
    )
    assert answer.choices[0].logprobs is None


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": "3"}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"logprobs": "yes"}, "logprobs"),
    ],
)
def test_openai_chat_bad_logprob_fields_are_a_400_naming_them(
    daemon: DaemonThread, fields: dict[str, Any], named: str
) -> None:
    body = {"model": "tiny", "messages": [USER], "max_tokens": 1, **fields}
    status, answer = post_json(daemon.base_url, "/v1/chat/completions", body)
    assert status == 400 and named in answer["error"]["message"]


# ---- OpenAI legacy completions -----------------------------------------------------------


def test_legacy_completions_return_tokens_logprobs_and_offsets(oai: openai.OpenAI) -> None:
    prompt = "hello"
    answer = oai.completions.create(
        model="tiny", prompt=prompt, max_tokens=3, temperature=0, logprobs=2
    )
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None
    assert logprobs.tokens == ["a", "a", "a"]
    assert logprobs.text_offset == [len(prompt), len(prompt) + 1, len(prompt) + 2]
    assert logprobs.token_logprobs is not None and logprobs.top_logprobs is not None
    for value, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert math.isclose(value, LOGPROB_A, abs_tol=1e-6)
        assert top["a"] == value and value == max(top.values())
        assert len(top) == 2  # "a" and one alternative ("a" is its own best alternative)
        assert sum(math.exp(v) for v in top.values()) <= 1.0 + 1e-9


def test_legacy_completions_stream_logprobs_with_running_offsets(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.completions.create(
            model="tiny", prompt="hey", max_tokens=3, temperature=0, logprobs=0, stream=True
        )
    )
    tokens: list[str] = []
    offsets: list[int] = []
    for chunk in chunks:
        logprobs = chunk.choices[0].logprobs if chunk.choices else None
        if logprobs is not None and logprobs.tokens:
            tokens += logprobs.tokens
            offsets += logprobs.text_offset or []
    assert tokens == ["a", "a", "a"] and offsets == [3, 4, 5]


def test_legacy_logprobs_out_of_range_is_a_400(daemon: DaemonThread) -> None:
    for bad in (21, -1, True, "2"):
        status, answer = post_json(
            daemon.base_url, "/v1/completions", {"model": "tiny", "prompt": "x", "logprobs": bad}
        )
        assert status == 400 and "logprobs" in answer["error"]["message"], bad


# ---- Ollama ----------------------------------------------------------------------------------


def test_ollama_generate_returns_logprobs(client: ollama.Client) -> None:
    answer = client.generate(
        model="tiny",
        prompt="hi",
        options={"temperature": 0, "num_predict": 3},
        logprobs=True,
        top_logprobs=2,
    )
    assert answer.response == "aaa"
    assert answer.logprobs is not None and len(answer.logprobs) == 3
    for entry in answer.logprobs:
        top = [(alt.token, alt.logprob) for alt in entry.top_logprobs or []]
        _check_entry(entry.token, entry.logprob, top, 2)


def test_ollama_chat_streams_logprobs_per_chunk(client: ollama.Client) -> None:
    entries = []
    text = ""
    for chunk in client.chat(
        model="tiny",
        messages=[USER],
        options={"temperature": 0, "num_predict": 3},
        logprobs=True,
        top_logprobs=1,
        stream=True,
    ):
        text += chunk.message.content or ""
        entries += chunk.logprobs or []
    assert text == "aaa" and len(entries) == 3
    for entry in entries:
        top = [(alt.token, alt.logprob) for alt in entry.top_logprobs or []]
        _check_entry(entry.token, entry.logprob, top, 1)


def test_ollama_without_logprobs_sends_none(daemon: DaemonThread) -> None:
    status, answer = post_json(
        daemon.base_url,
        "/api/generate",
        {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 1}},
    )
    assert status == 200 and "logprobs" not in answer


def test_ollama_top_logprobs_out_of_range_is_a_400(daemon: DaemonThread) -> None:
    status, answer = post_json(
        daemon.base_url,
        "/api/chat",
        {"model": "tiny", "messages": [USER], "logprobs": True, "top_logprobs": 50},
    )
    assert status == 400 and "top_logprobs" in answer["error"]


# ---- the oracle ------------------------------------------------------------------------------


def _log_softmax(logits: Any) -> Any:
    values = np.asarray(logits, dtype=np.float64)
    peak = values.max()
    return values - (peak + math.log(float(np.exp(values - peak).sum())))


def _llama_logprobs(path: Path, prompt: list[int], answer: list[int]) -> list[Any]:
    """llama-cpp-python's own log-softmax of the logits before each answer token (flash
    attention on, as the runner has it by default): the prompt read in one batch, then the
    answer one token at a time, as it was generated (a batch read of generated text differs
    in its last bits, more with a quantized model)."""
    from llama_cpp import Llama

    llm = Llama(str(path), n_ctx=512, n_threads=1, logits_all=True, flash_attn=True, verbose=False)
    try:
        llm.eval(prompt)
        steps = [_log_softmax(llm.scores[llm.n_tokens - 1])]
        for token in answer[:-1]:
            llm.eval([token])
            steps.append(_log_softmax(llm.scores[llm.n_tokens - 1]))
        return steps
    finally:
        llm.close()


def test_logprobs_agree_with_llama_cpp_on_the_same_prompt(
    daemon: DaemonThread, client: ollama.Client, tmp_path: Path
) -> None:
    """Through the ollama client, raw prompt: the returned `context` gives the token ids,
    llama-cpp-python gives the oracle's logits."""
    answer = client.generate(
        model="tiny",
        prompt="Name a color.",
        raw=True,
        options={"temperature": 0, "num_predict": 2},
        logprobs=True,
        top_logprobs=3,
    )
    context = list(answer.context or [])
    assert answer.logprobs is not None and len(answer.logprobs) == 2
    prompt, generated = context[:-2], context[-2:]
    oracle = _llama_logprobs(write_tiny_gguf(tmp_path / "a.gguf", "a"), prompt, generated)
    for step, entry in enumerate(answer.logprobs):
        expected = oracle[step]
        chosen = generated[step]
        assert math.isclose(entry.logprob, expected[chosen], abs_tol=1e-5)
        got = [alt.logprob for alt in entry.top_logprobs or []]
        assert np.allclose(got, np.sort(expected)[::-1][:3], atol=1e-5)


@pytest.mark.cpu_heavy
def test_smollm2_logprobs_agree_with_llama_cpp_through_openai(
    tmp_path: Path, smollm2_path: Path
) -> None:
    """Real text: every token of a greedy legacy completion, and its top 5, against
    llama-cpp-python's evaluation of the prompt and the answer so far."""
    with running_daemon(tmp_path, default_num_ctx=512, api_key=KEY) as daemon:
        daemon.add_model("smollm2", smollm2_path)
        oai = openai.OpenAI(base_url=daemon.base_url + "/v1", api_key=KEY, max_retries=0)
        prompt = "The capital of France is"
        answer = oai.completions.create(
            model="smollm2", prompt=prompt, max_tokens=5, temperature=0, logprobs=5
        )
        status, ollama_answer = post_json(
            daemon.base_url,
            "/api/generate",
            {
                "model": "smollm2",
                "prompt": prompt,
                "raw": True,
                "stream": False,
                "options": {"temperature": 0, "num_predict": 5},
            },
        )
    assert status == 200
    logprobs = answer.choices[0].logprobs
    assert logprobs is not None and logprobs.token_logprobs and logprobs.top_logprobs
    context = ollama_answer["context"]  # the same greedy answer: its token ids
    generated = len(logprobs.tokens or [])
    assert generated >= 1
    first = len(context) - ollama_answer["eval_count"]
    oracle = _llama_logprobs(smollm2_path, context[:first], context[first:])
    for step in range(generated):
        expected = oracle[step]
        chosen = context[first + step]
        assert math.isclose(logprobs.token_logprobs[step], expected[chosen], abs_tol=2e-3)
        top = sorted(logprobs.top_logprobs[step].values(), reverse=True)
        assert np.allclose(top[:5], np.sort(expected)[::-1][:5], atol=2e-3)
        assert sum(math.exp(v) for v in top) <= 1.0 + 1e-6
