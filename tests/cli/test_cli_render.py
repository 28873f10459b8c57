"""The CLI's tables and texts match Ollama's: list and ps tables, timings, the Modelfile.

Sizes, times and the PROCESSOR/UNTIL cells are tested in tests/client/test_display.py."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

# isort: split
from samples import SHOW

from localserve.cli import render

NOW = datetime(2026, 1, 15, 12, 0, 0, tzinfo=UTC)


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


def test_modelfile_is_built_when_the_server_sends_none() -> None:
    text = render.modelfile_text("tiny", {**SHOW, "parameters": {"stop": ["a", "b"]}})
    assert "FROM tiny" in text
    assert 'TEMPLATE """{{ prompt }}"""' in text
    assert 'SYSTEM """You are terse."""' in text
    assert 'PARAMETER stop "a"' in text and 'PARAMETER stop "b"' in text
    assert render.modelfile_text("x", {"modelfile": "FROM y\n"}) == "FROM y\n"
