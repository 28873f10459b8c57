"""The typed wire shapes of `localserve.api.payloads` against a real daemon's answers:
each answer has every field its TypedDict requires and no field it does not name."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import pytest
from daemon_harness import running_daemon, running_daemon_with_hub
from fake_hf_server import FakeHub
from gguf_factory import write_tiny_gguf

from localserve.api.payloads import (
    ModelDetails,
    ProgressLine,
    PsModel,
    PsState,
    ShowResponse,
    TagsModel,
)
from localserve.client.http import LocalserveClient


def assert_shape(value: Mapping[str, Any], shape: Any) -> None:
    required, optional = set(shape.__required_keys__), set(shape.__optional_keys__)
    assert required <= set(value), f"{shape.__name__} lacks {required - set(value)}"
    assert set(value) <= required | optional, f"{shape.__name__} misses {set(value) - required}"


async def test_tags_ps_and_show_answers_have_the_typed_fields(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        daemon.add_model("tiny", write_tiny_gguf(tmp_path / "t.gguf", "t"))
        async with LocalserveClient(daemon.base_url) as client:
            await client.load("tiny")
            tags, ps, show = (
                await client.list_models(),
                await client.ps(),
                await client.show("tiny"),
            )
    (entry,) = tags
    assert_shape(entry, TagsModel)
    assert_shape(entry["details"], ModelDetails)
    (row,) = ps
    assert_shape(row, PsModel)
    assert_shape(row["details"], ModelDetails)
    assert row["state"] in get_args(PsState)
    assert_shape(show, ShowResponse)
    assert_shape(show["details"], ModelDetails)


async def test_pull_and_create_progress_lines_have_the_typed_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = FakeHub()
    hub.add_repo("org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": write_tiny_gguf(tmp_path / "q.gguf", "q")})
    with running_daemon_with_hub(tmp_path, monkeypatch, hub) as daemon:
        async with LocalserveClient(daemon.base_url) as client:
            pulled = [line async for line in client.pull("hf.co/org/Tiny-GGUF:Q4_K_M")]
            created = [
                line async for line in client.create("copy", from_="hf.co/org/Tiny-GGUF:Q4_K_M")
            ]
    for line in pulled + created:
        assert_shape(line, ProgressLine)
    assert any("total" in line and "digest" in line for line in pulled)
    assert pulled[-1]["status"] == created[-1]["status"] == "success"


def test_the_payloads_module_imports_nothing_heavy() -> None:
    """The client imports it: no aiohttp, no server code."""
    import subprocess
    import sys

    code = (
        "import sys, localserve.api.payloads\n"
        "print(sorted(m for m in sys.modules if m.startswith(('aiohttp', 'localserve'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['localserve', 'localserve.api', 'localserve.api.payloads']"
