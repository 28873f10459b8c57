"""What the TUI knows about the daemon, as plain Python (no Textual): fed by the event
stream and by `ps`/`tags` polls, read by the screens on their refresh tick.

Updates are cheap and coalescing by construction: an event only changes a few fields
and bumps `version` and the counter of each section it touched (`sections`); screens
re-render at most once per refresh tick, only when `version` moved since their last
render, and then only the widgets whose sections moved. So a burst of events costs one
redraw, and a token-rate sample redraws the tok/s readout, not the whole dashboard.

Sections: running (ps), installed (tags), rates (live requests), recent (finished
requests), system (samples), pulls, log, connection.

Histories (tok/s per model, RAM, VRAM per GPU) advance on each `system` sample (about
once a second, on the daemon's clock), so a sparkline has one point per second whatever
the refresh interval.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from localserve.api.payloads import PsModel, TagsModel

JSON = dict[str, Any]

HISTORY = 60  # points per sparkline (one per system sample: a minute)
RECENT_REQUESTS = 50
LOG_LINES = 2000
PULL_LINGER_S = 10.0  # a finished pull stays on the dashboard this long
SECTIONS = (
    "running",
    "installed",
    "rates",
    "recent",
    "system",
    "pulls",
    "log",
    "connection",
)
_EVENT_SECTIONS: dict[str, tuple[str, ...]] = {
    "request_started": ("rates",),
    "request_progress": ("rates",),
    "request_finished": ("rates", "recent"),
    "request_ended": ("rates", "recent"),
    "system": ("system",),
    "pull": ("pulls",),
    "load_progress": ("running",),
    "draining": ("connection",),  # the top bar shows the drain (issue 15)
    "drained": ("connection",),
}
ROUTE_EVENTS = (
    "route_changed",
    "rollout_step",
    "rollout_paused",
    "rollout_resumed",
    "rollout_aborted",
    "rollout_completed",
)
SAMPLE_EVENTS = frozenset(
    {"system", "request_progress", "load_progress"}
)  # samples: not written to the log


@dataclass
class ActiveRequest:
    request_id: str
    model: str
    endpoint: str
    started: float
    eval_count: int = 0
    tokens_per_second: float = 0.0
    ttft_ms: float | None = None


@dataclass(frozen=True)
class RequestRecord:
    time: float
    model: str
    endpoint: str
    prompt_tokens: int
    eval_count: int
    ttft_ms: float | None
    tokens_per_second: float
    status: str


@dataclass
class PullState:
    model: str
    status: str
    completed: int = 0
    total: int = 0
    error: str | None = None
    finished_at: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.completed / self.total) if self.total else 0.0


@dataclass(frozen=True)
class LogLine:
    seq: int
    time: float
    kind: str
    text: str


@dataclass
class MonitorState:
    clock: Callable[[], float] = time.time
    version: int = 0
    sections: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SECTIONS, 0))
    connected: bool = False
    daemon_version: str = ""
    running: list[PsModel] = field(default_factory=list)  # /api/ps models, as they came
    installed: list[TagsModel] = field(default_factory=list)  # /api/tags models
    installed_version: int = 0
    active: dict[str, ActiveRequest] = field(default_factory=dict)
    rate_history: dict[str, deque[float]] = field(default_factory=dict)
    last_rate: dict[str, float] = field(default_factory=dict)  # last finished request
    system: JSON | None = None
    ram_history: deque[float] = field(default_factory=lambda: deque(maxlen=HISTORY))
    gpu_history: dict[int, deque[float]] = field(default_factory=dict)
    recent: deque[RequestRecord] = field(default_factory=lambda: deque(maxlen=RECENT_REQUESTS))
    pulls: dict[str, PullState] = field(default_factory=dict)
    loading: dict[str, float] = field(default_factory=dict)  # model -> load progress 0..1
    log: deque[LogLine] = field(default_factory=lambda: deque(maxlen=LOG_LINES))
    log_seq: int = 0
    needs_ps: bool = True  # something changed that /api/ps would show
    node_state: str = "serving"  # "draining" / "drained" from the drain events (issue 15)
    routes_changed: bool = False  # a route or rollout event: the routes screen re-reads
    needs_tags: bool = True

    # ---- inputs -----------------------------------------------------------------------

    def touch(self, *sections: str) -> None:
        self.version += 1
        for section in sections:
            self.sections[section] += 1

    def changed_since(self, seen: dict[str, int]) -> set[str]:
        return {name for name, count in self.sections.items() if seen.get(name) != count}

    def set_running(self, models: list[PsModel]) -> None:
        if models != self.running:
            self.running = models
            self.touch("running")

    def set_installed(self, models: list[TagsModel]) -> None:
        if models != self.installed:
            self.installed = models
            self.installed_version += 1
            self.touch("installed")

    def ingest(self, event: JSON) -> None:
        """Apply one daemon event (see localserve.telemetry.monitor for the shapes)."""
        kind = str(event.get("type", ""))
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, event)
        sections = _EVENT_SECTIONS.get(kind, ())
        if kind not in SAMPLE_EVENTS:
            self._log(event)
            sections = (*sections, "log")
        self.touch(*sections)

    def ingest_all(self, events: Iterable[JSON]) -> None:
        for event in events:
            self.ingest(event)

    # ---- reads ------------------------------------------------------------------------

    def current_rate(self, model: str) -> float:
        """Tokens/s the model decodes now, summed over its running requests."""
        return sum(r.tokens_per_second for r in self.active.values() if r.model == model)

    def busiest(self) -> tuple[str, float] | None:
        """(model, tok/s) of the model decoding fastest now; None when all are idle."""
        rates: dict[str, float] = {}
        for request in self.active.values():
            rates[request.model] = rates.get(request.model, 0.0) + request.tokens_per_second
        if not rates:
            return None
        model = max(rates, key=lambda m: (rates[m], m))
        return model, rates[model]

    def active_pulls(self) -> list[PullState]:
        now = self.clock()
        return [
            p
            for p in self.pulls.values()
            if p.finished_at is None or now - p.finished_at < PULL_LINGER_S
        ]

    def loaded_names(self) -> set[str]:
        return {str(m.get("name") or m.get("model")) for m in self.running}

    # ---- event handlers ---------------------------------------------------------------

    def _on_request_started(self, event: JSON) -> None:
        request_id = str(event.get("request_id", ""))
        self.active[request_id] = ActiveRequest(
            request_id,
            str(event.get("model", "")),
            str(event.get("endpoint", "")),
            float(event.get("time", self.clock())),
        )
        self.needs_ps = True

    def _on_request_progress(self, event: JSON) -> None:
        request_id = str(event.get("request_id", ""))
        request = self.active.get(request_id)
        if request is None:  # started before we connected
            request = self.active[request_id] = ActiveRequest(
                request_id,
                str(event.get("model", "")),
                str(event.get("endpoint", "")),
                float(event.get("time", self.clock())),
            )
        request.eval_count = int(event.get("eval_count") or 0)
        request.tokens_per_second = float(event.get("tokens_per_second") or 0.0)
        request.ttft_ms = event.get("ttft_ms")

    def _on_request_done(self, event: JSON) -> None:
        request_id = str(event.get("request_id", ""))
        self.active.pop(request_id, None)
        finished = event["type"] == "request_finished"
        outcome = str(event.get("outcome", "ok"))
        status = "ok" if finished else {"cancel": "cancelled"}.get(outcome, outcome)
        rate = float(event.get("tokens_per_second") or 0.0)
        model = str(event.get("model", ""))
        if finished and rate:
            self.last_rate[model] = rate
        self.recent.appendleft(
            RequestRecord(
                time=float(event.get("time", self.clock())),
                model=model,
                endpoint=str(event.get("endpoint", "")),
                prompt_tokens=int(event.get("prompt_tokens") or 0),
                eval_count=int(event.get("eval_count") or 0),
                ttft_ms=event.get("ttft_ms"),
                tokens_per_second=rate,
                status=status,
            )
        )
        self.needs_ps = True

    def _on_system(self, event: JSON) -> None:
        self.system = event
        total = float(event.get("ram_total") or 0)
        used = total - float(event.get("ram_available") or 0)
        self.ram_history.append(used / total if total else 0.0)
        for gpu in event.get("gpus", []):
            history = self.gpu_history.setdefault(int(gpu["index"]), deque(maxlen=HISTORY))
            vram_total = float(gpu.get("vram_total") or 0)
            history.append(float(gpu.get("vram_used") or 0) / vram_total if vram_total else 0.0)
        models = self.loaded_names() | {r.model for r in self.active.values()}
        for model in models:
            self.rate_history.setdefault(model, deque(maxlen=HISTORY)).append(
                self.current_rate(model)
            )
        for model in list(self.rate_history):
            if model not in models:
                del self.rate_history[model]

    def _on_model_change(self, event: JSON) -> None:
        if event.get("type") != "queue":
            self.loading.pop(str(event.get("model", "")), None)
        self.needs_ps = True

    def _on_load_progress(self, event: JSON) -> None:
        self.loading[str(event.get("model", ""))] = float(event.get("progress") or 0.0)

    def load_progress(self, model: PsModel) -> float:
        """How far a loading model is (from events, else from /api/ps)."""
        name = str(model.get("name") or model.get("model"))
        return self.loading.get(name, float(model.get("load_progress") or 0.0))

    def _on_pull(self, event: JSON) -> None:
        model = str(event.get("model", ""))
        pull = self.pulls.get(model)
        if pull is None or pull.finished_at is not None:
            pull = self.pulls[model] = PullState(model, "")
        status = str(event.get("status", ""))
        pull.status = status
        if event.get("total"):
            pull.total = int(event["total"])
            pull.completed = int(event.get("completed") or 0)
        if status in ("success", "error"):
            pull.finished_at = self.clock()
            pull.error = event.get("error")
            if status == "success":
                pull.completed = pull.total
                self.needs_tags = True

    # ---- the log ------------------------------------------------------------------------

    def _on_route_event(self, event: JSON) -> None:
        self.routes_changed = True

    def _on_drain(self, event: JSON) -> None:
        self.node_state = str(event.get("type", "draining"))

    def _log(self, event: JSON) -> None:
        self.log_seq += 1
        self.log.append(
            LogLine(
                self.log_seq,
                float(event.get("time", self.clock())),
                str(event.get("type", "")),
                describe(event),
            )
        )


_HANDLERS: dict[str, Callable[[MonitorState, JSON], None]] = {
    "request_started": MonitorState._on_request_started,
    "request_progress": MonitorState._on_request_progress,
    "request_finished": MonitorState._on_request_done,
    "request_ended": MonitorState._on_request_done,
    "system": MonitorState._on_system,
    "load_started": MonitorState._on_model_change,
    "loaded": MonitorState._on_model_change,
    "unloaded": MonitorState._on_model_change,
    "load_failed": MonitorState._on_model_change,
    "queue": MonitorState._on_model_change,
    "pull": MonitorState._on_pull,
    "load_progress": MonitorState._on_load_progress,
    "draining": MonitorState._on_drain,
    "drained": MonitorState._on_drain,
    **{kind: MonitorState._on_route_event for kind in ROUTE_EVENTS},  # issue 14
}


def _mb(value: Any) -> str:
    return f"{int(value or 0) / 1e6:.0f} MB"


def describe(event: JSON) -> str:
    """One log line for an event (without its time and type)."""
    kind = event.get("type")
    model = event.get("model", "")
    if kind == "load_started":
        return f"{model}: loading (estimate {_mb(event.get('estimate'))} RAM, " + (
            f"{event.get('gpu_layers', 0)} GPU layers)"
        )
    if kind == "loaded":
        seconds = int(event.get("load_duration") or 0) / 1e9
        rss = _mb(event.get("rss"))
        return f"{model}: loaded in {seconds:.2f}s (pid {event.get('pid')}, rss {rss})"
    if kind == "unloaded":
        extra = f" for {event['for_model']}" if event.get("for_model") else ""
        return f"{model}: unloaded ({event.get('reason', '?')}{extra})"
    if kind == "load_failed":
        return f"{model}: load failed: {event.get('error', '')}"
    if kind == "queue":
        return f"{model}: queue depth {event.get('depth')}"
    if kind == "queue_full":
        return f"{model}: queue full, request refused (503)"
    if kind == "request_started":
        return f"{model}: {event.get('endpoint')} request {event.get('request_id', '')} started"
    if kind == "request_finished":
        ttft = event.get("ttft_ms")
        return (
            f"{model}: {event.get('endpoint')} request {event.get('request_id', '')} finished: "
            f"{event.get('prompt_tokens', 0)} in, {event.get('eval_count', 0)} out, "
            f"TTFT {'-' if ttft is None else f'{ttft:.0f} ms'}, "
            f"{float(event.get('tokens_per_second') or 0):.1f} tok/s"
        )
    if kind == "request_ended":
        error = f": {event['error']}" if event.get("error") else ""
        return (
            f"{model}: {event.get('endpoint', '')} request {event.get('request_id', '')} "
            f"{event.get('outcome', 'ended')}{error}"
        )
    if kind == "request_progress":
        return (
            f"{model}: {event.get('request_id', '')} {event.get('eval_count', 0)} tokens, "
            f"{float(event.get('tokens_per_second') or 0):.1f} tok/s"
        )
    if kind == "pull":
        if event.get("total"):
            return (
                f"{model}: {event.get('status')} {_mb(event.get('completed'))}"
                f" / {_mb(event.get('total'))}"
            )
        error = f": {event['error']}" if event.get("error") else ""
        return f"{model}: {event.get('status')}{error}"
    if kind == "draining":
        return (
            f"draining: refusing new inference, {event.get('in_flight', 0)} in flight, "
            f"timeout {event.get('timeout_s')}s"
        )
    if kind == "drained":
        return (
            f"drained ({event.get('reason', '?')}) after {event.get('duration_s', 0)}s, "
            f"{event.get('abandoned', 0)} requests cancelled; the daemon exits"
        )
    if kind == "route_changed":
        new = " ".join(f"{t['model']}={t['weight']:g}" for t in event.get("new", []))
        why = f" ({event['reason']})" if event.get("reason") else ""
        return f"{event.get('route')}: -> {new or 'deleted'} by {event.get('who')}{why}"
    if isinstance(kind, str) and kind.startswith("rollout_"):
        reason = f": {event['reason']}" if event.get("reason") else ""
        return (
            f"{event.get('route')}: {event.get('candidate')} at {event.get('percent', 0):g}% "
            f"(step {event.get('step')}/{event.get('steps')}, {event.get('status')}){reason}"
        )
    if kind == "system":
        total = float(event.get("ram_total") or 0)
        available = float(event.get("ram_available") or 0)
        gpus = ", ".join(
            f"GPU{g['index']} {_mb(g.get('vram_used'))}/{_mb(g.get('vram_total'))}"
            for g in event.get("gpus", [])
        )
        return f"RAM {(total - available) / 1e9:.1f}/{total / 1e9:.1f} GB" + (
            f", {gpus}" if gpus else ""
        )
    fields = {k: v for k, v in event.items() if k not in ("type", "time")}
    return " ".join(f"{k}={v}" for k, v in fields.items())
