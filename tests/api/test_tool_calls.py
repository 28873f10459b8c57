"""Tool calling through both dialects (issue 12), on a tiny model whose chat template has
tool support: a tiny model cannot choose tools well, so `tool_choice` "required" and a
named function (enforced by a grammar) make the protocol testable end to end, with the
unmodified `openai` client too."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf
from samples import SEARCH_ARGUMENTS, WEATHER_ARGUMENTS
from test_server_api import ndjson, post_json, request

from localserve.service.prompts import render_chat, validate_messages

TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}<tool_call>"
    '{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}'
    "</tool_call>{% endfor %}{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": WEATHER_ARGUMENTS,
    },
}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": SEARCH_ARGUMENTS}}
USER = {"role": "user", "content": "weather in Paris?"}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    # Byte-level tokens: the tool definitions alone are ~600 prompt tokens. The tool
    # model always wants to say '"', so under the grammar its strings end at once. It is
    # seeded: at temperature 0.8 an unlucky draw keeps a forced string going to max_tokens
    # (the grammar allows any character there), so the tests draw the same passing way.
    with running_daemon(tmp_path, default_num_ctx=2048) as running:
        running.add_model("plain", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        tooly = write_tiny_gguf(
            tmp_path / "t.gguf", '"', chat_template=TOOL_TEMPLATE, context_length=2048
        )
        running.add_model("tooly", tooly, parameters={"seed": 7})
        yield running


def _completion(daemon: DaemonThread, **body: Any) -> dict[str, Any]:
    status, answer = post_json(
        daemon.base_url,
        "/v1/chat/completions",
        {"model": "tooly", "messages": [USER], "max_tokens": 200, **body},
    )
    assert status == 200, answer
    return answer


def test_a_model_without_tool_support_refuses_tools_in_both_dialects(
    daemon: DaemonThread,
) -> None:
    body = {"model": "plain", "messages": [USER], "tools": [WEATHER]}
    status, answer = post_json(daemon.base_url, "/api/chat", body)
    assert status == 400 and answer["error"] == "plain:latest does not support tools"
    status, answer = post_json(daemon.base_url, "/v1/chat/completions", body)
    assert status == 400 and "does not support tools" in answer["error"]["message"]


def test_show_lists_the_tools_capability_from_the_template(daemon: DaemonThread) -> None:
    _, tooly = post_json(daemon.base_url, "/api/show", {"model": "tooly"})
    _, plain = post_json(daemon.base_url, "/api/show", {"model": "plain"})
    assert "tools" in tooly["capabilities"] and "tools" not in plain["capabilities"]


def test_the_tools_reach_the_prompt(daemon: DaemonThread) -> None:
    base = {"model": "tooly", "messages": [USER], "stream": False, "options": {"num_predict": 1}}
    _, without = post_json(daemon.base_url, "/api/chat", base)
    _, with_tools = post_json(daemon.base_url, "/api/chat", {**base, "tools": [WEATHER]})
    assert with_tools["prompt_eval_count"] > without["prompt_eval_count"] + 20


def test_required_tool_choice_returns_a_valid_call(daemon: DaemonThread) -> None:
    answer = _completion(daemon, tools=[WEATHER, SEARCH], tool_choice="required")
    choice = answer["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    calls = choice["message"]["tool_calls"]
    assert calls and all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    for call in calls:
        arguments = json.loads(call["function"]["arguments"])
        if call["function"]["name"] == "get_weather":
            assert set(arguments) == {"location", "unit"}
            assert arguments["unit"] in ("celsius", "fahrenheit")
        else:
            assert call["function"]["name"] == "search" and "query" in arguments


def test_a_named_function_is_the_one_called(daemon: DaemonThread) -> None:
    answer = _completion(
        daemon,
        tools=[WEATHER, SEARCH],
        tool_choice={"type": "function", "function": {"name": "search"}},
    )
    calls = answer["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["search"]
    assert "query" in json.loads(calls[0]["function"]["arguments"])


def test_an_unknown_named_function_is_a_400(daemon: DaemonThread) -> None:
    status, answer = post_json(
        daemon.base_url,
        "/v1/chat/completions",
        {
            "model": "tooly",
            "messages": [USER],
            "tools": [WEATHER],
            "tool_choice": {"type": "function", "function": {"name": "nope"}},
        },
    )
    assert status == 400 and "nope" in answer["error"]["message"]


def test_streaming_sends_tool_call_deltas_and_no_call_text_as_content(
    daemon: DaemonThread,
) -> None:
    status, _, data = request(
        daemon.base_url,
        "POST",
        "/v1/chat/completions",
        {
            "model": "tooly",
            "messages": [USER],
            "max_tokens": 200,
            "stream": True,
            "tools": [WEATHER],
            "tool_choice": "required",
        },
    )
    assert status == 200
    events = [
        json.loads(line[6:]) for line in data.decode().splitlines() if line.startswith("data: {")
    ]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert not any(d.get("content") for d in deltas)
    tool_deltas = [d for d in deltas if d.get("tool_calls")]
    assert len(tool_deltas) == 1
    call = tool_deltas[0]["tool_calls"][0]
    assert call["index"] == 0 and call["function"]["name"] == "get_weather"
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_the_ollama_dialect_puts_the_calls_on_the_final_chunk(
    daemon: DaemonThread, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ollama has no tool_choice; a model that answers with a call in its format is parsed.
    from localserve.service import inference

    async def scripted(self: Any) -> Any:
        text = '<tool_call>{"name": "get_weather", "arguments": {"location": "Paris"}}</tool_call>'
        for piece in (text[:7], text[7:30], text[30:]):
            yield inference.Token(piece)
        yield inference.Finished("stop", 5, 1, 3, 1, 1, 1)

    monkeypatch.setattr(inference.Generation, "_run", scripted)
    status, _, data = request(
        daemon.base_url,
        "POST",
        "/api/chat",
        {"model": "tooly", "messages": [USER], "tools": [WEATHER]},
    )
    lines = ndjson(data)
    assert status == 200
    assert "".join(line["message"]["content"] for line in lines) == ""
    final = lines[-1]
    assert final["done"] is True
    assert final["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": {"location": "Paris"},
    }


def test_a_tool_round_trip_keeps_the_call_and_the_result_in_the_prompt() -> None:
    messages = validate_messages(
        [
            USER,
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "call_1", "content": "18 C, sunny"},
        ]
    )
    prompt = render_chat(TOOL_TEMPLATE, messages, tools=[WEATHER])
    assert '<tool_call>{"name": "get_weather", "arguments": {"location": "Paris"}}' in prompt
    assert "<|im_start|>tool\n18 C, sunny" in prompt
    assert messages[2]["tool_call_id"] == "call_1"


def test_the_openai_client_gets_tool_calls(daemon: DaemonThread) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=daemon.base_url + "/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="tooly",
        messages=[USER],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=200,
    )
    call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert "location" in json.loads(call.function.arguments)  # type: ignore[union-attr]
