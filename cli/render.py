"""CLI tables and texts, written to match Ollama's output: `list` and `ps` tables, the
`run --verbose` timing lines (Go's `time.Duration` notation: "1.234567s", "12.5ms") and
`show --modelfile`. Sizes, times and the PROCESSOR/UNTIL cells come from
`localserve.client.display`, which the TUI shares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from localserve.api.payloads import PsModel, ShowResponse, TagsModel
from localserve.client.display import (
    human_bytes,
    human_time,
    name_with_replicas,
    parameters_text,
    parse_time,
    per_second,
    processor_column,
    short_id,
    state_column,
)
from localserve.service.modelfile import Modelfile, render_modelfile

COLUMN_PADDING = "    "


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Ollama's plain table: left-aligned columns, four spaces apart, no borders."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append(COLUMN_PADDING.join(cells).rstrip())
    return "\n".join(lines)


def list_rows(models: Sequence[TagsModel], now: datetime | None = None) -> list[list[str]]:
    """Rows of `localserve list` (NAME, ID, SIZE, MODIFIED) from /api/tags models."""
    return [
        [
            str(m.get("name") or m.get("model") or ""),
            short_id(m.get("digest")),
            human_bytes(int(m.get("size") or 0)),
            human_time(parse_time(m.get("modified_at")), now),
        ]
        for m in models
    ]


LIST_HEADERS = ("NAME", "ID", "SIZE", "MODIFIED")
PS_HEADERS = ("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL")


def ps_rows(models: Sequence[PsModel], now: datetime | None = None) -> list[list[str]]:
    """Rows of `localserve ps` (NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL) from /api/ps."""
    rows = []
    for m in models:
        size = int(m.get("size") or 0)
        context = m.get("context_length")
        rows.append(
            [
                name_with_replicas(m),
                short_id(m.get("digest")),
                human_bytes(size),
                processor_column(size, int(m.get("size_vram") or 0)),
                str(context) if context else "",
                state_column(m, now),
            ]
        )
    return rows


# ---- Go durations and --verbose timings ------------------------------------------------


def _fmt_fraction(value: int, digits: int) -> str:
    """`value` / 10**digits with trailing zeros dropped (Go's fmtFrac)."""
    whole, frac = divmod(value, 10**digits)
    text = str(whole)
    if frac:
        text += "." + str(frac).rjust(digits, "0").rstrip("0")
    return text


def go_duration(nanoseconds: int) -> str:
    """Go's time.Duration.String: "1.5s", "12.345ms", "1m2.5s", "0s"."""
    ns = int(nanoseconds)
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fmt_fraction(ns, 3)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fmt_fraction(ns, 6)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = f"{_fmt_fraction(rest, 9)}s"
    if hours:
        text = f"{hours}h{minutes}m" + text
    elif minutes:
        text = f"{minutes}m" + text
    return sign + text


def _rate(count: int, duration_ns: int) -> float:
    return per_second(count, duration_ns / 1e9)


def timing_lines(final: Mapping[str, Any]) -> list[str]:
    """Ollama's `run --verbose` summary from a final chunk (durations in nanoseconds)."""
    total = int(final.get("total_duration") or 0)
    load = int(final.get("load_duration") or 0)
    prompt_count = int(final.get("prompt_eval_count") or 0)
    prompt_ns = int(final.get("prompt_eval_duration") or 0)
    eval_count = int(final.get("eval_count") or 0)
    eval_ns = int(final.get("eval_duration") or 0)
    return [
        f"total duration:       {go_duration(total)}",
        f"load duration:        {go_duration(load)}",
        f"prompt eval count:    {prompt_count} token(s)",
        f"prompt eval duration: {go_duration(prompt_ns)}",
        f"prompt eval rate:     {_rate(prompt_count, prompt_ns):.2f} tokens/s",
        f"eval count:           {eval_count} token(s)",
        f"eval duration:        {go_duration(eval_ns)}",
        f"eval rate:            {_rate(eval_count, eval_ns):.2f} tokens/s",
    ]


# ---- show --modelfile ---------------------------------------------------------------


def modelfile_text(name: str, data: ShowResponse) -> str:
    """The show response's modelfile, or one assembled from its parts."""
    modelfile = data.get("modelfile")
    if modelfile:
        return str(modelfile)
    parts = Modelfile(name, data.get("template") or None, data.get("system") or None)
    text = render_modelfile(parts, header=f"Modelfile generated by localserve show {name}")
    for line in parameters_text(data.get("parameters")).splitlines():
        if line.strip():
            text += "PARAMETER " + " ".join(line.split(None, 1)) + "\n"
    return text
