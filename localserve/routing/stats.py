"""Live figures per route and version, from the request events on the daemon's bus.

Every routed request ends in one `request_finished` (an answer) or `request_ended`
(error, cancel, rejected) event carrying `route` and `model` (the version). Each becomes
a `Sample`; `VersionStats` keeps the recent ones (bounded) and summarises any time
window: requests, error rate, TTFT p95, mean decode tokens/s, and the quality signal.

The quality signal ("poor answers") is cheap and model-agnostic: the share of answers
that are empty (no token generated) or cut off by the length limit (done_reason
"length"). A candidate that starts rambling to the limit or answering nothing shows up
there before anyone reads its text. Cancelled requests (the client went away) count for
nothing; a rejected one (503, queue full) counts as an error.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localserve.telemetry.events import Event

MAX_SAMPLES = 5000  # per (route, version)


@dataclass(frozen=True)
class Sample:
    time: float
    ok: bool
    ttft_s: float | None = None
    tokens_per_second: float | None = None
    poor: bool = False  # empty, or cut off by the length limit


@dataclass(frozen=True)
class Summary:
    requests: int
    errors: int
    error_rate: float
    ttft_p95_s: float | None
    tokens_per_second: float | None
    poor_rate: float

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "ttft_p95_s": self.ttft_p95_s,
            "tokens_per_second": self.tokens_per_second,
            "poor_answer_rate": self.poor_rate,
        }


def percentile(values: list[float], fraction: float) -> float | None:
    """The nearest-rank percentile (None without values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarise(samples: list[Sample]) -> Summary:
    answered = [s for s in samples if s.ok]
    errors = len(samples) - len(answered)
    ttfts = [s.ttft_s for s in answered if s.ttft_s is not None]
    rates = [s.tokens_per_second for s in answered if s.tokens_per_second]
    return Summary(
        requests=len(samples),
        errors=errors,
        error_rate=errors / len(samples) if samples else 0.0,
        ttft_p95_s=percentile(ttfts, 0.95),
        tokens_per_second=sum(rates) / len(rates) if rates else None,
        poor_rate=sum(1 for s in answered if s.poor) / len(answered) if answered else 0.0,
    )


def sample_of(event: Event, when: float) -> tuple[str, str, Sample] | None:
    """(route, version, sample) of a routed request's last event, stamped `when`; None
    for the rest."""
    route = event.get("route")
    if not route:
        return None
    kind = event.get("type")
    version = str(event.get("model", ""))
    if kind == "request_finished":
        ttft_ms = event.get("ttft_ms")
        eval_count = int(event.get("eval_count") or 0)
        poor = eval_count == 0 or event.get("done_reason") == "length"
        return (
            str(route),
            version,
            Sample(
                when,
                True,
                ttft_s=float(ttft_ms) / 1000 if ttft_ms is not None else None,
                tokens_per_second=float(event.get("tokens_per_second") or 0.0) or None,
                poor=poor,
            ),
        )
    if kind == "request_ended" and event.get("outcome") in ("error", "rejected"):
        return str(route), version, Sample(when, False)
    return None


class VersionStats:
    """Recent samples per (route, version); `listener` feeds it from the bus."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock  # the rollout controller's clock: windows and samples agree
        self._samples: dict[tuple[str, str], deque[Sample]] = {}
        self.observers: list[Callable[[str, str, Sample], None]] = []

    def listener(self, event: Event) -> None:
        found = sample_of(event, self.clock())
        if found is not None:
            self.add(*found)

    def add(self, route: str, version: str, sample: Sample) -> None:
        self._samples.setdefault((route, version), deque(maxlen=MAX_SAMPLES)).append(sample)
        for observer in self.observers:
            observer(route, version, sample)

    def window(self, route: str, version: str, since: float = 0.0) -> Summary:
        samples = self._samples.get((route, version), ())
        return summarise([s for s in samples if s.time >= since])

    def versions(self, route: str) -> list[str]:
        return sorted(v for r, v in self._samples if r == route)
