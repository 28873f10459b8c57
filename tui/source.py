"""The small interface between the TUI and the daemon.

`localserve.client.http.LocalserveClient` implements it (the real one, over HTTP); tests and
snapshots feed the app from a fake with fixed data instead of the network. Methods raise
the client's error tree: `DaemonUnreachableError` when nothing answers (the app then
shows its "daemon not reachable" screen), `APIError` subclasses for answers it refused.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from localserve.api.payloads import ProgressLine, PsModel, ShowResponse, TagsModel

JSON = dict[str, Any]


class DataSource(Protocol):
    base_url: str

    async def version(self) -> str: ...

    async def ps(self) -> list[PsModel]: ...

    async def list_models(self) -> list[TagsModel]: ...

    async def show(self, model: str) -> ShowResponse: ...

    async def delete(self, model: str) -> None: ...

    async def load(self, model: str, keep_alive: str | float | None = None) -> JSON: ...

    async def unload(self, model: str) -> JSON: ...

    def pull(self, model: str) -> AsyncIterator[ProgressLine]: ...

    def chat(
        self,
        model: str,
        messages: list[JSON],
        *,
        options: JSON | None = None,
        format: str | JSON | None = None,
        keep_alive: str | float | None = None,
    ) -> AsyncIterator[JSON]: ...

    def events(self, types: Sequence[str] | None = None) -> AsyncIterator[JSON]: ...

    # keys (issue 16): the usage screen
    async def usage(self, since: str | None = None, key: str | None = None) -> JSON: ...

    # routes (issue 14): the routes screen
    async def routes(self) -> list[JSON]: ...

    async def rollback_route(
        self, name: str, to: int | None = None, *, reason: str | None = None, who: str = "cli"
    ) -> JSON: ...

    async def rollout(
        self, name: str, action: str | None = None, reason: str | None = None
    ) -> JSON: ...

    async def close(self) -> None: ...
