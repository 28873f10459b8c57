"""TUI behaviour with a fake data source: read-only mode, refresh interval, reconnects,
the start-the-daemon offer, the command palette, pulls, and the state model itself."""

from __future__ import annotations

from typing import Any

from fakes import FROZEN_NOW, FakeSource, frozen_clock, script
from textual.app import SystemCommand
from tui_helpers import settle, table_rows, wait_until, workers_done

from localserve.tui.app import LocalserveApp
from localserve.tui.format import sparkline
from localserve.tui.screens import (
    ChatScreen,
    ConfirmScreen,
    DashboardScreen,
    HelpScreen,
    ModelsScreen,
    PullScreen,
    UnreachableScreen,
)
from localserve.tui.state import MonitorState

SIZE = (120, 36)


def make_app(source: FakeSource | None = None, **kwargs: Any) -> LocalserveApp:
    return LocalserveApp(source or FakeSource(), clock=frozen_clock, **kwargs)


def palette_titles(app: LocalserveApp) -> list[str]:
    commands: list[SystemCommand] = list(app.get_system_commands(app.screen))
    return [c.title for c in commands]


async def test_read_only_refuses_delete_unload_and_pull_and_hides_them() -> None:
    source = FakeSource()
    app = make_app(source, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="models")
        await pilot.press("D", "U", "p")
        await pilot.pause()  # the keys are handled: refused, nothing pushed
        assert isinstance(app.screen, ModelsScreen)  # no confirm, no pull dialog
        titles = palette_titles(app)
        assert not any(t.startswith(("Unload", "Pull")) for t in titles)
        await app.delete_model("smollm2:135m").wait()  # even called directly
        assert workers_done(app, "model-action", "pull")
    assert source.calls == []


async def test_delete_unload_load_and_chat_go_through_the_source() -> None:
    source = FakeSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="models")
        await wait_until(pilot, lambda: len(table_rows(app, "#installed")) == 3, what="rows")
        await pilot.press("l", "U")
        await pilot.press("D")
        await wait_until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("n")  # no: nothing deleted
        await wait_until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="back")
        await pilot.press("D", "y")
        await wait_until(pilot, lambda: len(table_rows(app, "#installed")) == 2, what="deleted")
        first = "hf.co/TinyOrg/Tiny-GGUF:Q8_0"  # sorted by name, the cursor's row
        assert ("load", first) in source.calls and ("unload", first) in source.calls
        assert source.calls.count(("delete", first)) == 1
        await pilot.press("c")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen), what="chat")
        chat = app.screen
        assert isinstance(chat, ChatScreen)
        await wait_until(pilot, lambda: chat.model is not None, what="the chat model")
        await pilot.press(*"hi", "enter")
        await wait_until(pilot, lambda: len(chat.messages) == 2, what="the reply")
        assert chat.messages[1]["content"].startswith("The sky looks blue")


async def test_refresh_interval_is_adjustable_within_bounds() -> None:
    app = make_app(refresh=0.5)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("minus")
        assert app.refresh_s == 1.0
        await pilot.press("plus", "plus", "plus", "plus", "plus")
        assert app.refresh_s == 0.1
        assert "refresh faster" in [t.lower() for t in palette_titles(app)]
    assert LocalserveApp(FakeSource(), refresh=0.001).refresh_s == 0.1
    assert LocalserveApp(FakeSource(), refresh=60).refresh_s == 5.0


async def test_help_opens_with_question_mark_and_f1() -> None:
    app = make_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        for key in ("question_mark", "f1"):
            await pilot.press(key)
            assert isinstance(app.screen, HelpScreen)
            await pilot.press("escape")
            assert isinstance(app.screen, DashboardScreen)


async def test_unreachable_until_retry_finds_the_daemon() -> None:
    source = FakeSource(reachable=False)
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, UnreachableScreen), what="down")
        source.reachable = True
        await pilot.press("r")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="back")
        assert app.state.connected and app.state.daemon_version == "0.1.0"


async def test_the_offer_to_start_the_daemon_starts_it_and_connects() -> None:
    source = FakeSource(reachable=False)
    started: list[bool] = []

    def start() -> None:
        started.append(True)
        source.reachable = True

    app = make_app(source, start_daemon=start)
    async with app.run_test(size=SIZE) as pilot:
        await wait_until(pilot, lambda: isinstance(app.screen, UnreachableScreen), what="down")
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, DashboardScreen), what="started")
    assert started == [True]


async def test_a_lost_event_stream_shows_the_unreachable_screen() -> None:
    source = FakeSource()
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        source.reachable = False
        source.live.put_nowait({"type": "__disconnect__"})
        await wait_until(pilot, lambda: isinstance(app.screen, UnreachableScreen), what="down")
        screen = app.screen
        assert isinstance(screen, UnreachableScreen) and not screen.can_start
        assert "Server disconnected" in screen.reason


async def test_a_pull_from_the_models_screen_shows_its_progress() -> None:
    source = FakeSource(events=[])
    app = make_app(source)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, ModelsScreen), what="models")
        await pilot.press("p")
        assert isinstance(app.screen, PullScreen)
        seen: list[float] = []
        ingest = app.state.ingest

        def ingest_and_look(event: dict[str, Any]) -> None:
            """What the state shows after each event: no step of the pull goes unseen."""
            ingest(event)
            pull = app.state.pulls.get("new:1b")
            if pull is not None:
                seen.append(pull.fraction)

        app.state.ingest = ingest_and_look  # type: ignore[method-assign]
        await pilot.press(*"new:1b", "enter")

        def done() -> bool:
            pull = app.state.pulls.get("new:1b")
            if pull is not None:
                seen.append(pull.fraction)
            return pull is not None and pull.status == "success"

        await wait_until(pilot, done, what="the pull")
        assert ("pull", "new:1b") in source.calls
        assert any(0 < f < 1 for f in seen)


async def test_min_size_message_replaces_the_screen_until_resized() -> None:
    app = make_app()
    async with app.run_test(size=(50, 12)) as pilot:
        await settle(pilot)
        assert app.screen.has_class("-too-small")
        await pilot.resize_terminal(100, 30)
        await wait_until(
            pilot, lambda: not app.screen.has_class("-too-small"), what="the resized screen"
        )
        assert not app.screen.has_class("-too-small")


# ---- the state model, without Textual -------------------------------------------------------


def test_state_follows_requests_rates_and_history() -> None:
    state = MonitorState(clock=frozen_clock)
    state.set_running([{"name": "qwen2.5:7b-instruct"}, {"name": "smollm2:135m"}])
    state.ingest_all(script())
    assert state.busiest() == ("qwen2.5:7b-instruct", 40.0)
    assert state.current_rate("smollm2:135m") == 0
    history = list(state.rate_history["qwen2.5:7b-instruct"])
    assert history[:3] == [0, 0, 12.5] and history[-1] == 40.0
    assert len(state.ram_history) == 10 and len(state.gpu_history[0]) == 10
    assert [r.status for r in state.recent] == ["cancelled", "ok", "ok", "ok"]
    assert {line.kind for line in state.log}.isdisjoint({"system", "request_progress"})
    state.ingest(
        {"type": "request_finished", "request_id": "r-live", "model": "qwen2.5:7b-instruct"}
    )
    assert state.busiest() is None and len(state.recent) == 5


def test_a_finished_pull_lingers_then_leaves() -> None:
    now = [FROZEN_NOW]
    state = MonitorState(clock=lambda: now[0])
    state.ingest({"type": "pull", "model": "m", "status": "pulling x", "completed": 5, "total": 10})
    assert state.active_pulls()[0].fraction == 0.5
    state.ingest({"type": "pull", "model": "m", "status": "success"})
    assert state.active_pulls()[0].fraction == 1.0 and state.needs_tags
    now[0] += 11
    assert state.active_pulls() == []


def test_load_progress_shows_while_loading_and_is_not_logged() -> None:
    state = MonitorState(clock=frozen_clock)
    row = {"name": "m", "state": "loading", "load_progress": 0.1}
    assert state.load_progress(row) == 0.1  # from /api/ps before any event
    state.ingest({"type": "load_started", "model": "m"})
    state.ingest({"type": "load_progress", "model": "m", "progress": 0.5})
    state.ingest({"type": "load_progress", "model": "m", "progress": 0.75})
    assert state.load_progress(row) == 0.75
    assert [line.kind for line in state.log] == ["load_started"]
    state.ingest({"type": "loaded", "model": "m"})
    assert state.loading == {}


def test_versions_only_move_on_change() -> None:
    state = MonitorState()
    state.set_running([{"name": "a"}])
    version = state.version
    state.set_running([{"name": "a"}])
    assert state.version == version


def test_sparkline_scales_to_the_peak_and_keeps_zero_blank() -> None:
    assert sparkline([0, 5, 10], 10) == " ▄█"
    assert sparkline([0.5, 1.0, 0.01], 10, top=1.0) == "▄█▁"
    assert sparkline([], 5) == ""
    assert len(sparkline(range(100), 24)) == 24


async def test_bursts_of_events_coalesce_into_one_render() -> None:
    source = FakeSource(events=[])
    app = make_app(source, refresh=0.25)
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, DashboardScreen)
        renders: list[int] = []
        original = screen.render_state

        def counting(state: MonitorState, changed: set[str]) -> None:
            renders.append(state.version)
            original(state, changed)

        screen.render_state = counting  # type: ignore[method-assign]
        for i in range(500):
            source.live.put_nowait(
                {
                    "type": "request_progress",
                    "request_id": "r",
                    "model": "qwen2.5:7b-instruct",
                    "eval_count": i,
                    "tokens_per_second": float(i),
                }
            )
        # Until the screen has drawn the state after the last event (on a refresh tick).
        await wait_until(
            pilot,
            lambda: (
                app.state.current_rate("qwen2.5:7b-instruct") == 499.0
                and renders
                and renders[-1] == app.state.version
            ),
            what="the last event rendered",
        )
        await pilot.pause()
        assert app.state.current_rate("qwen2.5:7b-instruct") == 499.0
        assert 1 <= len(renders) <= 4  # a few ticks, not 500 redraws
