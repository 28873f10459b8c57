"""Snapshot tests of every TUI screen, fed by a fake data source with fixed data and a
frozen clock (regenerate with `pytest tests/tui --snapshot-update` after a deliberate
change, and look at the SVGs under tests/tui/__snapshots__ before committing them)."""

from __future__ import annotations

from typing import Any

from fakes import FakeSource, frozen_clock
from textual.pilot import Pilot
from textual.widgets import Input
from tui_helpers import lsapp, render_now, settle, stepping_timer, wait_until, workers_done

from localserve.tui.app import LocalserveApp
from localserve.tui.screens import ChatScreen, LogsScreen, ModelsScreen

SIZE = (120, 36)


def make_app(**kwargs: Any) -> LocalserveApp:
    source = kwargs.pop("source", None) or FakeSource()
    return LocalserveApp(source, clock=frozen_clock, timer=stepping_timer(), **kwargs)


async def on_models(pilot: Pilot[Any]) -> None:
    await settle(pilot)
    await pilot.press("2")
    app = lsapp(pilot)
    await wait_until(
        pilot,
        lambda: isinstance(app.screen, ModelsScreen) and bool(app.screen._details),
        what="the models screen with details",
    )
    render_now(app)
    await pilot.pause()


def test_dashboard(snap_compare: Any) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=settle)


def test_models_with_details(snap_compare: Any) -> None:
    assert snap_compare(make_app(), terminal_size=SIZE, run_before=on_models)


def test_models_filtered_and_sorted_by_size(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await on_models(pilot)
        await pilot.press("s", "slash", "q", "w")
        screen = pilot.app.screen
        assert isinstance(screen, ModelsScreen)
        await wait_until(
            pilot,
            lambda: screen.sort == "size" and screen.filter_text == "qw",
            what="the table sorted by size and filtered",
        )
        await pilot.pause()
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_models_read_only_hides_pull_unload_and_delete(snap_compare: Any) -> None:
    assert snap_compare(make_app(readonly=True), terminal_size=SIZE, run_before=on_models)


def test_delete_asks_for_confirmation(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await on_models(pilot)
        await pilot.press("D")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_pull_dialog(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await on_models(pilot)
        await pilot.press("p", *"smollm2:135m")
        for box in pilot.app.screen.query(Input):
            box.cursor_blink = False

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_chat_after_a_streamed_reply(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        app = lsapp(pilot)
        app.open_chat("smollm2:135m")
        await wait_until(pilot, lambda: isinstance(app.screen, ChatScreen), what="chat")
        screen = app.screen
        assert isinstance(screen, ChatScreen)
        await wait_until(
            pilot,
            lambda: screen.model == "smollm2:135m" and app.focused is screen.query_one("#prompt"),
            what="the chat on its model, the prompt focused",
        )
        await pilot.press(*"Why is the sky blue?", "enter")
        await wait_until(pilot, lambda: len(screen.messages) == 2, what="the reply")
        await wait_until(pilot, lambda: workers_done(app, "chat"), what="the reply finished")
        for box in screen.query(Input):
            box.cursor_blink = False
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_logs(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("4")
        await wait_until(pilot, lambda: isinstance(pilot.app.screen, LogsScreen), what="logs")
        await pilot.pause()
        render_now(lsapp(pilot))
        await pilot.pause()

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_help(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await settle(pilot)
        await pilot.press("question_mark")

    assert snap_compare(make_app(), terminal_size=SIZE, run_before=run_before)


def test_daemon_not_reachable(snap_compare: Any) -> None:
    async def run_before(pilot: Pilot[Any]) -> None:
        await wait_until(
            pilot, lambda: type(pilot.app.screen).__name__ == "UnreachableScreen", what="screen"
        )

    app = make_app(source=FakeSource(reachable=False), start_daemon=lambda: None)
    assert snap_compare(app, terminal_size=SIZE, run_before=run_before)


def test_terminal_too_small(snap_compare: Any) -> None:
    assert snap_compare(make_app(), terminal_size=(50, 12), run_before=settle)
