"""The routes screen (key 5): routes and each version's figures side by side, history,
and rollback / pause / abort behind a confirmation; hidden in read-only mode. Once with
a fake source, once against a real daemon with a real rollback."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from daemon_harness import SubscribedClient, running_daemon
from fakes import FROZEN_NOW, FakeSource, frozen_clock
from gguf_factory import write_tiny_gguf
from tui_helpers import settle, table_rows, wait_until, workers_done

from localserve.client.http import LocalserveClient
from localserve.tui.app import LocalserveApp
from localserve.tui.screens import ConfirmScreen, RoutesScreen

SIZE = (140, 40)
JSON = dict[str, Any]

ROUTES: list[JSON] = [
    {
        "name": "assistant:latest",
        "targets": [
            {"model": "qwen2.5:7b-instruct", "weight": 90.0, "share": 0.9},
            {"model": "smollm2:135m", "weight": 10.0, "share": 0.1},
        ],
        "serving": [
            {"model": "qwen2.5:7b-instruct", "weight": 90.0},
            {"model": "smollm2:135m", "weight": 10.0},
        ],
        "warming": False,
        "revision": 3,
        "updated_at": FROZEN_NOW - 120,
        "versions": {
            "qwen2.5:7b-instruct": {
                "requests": 180,
                "errors": 0,
                "error_rate": 0.0,
                "ttft_p95_s": 0.21,
                "tokens_per_second": 41.5,
                "poor_answer_rate": 0.0,
            },
            "smollm2:135m": {
                "requests": 20,
                "errors": 3,
                "error_rate": 0.15,
                "ttft_p95_s": 0.05,
                "tokens_per_second": 210.0,
                "poor_answer_rate": 0.05,
            },
        },
        "rollout": {
            "route": "assistant:latest",
            "stable": "qwen2.5:7b-instruct",
            "candidate": "smollm2:135m",
            "steps": [10.0, 50.0, 100.0],
            "step": 0,
            "percent": 10.0,
            "status": "running",
            "reason": "",
        },
        "history": [],
    }
]


class RoutesSource(FakeSource):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.route_list = copy.deepcopy(ROUTES)

    async def routes(self) -> list[JSON]:
        self._check()
        return copy.deepcopy(self.route_list)

    async def rollback_route(
        self, name: str, to: int | None = None, *, reason: str | None = None, who: str = "cli"
    ) -> JSON:
        self.calls.append(("rollback", (name, who)))
        return self.route_list[0]

    async def rollout(
        self, name: str, action: str | None = None, reason: str | None = None
    ) -> JSON:
        self.calls.append(("rollout", (name, action)))
        if action in ("pause", "abort"):
            status = "paused" if action == "pause" else "aborted"
            self.route_list[0]["rollout"]["status"] = status
        return dict(self.route_list[0]["rollout"])


async def test_the_routes_screen_shows_versions_side_by_side_and_acts_after_confirming() -> None:
    source = RoutesSource()
    app = LocalserveApp(source, clock=frozen_clock)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await wait_until(pilot, lambda: isinstance(app.screen, RoutesScreen), what="routes")
        await wait_until(pilot, lambda: "assistant:latest" in table_rows(app, "#routes"))
        row = table_rows(app, "#routes")["assistant:latest"]
        assert row[1] == "qwen2.5:7b-instruct=90 smollm2:135m=10"
        assert "running -> smollm2:135m at 10%" in row[4]
        versions = table_rows(app, "#versions")
        assert versions["qwen2.5:7b-instruct"][1:5] == ["90", "90%", "180", "0%"]
        assert versions["smollm2:135m"][4:8] == ["15%", "50 ms", "210.0", "5%"]

        await pilot.press("B")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("n")
        await wait_until(pilot, lambda: isinstance(app.screen, RoutesScreen), what="back")
        assert source.calls == []
        await pilot.press("B", "y")
        await wait_until(pilot, lambda: ("rollback", ("assistant:latest", "tui")) in source.calls)

        await pilot.press("P", "y")
        await wait_until(pilot, lambda: ("rollout", ("assistant:latest", "pause")) in source.calls)
        await wait_until(
            pilot, lambda: "paused" in table_rows(app, "#routes")["assistant:latest"][4]
        )
        await pilot.press("A", "y")
        await wait_until(pilot, lambda: ("rollout", ("assistant:latest", "abort")) in source.calls)
        await wait_until(pilot, lambda: workers_done(app, "routes-action"))


async def test_read_only_hides_rollback_pause_and_abort() -> None:
    source = RoutesSource()
    app = LocalserveApp(source, clock=frozen_clock, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("5")
        await wait_until(pilot, lambda: "assistant:latest" in table_rows(app, "#routes"))
        await pilot.press("B", "P", "A")
        await pilot.pause()
        assert isinstance(app.screen, RoutesScreen)
    assert source.calls == []


async def test_a_rollback_from_the_routes_screen_moves_a_real_route(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        daemon.add_model("a:v1", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        daemon.add_model("b:v2", write_tiny_gguf(tmp_path / "b.gguf", "b"))
        async with LocalserveClient(daemon.base_url) as client:
            await client.set_route("assistant", [("a:v1", 1)])
            await client.set_route("assistant", [("b:v2", 1)])
            app = LocalserveApp(SubscribedClient(daemon.base_url), refresh=0.1, owns_source=True)
            async with app.run_test(size=SIZE) as pilot:
                await wait_until(pilot, lambda: app.state.connected, what="connected")
                await pilot.press("5")
                await wait_until(
                    pilot,
                    lambda: table_rows(app, "#routes").get("assistant:latest", [""])[1] == "b:v2",
                    what="the route on screen",
                )
                await pilot.press("B", "y")
                await wait_until(
                    pilot,
                    lambda: table_rows(app, "#routes")["assistant:latest"][1] == "a:v1",
                    what="the rolled back route on screen",
                )
            route = await client.route("assistant")
            assert route["targets"] == [{"model": "a:v1", "weight": 1.0, "share": 1.0}]
            history = (await client.route_history("assistant"))["history"]
            assert history[-1]["who"] == "tui"
