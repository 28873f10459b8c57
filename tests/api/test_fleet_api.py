"""What a router needs from a node (issue 15): /health, /ready and the drain, on a real
daemon with real runners (tests/fleet/ puts three of them behind a real LiteLLM proxy)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from daemon_harness import DaemonThread, running_daemon
from eventually import eventually
from gguf_factory import write_tiny_gguf
from held_stream import HELD_TOKENS, held_generate

from localserve.api.fleet import DRAIN_RETRY_AFTER_S, FULL_RETRY_AFTER_S, gated_routes
from localserve.api.openapi import GENERATION_ERRORS
from localserve.api.routes import EXTRA_ROUTES, ROUTES

CONTEXT = 32768  # room for HELD_TOKENS (the tiny model never stops early)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path, default_num_ctx=CONTEXT) as daemon:
        daemon.add_model("long", write_tiny_gguf(tmp_path / "l.gguf", "l", context_length=CONTEXT))
        yield daemon


def _events(daemon: DaemonThread) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    daemon.daemon.events.add_listener(seen.append)
    return seen


def _generate(base: str, num_predict: int) -> requests.Response:
    body = {
        "model": "long",
        "prompt": "x",
        "stream": False,
        "options": {"num_predict": num_predict},
    }
    return requests.post(base + "/api/generate", json=body, timeout=120)


def _metric(base: str, name: str) -> float:
    text = requests.get(base + "/metrics", timeout=30).text
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_health_is_ok_and_says_serving(node: DaemonThread) -> None:
    response = requests.get(node.base_url + "/health", timeout=30)
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["state"] == "serving"


def test_ready_reports_queue_depth_and_in_flight_per_model(node: DaemonThread) -> None:
    idle = requests.get(node.base_url + "/ready", timeout=30)
    assert idle.status_code == 200 and idle.json()["ready"] is True
    assert idle.json()["models"] == []  # nothing loaded yet
    stream = held_generate(node.base_url, "long")
    assert stream.first_line()["response"] == "l"
    busy = requests.get(node.base_url + "/ready", timeout=30).json()
    (row,) = busy["models"]
    assert row["model"] == "long:latest" and row["in_flight"] == 1 and row["queue_depth"] == 0
    assert busy["in_flight"] == 1 and busy["ready"] is True
    assert _metric(node.base_url, "localserve_node_in_flight_requests") == 1
    assert stream.finish()[-1]["done"] is True
    after = requests.get(node.base_url + "/ready", timeout=30).json()
    assert after["in_flight"] == 0 and after["models"][0]["in_flight"] == 0


def test_ready_is_503_when_a_model_has_no_room(tmp_path: Path) -> None:
    with running_daemon(tmp_path, default_num_ctx=CONTEXT, max_queue=1) as daemon:
        daemon.add_model("long", write_tiny_gguf(tmp_path / "l.gguf", "l", context_length=CONTEXT))
        base = daemon.base_url
        first = held_generate(base, "long")
        first.first_line()
        answers: list[requests.Response] = []
        waiting = threading.Thread(target=lambda: answers.append(_generate(base, 1)))
        waiting.start()
        eventually(lambda: daemon.ps()[0]["queue_depth"] == 1, 30, what="the second one queued")
        full = requests.get(base + "/ready", timeout=30)
        assert full.status_code == 503
        assert full.headers["Retry-After"] == str(FULL_RETRY_AFTER_S)
        assert full.json()["ready"] is False and "long:latest" in full.json()["error"]
        assert full.json()["models"][0]["full"] is True
        other = requests.get(base + "/ready?model=other", timeout=30)
        assert other.status_code == 200 and other.json()["models"] == []  # room for others
        assert requests.get(base + "/ready?model=long", timeout=30).status_code == 503
        assert requests.get(base + "/ready?model=", timeout=30).status_code == 400
        first.finish()
        waiting.join(60)
        assert answers[0].status_code == 200
        assert requests.get(base + "/ready", timeout=30).status_code == 200


def test_drain_refuses_new_inference_finishes_in_flight_and_reports_it(
    node: DaemonThread,
) -> None:
    base = node.base_url
    seen = _events(node)
    stream = held_generate(base, "long")
    stream.first_line()
    started = requests.post(base + "/api/drain", json={"timeout": "2m"}, timeout=30)
    assert started.status_code == 202
    assert started.json() == {"state": "draining", "in_flight": 1, "timeout_s": 120.0}

    refused = _generate(base, 2)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == str(DRAIN_RETRY_AFTER_S)
    assert refused.json()["code"] == "busy" and "draining" in refused.json()["error"]
    chat = requests.post(
        base + "/v1/chat/completions",
        json={"model": "long", "messages": [{"role": "user", "content": "hi"}]},
        timeout=30,
    )
    assert chat.status_code == 503 and chat.headers["Retry-After"] == str(DRAIN_RETRY_AFTER_S)
    assert chat.json()["error"]["code"] == "busy"  # OpenAI's error shape on /v1
    assert "draining" in chat.json()["error"]["message"]

    assert requests.get(base + "/health", timeout=30).json()["state"] == "draining"
    ready = requests.get(base + "/ready", timeout=30)
    assert ready.status_code == 503 and ready.headers["Retry-After"] == str(DRAIN_RETRY_AFTER_S)
    assert ready.json()["state"] == "draining" and ready.json()["in_flight"] == 1
    assert requests.get(base + "/api/tags", timeout=30).status_code == 200  # not gated
    assert _metric(base, "localserve_node_draining") == 1
    assert _metric(base, "localserve_drain_refused_requests_total") == 2
    again = requests.post(base + "/api/drain", timeout=30)  # no body; changes nothing
    assert again.status_code == 200 and again.json()["timeout_s"] == 120.0
    assert not node.daemon.drain.done.is_set()  # the held request still runs

    answer = stream.finish()
    assert answer[-1]["done"] is True and answer[-1]["eval_count"] == HELD_TOKENS
    assert "".join(item.get("response", "") for item in answer) == "l" * (HELD_TOKENS - 1)
    eventually(lambda: node.daemon.drain.done.is_set(), 30, what="the drain to finish")
    kinds = [e["type"] for e in seen if e["type"] in ("draining", "drained")]
    assert kinds == ["draining", "drained"]
    drained = next(e for e in seen if e["type"] == "drained")
    assert drained["reason"] == "idle" and drained["abandoned"] == 0
    assert requests.get(base + "/health", timeout=30).json()["state"] == "drained"


def test_drain_timeout_ends_the_drain_with_the_requests_still_running(
    node: DaemonThread,
) -> None:
    seen = _events(node)
    stream = held_generate(node.base_url, "long")
    stream.first_line()
    started = requests.post(node.base_url + "/api/drain", json={"timeout": 0.2}, timeout=30)
    assert started.status_code == 202
    eventually(lambda: node.daemon.drain.done.is_set(), 30, what="the drain timeout")
    stream.close()
    drained = next(e for e in seen if e["type"] == "drained")
    assert drained["reason"] == "timeout" and drained["abandoned"] == 1


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"timeout": -1}, "timeout"),
        ({"timeout": 1e9}, "at most"),
        ({"timeout": "soon"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": [1]}, "timeout"),
        ({"wait": True}, "wait"),
        ([], "object"),
    ],
)
def test_bad_drain_bodies_are_400_naming_the_field_and_drain_nothing(
    node: DaemonThread, body: Any, named: str
) -> None:
    response = requests.post(node.base_url + "/api/drain", json=body, timeout=30)
    assert response.status_code == 400 and named in response.json()["error"]
    assert requests.get(node.base_url + "/health", timeout=30).json()["state"] == "serving"
    assert _generate(node.base_url, 2).json()["response"] == "ll"


def test_the_gate_holds_exactly_the_routes_that_load_and_run_a_model() -> None:
    gated = gated_routes(ROUTES + EXTRA_ROUTES)
    assert {("POST", "/api/generate"), ("POST", "/v1/chat/completions")} <= gated
    for route in ROUTES + EXTRA_ROUTES:
        runs_a_model = set(GENERATION_ERRORS) <= set(route.spec.errors)
        assert ((route.method, route.path) in gated) == runs_a_model
    assert ("POST", "/api/drain") not in gated and ("GET", "/ready") not in gated
