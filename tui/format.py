"""TUI-only text helpers: sparklines, threshold-coloured gauges and bars, rates and times.

Sizes, the PROCESSOR and UNTIL columns and `show` come from `localserve.client.display`, which
the CLI shares, so the TUI and `localserve ps` / `list` / `show` say the same thing the
same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from rich.text import Text

from localserve.client.display import human_bytes, human_time, parse_time, until_column

BLOCKS = " ▁▂▃▄▅▆▇█"
WARN = 0.75  # gauges turn yellow at 75 % ...
CRITICAL = 0.90  # ... and red at 90 %


def level_style(fraction: float) -> str:
    if fraction >= CRITICAL:
        return "bold red"
    if fraction >= WARN:
        return "yellow"
    return "green"


def sparkline(values: Iterable[float], width: int, top: float | None = None) -> str:
    """The last `width` values as block characters, scaled to `top` (default: their max);
    zero is a blank, any positive value at least the lowest block."""
    points = list(values)[-width:]
    if not points:
        return ""
    peak = top if top is not None else max(points)
    if peak <= 0:
        line = "".join(BLOCKS[1] if v > 0 else " " for v in points)
    else:
        last = len(BLOCKS) - 1
        line = "".join(
            BLOCKS[max(1 if v > 0 else 0, min(last, round(v / peak * last)))] for v in points
        )
    return line


def text_bar(fraction: float, width: int, style: str | None = None) -> Text:
    """A horizontal bar `width` cells wide; coloured by threshold unless `style` is given."""
    fraction = max(0.0, min(1.0, fraction))
    filled = round(fraction * width)
    bar = Text()
    bar.append("█" * filled, style=style or level_style(fraction))
    bar.append("░" * (width - filled), style="dim")
    return bar


def gauge(
    label: str, used: float, total: float, history: Iterable[float], *, width: int = 24
) -> Text:
    """`RAM  ██████░░░░  62%  9.8 / 16 GB  ▁▂▃▅` with threshold colours."""
    fraction = used / total if total else 0.0
    line = Text(f"{label:<6}")
    line.append_text(text_bar(fraction, width))
    line.append(f" {fraction * 100:3.0f}% ", style=level_style(fraction))
    line.append(f"{human_bytes(used):>7} / {human_bytes(total):<7} ")
    line.append(sparkline(history, 20, top=1.0).ljust(20), style=level_style(fraction))
    return line


def rate_text(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:.1f}"


def ms_text(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    return f"{value:.0f} ms"


def until_text(model: Mapping[str, object], now: float) -> str:
    if model.get("state") == "stopping":
        return "Stopping..."
    expires = model.get("expires_at")
    return until_column(str(expires) if expires else None, datetime.fromtimestamp(now, UTC))


def modified_column(modified_at: str | None, now: float) -> str:
    return human_time(parse_time(modified_at), datetime.fromtimestamp(now, UTC))


def clock_text(timestamp: float) -> str:
    """HH:MM:SS in local time."""
    return datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")
