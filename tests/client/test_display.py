"""UI-neutral display text (localserve.client.display) matches Ollama's: sizes, relative times,
the PROCESSOR and UNTIL cells, the show layout; and it imports no UI package."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from samples import SHOW

from localserve.client import display

NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (469_312, "469 KB"),
        (98_362_432, "98 MB"),
        (1_000_000_000, "1 GB"),
        (4_661_224_676, "4.7 GB"),
        (12_500_000_000, "12 GB"),
        (2_000_000_000_000, "2 TB"),
    ],
)
def test_sizes_use_decimal_units_like_ollama(size: int, text: str) -> None:
    assert display.human_bytes(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.5, "Less than a second"),
        (1, "1 second"),
        (42, "42 seconds"),
        (90, "About a minute"),
        (150, "2 minutes"),
        (3600, "About an hour"),
        (5 * 3600, "5 hours"),
        (3 * 86400, "3 days"),
        (20 * 86400, "2 weeks"),
        (90 * 86400, "3 months"),
        (800 * 86400, "2 years"),
    ],
)
def test_durations_read_like_ollama(seconds: float, text: str) -> None:
    assert display.human_duration(seconds) == text


def test_modified_is_relative_to_now() -> None:
    assert display.human_time(NOW - timedelta(minutes=2, seconds=5), NOW) == "2 minutes ago"
    assert display.human_time(NOW + timedelta(minutes=4, seconds=30), NOW) == "4 minutes from now"
    assert display.human_time(None, NOW) == "Never"


def test_timestamps_with_nanoseconds_and_z_parse() -> None:
    parsed = display.parse_time("2026-01-15T11:58:00.123456789Z")
    assert parsed == datetime(2026, 1, 15, 11, 58, 0, 123456, tzinfo=UTC)
    assert display.parse_time("0001-01-01T00:00:00Z") is None
    assert display.parse_time("garbage") is None


def test_until_column_shows_future_forever_and_stopping() -> None:
    assert display.until_column("2026-01-15T12:04:30Z", NOW) == "4 minutes from now"
    assert display.until_column("2318-01-01T00:00:00Z", NOW) == "Forever"
    assert display.until_column("2200-01-01T00:00:00Z", NOW) == "Forever"
    assert display.until_column("2026-01-15T11:59:59Z", NOW) == "Stopping..."


@pytest.mark.parametrize(
    ("size", "vram", "text"),
    [
        (100, 0, "100% CPU"),
        (100, 100, "100% GPU"),
        (100, 52, "48%/52% CPU/GPU"),
        (3, 1, "67%/33% CPU/GPU"),
        (100, 200, "Unknown"),
    ],
)
def test_processor_column_splits_cpu_and_gpu(size: int, vram: int, text: str) -> None:
    assert display.processor_column(size, vram) == text


def test_id_is_the_first_twelve_hex_digits() -> None:
    assert display.short_id("sha256:" + "ab" * 32) == "abababababab"
    assert display.short_id("0123456789abcdef") == "0123456789ab"
    assert display.short_id(None) == ""


def test_show_lists_model_facts_and_text_sections() -> None:
    text = display.render_show(SHOW)
    assert "  Model\n    architecture        llama\n    parameters          134.5M" in text
    assert "    context length      8192" in text
    assert "    quantization        Q4_1" in text
    for title in ("Parameters", "System", "Template", "License", "Source"):
        assert f"  {title}\n" in text
    assert "revision" not in text  # empty source fields are left out


def test_long_templates_are_cut_in_show() -> None:
    text = display.render_show({**SHOW, "template": "\n".join(f"line {i}" for i in range(30))})
    assert "line 9" in text and "line 10" not in text and "    ..." in text


def test_per_second_is_zero_without_elapsed_time() -> None:
    assert display.per_second(10, 2.0) == 5.0
    assert display.per_second(10, 0.0) == 0.0


def test_display_imports_no_ui_package_and_no_cli() -> None:
    code = (
        "import sys, localserve.client.display\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('typer', 'rich', 'textual') "
        "or m.split('.')[:2] in (['localserve', 'cli'], ['localserve', 'tui'])))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("row", "text"),
    [
        ({"name": "smollm2:135m"}, "smollm2:135m"),
        ({"name": "smollm2:135m", "replicas": [{"replica": 0}]}, "smollm2:135m"),
        ({"name": "smollm2:135m", "replicas": [{"replica": 0}, {"replica": 1}]}, "smollm2:135m ×2"),
        ({"model": "a:latest", "replicas": [{}, {}, {}]}, "a:latest ×3"),
    ],
)
def test_a_model_in_several_runners_shows_its_replica_count(
    row: dict[str, object], text: str
) -> None:
    assert display.name_with_replicas(row) == text
