"""Small widgets shared by the screens: the top bar, the too-small message, and a helper
that updates a DataTable in place (only the cells that changed) instead of rebuilding it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable, Static

MIN_WIDTH = 60
MIN_HEIGHT = 16

MODE_KEYS: tuple[tuple[str, str, str], ...] = (
    ("1", "dashboard", "Dashboard"),
    ("2", "models", "Models"),
    ("3", "chat", "Chat"),
    ("4", "logs", "Logs"),
    ("5", "routes", "Routes"),
    ("6", "usage", "Usage"),
)


class TopBar(Static):
    """`localserve  ● http://…  v0.1.0 │ 1 Dashboard 2 Models … │ refresh 0.5s │ READ-ONLY`."""

    DEFAULT_CSS = """
    TopBar { dock: top; height: 1; background: $panel; color: $text; }
    """

    def show(
        self,
        *,
        mode: str,
        base_url: str,
        connected: bool,
        version: str,
        refresh: float,
        readonly: bool,
        node_state: str = "serving",
    ) -> None:
        line = Text()
        line.append(" localserve ", style="bold")
        line.append("● " if connected else "○ ", style="green" if connected else "red")
        line.append(base_url)
        if version:
            line.append(f" v{version}", style="dim")
        line.append("  │ ", style="dim")
        for key, name, title in MODE_KEYS:
            style = "reverse bold" if name == mode else ""
            line.append(f" {key} {title} ", style=style)
        line.append(" │ ", style="dim")
        line.append(f"refresh {refresh:g}s")
        if readonly:
            line.append("  READ-ONLY", style="bold yellow")
        if node_state != "serving":  # a drain (issue 15): no new inference is taken
            line.append(f"  {node_state.upper()}", style="bold red")
        self.update(line)


class TooSmall(Static):
    """Replaces the screen's content while the terminal is smaller than the layout needs
    (it hides its siblings through the screen's `-too-small` class)."""

    SCOPED_CSS = False
    DEFAULT_CSS = """
    TooSmall {
        display: none; width: 100%; height: 100%;
        content-align: center middle; text-align: center;
        background: $background; color: $warning; text-style: bold;
    }
    Screen.-too-small > * { display: none; }
    Screen.-too-small > TooSmall { display: block; }
    """

    def check(self, width: int, height: int) -> bool:
        small = width < MIN_WIDTH or height < MIN_HEIGHT
        self.screen.set_class(small, "-too-small")
        if small:
            self.update(
                f"Terminal too small: {width}×{height}\n"
                f"need at least {MIN_WIDTH}×{MIN_HEIGHT}\n\nresize, or press q to quit"
            )
        return small


Cell = Any


def sync_table(table: DataTable[Any], rows: Sequence[tuple[str, Sequence[Cell]]]) -> None:
    """Make `table` show `rows` (key, cells): update changed cells in place when the keys
    are the same and in the same order, otherwise rebuild and keep the cursor's row."""
    current = [key.value for key in table.rows]
    wanted = [key for key, _ in rows]
    columns = list(table.columns.items())
    if current == wanted:
        for key, cells in rows:
            old = table.get_row(key)
            for (column_key, column), old_cell, cell in zip(columns, old, cells, strict=False):
                if old_cell != cell:
                    # Widen the column only when needed: a resize costs a layout pass.
                    wider = _width(cell) > column.content_width
                    table.update_cell(key, column_key, cell, update_width=wider)
        return
    highlighted: str | None = None
    if table.row_count and 0 <= table.cursor_row < table.row_count:
        highlighted = current[table.cursor_row]
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if highlighted in wanted:
        table.move_cursor(row=wanted.index(highlighted), animate=False)


def _width(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(str(cell))


def highlighted_key(table: DataTable[Any]) -> str | None:
    if not table.row_count or not 0 <= table.cursor_row < table.row_count:
        return None
    key = list(table.rows)[table.cursor_row].value
    return str(key) if key is not None else None
