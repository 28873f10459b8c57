"""/metrics: Prometheus text format; counters move with requests, loads and unloads;
gauges follow the scheduler and the system sample."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from eventually import eventually_async
from gguf_factory import write_tiny_gguf
from prometheus_client.parser import text_string_to_metric_families

from localserve.client.http import LocalserveClient
from localserve.telemetry.events import EventBus
from localserve.telemetry.metrics import Metrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


def scrape(daemon: DaemonThread) -> tuple[str, Samples]:
    with urllib.request.urlopen(daemon.base_url + "/metrics", timeout=30) as response:
        content_type = response.headers["Content-Type"]
        return content_type, parse(response.read().decode())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path) as running:
        running.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        yield running


async def test_metrics_move_after_a_request_a_load_and_an_unload(daemon: DaemonThread) -> None:
    content_type, before = scrape(daemon)
    assert content_type.startswith("text/plain")
    assert value(before, "localserve_loaded_models") == 0
    async with LocalserveClient(daemon.base_url) as client:
        async for _ in client.generate("tiny", "hello", options={"num_predict": 9}):
            pass
        async for _ in client.chat(
            "tiny", [{"role": "user", "content": "hi"}], options={"num_predict": 3}
        ):
            pass
        _, during = await asyncio.to_thread(scrape, daemon)
        await client.unload("tiny")
    model = "tiny:latest"

    async def unload_counted() -> Samples | None:
        _, samples = await asyncio.to_thread(scrape, daemon)
        counted = value(samples, "localserve_unloads_total", model=model, reason="request")
        return samples if counted and value(samples, "localserve_loaded_models") == 0 else None

    after = await eventually_async(unload_counted, 10, interval=0.05, what="the unload counted")
    assert (
        value(during, "localserve_requests_total", model=model, endpoint="generate", status="ok")
        == 1
    )
    assert (
        value(during, "localserve_requests_total", model=model, endpoint="chat", status="ok") == 1
    )
    assert value(during, "localserve_generated_tokens_total", model=model) == 12
    assert value(during, "localserve_prompt_tokens_total", model=model) > 0
    assert value(during, "localserve_time_to_first_token_seconds_count", model=model) == 2
    assert value(during, "localserve_time_to_first_token_seconds_sum", model=model) > 0
    assert (
        value(during, "localserve_request_duration_seconds_count", model=model, endpoint="chat")
        == 1
    )
    assert value(during, "localserve_decode_tokens_per_second_count", model=model) == 2
    assert value(during, "localserve_loads_total", model=model, status="ok") == 1
    assert value(during, "localserve_loaded_models") == 1
    assert value(during, "localserve_model_ram_bytes", model=model) > 0
    assert value(during, "localserve_queue_depth", model=model) == 0
    assert value(during, "localserve_system_ram_total_bytes") > 0
    assert value(after, "localserve_unloads_total", model=model, reason="request") == 1
    assert value(after, "localserve_loaded_models") == 0
    assert ("localserve_model_ram_bytes", (("model", model),)) not in after


def test_metrics_is_in_the_openapi_document(daemon: DaemonThread) -> None:
    import json

    with urllib.request.urlopen(daemon.base_url + "/openapi.json", timeout=30) as response:
        paths = json.loads(response.read())["paths"]
    assert "get" in paths["/metrics"] and "get" in paths["/api/events"]


def metrics_for(
    rows: list[dict[str, Any]] | None = None, system: dict[str, Any] | None = None
) -> tuple[EventBus, Metrics]:
    bus = EventBus()
    return bus, Metrics(bus, lambda: rows or [], lambda: system)


def test_unloads_evictions_rejections_and_outcomes_are_counted_by_reason() -> None:
    bus, metrics = metrics_for()
    bus.publish("unloaded", model="a", reason="evicted", for_model="b")
    bus.publish("unloaded", model="a", reason="reclaim")
    bus.publish("unloaded", model="a", reason="expired")
    bus.publish("load_failed", model="c", error="boom")
    bus.publish("queue_full", model="a")
    bus.publish("request_ended", model="a", endpoint="chat", outcome="cancel", duration_s=1.0)
    bus.publish("request_ended", model="a", endpoint="generate", outcome="rejected")
    bus.publish("request_ended", model="a", endpoint="generate", outcome="error")
    bus.publish("pull", model="x", status="success")
    samples = parse(metrics.render().decode())
    assert value(samples, "localserve_unloads_total", model="a", reason="evicted") == 1
    assert value(samples, "localserve_unloads_total", model="a", reason="expired") == 1
    assert value(samples, "localserve_evictions_total", model="a", reason="evicted") == 1
    assert value(samples, "localserve_evictions_total", model="a", reason="reclaim") == 1
    assert value(samples, "localserve_evictions_total", model="a", reason="expired") == 0
    assert value(samples, "localserve_loads_total", model="c", status="failed") == 1
    assert value(samples, "localserve_queue_rejections_total", model="a") == 1
    for endpoint, status in (
        ("chat", "cancelled"),
        ("generate", "rejected"),
        ("generate", "error"),
    ):
        assert (
            value(samples, "localserve_requests_total", model="a", endpoint=endpoint, status=status)
            == 1
        )
    assert value(samples, "localserve_pulls_total", status="success") == 1


def test_gauges_follow_the_snapshot_the_system_sample_and_live_rates() -> None:
    rows = [
        {"model": "a", "size": 3000, "size_vram": 1000, "queue_depth": 2, "in_flight": 1},
    ]
    system = {
        "ram_total": 16e9,
        "ram_available": 8e9,
        "gpus": [{"index": 0, "name": "G", "vram_used": 5e9, "vram_total": 8e9, "utilization": 50}],
        "runners": [{"model": "a", "pid": 1, "rss": 2500, "vram": 1000}],
    }
    bus, metrics = metrics_for(rows, system)
    bus.publish("request_progress", request_id="r1", model="a", tokens_per_second=40.0)
    bus.publish("request_progress", request_id="r2", model="a", tokens_per_second=30.0)
    bus.publish("request_progress", request_id="r1", model="a", tokens_per_second=50.0)
    samples = parse(metrics.render().decode())
    assert value(samples, "localserve_decode_tokens_per_second_current", model="a") == 80
    bus.publish("request_finished", request_id="r2", model="a", endpoint="chat")
    samples2 = parse(metrics.render().decode())
    assert value(samples2, "localserve_decode_tokens_per_second_current", model="a") == 50
    assert value(samples, "localserve_loaded_models") == 1
    assert value(samples, "localserve_queue_depth", model="a") == 2
    assert value(samples, "localserve_in_flight_requests", model="a") == 1
    assert value(samples, "localserve_model_ram_bytes", model="a") == 2000
    assert value(samples, "localserve_model_vram_bytes", model="a") == 1000
    assert value(samples, "localserve_runner_rss_bytes", model="a") == 2500
    assert value(samples, "localserve_system_ram_available_bytes") == 8e9
    assert value(samples, "localserve_gpu_vram_used_bytes", gpu="0", name="G") == 5e9
    assert value(samples, "localserve_gpu_utilization_ratio", gpu="0", name="G") == 0.5


def test_a_malformed_event_never_breaks_the_publisher() -> None:
    bus, metrics = metrics_for()
    bus.publish("request_finished", model="a", endpoint="x", prompt_tokens="not a number")
    bus.publish("loaded", model="a")  # still counting afterwards
    samples = parse(metrics.render().decode())
    assert value(samples, "localserve_loads_total", model="a", status="ok") == 1
