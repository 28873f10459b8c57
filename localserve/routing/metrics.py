"""Prometheus families of the routes, on the daemon's registry (beside
localserve.telemetry.metrics, whose families keep their labels):

    route_requests_total{route,version,outcome}          outcome: ok | error
    route_time_to_first_token_seconds{route,version}     histogram
    route_decode_tokens_per_second{route,version}        histogram
    route_poor_answers_total{route,version}              empty or cut by the length limit
    route_weight{route,version}                          gauge: the share of the traffic
    route_rollout_percent{route,candidate}               gauge: a running rollout's step

Fed by the routing's per-version figures (`VersionStats` observers), so they count what
the rollout controller judges.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

from localserve.routing.stats import Sample
from localserve.telemetry.metrics import PREFIX, RATE_BUCKETS, TTFT_BUCKETS

if TYPE_CHECKING:
    from localserve.routing.service import Routing


class RouteMetrics:
    def __init__(self, routing: Routing, registry: CollectorRegistry) -> None:
        self.routing = routing
        labels = ["route", "version"]
        self.requests = Counter(
            f"{PREFIX}_route_requests",
            "Requests through a route by serving version and outcome",
            [*labels, "outcome"],
            registry=registry,
        )
        self.ttft = Histogram(
            f"{PREFIX}_route_time_to_first_token_seconds",
            "Time to first token of routed requests, by version",
            labels,
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.decode_rate = Histogram(
            f"{PREFIX}_route_decode_tokens_per_second",
            "Decode rate of routed requests, by version",
            labels,
            buckets=RATE_BUCKETS,
            registry=registry,
        )
        self.poor = Counter(
            f"{PREFIX}_route_poor_answers",
            "Routed answers that were empty or cut by the length limit",
            labels,
            registry=registry,
        )
        registry.register(_WeightCollector(routing))
        routing.stats.observers.append(self._on_sample)

    def _on_sample(self, route: str, version: str, sample: Sample) -> None:
        self.requests.labels(route, version, "ok" if sample.ok else "error").inc()
        if not sample.ok:
            return
        if sample.ttft_s is not None:
            self.ttft.labels(route, version).observe(sample.ttft_s)
        if sample.tokens_per_second:
            self.decode_rate.labels(route, version).observe(sample.tokens_per_second)
        if sample.poor:
            self.poor.labels(route, version).inc()


class _WeightCollector:
    def __init__(self, routing: Routing) -> None:
        self.routing = routing

    def collect(self) -> Iterable[Metric]:
        weights = GaugeMetricFamily(
            f"{PREFIX}_route_weight",
            "Share of a route's traffic each version gets now (0..1)",
            labels=["route", "version"],
        )
        rollouts = GaugeMetricFamily(
            f"{PREFIX}_route_rollout_percent",
            "The traffic percentage of a running rollout's candidate",
            labels=["route", "candidate"],
        )
        for route in self.routing.all():
            serving = self.routing.serving(route)
            total = sum(t.weight for t in serving) or 1.0
            for target in serving:
                weights.add_metric([route.name, target.model], target.weight / total)
            state = self.routing.rollouts.active(route.name)
            if state is not None:
                rollouts.add_metric([route.name, state.candidate], state.percent)
        yield weights
        yield rollouts

    def describe(self) -> Iterable[Metric]:
        return []
