"""The usage screen (key 6): usage per key and model, and what each key has waiting now.
Once with a fake source, once against a real daemon with real keys."""

from __future__ import annotations

import copy
import json
import urllib.request
from pathlib import Path
from typing import Any

from daemon_harness import running_daemon
from fakes import RUNNING, FakeSource, frozen_clock
from gguf_factory import write_tiny_gguf
from tui_helpers import settle, table_rows, wait_until

from localserve.access.keys import KeyStore
from localserve.client.http import LocalserveClient
from localserve.tui.app import LocalserveApp
from localserve.tui.screens import UsageScreen

SIZE = (140, 40)
JSON = dict[str, Any]

USAGE: list[JSON] = [
    {
        "key": "batch",
        "model": "nomic-embed-text:latest",
        "requests": 512,
        "errors": 2,
        "rate_limited": 7,
        "prompt_tokens": 80_000,
        "generated_tokens": 0,
        "busy_seconds": 95.25,
    },
    {
        "key": "chat",
        "model": "smollm2:135m",
        "requests": 40,
        "errors": 0,
        "rate_limited": 0,
        "prompt_tokens": 1200,
        "generated_tokens": 3400,
        "busy_seconds": 12.0,
    },
]


class UsageSource(FakeSource):
    def __init__(self, **kwargs: Any) -> None:
        running = copy.deepcopy(RUNNING)
        running[0]["queued_by_key"] = {"batch": 30, "chat": 1}
        super().__init__(running=running, **kwargs)
        self.asked: list[str | None] = []

    async def usage(self, since: str | None = None, key: str | None = None) -> JSON:
        self._check()
        self.asked.append(since)
        return {"usage": copy.deepcopy(USAGE), "since": None, "notice": None}


async def test_the_usage_screen_shows_usage_and_waiting_requests_per_key() -> None:
    source = UsageSource()
    app = LocalserveApp(source, clock=frozen_clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("6")
        await wait_until(pilot, lambda: isinstance(app.screen, UsageScreen), what="usage")
        await wait_until(pilot, lambda: len(table_rows(app, "#usage")) == 2, what="usage rows")
        rows = table_rows(app, "#usage")
        assert rows["batch\tnomic-embed-text:latest"] == [
            "batch",
            "nomic-embed-text:latest",
            "512",
            "2",
            "7",
            "80000",
            "0",
            "95.2s",
        ]
        assert source.asked[0] == "24h"
        model = str(RUNNING[0]["name"])
        await wait_until(pilot, lambda: len(table_rows(app, "#waiting")) == 2, what="waiting")
        assert table_rows(app, "#waiting")[f"batch\t{model}"] == ["batch", model, "30"]


async def test_the_usage_screen_reads_a_real_daemon(tmp_path: Path) -> None:
    _, secret = KeyStore(tmp_path / "keys.json").add("chat")
    with running_daemon(tmp_path, keys_file=tmp_path / "keys.json") as daemon:
        daemon.add_model("tiny", write_tiny_gguf(tmp_path / "t.gguf", "t"))
        body = {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 3}}
        request = urllib.request.Request(
            daemon.base_url + "/api/generate",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {secret}"},
        )
        urllib.request.urlopen(request, timeout=60).read()  # noqa: ASYNC210 - before the app
        client = LocalserveClient(daemon.base_url)
        app = LocalserveApp(client)
        async with client, app.run_test(size=SIZE) as pilot:
            await settle(pilot)
            await pilot.press("6")
            await wait_until(
                pilot, lambda: "chat\ttiny:latest" in table_rows(app, "#usage"), what="a row"
            )
            row = table_rows(app, "#usage")["chat\ttiny:latest"]
            assert row[2:7] == ["1", "0", "0", row[5], "3"]
