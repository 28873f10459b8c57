"""Helpers for driving the TUI in tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from eventually import eventually_async
from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from localserve.tui.app import LocalserveApp
from localserve.tui.screens import MonitorScreen


async def wait_until(
    pilot: Pilot[Any], condition: Callable[[], object], timeout: float = 20.0, what: str = ""
) -> None:
    """Let the app run until `condition()` is true (fails the test after `timeout`):
    `eventually_async`, pausing through the Pilot so the app processes its messages."""
    await eventually_async(condition, timeout, what=what, pause=lambda: pilot.pause(0.05))


def workers_done(app: LocalserveApp, *groups: str) -> bool:
    """No worker of these groups is pending or running (the app's one-off actions:
    model actions, pulls, chat replies; never the endless event-stream reader)."""
    return all(worker.is_finished for worker in app.workers if worker.group in groups)


def lsapp(pilot: Pilot[Any]) -> LocalserveApp:
    app = pilot.app
    assert isinstance(app, LocalserveApp)
    return app


async def settle(pilot: Pilot[Any]) -> None:
    """Wait until the fake data is in and rendered; freeze what would blink or move."""
    app = lsapp(pilot)
    await wait_until(
        pilot,
        lambda: app.state.connected and app.state.installed and app.state.running,
        what="the first ps/tags",
    )
    # A FakeSource says when the app has read its whole scripted event stream.
    await wait_until(
        pilot, lambda: getattr(app.source, "script_read", True), what="the scripted events read"
    )
    await pilot.pause()
    render_now(app)
    for box in app.screen.query(Input):
        box.cursor_blink = False
    await pilot.pause()


def render_now(app: LocalserveApp) -> None:
    screen = app.screen
    if isinstance(screen, MonitorScreen):
        screen.refresh_from_state(force=True)


def table_rows(app: LocalserveApp, selector: str) -> dict[str, list[str]]:
    table = app.screen.query_one(selector, DataTable)
    return {str(key.value): [str(cell) for cell in table.get_row(key)] for key in table.rows}


def stepping_timer(step: float = 0.01) -> Callable[[], float]:
    """A perf_counter stand-in that advances `step` per call: deterministic chat stats."""
    counter = itertools.count()
    return lambda: next(counter) * step
