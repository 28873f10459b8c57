"""Helpers for driving the TUI in tests."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot
from textual.widgets import DataTable, Input

from localserve.tui.app import LocalserveApp
from localserve.tui.screens import MonitorScreen


async def wait_until(
    pilot: Pilot[Any], condition: Callable[[], object], timeout: float = 20.0, what: str = ""
) -> None:
    """Let the app run until `condition()` is true (fails the test after `timeout`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await pilot.pause(0.05)


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
    await pilot.pause(0.1)
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
