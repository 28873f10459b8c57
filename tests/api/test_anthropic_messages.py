"""Anthropic's Messages API (`/v1/messages`, `/v1/messages/count_tokens`, issue 12) with
the unmodified `anthropic` client against a real daemon: tiny models (byte-level tokens:
one token per prompt byte, so token counts are exact to predict), a tool-capable
template with grammar-forced calls, a thinking template, and SmolLM2 for real text."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, read_sse_until_subscribed, running_daemon
from gguf_factory import write_tiny_gguf
from samples import SEARCH_ARGUMENTS, WEATHER_ARGUMENTS
from test_server_api import post_json, request
from test_thinking_api import scripted_thinker
from test_tool_calls import TOOL_TEMPLATE

from localserve.api import anthropic as dialect
from localserve.service.prompts import render_chat

anthropic = pytest.importorskip("anthropic")

USER = {"role": "user", "content": "weather in Paris?"}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather",
    "input_schema": WEATHER_ARGUMENTS,
}
SEARCH = {"name": "search", "input_schema": SEARCH_ARGUMENTS}


def tiny_tokens(text: str) -> int:
    """Tokens of `text` inside a prompt for the tiny models' vocabulary (bytes only): one
    per byte, a space written as SentencePiece's "▁" (3 bytes)."""
    return len(text.replace(" ", "▁").encode())


def tiny_prompt_tokens(prompt: str) -> int:
    """A whole prompt: BOS, SentencePiece's leading space, then the text."""
    return 1 + tiny_tokens(" " + prompt)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    tmp = tmp_path_factory.mktemp("anthropic")
    with running_daemon(tmp, default_num_ctx=2048) as running:
        running.add_model("plain", write_tiny_gguf(tmp / "a.gguf", "a"))
        running.add_model("counter", write_tiny_gguf(tmp / "c.gguf", "c"))  # one test's
        tooly = write_tiny_gguf(
            tmp / "t.gguf", '"', chat_template=TOOL_TEMPLATE, context_length=2048
        )
        # seeded: a grammar-forced string ends when the sampler picks '"'; an unlucky
        # draw could run a call to max_tokens, so every run draws the same (passing) way
        running.add_model("tooly", tooly, parameters={"seed": 7})
        yield running


@pytest.fixture
def client(daemon: DaemonThread) -> Any:
    return anthropic.Anthropic(base_url=daemon.base_url, api_key="unused", max_retries=0)


def test_create_returns_a_text_block_stop_reason_and_usage(client: Any) -> None:
    message = client.messages.create(
        model="plain", max_tokens=5, system="Be terse.", messages=[USER]
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.model == "plain:latest"
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == "aaaaa"
    assert message.stop_reason == "max_tokens" and message.stop_sequence is None
    assert message.usage.output_tokens == 5
    total = message.usage.input_tokens + message.usage.cache_read_input_tokens
    prompt = (  # the fallback template (the tiny model has none)
        "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nweather in Paris?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert total == tiny_prompt_tokens(prompt)


def test_a_stop_sequence_ends_the_answer_and_is_named(client: Any) -> None:
    message = client.messages.create(
        model="plain", max_tokens=20, stop_sequences=["zz", "aaa"], messages=[USER]
    )
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "aaa"
    assert message.content == []  # the answer was "aaa...": nothing before the stop
    assert message.usage.output_tokens == 3


def test_stream_gives_the_same_answer_through_the_clients_accumulator(client: Any) -> None:
    with client.messages.stream(model="plain", max_tokens=4, messages=[USER]) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == "aaaa" and len(texts) == 4
    assert final.content[0].type == "text" and final.content[0].text == "aaaa"
    assert final.stop_reason == "max_tokens" and final.usage.output_tokens == 4
    # message_start carries zeros; message_delta the real totals, which the client applies
    count = client.messages.count_tokens(model="plain", messages=[USER]).input_tokens
    assert final.usage.input_tokens + final.usage.cache_read_input_tokens == count


def test_the_stream_is_anthropics_event_sequence(daemon: DaemonThread) -> None:
    status, headers, data = request(
        daemon.base_url,
        "POST",
        "/v1/messages",
        {"model": "plain", "max_tokens": 3, "stream": True, "messages": [USER]},
    )
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = []
    for chunk in data.decode().split("\n\n"):
        if not chunk.strip():
            continue
        name_line, data_line = chunk.split("\n")
        payload = json.loads(data_line.removeprefix("data: "))
        assert name_line == f"event: {payload['type']}"
        events.append(payload)
    types = [e["type"] for e in events]
    assert types == [
        "message_start",
        "ping",
        "content_block_start",
        *["content_block_delta"] * 3,
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert events[0]["message"]["content"] == [] and events[0]["message"]["stop_reason"] is None
    assert events[2]["content_block"] == {"type": "text", "text": ""}
    assert {e["delta"]["type"] for e in events[3:6]} == {"text_delta"}
    assert events[-2]["delta"] == {"stop_reason": "max_tokens", "stop_sequence": None}
    assert events[-2]["usage"]["output_tokens"] == 3


def test_forced_tool_choice_any_gives_a_valid_tool_use(client: Any) -> None:
    message = client.messages.create(
        model="tooly",
        max_tokens=200,
        messages=[USER],
        tools=[WEATHER, SEARCH],
        tool_choice={"type": "any"},
    )
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert uses and all(use.id.startswith("toolu_") for use in uses)
    for use in uses:
        if use.name == "get_weather":
            assert set(use.input) == {"location", "unit"}
            assert use.input["unit"] in ("celsius", "fahrenheit")
        else:
            assert use.name == "search" and isinstance(use.input["query"], str)


def test_a_named_tool_is_the_one_called_one_call_without_parallel_use(client: Any) -> None:
    message = client.messages.create(
        model="tooly",
        max_tokens=200,
        messages=[USER],
        tools=[WEATHER, SEARCH],
        tool_choice={"type": "tool", "name": "search", "disable_parallel_tool_use": True},
    )
    assert [(b.type, b.name) for b in message.content] == [("tool_use", "search")]
    assert isinstance(message.content[0].input["query"], str)


def test_a_streamed_tool_use_arrives_as_input_json_deltas(client: Any) -> None:
    with client.messages.stream(
        model="tooly",
        max_tokens=200,
        messages=[USER],
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    deltas = [e.delta for e in events if e.type == "content_block_delta"]
    assert deltas and all(d.type == "input_json_delta" for d in deltas)
    (use,) = final.content
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == json.loads("".join(d.partial_json for d in deltas))
    assert set(use.input) == {"location", "unit"} and final.stop_reason == "tool_use"


def _round_trip(result: str, location: str = "Paris") -> list[dict[str, Any]]:
    return [
        USER,
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"location": location},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": result},
                {"type": "text", "text": "Thanks."},
            ],
        },
    ]


def test_a_tool_use_and_its_result_in_the_history_reach_the_prompt(client: Any) -> None:
    def count(messages: list[dict[str, Any]]) -> int:
        counted = client.messages.count_tokens(model="tooly", messages=messages, tools=[WEATHER])
        return int(counted.input_tokens)

    short, longer = count(_round_trip("18 C")), count(_round_trip("18 C, sunny and warm"))
    assert longer - short == tiny_tokens(", sunny and warm")
    assert count(_round_trip("18 C", "Lyon-sur-Mer")) - short == len("Lyon-sur-Mer") - len("Paris")
    answer = client.messages.create(
        model="tooly", max_tokens=3, messages=_round_trip("18 C"), tools=[WEATHER]
    )
    assert answer.usage.input_tokens + answer.usage.cache_read_input_tokens == short


def test_the_round_trip_renders_the_call_and_the_result_as_the_template_expects() -> None:
    body = {"model": "m", "max_tokens": 9, "messages": _round_trip("18 C"), "tools": [WEATHER]}
    parsed = dialect._parse(body, endpoint="v1/messages")
    prompt = render_chat(TOOL_TEMPLATE, parsed.request.messages or [], tools=parsed.request.tools)
    assert '<tool_call>{"name": "get_weather", "arguments": {"location": "Paris"}}' in prompt
    assert "<|im_start|>tool\n18 C<|im_end|>\n<|im_start|>user\nThanks." in prompt
    assert parsed.request.messages[2]["tool_call_id"] == "toolu_1"  # type: ignore[index]


def test_count_tokens_is_the_prompt_a_generation_reads(client: Any, daemon: DaemonThread) -> None:
    # "counter" is used by this test alone: its runner holds no cached prompt yet
    content = "count me, please: " + "x" * 37
    messages = [{"role": "user", "content": content}]
    counted = client.messages.count_tokens(model="counter", system="Count.", messages=messages)
    prompt = (
        f"<|im_start|>system\nCount.<|im_end|>\n<|im_start|>user\n{content}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert counted.input_tokens == tiny_prompt_tokens(prompt)
    # the same conversation through Ollama's dialect: a first read evaluates all of it
    status, answer = post_json(
        daemon.base_url,
        "/api/chat",
        {
            "model": "counter",
            "stream": False,
            "options": {"num_predict": 1},
            "messages": [{"role": "system", "content": "Count."}, *messages],
        },
    )
    assert status == 200 and answer["prompt_eval_count"] == counted.input_tokens
    message = client.messages.create(
        model="counter", max_tokens=1, system="Count.", messages=messages
    )
    usage = message.usage
    assert usage.input_tokens + usage.cache_read_input_tokens == counted.input_tokens
    assert usage.cache_read_input_tokens > 0  # the same prompt again: read from the cache


def test_an_unknown_model_is_anthropics_not_found_error(client: Any) -> None:
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="nope", max_tokens=5, messages=[USER])
    assert caught.value.body["type"] == "error"
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "nope" in caught.value.body["error"]["message"]
    with pytest.raises(anthropic.NotFoundError):
        client.messages.count_tokens(model="nope", messages=[USER])


def test_an_unknown_field_is_a_400_naming_it(client: Any) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model="plain", max_tokens=5, messages=[USER], extra_body={"frobnicate": 1}
        )
    assert caught.value.body["error"]["type"] == "invalid_request_error"
    assert "frobnicate" in caught.value.body["error"]["message"]


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"model": "plain", "messages": [USER]}, "max_tokens"),
        ({"model": "plain", "max_tokens": 0, "messages": [USER]}, "max_tokens"),
        ({"model": "plain", "max_tokens": 5, "messages": []}, "messages"),
        ({"model": "plain", "max_tokens": 5, "messages": [USER], "mcp_servers": [{}]}, "mcp"),
        (
            {
                "model": "plain",
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "source": {"type": "base64", "data": ""}}],
                    }
                ],
            },
            "does not support images",
        ),
        (
            {
                "model": "tooly",
                "max_tokens": 5,
                "messages": [USER],
                "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            },
            "tools[0].type",
        ),
        (
            {"model": "tooly", "max_tokens": 5, "messages": [USER], "tools": [{"name": "x"}]},
            "tools[0].input_schema",
        ),
        (
            {
                "model": "tooly",
                "max_tokens": 5,
                "messages": [USER],
                "tools": [WEATHER],
                "tool_choice": {"type": "tool", "name": "nope"},
            },
            "nope",
        ),
        (
            {
                "model": "plain",
                "max_tokens": 5,
                "messages": [USER, {"role": "assistant", "content": "Sure"}],
            },
            "prefill",
        ),
        ({"model": "plain", "max_tokens": 5, "messages": [USER], "tools": [WEATHER]}, "tools"),
    ],
)
def test_bad_requests_are_400s_in_anthropics_shape(
    daemon: DaemonThread, body: dict[str, Any], named: str
) -> None:
    status, answer = post_json(daemon.base_url, "/v1/messages", body)
    assert status == 400, answer
    assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
    assert named in answer["error"]["message"]


def test_errors_before_the_handler_are_in_anthropics_shape(daemon: DaemonThread) -> None:
    status, _, data = request(
        daemon.base_url,
        "POST",
        "/v1/messages",
        {"model": "plain"},
        headers={"Host": "evil.example"},
    )
    assert status == 403
    assert json.loads(data)["error"]["type"] == "permission_error"
    status, _, data = request(daemon.base_url, "GET", "/v1/messages")
    assert status == 405 and json.loads(data)["type"] == "error"
    status, _, data = request(daemon.base_url, "POST", "/v1/messages/nope", {})
    assert status == 404 and json.loads(data)["error"]["type"] == "not_found_error"
    # the OpenAI routes beside it keep OpenAI's shape
    status, answer = post_json(daemon.base_url, "/v1/chat/completions", {"model": "nope"})
    assert status == 400 and "message" in answer["error"] and "type" not in answer


def events_during(daemon: DaemonThread, action: Callable[[], Any], until: bytes) -> bytes:
    """The raw `/api/events` bytes from subscription until `until` arrived (30 s at most)."""
    sse = socket.create_connection(("127.0.0.1", daemon.daemon.port))
    try:
        sse.sendall(b"GET /api/events?types=request_finished HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        read_sse_until_subscribed(sse)
        action()
        sse.settimeout(30)
        received = b""
        while until not in received:
            chunk = sse.recv(4096)
            assert chunk, received
            received += chunk
        return received
    finally:
        sse.close()


def test_metrics_and_events_see_the_messages_endpoint(client: Any, daemon: DaemonThread) -> None:
    def ask() -> None:
        client.messages.create(model="plain", max_tokens=1, messages=[USER])

    seen = events_during(daemon, ask, b"v1/messages")
    assert b"request_finished" in seen
    status, _, data = request(daemon.base_url, "GET", "/metrics")
    assert status == 200
    lines = [line for line in data.decode().splitlines() if 'endpoint="v1/messages"' in line]
    assert any(line.startswith("localserve_requests_total") for line in lines)


# ---- thinking -----------------------------------------------------------------------------


@pytest.fixture
def thinker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonThread]:
    with scripted_thinker(tmp_path, monkeypatch) as running:
        yield running


def test_thinking_comes_back_as_a_thinking_block(thinker: DaemonThread) -> None:
    client = anthropic.Anthropic(base_url=thinker.base_url, api_key="unused", max_retries=0)
    thinking = {"type": "enabled", "budget_tokens": 1024}
    message = client.messages.create(
        model="thinker", max_tokens=2048, thinking=thinking, messages=[USER]
    )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "Let me think."
    assert message.content[1].text == "Hello!" and message.stop_reason == "end_turn"
    with client.messages.stream(
        model="thinker", max_tokens=2048, thinking=thinking, messages=[USER]
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.delta.type for e in events if e.type == "content_block_delta"]
    assert "thinking_delta" in kinds and "text_delta" in kinds
    assert kinds.index("text_delta") > max(i for i, k in enumerate(kinds) if k == "thinking_delta")
    assert [b.type for b in final.content] == ["thinking", "text"]
    assert final.content[0].thinking == "Let me think." and final.content[1].text == "Hello!"


def test_thinking_is_refused_where_it_cannot_be(thinker: DaemonThread) -> None:
    client = anthropic.Anthropic(base_url=thinker.base_url, api_key="unused", max_retries=0)
    enabled = {"type": "enabled", "budget_tokens": 1024}
    with pytest.raises(anthropic.BadRequestError, match="does not support thinking"):
        client.messages.create(model="plain", max_tokens=2048, thinking=enabled, messages=[USER])
    with pytest.raises(anthropic.BadRequestError, match="budget_tokens"):
        client.messages.create(
            model="thinker",
            max_tokens=2048,
            thinking={"type": "enabled", "budget_tokens": 10},
            messages=[USER],
        )
    with pytest.raises(anthropic.BadRequestError, match="less than max_tokens"):
        client.messages.create(model="thinker", max_tokens=1024, thinking=enabled, messages=[USER])


def test_thinking_in_the_history_is_the_templates_reasoning_content() -> None:
    body = {
        "model": "m",
        "max_tokens": 9,
        "messages": [
            USER,
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Paris is in France.", "signature": "x"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Sunny."},
                ],
            },
            {"role": "user", "content": "And tomorrow?"},
        ],
    }
    messages = dialect._parse(body, endpoint="v1/messages").request.messages or []
    assert messages[1] == {
        "role": "assistant",
        "content": "Sunny.",
        "reasoning_content": "Paris is in France.",
    }


# ---- SmolLM2: real text -------------------------------------------------------------------

CHATML_TOOLS = (
    "{%- if tools %}<|im_start|>system\nYou can call these tools: {{ tools | tojson }}"
    "<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.mark.cpu_heavy
def test_smollm2_with_a_tool_template_answers_real_text(tmp_path: Path, smollm2_path: Path) -> None:
    with running_daemon(tmp_path, default_num_ctx=2048) as running:
        running.add_model(
            "smol-tools", smollm2_path, template=CHATML_TOOLS, parameters={"temperature": 0}
        )
        client = anthropic.Anthropic(base_url=running.base_url, api_key="unused", max_retries=0)
        question = {"role": "user", "content": "What is the capital of France? One word."}
        message = client.messages.create(model="smol-tools", max_tokens=24, messages=[question])
        text = message.content[0].text
        assert "Paris" in text, text
        assert message.stop_reason in ("end_turn", "max_tokens")
        call = client.messages.create(
            model="smol-tools",
            max_tokens=128,
            messages=[USER],
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "get_weather"},
        )
        (use,) = call.content
        assert use.type == "tool_use" and set(use.input) == {"location", "unit"}
        after = client.messages.create(
            model="smol-tools",
            max_tokens=32,
            tools=[WEATHER],
            messages=[
                USER,
                {"role": "assistant", "content": [use.model_dump(exclude_none=True)]},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": use.id, "content": "18 C, sunny"}
                    ],
                },
            ],
        )
        assert after.content and after.content[0].type in ("text", "tool_use")
        assert after.usage.output_tokens > 0


# ---- an error after the stream started ----------------------------------------------------


@pytest.fixture
def failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonThread]:
    from localserve.errors import RunnerError
    from localserve.service import inference

    async def scripted(self: Any) -> Any:
        yield inference.Token("a")
        raise RunnerError("the runner crashed")

    monkeypatch.setattr(inference.Generation, "_run", scripted)
    with running_daemon(tmp_path) as running:
        running.add_model("plain", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        yield running


def test_an_error_inside_the_stream_is_an_anthropic_error_event(failing: DaemonThread) -> None:
    client = anthropic.Anthropic(base_url=failing.base_url, api_key="unused", max_retries=0)
    opened = client.messages.stream(model="plain", max_tokens=5, messages=[USER])
    with pytest.raises(anthropic.APIStatusError) as caught, opened as stream:
        list(stream)
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "the runner crashed", "code": "runner_failed"},
    }
