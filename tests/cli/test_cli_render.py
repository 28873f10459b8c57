"""The CLI's formatting matches Ollama's: sizes, relative times, ps columns, timings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

# isort: split
from localserve.cli import render

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
    assert render.human_bytes(size) == text


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
    assert render.human_duration(seconds) == text


def test_modified_is_relative_to_now() -> None:
    assert render.human_time(NOW - timedelta(minutes=2, seconds=5), NOW) == "2 minutes ago"
    assert render.human_time(NOW + timedelta(minutes=4, seconds=30), NOW) == "4 minutes from now"
    assert render.human_time(None, NOW) == "Never"


def test_timestamps_with_nanoseconds_and_z_parse() -> None:
    parsed = render.parse_time("2026-01-15T11:58:00.123456789Z")
    assert parsed == datetime(2026, 1, 15, 11, 58, 0, 123456, tzinfo=UTC)
    assert render.parse_time("0001-01-01T00:00:00Z") is None
    assert render.parse_time("garbage") is None


def test_until_column_shows_future_forever_and_stopping() -> None:
    assert render.until_column("2026-01-15T12:04:30Z", NOW) == "4 minutes from now"
    assert render.until_column("2318-01-01T00:00:00Z", NOW) == "Forever"
    assert render.until_column("2200-01-01T00:00:00Z", NOW) == "Forever"
    assert render.until_column("2026-01-15T11:59:59Z", NOW) == "Stopping..."


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
    assert render.processor_column(size, vram) == text


def test_id_is_the_first_twelve_hex_digits() -> None:
    assert render.short_id("sha256:" + "ab" * 32) == "abababababab"
    assert render.short_id("0123456789abcdef") == "0123456789ab"
    assert render.short_id(None) == ""


def test_list_table_has_ollama_columns() -> None:
    models = [
        {
            "name": "smollm2:135m",
            "digest": "66028089cd2e" + "0" * 52,
            "size": 98_362_432,
            "modified_at": "2026-01-15T11:58:00Z",
        },
        {"name": "tiny:latest", "digest": "f89c9f70ed60" + "1" * 52, "size": 469_312},
    ]
    table = render.format_table(render.LIST_HEADERS, render.list_rows(models, NOW))
    assert table.splitlines() == [
        "NAME            ID              SIZE      MODIFIED",
        "smollm2:135m    66028089cd2e    98 MB     2 minutes ago",
        "tiny:latest     f89c9f70ed60    469 KB    Never",
    ]


def test_ps_rows_show_processor_context_and_until() -> None:
    rows = render.ps_rows(
        [
            {
                "name": "tiny:latest",
                "digest": "62e31e919f26" + "0" * 52,
                "size": 67_000_000,
                "size_vram": 0,
                "context_length": 512,
                "expires_at": "2026-01-15T12:04:30Z",
            },
            {"name": "b:latest", "size": 10, "size_vram": 10, "state": "stopping"},
            {"name": "c:latest", "size": 10, "state": "loading", "load_progress": 0.42},
        ],
        NOW,
    )
    assert rows[0] == [
        "tiny:latest",
        "62e31e919f26",
        "67 MB",
        "100% CPU",
        "512",
        "4 minutes from now",
    ]
    assert rows[1][3] == "100% GPU"
    assert rows[1][5] == "Stopping..."
    assert rows[2][5] == "Loading 42%..."


def test_empty_tables_keep_the_header() -> None:
    assert render.format_table(render.PS_HEADERS, []) == (
        "NAME    ID    SIZE    PROCESSOR    CONTEXT    UNTIL"
    )


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (999, "999ns"),
        (1_500, "1.5µs"),
        (12_345_678, "12.345678ms"),
        (2_959_000, "2.959ms"),
        (1_000_000_000, "1s"),
        (1_234_567_891, "1.234567891s"),
        (62_500_000_000, "1m2.5s"),
        (3_723_000_000_000, "1h2m3s"),
    ],
)
def test_durations_print_like_go(ns: int, text: str) -> None:
    assert render.go_duration(ns) == text


def test_verbose_timing_lines_match_ollama() -> None:
    final = {
        "total_duration": 434_185_544,
        "load_duration": 166_705_427,
        "prompt_eval_count": 67,
        "prompt_eval_duration": 2_959_000,
        "eval_count": 445,
        "eval_duration": 62_627_000,
    }
    assert render.timing_lines(final) == [
        "total duration:       434.185544ms",
        "load duration:        166.705427ms",
        "prompt eval count:    67 token(s)",
        "prompt eval duration: 2.959ms",
        "prompt eval rate:     22642.78 tokens/s",
        "eval count:           445 token(s)",
        "eval duration:        62.627ms",
        "eval rate:            7105.56 tokens/s",
    ]


def test_timing_lines_survive_missing_fields() -> None:
    lines = render.timing_lines({})
    assert len(lines) == 8
    assert lines[4] == "prompt eval rate:     0.00 tokens/s"


SHOW = {
    "details": {"family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
    "model_info": {
        "general.architecture": "llama",
        "general.parameter_count": 134_515_008,
        "llama.context_length": 8192,
        "llama.embedding_length": 576,
    },
    "parameters": 'stop                 "<|im_end|>"\ntemperature          0.2',
    "template": "{{ prompt }}",
    "system": "You are terse.",
    "license": "apache-2.0",
    "capabilities": ["completion"],
    "source": {"type": "upload", "file": "tiny.gguf", "revision": None},
}


def test_show_lists_model_facts_and_text_sections() -> None:
    text = render.render_show(SHOW)
    assert "  Model\n    architecture        llama\n    parameters          134.5M" in text
    assert "    context length      8192" in text
    assert "    quantization        Q4_1" in text
    for title in ("Parameters", "System", "Template", "License", "Source"):
        assert f"  {title}\n" in text
    assert "revision" not in text  # empty source fields are left out


def test_long_templates_are_cut_in_show() -> None:
    text = render.render_show({**SHOW, "template": "\n".join(f"line {i}" for i in range(30))})
    assert "line 9" in text and "line 10" not in text and "    ..." in text


def test_modelfile_is_built_when_the_server_sends_none() -> None:
    text = render.modelfile_text("tiny", {**SHOW, "parameters": {"stop": ["a", "b"]}})
    assert "FROM tiny" in text
    assert 'TEMPLATE """{{ prompt }}"""' in text
    assert 'SYSTEM """You are terse."""' in text
    assert 'PARAMETER stop "a"' in text and 'PARAMETER stop "b"' in text
    assert render.modelfile_text("x", {"modelfile": "FROM y\n"}) == "FROM y\n"
