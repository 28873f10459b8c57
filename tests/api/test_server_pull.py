"""/api/pull through a real daemon, against the local HF-compatible server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonThread, running_daemon_with_hub
from fake_hf_server import FakeHub
from gguf_factory import write_tiny_gguf
from test_server_api import ndjson, post_json, request

REPO = "TinyOrg/Tiny-GGUF"


@pytest.fixture
def daemon_and_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DaemonThread, FakeHub]]:
    hub = FakeHub(chunk_size=16 * 1024)
    hub.add_repo(
        REPO,
        {
            "tiny-Q4_K_M.gguf": write_tiny_gguf(tmp_path / "q4.gguf", "k"),
            "tiny-Q8_0.gguf": write_tiny_gguf(tmp_path / "q8.gguf", "e"),
        },
    )
    with running_daemon_with_hub(tmp_path, monkeypatch, hub) as daemon:
        yield daemon, hub


def test_pull_streams_ollama_progress_then_the_model_runs(
    daemon_and_hub: tuple[DaemonThread, FakeHub],
) -> None:
    daemon, _ = daemon_and_hub
    status, _, data = request(daemon.base_url, "POST", "/api/pull", {"model": f"hf.co/{REPO}"})
    lines = ndjson(data)
    statuses = [line["status"] for line in lines]
    assert status == 200
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
    progress = [line for line in lines if line.get("digest")]
    assert progress and progress[-1]["completed"] == progress[-1]["total"]
    status, body = post_json(
        daemon.base_url,
        "/api/generate",
        {"model": f"hf.co/{REPO}", "prompt": "x", "stream": False, "options": {"num_predict": 2}},
    )
    assert body["response"] == "kk"  # the default quant, Q4_K_M
    status, body = post_json(
        daemon.base_url, "/api/pull", {"model": f"hf.co/{REPO}:q8_0", "stream": False}
    )
    assert status == 200 and body == {"status": "success"}
    status, body = post_json(daemon.base_url, "/api/show", {"model": f"hf.co/{REPO}:q8_0"})
    assert body["source"]["repo"] == REPO


def test_second_pull_is_up_to_date(daemon_and_hub: tuple[DaemonThread, FakeHub]) -> None:
    daemon, hub = daemon_and_hub
    request(daemon.base_url, "POST", "/api/pull", {"model": f"hf.co/{REPO}"})
    downloads = len(hub.downloads())
    _, _, data = request(daemon.base_url, "POST", "/api/pull", {"model": f"hf.co/{REPO}"})
    assert "up to date" in [line["status"] for line in ndjson(data)]
    assert len(hub.downloads()) == downloads


@pytest.mark.parametrize(
    ("model", "status", "words"),
    [
        ("hf.co/TinyOrg/Missing-GGUF", 404, "not found"),
        (f"hf.co/{REPO}:IQ1_S", 400, "Q8_0"),
        ("hf.co/../etc", 400, "invalid"),
    ],
)
def test_pull_errors_are_json_with_the_right_status(
    daemon_and_hub: tuple[DaemonThread, FakeHub], model: str, status: int, words: str
) -> None:
    daemon, _ = daemon_and_hub
    got, _, data = request(daemon.base_url, "POST", "/api/pull", {"model": model})
    assert got == status
    assert words.lower() in json.loads(data)["error"].lower()
