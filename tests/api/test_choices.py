"""OpenAI's `n` (issue 13): n choices from parallel sequences that share one read of the
prompt, through the unmodified `openai` client; chat and legacy completions, streamed
and not; usage sums the completion tokens and counts the prompt once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf
from test_server_api import request
from test_tool_calls import TOOL_TEMPLATE, USER, WEATHER

openai = pytest.importorskip("openai")

KEY = "choices-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    tmp = tmp_path_factory.mktemp("choices")
    with running_daemon(tmp, api_key=KEY, num_parallel=2) as running:
        running.add_model("tiny", write_tiny_gguf(tmp / "a.gguf", "a"))
        yield running


@pytest.fixture
def oai(daemon: DaemonThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=daemon.base_url + "/v1", api_key=KEY, max_retries=0)


def post_json(base: str, path: str, body: Any) -> tuple[int, Any]:
    status, _, data = request(base, "POST", path, body, headers=AUTH)
    return status, json.loads(data) if data.strip() else None


def prompt_tokens_evaluated(daemon: DaemonThread) -> float:
    """The daemon's `localserve_prompt_tokens_total` over all models."""
    status, _, data = request(daemon.base_url, "GET", "/metrics", headers=AUTH)
    assert status == 200
    pattern = re.compile(r"^localserve_prompt_tokens_total\{[^}]*\} (\S+)$", re.M)
    return sum(float(value) for value in pattern.findall(data.decode()))


def _messages(text: str) -> Any:
    return [{"role": "user", "content": text}]


def test_n_chat_choices_are_indexed_and_read_the_prompt_once(
    daemon: DaemonThread, oai: openai.OpenAI
) -> None:
    before = prompt_tokens_evaluated(daemon)
    answer = oai.chat.completions.create(
        model="tiny",
        messages=_messages("a prompt long enough to be worth copying between slots"),
        max_tokens=2,
        n=3,
    )
    assert [c.index for c in answer.choices] == [0, 1, 2]
    assert all(c.message.content == "aa" for c in answer.choices)
    usage = answer.usage
    assert usage is not None
    assert usage.completion_tokens == 6
    assert usage.total_tokens == usage.prompt_tokens + 6
    # Three choices, one prompt read: the others copied its KV or found it cached.
    assert prompt_tokens_evaluated(daemon) - before == usage.prompt_tokens


def test_n_chat_streams_every_choice_with_its_index(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="tiny",
            messages=_messages("stream two"),
            max_tokens=3,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
        )
    )
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    logprobs: dict[int, int] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes[choice.index] = choice.finish_reason
            if choice.logprobs is not None and choice.logprobs.content:
                logprobs[choice.index] = logprobs.get(choice.index, 0) + len(
                    choice.logprobs.content
                )
    assert texts == {0: "aaa", 1: "aaa"}
    assert finishes == {0: "length", 1: "length"}
    assert logprobs == {0: 3, 1: 3}
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert usage.completion_tokens == 6


def test_n_legacy_completions_give_n_choices(oai: openai.OpenAI) -> None:
    answer = oai.completions.create(model="tiny", prompt="hello", max_tokens=2, n=2, logprobs=1)
    assert [c.index for c in answer.choices] == [0, 1]
    assert [c.text for c in answer.choices] == ["aa", "aa"]
    assert all(c.logprobs is not None and c.logprobs.tokens == ["a", "a"] for c in answer.choices)
    assert answer.usage is not None and answer.usage.completion_tokens == 4


def test_n_legacy_completions_stream(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.completions.create(model="tiny", prompt="hey", max_tokens=2, n=2, stream=True)
    )
    texts: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "aa", 1: "aa"}


def test_n_with_a_forced_tool_choice_gives_n_calls(tmp_path: Path) -> None:
    """Each choice is forced by the grammar on its own (a tiny tool model: see
    tests/api/test_tool_calls.py)."""
    with running_daemon(tmp_path, api_key=KEY, num_parallel=2, default_num_ctx=2048) as daemon:
        tooly = write_tiny_gguf(
            tmp_path / "t.gguf", '"', chat_template=TOOL_TEMPLATE, context_length=2048
        )
        daemon.add_model("tooly", tooly)
        status, answer = post_json(
            daemon.base_url,
            "/v1/chat/completions",
            {
                "model": "tooly",
                "messages": [USER],
                "max_tokens": 200,
                "tools": [WEATHER],
                "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                "n": 2,
            },
        )
    assert status == 200, answer
    assert [c["index"] for c in answer["choices"]] == [0, 1]
    for choice in answer["choices"]:
        assert choice["finish_reason"] == "tool_calls"
        calls = choice["message"]["tool_calls"]
        assert calls and all(c["function"]["name"] == "get_weather" for c in calls)


@pytest.mark.parametrize("bad", [0, 9, -1, "2", 1.5, True])
def test_n_out_of_range_is_a_400_naming_n(daemon: DaemonThread, bad: object) -> None:
    for path, body in (
        ("/v1/chat/completions", {"messages": _messages("hi")}),
        ("/v1/completions", {"prompt": "hi"}),
    ):
        status, answer = post_json(daemon.base_url, path, {"model": "tiny", "n": bad, **body})
        assert status == 400 and "'n'" in answer["error"]["message"], (path, bad)


@pytest.mark.cpu_heavy
def test_seeded_choices_differ_from_each_other_and_repeat_exactly(
    tmp_path: Path, smollm2_path: Path
) -> None:
    """SmolLM2, sampled: with a seed, choice i uses seed + i, so the choices differ and
    the same request gives the same choices again (batch-invariant decoding: the tokens
    do not depend on which choices shared a decode)."""
    with running_daemon(
        tmp_path, api_key=KEY, num_parallel=3, batch_invariant=True, default_num_ctx=512
    ) as daemon:
        daemon.add_model("smollm2", smollm2_path)
        oai = openai.OpenAI(base_url=daemon.base_url + "/v1", api_key=KEY, max_retries=0)

        def choices() -> list[str]:
            answer = oai.chat.completions.create(
                model="smollm2",
                messages=_messages("Write one sentence about the sea."),
                max_tokens=12,
                temperature=1.0,
                seed=11,
                n=3,
            )
            return [c.message.content or "" for c in answer.choices]

        first = choices()
        again = choices()
        single = oai.chat.completions.create(
            model="smollm2",
            messages=_messages("Write one sentence about the sea."),
            max_tokens=12,
            temperature=1.0,
            seed=12,
        )
    assert len(set(first)) > 1, first
    assert again == first
    assert single.choices[0].message.content == first[1]  # choice 1 is seed 12
