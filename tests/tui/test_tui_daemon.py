"""The TUI against a real daemon on loopback (real runner processes, tiny GGUF models),
driven with `App.run_test()` and the Pilot."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import (
    DaemonThread,
    SubscribedClient,
    make_settings,
    running_daemon,
    running_daemon_with_hub,
)
from fake_hf_server import FakeHub
from gguf_factory import write_tiny_gguf
from textual.pilot import Pilot
from tui_helpers import table_rows, wait_until

from localserve.client.http import LocalserveClient, ModelNotFoundAPIError
from localserve.names import ModelName
from localserve.tui.app import LocalserveApp
from localserve.tui.screens import ConfirmScreen, ModelsScreen, UnreachableScreen

LONG_CTX = 32768
SIZE = (120, 36)


def tui_for(daemon: DaemonThread, **kwargs: Any) -> LocalserveApp:
    source = SubscribedClient(daemon.base_url)
    return LocalserveApp(source, refresh=0.1, owns_source=True, **kwargs)


async def wait_subscribed(pilot: Pilot[Any], app: LocalserveApp) -> None:
    """Until the daemon has subscribed the TUI's event stream (its `subscribed` event)."""
    source = app.source
    assert isinstance(source, SubscribedClient)
    await wait_until(pilot, lambda: source.subscriptions >= 1, what="the event stream subscribed")


async def test_a_request_shows_the_model_on_the_dashboard_with_its_live_rate(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, default_num_ctx=LONG_CTX) as daemon:
        daemon.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a", context_length=LONG_CTX))
        app = tui_for(daemon)
        async with app.run_test(size=SIZE) as pilot, LocalserveClient(daemon.base_url) as client:
            await wait_until(pilot, lambda: app.state.connected, what="connected")
            await wait_subscribed(pilot, app)

            async def generate() -> None:
                async for _ in client.generate("tiny", "hi", options={"num_predict": 30000}):
                    pass

            generation = asyncio.create_task(generate())
            try:

                def decoding_on_dashboard() -> bool:
                    row = table_rows(app, "#running").get("tiny:latest")
                    return row is not None and float(row[8]) > 0

                await wait_until(pilot, decoding_on_dashboard, what="a live tok/s on the dashboard")
                assert not generation.done()  # still decoding while the rate shows
                busiest = app.state.busiest()
                assert busiest is not None and busiest[0] == "tiny:latest" and busiest[1] > 0
            finally:
                generation.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await generation
            # When it stops, the request lands in "recent requests" and the rate drops to 0.
            await wait_until(pilot, lambda: len(app.state.recent) == 1, what="recent request")
            await wait_until(
                pilot,
                lambda: float(table_rows(app, "#running")["tiny:latest"][8]) == 0,
                what="the rate back to 0",
            )


async def test_delete_from_the_models_screen_removes_the_model_from_the_store(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path) as daemon:
        daemon.add_model("keep", write_tiny_gguf(tmp_path / "k.gguf", "k"))
        daemon.add_model("victim", write_tiny_gguf(tmp_path / "v.gguf", "v"))
        app = tui_for(daemon)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: len(app.state.installed) == 2, what="the models")
            await pilot.press("2")
            await wait_until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="models")
            await wait_until(
                pilot, lambda: len(table_rows(app, "#installed")) == 2, what="the table"
            )
            rows = list(table_rows(app, "#installed"))
            await pilot.press(*["down"] * rows.index("victim:latest"))
            await pilot.press("D")
            await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
            await pilot.press("y")
            await wait_until(
                pilot,
                lambda: list(table_rows(app, "#installed")) == ["keep:latest"],
                what="the table without the model",
            )
        with pytest.raises(Exception, match="victim"):
            daemon.store.get(ModelName.parse("victim"))
        async with LocalserveClient(daemon.base_url) as client:
            names = [m["name"] for m in await client.list_models()]
            assert names == ["keep:latest"]
            with pytest.raises(ModelNotFoundAPIError):
                await client.show("victim")


REPO = "TinyOrg/Tiny-GGUF"


@pytest.fixture
def daemon_and_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DaemonThread, FakeHub]]:
    hub = FakeHub(chunk_size=16 * 1024, chunk_delay=0.03)
    hub.add_repo(REPO, {"tiny-Q4_K_M.gguf": write_tiny_gguf(tmp_path / "q4.gguf", "k")})
    with running_daemon_with_hub(tmp_path, monkeypatch, hub) as daemon:
        yield daemon, hub


async def test_pull_progress_appears_while_a_pull_runs(
    daemon_and_hub: tuple[DaemonThread, FakeHub],
) -> None:
    daemon, _ = daemon_and_hub
    app = tui_for(daemon)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: app.state.connected, what="connected")
        await wait_subscribed(pilot, app)
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="models")
        fractions: list[float] = []
        ingest = app.state.ingest

        def ingest_and_look(event: dict[str, Any]) -> None:
            """What the state shows after each event: no progress step goes unseen."""
            ingest(event)
            for pull in app.state.pulls.values():
                if pull.total:
                    fractions.append(pull.fraction)

        app.state.ingest = ingest_and_look  # type: ignore[method-assign]
        await pilot.press("p", *f"hf.co/{REPO}", "enter")

        def progress_seen() -> bool:
            for pull in app.state.pulls.values():
                if pull.total:
                    fractions.append(pull.fraction)
            return any(p.status == "success" for p in app.state.pulls.values())

        await wait_until(pilot, progress_seen, what="the pull to finish")
        assert any(0 < f < 1 for f in fractions), fractions  # progress was shown mid-way
        pull = next(iter(app.state.pulls.values()))
        assert pull.model.startswith("hf.co/") and pull.completed == pull.total > 0
        # The new model shows up in the models table.
        await wait_until(
            pilot,
            lambda: any(k.startswith("hf.co/") for k in table_rows(app, "#installed")),
            what="the pulled model in the table",
        )


async def test_stopping_the_daemon_shows_the_unreachable_screen(tmp_path: Path) -> None:
    daemon = DaemonThread(make_settings(tmp_path)).start()
    stopped = False
    try:
        app = tui_for(daemon)
        async with app.run_test(size=SIZE) as pilot:
            await wait_until(pilot, lambda: app.state.connected, what="connected")
            await asyncio.to_thread(daemon.stop)
            stopped = True
            await wait_until(
                pilot, lambda: isinstance(app.screen, UnreachableScreen), what="unreachable"
            )
            screen = app.screen
            assert isinstance(screen, UnreachableScreen)
            assert screen.base_url == daemon.base_url
            assert not app.state.connected
            await pilot.press("1")  # mode keys do nothing while disconnected
            assert isinstance(app.screen, UnreachableScreen)
    finally:
        if not stopped:
            daemon.stop()


async def test_nothing_listening_shows_the_unreachable_screen(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        url = daemon.base_url
    # The daemon is gone: nothing listens on its port any more.
    app = LocalserveApp(LocalserveClient(url), owns_source=True, start_daemon=lambda: None)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(
            pilot, lambda: isinstance(app.screen, UnreachableScreen), what="unreachable"
        )
        screen = app.screen
        assert isinstance(screen, UnreachableScreen)
        assert screen.base_url == url and screen.can_start
        assert "not reachable at " + url in screen.text().plain
