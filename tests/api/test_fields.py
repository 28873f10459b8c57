"""Fields a client sends are honoured or refused with a 400 that names them (issue 13):
images, embedding dimensions, suffix (fill-in-the-middle), a per-request template.
Logprobs, `n` and `context` have their own files (test_logprobs_api.py, test_choices.py,
test_generate_context.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf
from test_server_api import post_json

USER = {"role": "user", "content": "hi"}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path) as running:
        running.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        yield running


def test_images_are_refused_in_every_dialect(daemon: DaemonThread) -> None:
    status, body = post_json(
        daemon.base_url,
        "/api/chat",
        {"model": "tiny", "messages": [{**USER, "images": ["aGk="]}]},
    )
    assert status == 400 and "images" in body["error"] and "support" in body["error"]
    image_part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}
    status, body = post_json(
        daemon.base_url,
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": [image_part]}]},
    )
    assert status == 400 and "image_url" in body["error"]["message"]
    status, body = post_json(
        daemon.base_url, "/api/generate", {"model": "tiny", "prompt": "x", "images": ["aGk="]}
    )
    assert status == 400 and "images" in body["error"]


def test_text_content_parts_still_work(daemon: DaemonThread) -> None:
    status, body = post_json(
        daemon.base_url,
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_tokens": 2,
        },
    )
    assert status == 200 and body["choices"][0]["message"]["content"] == "aa"


def test_embedding_dimensions_are_cut_and_renormalised(daemon: DaemonThread) -> None:
    status, full = post_json(daemon.base_url, "/api/embed", {"model": "tiny", "input": "x"})
    assert status == 200
    width = len(full["embeddings"][0])
    assert width > 8
    status, cut = post_json(
        daemon.base_url, "/api/embed", {"model": "tiny", "input": "x", "dimensions": 8}
    )
    assert status == 200
    vector = cut["embeddings"][0]
    assert len(vector) == 8
    assert math.isclose(math.sqrt(sum(x * x for x in vector)), 1.0, rel_tol=1e-6)
    head = full["embeddings"][0][:8]
    norm = math.sqrt(sum(x * x for x in head))
    assert all(math.isclose(a, b / norm, rel_tol=1e-6) for a, b in zip(vector, head, strict=True))
    status, openai = post_json(
        daemon.base_url, "/v1/embeddings", {"model": "tiny", "input": "x", "dimensions": 8}
    )
    assert status == 200 and len(openai["data"][0]["embedding"]) == 8
    status, body = post_json(
        daemon.base_url,
        "/api/embed",
        {"model": "tiny", "input": "x", "dimensions": width + 1},
    )
    assert status == 400 and "dimensions" in body["error"]
    status, body = post_json(
        daemon.base_url, "/v1/embeddings", {"model": "tiny", "input": "x", "dimensions": "8"}
    )
    assert status == 400 and "dimensions" in body["error"]["message"]


def test_suffix_without_fim_tokens_is_a_400_naming_it(daemon: DaemonThread) -> None:
    status, body = post_json(
        daemon.base_url,
        "/api/generate",
        {"model": "tiny", "prompt": "def f(", "suffix": "    return x"},
    )
    assert status == 400 and body["error"].startswith("suffix:")


def test_a_per_request_template_replaces_the_models(daemon: DaemonThread) -> None:
    base = {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    _, plain = post_json(daemon.base_url, "/api/generate", base)
    _, longer = post_json(
        daemon.base_url,
        "/api/generate",
        {**base, "template": "{% for m in messages %}PREFIX PREFIX {{ m.content }}{% endfor %}"},
    )
    assert longer["prompt_eval_count"] != plain["prompt_eval_count"]
    status, body = post_json(
        daemon.base_url, "/api/generate", {**base, "template": "{% for x in %}"}
    )
    assert status == 400 and "template" in body["error"]


def test_usage_counts_the_whole_prompt_and_reports_the_cached_part(daemon: DaemonThread) -> None:
    body = {"model": "tiny", "messages": [USER], "max_tokens": 2}
    _, first = post_json(daemon.base_url, "/v1/chat/completions", body)
    _, second = post_json(daemon.base_url, "/v1/chat/completions", body)
    assert first["usage"]["prompt_tokens"] == second["usage"]["prompt_tokens"] > 2
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


@pytest.mark.parametrize(
    ("path", "field", "value"),
    [
        ("/v1/chat/completions", "top_logprobs", 3),  # without logprobs: true
        ("/v1/chat/completions", "n", 9),  # more than localserve's most choices (8)
        ("/v1/chat/completions", "logit_bias", {"65": 5}),
        ("/v1/completions", "echo", True),
        ("/v1/completions", "best_of", 3),
        ("/api/chat", "top_logprobs", 2),  # without logprobs: true
        ("/api/chat", "context", [1, 2, 3]),  # token context is for /api/generate
    ],
)
def test_a_field_not_acted_on_is_a_400_naming_it(
    daemon: DaemonThread, path: str, field: str, value: object
) -> None:
    body: dict[str, object] = {"model": "tiny", field: value}
    if path in ("/v1/chat/completions", "/api/chat"):
        body["messages"] = [USER]
    else:
        body["prompt"] = "hi"
    status, answer = post_json(daemon.base_url, path, body)
    message = answer["error"]["message"] if path.startswith("/v1") else answer["error"]
    assert status == 400 and f"'{field}'" in message


def test_defaults_of_those_fields_are_accepted(daemon: DaemonThread) -> None:
    status, _ = post_json(
        daemon.base_url,
        "/v1/chat/completions",
        {"model": "tiny", "messages": [USER], "n": 1, "logprobs": False, "max_tokens": 1},
    )
    assert status == 200
