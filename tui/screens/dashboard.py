"""The dashboard: running models, the busiest model's tok/s, RAM and VRAM gauges, recent
requests and pulls."""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import DataTable, Digits, Static

from localserve.client.display import human_bytes, name_with_replicas, processor_column
from localserve.tui.format import clock_text, gauge, ms_text, rate_text, sparkline, until_text
from localserve.tui.screens.base import (
    MonitorScreen,
    pulls_text,
    set_columns,
    set_text,
    set_titles,
)
from localserve.tui.state import MonitorState
from localserve.tui.widgets import sync_table

RATE_DIGITS = 5  # the big tok/s readout: "  9.5", "105.3"
RUNNING_COLUMNS = (
    ("name", "NAME"),
    ("size", "SIZE"),
    ("vram", "VRAM"),
    ("processor", "PROCESSOR"),
    ("context", "CONTEXT"),
    ("until", "UNTIL"),
    ("queue", "QUEUE"),
    ("active", "ACTIVE"),
    ("rate", "TOK/S"),
    ("history", "TOK/S (60 s)"),
)
RECENT_COLUMNS = (
    ("time", "TIME"),
    ("model", "MODEL"),
    ("api", "API"),
    ("in", "IN"),
    ("out", "OUT"),
    ("ttft", "TTFT"),
    ("rate", "TOK/S"),
    ("status", "STATUS"),
)


class DashboardScreen(MonitorScreen):
    MODE = "dashboard"
    DEFAULT_CSS = """
    DashboardScreen #top { height: auto; }
    DashboardScreen #busiest-box {
        width: 34; height: auto; border: round $primary; padding: 0 1;
    }
    DashboardScreen #busiest-rate { width: auto; }
    DashboardScreen #gauges { width: 1fr; height: auto; min-height: 6; border: round $primary; }
    DashboardScreen #running { height: 1fr; min-height: 4; border: round $primary; }
    DashboardScreen #bottom { height: 1fr; min-height: 5; }
    DashboardScreen #recent { width: 2fr; height: 100%; border: round $primary; }
    DashboardScreen #pulls { width: 1fr; height: 100%; border: round $primary; padding: 0 1; }
    """

    def compose(self) -> ComposeResult:
        with Horizontal(id="top"):
            with Vertical(id="busiest-box"):
                yield Static(id="busiest-label")
                yield Digits(f"{0:{RATE_DIGITS}.1f}", id="busiest-rate")
            yield Static(id="gauges")
        yield DataTable(id="running", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="bottom"):
            yield DataTable(id="recent", cursor_type="row", show_cursor=False)
            yield Static(id="pulls")
        yield from self.frame()

    def on_mount(self) -> None:
        set_columns(self.query_one("#running", DataTable), RUNNING_COLUMNS)
        set_columns(self.query_one("#recent", DataTable), RECENT_COLUMNS)
        set_titles(
            self,
            running="Running models",
            recent="Recent requests",
            busiest_box="Busiest",
            gauges="System",
            pulls="Pulls",
        )
        super().on_mount()

    def render_state(self, state: MonitorState, changed: set[str]) -> None:
        # Live token rates (~4 a second while decoding) redraw only the big readout; the
        # table's TOK/S column and sparklines follow the system samples (once a second).
        if changed & {"rates", "running"}:
            busiest = state.busiest()
            label = self.query_one("#busiest-label", Static)
            digits = self.query_one("#busiest-rate", Digits)
            if busiest is None:
                set_text(label, Text("idle: no request decoding", style="dim"))
                value = f"{0:{RATE_DIGITS}.1f}"
            else:
                busy_model, rate = busiest
                set_text(label, Text.assemble(("tok/s  ", "dim"), (busy_model, "bold")))
                # A fixed width (spaces are as wide as digits): a wider or narrower number
                # would cost a layout pass of the whole screen, four times a second.
                value = f"{rate:{RATE_DIGITS}.1f}"
            if digits.value != value:
                digits.update(value)
        if "system" in changed:
            set_text(self.query_one("#gauges", Static), self._gauges(state))
        if changed & {"running", "system", "connection"} or (
            "rates" in changed and not state.active  # a request ended: rate back to 0
        ):
            self._render_running(state)
        if changed & {"recent", "connection"}:
            self._render_recent(state)
        if changed & {"pulls", "system"}:  # system: a finished pull leaves after a while
            set_text(self.query_one("#pulls", Static), pulls_text(state, width=20))

    def _render_running(self, state: MonitorState) -> None:
        now = state.clock()
        rows = []
        for model in state.running:
            name = str(model.get("name") or model.get("model"))
            size = int(model.get("size") or 0)
            vram = int(model.get("size_vram") or 0)
            rate = state.current_rate(name)
            history: Iterable[float] = state.rate_history.get(name, ())
            rows.append(
                (
                    name,
                    [
                        name_with_replicas(model),
                        human_bytes(size),
                        human_bytes(vram) if vram else "-",
                        processor_column(size, vram),
                        str(model.get("context_length") or ""),
                        (
                            until_text(model, now)
                            if model.get("state") != "loading"
                            else f"loading {state.load_progress(model):.0%}"
                        ),
                        str(model.get("queue_depth", 0)),
                        str(model.get("in_flight", 0)),
                        Text(rate_text(rate), style="bold green" if rate else "dim"),
                        Text(sparkline(history, 24), style="green"),
                    ],
                )
            )
        running = self.query_one("#running", DataTable)
        sync_table(running, rows)
        subtitle = f"{len(rows)} loaded"
        if running.border_subtitle != subtitle:
            running.border_subtitle = subtitle

    def _render_recent(self, state: MonitorState) -> None:
        recent_rows = [
            (
                f"{record.time}-{index}",
                [
                    clock_text(record.time),
                    record.model,
                    record.endpoint,
                    str(record.prompt_tokens),
                    str(record.eval_count),
                    ms_text(record.ttft_ms),
                    rate_text(record.tokens_per_second),
                    Text(record.status, style="green" if record.status == "ok" else "red"),
                ],
            )
            for index, record in enumerate(state.recent)
        ]
        sync_table(self.query_one("#recent", DataTable), recent_rows)

    def _gauges(self, state: MonitorState) -> Text:
        sample = state.system
        if sample is None:
            return Text("waiting for the first system sample...", style="dim")
        lines = Text()
        total = float(sample.get("ram_total") or 0)
        used = total - float(sample.get("ram_available") or 0)
        lines.append_text(gauge("RAM", used, total, state.ram_history))
        gpus = sample.get("gpus") or []
        for gpu in gpus:
            lines.append("\n")
            gpu_history: Iterable[float] = state.gpu_history.get(int(gpu["index"]), ())
            lines.append_text(
                gauge(
                    f"GPU{gpu['index']}",
                    float(gpu.get("vram_used") or 0),
                    float(gpu.get("vram_total") or 0),
                    gpu_history,
                )
            )
            lines.append(f" {gpu.get('utilization', 0)}% util", style="dim")
        if not gpus:
            lines.append("\nGPU   none (no NVIDIA driver or NVML): running on CPU", style="dim")
        runners = sample.get("runners") or []
        if runners:
            lines.append("\n")
            lines.append(
                "  ".join(
                    f"{r['model']} {human_bytes(r.get('rss', 0))}"
                    + (f" +{human_bytes(r['vram'])} VRAM" if r.get("vram") else "")
                    for r in runners
                ),
                style="dim",
            )
        return lines
