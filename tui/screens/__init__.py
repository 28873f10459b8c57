"""The TUI's screens, one module each: the four modes (dashboard, models, chat, logs) on a
shared base, and the help, dialog and "daemon not reachable" screens.

The mode screens re-render from `MonitorState` on the app's refresh tick, only when the
state's version moved since their last render (so bursts of events coalesce into one
redraw). They reach the daemon only through the app's `DataSource`.
"""

from localserve.tui.screens.base import MonitorScreen
from localserve.tui.screens.chat import ChatScreen
from localserve.tui.screens.dashboard import DashboardScreen
from localserve.tui.screens.dialogs import ConfirmScreen, PullScreen
from localserve.tui.screens.help import HelpScreen
from localserve.tui.screens.logs import LogsScreen
from localserve.tui.screens.models import ModelsScreen
from localserve.tui.screens.routes import RoutesScreen
from localserve.tui.screens.unreachable import UnreachableScreen
from localserve.tui.screens.usage import UsageScreen

__all__ = [
    "ChatScreen",
    "ConfirmScreen",
    "DashboardScreen",
    "HelpScreen",
    "LogsScreen",
    "ModelsScreen",
    "MonitorScreen",
    "PullScreen",
    "RoutesScreen",
    "UnreachableScreen",
    "UsageScreen",
]
