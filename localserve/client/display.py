"""UI-neutral text for people: sizes, durations, relative times, rates, the PROCESSOR and
UNTIL columns and the `show` layout, shared by the CLI and the TUI.

Pure functions, standard library only (the core never imports typer, rich or textual).
They follow Ollama's output: sizes use decimal units (`98 MB`, `4.7 GB`); relative times
follow Ollama's `format.HumanTime` ("2 minutes ago", "4 minutes from now", "Forever").
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

KB = 1000
MB = 1000 * KB
GB = 1000 * MB
TB = 1000 * GB

# A keep-alive expiry at or after this year means "never expires".
FOREVER_YEAR = 2200


# ---- sizes, durations, rates ---------------------------------------------------------------


def human_bytes(size: int | float) -> str:
    """Ollama's format.HumanBytes: decimal units, one decimal below 10 when not whole."""
    size = int(size)
    if size >= TB:
        value, unit = size / TB, "TB"
    elif size >= GB:
        value, unit = size / GB, "GB"
    elif size >= MB:
        value, unit = size / MB, "MB"
    elif size >= KB:
        value, unit = size / KB, "KB"
    else:
        return f"{size} B"
    if value >= 10 or value == math.trunc(value):
        return f"{int(value)} {unit}"
    return f"{value:.1f} {unit}"


def human_duration(seconds: float) -> str:
    """Ollama's format.HumanDuration of a positive duration."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{hours // 24 // 365} years"


def per_second(count: float, seconds: float) -> float:
    """A rate (tokens/s, bytes/s): `count` over `seconds`, 0.0 for no elapsed time."""
    return count / seconds if seconds > 0 else 0.0


# ---- times ---------------------------------------------------------------------------------

_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: str | None) -> datetime | None:
    """An RFC 3339 timestamp (any number of fractional digits, `Z` or offset) as an
    aware datetime; None when missing or unparsable."""
    if not value:
        return None
    text = _FRACTION.sub(r"\1", value.strip())
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    if parsed.year <= 1:  # Go's zero time
        return None
    return parsed


def human_time(when: datetime | None, now: datetime | None = None, zero: str = "Never") -> str:
    """Ollama's format.HumanTime: "2 minutes ago", "4 minutes from now", "Forever"."""
    if when is None:
        return zero
    now = now or datetime.now(UTC)
    if when.year >= FOREVER_YEAR:
        return "Forever"
    delta = (now - when).total_seconds()
    if delta < -20 * 365 * 24 * 3600:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def until_column(expires_at: str | None, now: datetime | None = None) -> str:
    """When a loaded model expires: "4 minutes from now", "Forever", "Stopping..."."""
    when = parse_time(expires_at)
    now = now or datetime.now(UTC)
    if when is not None and when.year < FOREVER_YEAR and when < now:
        return "Stopping..."
    return human_time(when, now)


def state_column(model: Mapping[str, Any], now: datetime | None = None) -> str:
    """`ps`'s UNTIL cell: "Loading 40%...", "Stopping..." or when the model expires."""
    state = model.get("state")
    if state == "loading":
        return f"Loading {float(model.get('load_progress') or 0):.0%}..."
    if state == "stopping":
        return "Stopping..."
    return until_column(model.get("expires_at"), now)


# ---- models --------------------------------------------------------------------------------


def usage_cells(row: Mapping[str, Any]) -> list[str]:
    """One /api/usage row as `localserve usage` and the TUI show it: KEY, MODEL, REQUESTS,
    ERRORS, 429S, PROMPT, GENERATED, BUSY."""
    return [
        str(row["key"]),
        str(row["model"]),
        str(row["requests"]),
        str(row["errors"]),
        str(row["rate_limited"]),
        str(row["prompt_tokens"]),
        str(row["generated_tokens"]),
        f"{float(row['busy_seconds']):.1f}s",
    ]


def name_with_replicas(model: Mapping[str, Any]) -> str:
    """A loaded model's name as `ps` and the TUI show it: "smollm2:135m ×2" when it runs
    in several runners (replicas), else just the name."""
    name = str(model.get("name") or model.get("model") or "")
    replicas = model.get("replicas") or []
    return f"{name} ×{len(replicas)}" if len(replicas) > 1 else name


def processor_column(size: int, size_vram: int) -> str:
    """Where a model runs, from its total and VRAM sizes: "100% CPU", "48%/52% CPU/GPU"."""
    if size_vram <= 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size <= 0:
        return "Unknown"
    cpu_percent = round((size - size_vram) / size * 100)
    return f"{cpu_percent}%/{100 - cpu_percent}% CPU/GPU"


def short_id(digest: str | None) -> str:
    """A model's ID: the first 12 hex digits of a digest (with or without `sha256:`)."""
    if not digest:
        return ""
    return digest.split(":", 1)[-1][:12]


# ---- show ----------------------------------------------------------------------------------


def _parameter_count_text(value: Any) -> str:
    try:
        count = float(value)
    except (TypeError, ValueError):
        return str(value)
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f}{unit}".replace(".0" + unit, unit)
    return str(int(count))


def _model_info_value(info: Mapping[str, Any], suffix: str) -> Any:
    for key, value in info.items():
        if key.endswith(suffix):
            return value
    return None


def parameters_text(parameters: Any) -> str:
    """The show response's parameters (Ollama's text form, or a mapping) as text lines."""
    if not parameters:
        return ""
    if isinstance(parameters, str):
        return parameters.strip("\n")
    lines = []
    if isinstance(parameters, Mapping):
        for name, value in parameters.items():
            values = value if isinstance(value, list) else [value]
            for item in values:
                shown = json.dumps(item) if isinstance(item, str) else str(item)
                lines.append(f"{name:<15} {shown}")
    return "\n".join(lines)


def _plain(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


TOKENIZER_ROWS = (
    ("tokenizer.ggml.tokens", "tokens"),
    ("tokenizer.ggml.token_type", "token types"),
    ("tokenizer.ggml.merges", "merges"),
)


def show_sections(data: Mapping[str, Any]) -> list[tuple[str, list[tuple[str, str]] | str]]:
    """The sections of a model's details: (title, key/value rows or a text block)."""
    details: Mapping[str, Any] = data.get("details") or {}
    info: Mapping[str, Any] = data.get("model_info") or {}
    architecture = info.get("general.architecture") or details.get("family") or ""
    parameters = (
        _parameter_count_text(info["general.parameter_count"])
        if info.get("general.parameter_count")
        else details.get("parameter_size", "")
    )
    context = _model_info_value(info, ".context_length")
    embedding = _model_info_value(info, ".embedding_length")
    model_rows = [
        ("architecture", str(architecture)),
        ("parameters", str(parameters)),
        ("context length", str(context or "")),
        ("embedding length", str(embedding or "")),
        ("quantization", str(details.get("quantization_level", ""))),
    ]
    sections: list[tuple[str, list[tuple[str, str]] | str]] = [
        ("Model", [(k, v) for k, v in model_rows if v])
    ]
    capabilities = data.get("capabilities")
    if capabilities:
        sections.append(("Capabilities", [(str(c), "") for c in capabilities]))
    tokenizer = [  # only in a verbose answer (`show --verbose`)
        (label, f"{len(info[key]):,}")
        for key, label in TOKENIZER_ROWS
        if isinstance(info.get(key), list)
    ]
    if tokenizer:
        sections.append(("Tokenizer", tokenizer))
    params = parameters_text(data.get("parameters"))
    if params:
        sections.append(("Parameters", params))
    for key, title in (("system", "System"), ("template", "Template"), ("license", "License")):
        value = data.get(key)
        if value:
            sections.append((title, str(value).strip("\n")))
    source = data.get("source")
    if source:
        if isinstance(source, Mapping):
            rows = [(str(k), _plain(v)) for k, v in source.items() if v not in (None, "", [])]
            sections.append(("Source", rows))
        else:
            sections.append(("Source", str(source)))
    return sections


def render_show(data: Mapping[str, Any], max_block_lines: int = 10) -> str:
    """Ollama's indented `show` layout. Long text blocks (templates) are cut to
    `max_block_lines`; `show --template` prints them whole."""
    out: list[str] = []
    for title, body in show_sections(data):
        out.append(f"  {title}")
        if isinstance(body, str):
            lines = body.splitlines()
            if len(lines) > max_block_lines:
                lines = [*lines[:max_block_lines], "..."]
            out.extend(f"    {line}" for line in lines)
        else:
            width = max((len(k) for k, _ in body), default=0)
            out.extend(f"    {k.ljust(width)}    {v}".rstrip() for k, v in body)
        out.append("")
    return "\n".join(out)
