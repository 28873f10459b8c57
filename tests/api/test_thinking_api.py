"""`think` (Ollama) and `reasoning_content` (OpenAI) on a model whose template thinks."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf
from test_server_api import ndjson, post_json, request

THINKING_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)
USER = {"role": "user", "content": "hi"}


@contextlib.contextmanager
def scripted_thinker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonThread]:
    """A daemon whose every answer is "<think>Let me think.</think>\n\nHello!", streamed in
    pieces that cut the tags (5 prompt tokens, 4 answer tokens): "thinker" has a thinking
    template, "plain" none."""
    from localserve.service import inference

    async def scripted(self: Any) -> Any:
        for piece in ("<thi", "nk>Let me think", ".</think>\n\nHello", "!"):
            yield inference.Token(piece)
        yield inference.Finished("stop", 5, 1, 4, 1, 1, 1, prompt_tokens=5)

    monkeypatch.setattr(inference.Generation, "_run", scripted)
    with running_daemon(tmp_path) as running:
        running.add_model("plain", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        thinker = write_tiny_gguf(tmp_path / "t.gguf", "a", chat_template=THINKING_TEMPLATE)
        running.add_model("thinker", thinker)
        yield running


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[DaemonThread]:
    with scripted_thinker(tmp_path, monkeypatch) as running:
        yield running


def test_ollama_think_returns_thinking_apart(daemon: DaemonThread) -> None:
    body = {"model": "thinker", "messages": [USER], "think": True}
    status, answer = post_json(daemon.base_url, "/api/chat", {**body, "stream": False})
    assert status == 200
    assert answer["message"]["thinking"] == "Let me think."
    assert answer["message"]["content"] == "Hello!"
    status, _, data = request(daemon.base_url, "POST", "/api/chat", body)
    lines = ndjson(data)
    assert "".join(x["message"].get("thinking", "") for x in lines) == "Let me think."
    assert "".join(x["message"]["content"] for x in lines) == "Hello!"


def test_think_on_a_model_that_cannot_think_is_a_400(daemon: DaemonThread) -> None:
    status, answer = post_json(
        daemon.base_url, "/api/chat", {"model": "plain", "messages": [USER], "think": True}
    )
    assert status == 400 and answer["error"] == "plain:latest does not support thinking"
    status, answer = post_json(
        daemon.base_url, "/api/chat", {"model": "thinker", "messages": [USER], "think": "max"}
    )
    assert status == 400 and "think" in answer["error"]


def test_openai_gets_reasoning_content(daemon: DaemonThread) -> None:
    status, answer = post_json(
        daemon.base_url, "/v1/chat/completions", {"model": "thinker", "messages": [USER]}
    )
    assert status == 200
    message = answer["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me think." and message["content"] == "Hello!"


def test_show_lists_thinking_only_for_a_thinking_template(daemon: DaemonThread) -> None:
    _, thinker = post_json(daemon.base_url, "/api/show", {"model": "thinker"})
    _, plain = post_json(daemon.base_url, "/api/show", {"model": "plain"})
    assert "thinking" in thinker["capabilities"] and "thinking" not in plain["capabilities"]
