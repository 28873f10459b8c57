"""The TUI shows a node's drain (issue 15): the state follows the `draining`/`drained`
events, the log describes them, and the top bar says DRAINING."""

from __future__ import annotations

from textual.app import App, ComposeResult

from localserve.tui.state import MonitorState
from localserve.tui.widgets import TopBar


def test_drain_events_set_the_node_state_log_and_top_bar_section() -> None:
    state = MonitorState(clock=lambda: 100.0)
    seen = dict(state.sections)
    state.ingest({"type": "draining", "time": 1.0, "in_flight": 2, "timeout_s": 120.0})
    assert state.node_state == "draining"
    assert "connection" in state.changed_since(seen)  # the top bar re-renders
    assert "2 in flight" in state.log[-1].text and "timeout 120.0s" in state.log[-1].text
    state.ingest(
        {"type": "drained", "time": 2.0, "reason": "idle", "abandoned": 0, "duration_s": 3.5}
    )
    assert state.node_state == "drained"
    assert state.log[-1].text.startswith("drained (idle) after 3.5s")


class _Bar(App[None]):
    def compose(self) -> ComposeResult:
        yield TopBar()


async def test_the_top_bar_says_draining_only_while_the_node_is_not_serving() -> None:
    app = _Bar()
    async with app.run_test() as pilot:
        bar = app.query_one(TopBar)
        common = {
            "mode": "dashboard",
            "base_url": "http://127.0.0.1:11435",
            "connected": True,
            "version": "1.0",
            "refresh": 0.5,
            "readonly": False,
        }
        bar.show(**common)
        await pilot.pause()
        assert "DRAINING" not in str(bar.render())
        bar.show(**common, node_state="draining")
        await pilot.pause()
        assert "DRAINING" in str(bar.render())
