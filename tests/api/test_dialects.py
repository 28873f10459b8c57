"""The dialects are translators onto one inference path: each app writes its errors in
its own shape (also those of the security middleware and of unknown paths), CORS answers
what a browser asks, and both dialects' answers come from the same generation."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf
from test_server_api import post_json, request


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path) as running:
        running.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        yield running


def test_each_app_writes_its_errors_in_its_own_shape(daemon: DaemonThread) -> None:
    status, _, data = request(daemon.base_url, "GET", "/v1/no-such-route")
    assert status == 404 and json.loads(data)["error"]["type"] == "not_found_error"
    status, _, data = request(daemon.base_url, "GET", "/api/no-such-route")
    assert status == 404 and json.loads(data)["code"] == "not_found"
    evil = {"Host": "127.attacker.example"}
    status, _, data = request(daemon.base_url, "GET", "/v1/models", headers=evil)
    assert status == 403 and json.loads(data)["error"]["code"] == "forbidden"
    status, _, data = request(daemon.base_url, "GET", "/api/tags", headers=evil)
    assert status == 403 and json.loads(data) == {
        "error": "host '127.attacker.example' is not allowed",
        "code": "forbidden",
    }


def test_a_preflight_from_a_local_page_gets_the_headers_it_asks_for(
    daemon: DaemonThread,
) -> None:
    asked = "authorization, content-type, x-stainless-os, x-stainless-lang"
    status, headers, _ = request(
        daemon.base_url,
        "OPTIONS",
        "/v1/chat/completions",
        headers={
            "Origin": "http://localhost:5173",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": asked,
        },
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert headers["Access-Control-Allow-Headers"] == asked
    assert "POST" in headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("http://127.0.0.1:8080", True),
        ("http://[::1]:3000", True),
        ("https://localhost", True),
        ("http://localhost.evil.example", False),
        ("http://127.0.0.1.nip.io", False),
        ("https://example.com", False),
        ("null", False),
    ],
)
def test_loopback_origins_are_allowed_by_default_and_others_refused(
    daemon: DaemonThread, origin: str, allowed: bool
) -> None:
    status, headers, _ = request(daemon.base_url, "GET", "/api/tags", headers={"Origin": origin})
    assert (status == 200) is allowed
    if allowed:
        assert headers["Access-Control-Allow-Origin"] == origin
    else:
        assert status == 403


def test_both_dialects_answer_from_the_same_generation(daemon: DaemonThread) -> None:
    _, ollama = post_json(
        daemon.base_url,
        "/api/chat",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": "hi"}],
            "stream": False,
            "options": {"num_predict": 5},
        },
    )
    _, openai = post_json(
        daemon.base_url,
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5},
    )
    assert ollama["message"]["content"] == openai["choices"][0]["message"]["content"] == "aaaaa"
    assert ollama["prompt_eval_count"] + ollama["eval_count"] > 0
    assert openai["usage"]["completion_tokens"] == ollama["eval_count"] == 5
