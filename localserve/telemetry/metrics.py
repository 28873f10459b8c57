"""Prometheus metrics (`GET /metrics`, text format) built with prometheus-client.

Counters and histograms are fed by a synchronous listener on the daemon's `EventBus`
(cheap: a dict lookup and an increment per event; a failure is logged, never raised into
the publisher). Gauges are read at scrape time by a collector from `scheduler.snapshot()`
(loaded models, queue depth, in-flight requests, RAM/VRAM per model) and from the
system monitor's last sample (system RAM, per-GPU VRAM and utilisation, runner RSS), so
a scrape never measures anything itself. Each daemon has its own registry (several
daemons can live in one test process).

Metric names (all prefixed `localserve_`):

    requests_total{model,endpoint,status}      status: ok | error | cancelled | rejected
    prompt_tokens_total{model}                 prompt tokens evaluated
    generated_tokens_total{model}              tokens generated
    time_to_first_token_seconds{model}         histogram
    request_duration_seconds{model,endpoint}   histogram
    decode_tokens_per_second{model}            histogram of finished requests' decode rate
    decode_tokens_per_second_current{model}    gauge: sum over requests decoding now
    loads_total{model,status}                  status: ok | failed
    load_duration_seconds{model}               histogram
    unloads_total{model,reason}                reason: keep_alive | expired | request |
                                               evicted | reclaim | reload | crashed | shutdown
    evictions_total{model,reason}              the unloads made for room (evicted, reclaim)
    queue_rejections_total{model}              503s: the model's queue was full
    pulls_total{status}                        status: success | error
    events_dropped_total                       events a slow subscriber lost
    loaded_models, queue_depth{model}, in_flight_requests{model},
    model_ram_bytes{model}, model_vram_bytes{model}, runner_rss_bytes{model},
    runner_vram_bytes{model}, system_ram_total_bytes, system_ram_available_bytes,
    gpu_vram_used_bytes{gpu,name}, gpu_vram_total_bytes{gpu,name},
    gpu_utilization_ratio{gpu,name}
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from localserve.scheduling.scheduler import ModelSnapshot
from localserve.telemetry.events import Event, EventBus

log = logging.getLogger("localserve.telemetry.metrics")

PREFIX = "localserve"
CONTENT_TYPE = CONTENT_TYPE_LATEST
EVICTION_REASONS = frozenset({"evicted", "reclaim"})
OUTCOME_STATUS = {"cancel": "cancelled", "error": "error", "rejected": "rejected"}

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
RATE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)

Snapshot = Callable[[], list[ModelSnapshot]]
SystemSample = Callable[[], dict[str, Any] | None]


class Metrics:
    """The daemon's Prometheus registry; `render()` gives the text exposition."""

    def __init__(
        self,
        events: EventBus,
        snapshot: Snapshot,
        system: SystemSample | None = None,
    ) -> None:
        self.events = events
        self.snapshot = snapshot
        self.system = system or (lambda: None)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Generation requests by model, endpoint and outcome",
            ["model", "endpoint", "status"],
            registry=r,
        )
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens evaluated", ["model"], registry=r
        )
        self.generated_tokens = Counter(
            f"{PREFIX}_generated_tokens", "Tokens generated", ["model"], registry=r
        )
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds",
            "Time from request to first token (includes queueing and loading)",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Generation request duration",
            ["model", "endpoint"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.decode_rate = Histogram(
            f"{PREFIX}_decode_tokens_per_second",
            "Decode rate of finished requests (tokens/s)",
            ["model"],
            buckets=RATE_BUCKETS,
            registry=r,
        )
        self.loads = Counter(
            f"{PREFIX}_loads", "Model loads by outcome", ["model", "status"], registry=r
        )
        self.load_duration = Histogram(
            f"{PREFIX}_load_duration_seconds",
            "Time to load a model into a runner",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.unloads = Counter(
            f"{PREFIX}_unloads", "Model unloads by reason", ["model", "reason"], registry=r
        )
        self.evictions = Counter(
            f"{PREFIX}_evictions",
            "Models unloaded to make room (evicted for a load, reclaimed under pressure)",
            ["model", "reason"],
            registry=r,
        )
        self.queue_rejections = Counter(
            f"{PREFIX}_queue_rejections",
            "Requests refused with 503 because the model's queue was full",
            ["model"],
            registry=r,
        )
        self.pulls = Counter(f"{PREFIX}_pulls", "Finished pulls by outcome", ["status"], registry=r)
        self._live_rates: dict[str, tuple[str, float]] = {}  # request id -> (model, tok/s)
        self.registry.register(_LiveCollector(self))
        events.add_listener(self._on_event)

    def render(self) -> bytes:
        """The Prometheus text exposition (call on the event loop: it reads the snapshot)."""
        return generate_latest(self.registry)

    # ---- event listener -------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        try:
            self._count(event)
        except Exception:  # metrics must never break a publisher
            log.exception("metrics: cannot count event %r", event.get("type"))

    def _count(self, event: Event) -> None:
        kind = event["type"]
        model = str(event.get("model", ""))
        if kind == "request_progress":
            rate = float(event.get("tokens_per_second") or 0.0)
            self._live_rates[str(event.get("request_id"))] = (model, rate)
        elif kind == "request_finished":
            self._live_rates.pop(str(event.get("request_id")), None)
            endpoint = str(event.get("endpoint", ""))
            self.requests.labels(model, endpoint, "ok").inc()
            self.prompt_tokens.labels(model).inc(int(event.get("prompt_tokens") or 0))
            self.generated_tokens.labels(model).inc(int(event.get("eval_count") or 0))
            if event.get("ttft_ms") is not None:
                self.ttft.labels(model).observe(float(event["ttft_ms"]) / 1000)
            if event.get("duration_s") is not None:
                self.duration.labels(model, endpoint).observe(float(event["duration_s"]))
            if event.get("tokens_per_second"):
                self.decode_rate.labels(model).observe(float(event["tokens_per_second"]))
        elif kind == "request_ended":
            self._live_rates.pop(str(event.get("request_id")), None)
            outcome = str(event.get("outcome", "error"))
            status = OUTCOME_STATUS.get(outcome, outcome)
            endpoint = str(event.get("endpoint", ""))
            self.requests.labels(model, endpoint, status).inc()
            if event.get("duration_s") is not None:
                self.duration.labels(model, endpoint).observe(float(event["duration_s"]))
        elif kind == "loaded":
            self.loads.labels(model, "ok").inc()
            if event.get("load_duration"):
                self.load_duration.labels(model).observe(float(event["load_duration"]) / 1e9)
        elif kind == "load_failed":
            self.loads.labels(model, "failed").inc()
        elif kind == "unloaded":
            reason = str(event.get("reason", "unknown"))
            self.unloads.labels(model, reason).inc()
            if reason in EVICTION_REASONS:
                self.evictions.labels(model, reason).inc()
        elif kind == "queue_full":
            self.queue_rejections.labels(model).inc()
        elif kind == "pull" and event.get("status") in ("success", "error"):
            self.pulls.labels(str(event["status"])).inc()

    def live_rates(self) -> dict[str, float]:
        """Tokens/s per model summed over the requests decoding now."""
        rates: dict[str, float] = {}
        for model, rate in self._live_rates.values():
            rates[model] = rates.get(model, 0.0) + rate
        return rates


class _LiveCollector:
    """Gauges read at scrape time: the scheduler's snapshot and the last system sample."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        m = self.metrics
        rows = m.snapshot()

        def gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)

        loaded = gauge("loaded_models", "Models held by a runner (loading, ready or stopping)")
        loaded.add_metric([], len(rows))
        queue = gauge("queue_depth", "Requests waiting for the model", ["model"])
        in_flight = gauge("in_flight_requests", "Requests running on the model", ["model"])
        ram = gauge("model_ram_bytes", "RAM the scheduler accounts to the model", ["model"])
        vram = gauge("model_vram_bytes", "VRAM the scheduler accounts to the model", ["model"])
        replicas = gauge("model_replicas", "Runners of the model (replicas)", ["model"])
        replica_load = gauge(
            "replica_in_flight_requests", "Requests running on one replica", ["model", "replica"]
        )
        for row in rows:
            name = str(row["model"])
            runners = row.get("replicas") or []
            replicas.add_metric([name], float(len(runners) or 1))
            for runner in runners:
                replica_load.add_metric([name, str(runner["replica"])], float(runner["in_flight"]))
            queue.add_metric([name], float(row.get("queue_depth", 0)))
            in_flight.add_metric([name], float(row.get("in_flight", 0)))
            ram.add_metric([name], float(max(0, row["size"] - row["size_vram"])))
            vram.add_metric([name], float(row["size_vram"]))
        yield from (loaded, queue, in_flight, ram, vram, replicas, replica_load)

        current = gauge(
            "decode_tokens_per_second_current",
            "Decode rate now, summed over the model's decoding requests",
            ["model"],
        )
        for name, rate in sorted(m.live_rates().items()):
            current.add_metric([name], rate)
        yield current

        dropped = CounterMetricFamily(
            f"{PREFIX}_events_dropped", "Events a slow in-process subscriber lost"
        )
        dropped.add_metric([], float(m.events.dropped))
        yield dropped

        sample = m.system()
        if sample is None:
            memory = psutil.virtual_memory()
            sample = {
                "ram_total": memory.total,
                "ram_available": memory.available,
                "gpus": [],
                "runners": [],
            }
        total = gauge("system_ram_total_bytes", "Physical RAM")
        total.add_metric([], float(sample["ram_total"]))
        available = gauge("system_ram_available_bytes", "RAM available to new allocations")
        available.add_metric([], float(sample["ram_available"]))
        yield from (total, available)

        rss = gauge("runner_rss_bytes", "Resident memory of the model's runner", ["model"])
        runner_vram = gauge("runner_vram_bytes", "VRAM held by the model's runner", ["model"])
        for runner in sample.get("runners", []):
            rss.add_metric([str(runner["model"])], float(runner["rss"]))
            runner_vram.add_metric([str(runner["model"])], float(runner.get("vram", 0)))
        yield from (rss, runner_vram)

        labels = ["gpu", "name"]
        used = gauge("gpu_vram_used_bytes", "VRAM in use on the GPU", labels)
        gpu_total = gauge("gpu_vram_total_bytes", "VRAM on the GPU", labels)
        util = gauge("gpu_utilization_ratio", "GPU utilisation (0..1)", labels)
        for gpu in sample.get("gpus", []):
            key = [str(gpu["index"]), str(gpu["name"])]
            used.add_metric(key, float(gpu["vram_used"]))
            gpu_total.add_metric(key, float(gpu["vram_total"]))
            util.add_metric(key, float(gpu.get("utilization", 0)) / 100)
        yield from (used, gpu_total, util)
