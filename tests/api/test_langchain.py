"""LangChain's chat models, unmodified, against a real daemon (issue 12): `ChatOpenAI`
(chat completions and the Responses API) with `bind_tools` and
`with_structured_output(method="function_calling")`, and `ChatOllama.bind_tools`. The
tiny tool model cannot choose tools, so a forced `tool_choice` (a grammar) makes it call."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf
from pydantic import BaseModel, Field
from test_server_api import request
from test_tool_calls import TOOL_TEMPLATE

langchain_openai = pytest.importorskip("langchain_openai")
langchain_ollama = pytest.importorskip("langchain_ollama")


class GetWeather(BaseModel):
    """Current weather in a place."""

    location: str = Field(description="the city")
    unit: str = Field(
        description="celsius or fahrenheit", json_schema_extra={"enum": ["celsius", "fahrenheit"]}
    )


class Search(BaseModel):
    """Search the web."""

    query: str


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    tmp = tmp_path_factory.mktemp("langchain")
    with running_daemon(tmp, default_num_ctx=2048) as running:
        tooly = write_tiny_gguf(
            tmp / "t.gguf", '"', chat_template=TOOL_TEMPLATE, context_length=2048
        )
        # seeded: a grammar-forced string ends when the sampler picks '"'; an unlucky
        # draw could run a call to max_tokens, so every run draws the same (passing) way
        running.add_model("tooly", tooly, parameters={"seed": 7})
        yield running


def _chat_openai(daemon: DaemonThread, **kwargs: Any) -> Any:
    return langchain_openai.ChatOpenAI(
        base_url=daemon.base_url + "/v1",
        api_key="unused",
        model="tooly",
        max_tokens=200,
        max_retries=0,
        **kwargs,
    )


def test_chat_openai_bind_tools_gets_tool_calls(daemon: DaemonThread) -> None:
    model = _chat_openai(daemon).bind_tools([GetWeather, Search], tool_choice="required")
    message = model.invoke("weather in Paris?")
    assert message.tool_calls
    for call in message.tool_calls:
        assert call["name"] in ("GetWeather", "Search") and call["id"]
        if call["name"] == "GetWeather":
            assert set(call["args"]) == {"location", "unit"}
            assert call["args"]["unit"] in ("celsius", "fahrenheit")


def test_chat_openai_streams_tool_call_chunks(daemon: DaemonThread) -> None:
    model = _chat_openai(daemon).bind_tools([GetWeather], tool_choice="GetWeather")
    merged = None
    for chunk in model.stream("weather in Paris?"):
        merged = chunk if merged is None else merged + chunk
    assert merged is not None
    (call,) = merged.tool_calls
    assert call["name"] == "GetWeather" and set(call["args"]) == {"location", "unit"}


def test_with_structured_output_function_calling_returns_the_object(
    daemon: DaemonThread,
) -> None:
    structured = _chat_openai(daemon).with_structured_output(GetWeather, method="function_calling")
    result = structured.invoke("weather in Paris?")
    assert isinstance(result, GetWeather)
    assert result.unit in ("celsius", "fahrenheit")


def test_chat_openai_on_the_responses_api_gets_tool_calls(daemon: DaemonThread) -> None:
    model = _chat_openai(daemon, use_responses_api=True).bind_tools(
        [GetWeather], tool_choice="GetWeather"
    )
    message = model.invoke("weather in Paris?")
    (call,) = message.tool_calls
    assert call["name"] == "GetWeather" and set(call["args"]) == {"location", "unit"}
    status, _, metrics = request(daemon.base_url, "GET", "/metrics")
    assert status == 200 and 'endpoint="v1/responses"' in metrics.decode()


@pytest.fixture
def scripted_daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonThread]:
    """Ollama's dialect has no tool_choice: the tiny model's answer is scripted as a Hermes
    call (the format its template teaches), which the daemon parses."""
    from localserve.service import inference

    async def scripted(self: Any) -> Any:
        assert "get_weather" in self.prompt  # the bound tool reached the template
        text = (
            '<tool_call>{"name": "get_weather", "arguments": '
            '{"location": "Paris", "unit": "celsius"}}</tool_call>'
        )
        for piece in (text[:9], text[9:40], text[40:]):
            yield inference.Token(piece)
        yield inference.Finished("stop", 5, 1, 3, 1, 1, 1, prompt_tokens=5)

    monkeypatch.setattr(inference.Generation, "_run", scripted)
    with running_daemon(tmp_path) as running:
        running.add_model(
            "tooly", write_tiny_gguf(tmp_path / "t.gguf", '"', chat_template=TOOL_TEMPLATE)
        )
        yield running


def test_chat_ollama_bind_tools_gets_tool_calls(scripted_daemon: DaemonThread) -> None:
    def get_weather(location: str, unit: str) -> str:
        """Current weather in a place.

        Args:
            location: the city
            unit: celsius or fahrenheit
        """
        return "18"

    model = langchain_ollama.ChatOllama(base_url=scripted_daemon.base_url, model="tooly")
    message = model.bind_tools([get_weather]).invoke("weather in Paris?")
    assert message.content == ""
    (call,) = message.tool_calls
    assert call["name"] == "get_weather"
    assert call["args"] == {"location": "Paris", "unit": "celsius"}
