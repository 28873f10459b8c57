"""OpenAI's Responses API (`/v1/responses`, stateless, issue 12) with the unmodified
`openai` client against a real daemon: tiny models (one token per prompt byte), a
tool-capable template with grammar-forced calls, and a thinking template."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf
from pydantic import BaseModel
from samples import SEARCH_ARGUMENTS, WEATHER_ARGUMENTS
from test_anthropic_messages import events_during, tiny_tokens
from test_server_api import post_json, request
from test_thinking_api import scripted_thinker
from test_tool_calls import TOOL_TEMPLATE

from localserve.api import responses as dialect
from localserve.service.prompts import render_chat

openai = pytest.importorskip("openai")

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather",
    "parameters": WEATHER_ARGUMENTS,
}
SEARCH = {"type": "function", "name": "search", "parameters": SEARCH_ARGUMENTS}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    tmp = tmp_path_factory.mktemp("responses")
    with running_daemon(tmp, default_num_ctx=2048) as running:
        running.add_model("plain", write_tiny_gguf(tmp / "a.gguf", "a"))
        tooly = write_tiny_gguf(
            tmp / "t.gguf", '"', chat_template=TOOL_TEMPLATE, context_length=2048
        )
        # seeded: a grammar-forced string ends when the sampler picks '"'; an unlucky
        # draw could run a call to max_tokens, so every run draws the same (passing) way
        running.add_model("tooly", tooly, parameters={"seed": 7})
        yield running


@pytest.fixture
def client(daemon: DaemonThread) -> Any:
    return openai.OpenAI(base_url=daemon.base_url + "/v1", api_key="unused", max_retries=0)


def test_create_with_text_input_gives_output_text_and_usage(client: Any) -> None:
    response = client.responses.create(model="plain", input="hi", max_output_tokens=4)
    assert response.object == "response" and response.id.startswith("resp_")
    assert response.output_text == "aaaa"
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant"
    # the tiny model never ends on its own: max_output_tokens cut it, as OpenAI reports
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 4 and response.store is False
    assert response.usage.total_tokens == response.usage.input_tokens + 4


def test_instructions_are_a_system_turn_first(client: Any) -> None:
    def prompt_tokens(**body: Any) -> int:
        response = client.responses.create(model="plain", input="hi", max_output_tokens=1, **body)
        return int(response.usage.input_tokens)

    without = prompt_tokens()
    instructions = "Answer in French."
    with_instructions = prompt_tokens(instructions=instructions)
    turn = f"<|im_start|>system\n{instructions}<|im_end|>\n"
    assert with_instructions - without == tiny_tokens(turn)


def test_the_stream_is_the_typed_event_sequence(client: Any) -> None:
    events = list(
        client.responses.create(model="plain", input="hi", max_output_tokens=3, stream=True)
    )
    types = [e.type for e in events]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.incomplete",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "aaa"
    done = events[-1].response
    assert done.id == events[0].response.id and done.output_text == "aaa"
    assert done.usage.output_tokens == 3


def test_responses_stream_accumulates_a_forced_function_call(client: Any) -> None:
    with client.responses.stream(
        model="tooly",
        input="weather in Paris?",
        tools=[WEATHER, SEARCH],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=200,
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert "response.function_call_arguments.delta" in types
    assert "response.function_call_arguments.done" in types
    assert final.status == "completed"
    (call,) = [item for item in final.output if item.type == "function_call"]
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    arguments = json.loads(call.arguments)
    assert set(arguments) == {"location", "unit"} and arguments["unit"] in ("celsius", "fahrenheit")


def test_required_tool_choice_returns_valid_calls(client: Any) -> None:
    response = client.responses.create(
        model="tooly",
        input="weather in Paris?",
        tools=[WEATHER, SEARCH],
        tool_choice="required",
        max_output_tokens=200,
    )
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and response.status == "completed"
    for call in calls:
        assert call.name in ("get_weather", "search")
        assert isinstance(json.loads(call.arguments), dict)


def _round_trip(output: str) -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "input_text", "text": "weather in Paris?"}]},
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"location": "Paris"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": output},
    ]


def test_function_call_and_output_items_reach_the_prompt(client: Any) -> None:
    def prompt_tokens(output: str) -> int:
        response = client.responses.create(
            model="tooly", input=_round_trip(output), tools=[WEATHER], max_output_tokens=1
        )
        return int(response.usage.input_tokens)

    assert prompt_tokens("18 C, sunny and warm") - prompt_tokens("18 C") == tiny_tokens(
        ", sunny and warm"
    )
    parsed = dialect._generation_request(
        {"model": "m", "input": _round_trip("18 C"), "tools": [WEATHER]}
    )
    prompt = render_chat(TOOL_TEMPLATE, parsed.messages or [], tools=parsed.tools)
    assert '<tool_call>{"name": "get_weather", "arguments": {"location": "Paris"}}' in prompt
    assert "<|im_start|>tool\n18 C<|im_end|>" in prompt


def test_text_format_json_schema_constrains_the_answer(client: Any) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    response = client.responses.create(
        model="tooly",
        input="where?",
        text={"format": {"type": "json_schema", "name": "place", "schema": schema}},
        max_output_tokens=100,
    )
    assert isinstance(json.loads(response.output_text)["city"], str)
    parsed = client.responses.parse(
        model="tooly", input="where?", text_format=Place, max_output_tokens=100
    )
    assert isinstance(parsed.output_parsed, Place) and parsed.status == "completed"


class Place(BaseModel):
    city: str


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"previous_response_id": "resp_1"}, "stateless"),
        ({"store": True}, "stateless"),
        ({"conversation": "conv_1"}, "stateless"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
            "does not support images",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "stateless"),
        ({"input": []}, "input"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
        ({"tools": [WEATHER]}, "does not support tools"),
        ({"stream_options": {"include_obfuscation": True}}, "stream_options.include_obfuscation"),
        ({"stream_options": {"chunk_size": 4}}, "stream_options.chunk_size"),
    ],
)
def test_bad_requests_are_400s_naming_the_field(
    daemon: DaemonThread, body: dict[str, Any], named: str
) -> None:
    status, answer = post_json(
        daemon.base_url, "/v1/responses", {"model": "plain", "input": "hi", **body}
    )
    assert status == 400, answer
    assert answer["error"]["type"] == "invalid_request_error"
    assert named in answer["error"]["message"]


def test_store_false_and_unknown_models_through_the_client(client: Any) -> None:
    response = client.responses.create(model="plain", input="hi", max_output_tokens=1, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="nope", input="hi")
    with pytest.raises(openai.BadRequestError, match="stateless"):
        client.responses.create(model="plain", input="hi", previous_response_id="resp_x")


def test_metrics_and_events_see_the_responses_endpoint(client: Any, daemon: DaemonThread) -> None:
    def ask() -> None:
        client.responses.create(model="plain", input="hi", max_output_tokens=1)

    assert b"request_finished" in events_during(daemon, ask, b"v1/responses")
    status, _, data = request(daemon.base_url, "GET", "/metrics")
    assert status == 200
    lines = [line for line in data.decode().splitlines() if 'endpoint="v1/responses"' in line]
    assert any(line.startswith("localserve_requests_total") for line in lines)


# ---- reasoning ----------------------------------------------------------------------------


@pytest.fixture
def thinker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonThread]:
    with scripted_thinker(tmp_path, monkeypatch) as running:
        yield running


def test_reasoning_comes_back_as_a_reasoning_item(thinker: DaemonThread) -> None:
    client = openai.OpenAI(base_url=thinker.base_url + "/v1", api_key="unused", max_retries=0)
    response = client.responses.create(model="thinker", input="hi", reasoning={"effort": "low"})
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].content[0].text == "Let me think."
    assert response.output_text == "Hello!" and response.status == "completed"
    with client.responses.stream(model="thinker", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    assert types.index("response.reasoning_text.delta") < types.index("response.output_text.delta")
    assert final.output_text == "Hello!" and final.output[0].type == "reasoning"
    status, answer = post_json(
        thinker.base_url,
        "/v1/responses",
        {"model": "thinker", "input": "hi", "reasoning": {"effort": "none"}},
    )
    # effort none is think=false: nothing is taken apart as reasoning
    assert status == 200 and [item["type"] for item in answer["output"]] == ["message"]


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


def test_an_error_inside_the_stream_is_an_error_event(failing: DaemonThread) -> None:
    client = openai.OpenAI(base_url=failing.base_url + "/v1", api_key="unused", max_retries=0)
    events = list(client.responses.create(model="plain", input="hi", stream=True))
    assert events[-1].type == "error"
    assert events[-1].code == "runner_failed" and events[-1].message == "the runner crashed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
