"""One stream writer for every dialect, parameterised by an encoder.

`stream(request, items, encoder)` awaits the first `hold` items before the headers go
out, so an error before them (unknown model, a model that does not fit, bad options)
gets its real HTTP status from the error middleware; an error after that becomes the
encoder's error line, then the stream ends. Closing early (the client went away)
closes the item iterator, which cancels the generation behind it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web

from localserve.api.errors import describe, openai_error


class Encoder(Protocol):
    @property
    def content_type(self) -> str: ...

    def item(self, item: Any) -> bytes: ...

    def error(self, exc: BaseException) -> bytes: ...

    def end(self) -> bytes: ...


def _dumps(item: Any) -> bytes:
    return json.dumps(item, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class NdjsonEncoder:
    """Ollama's streams: one JSON object a line; an error is a last `{"error"}` line."""

    content_type: str = "application/x-ndjson"

    def item(self, item: Any) -> bytes:
        return _dumps(item) + b"\n"

    def error(self, exc: BaseException) -> bytes:
        _, message, code = describe(exc)
        return _dumps({"error": message, "code": code}) + b"\n"

    def end(self) -> bytes:
        return b""


@dataclass(frozen=True)
class OpenAISseEncoder:
    """OpenAI's streams: `data: {json}` events, an error in OpenAI's shape, `[DONE]`."""

    content_type: str = "text/event-stream"

    def item(self, item: Any) -> bytes:
        return b"data: " + _dumps(item) + b"\n\n"

    def error(self, exc: BaseException) -> bytes:
        status, message, code = describe(exc)
        return b"data: " + _dumps(openai_error(status, message, code)) + b"\n\n"

    def end(self) -> bytes:
        return b"data: [DONE]\n\n"


@dataclass(frozen=True)
class TypedSseEncoder:
    """Streams of typed events (Anthropic's Messages, OpenAI's Responses): each item is a
    JSON object with a `type`, written as `event: <type>` then `data: {json}`; an error is
    the event `error_event` makes of (status, message, code); no end marker."""

    error_event: Callable[[int, str, str], dict[str, Any]]
    content_type: str = "text/event-stream"

    def item(self, item: Any) -> bytes:
        return b"event: " + str(item["type"]).encode() + b"\ndata: " + _dumps(item) + b"\n\n"

    def error(self, exc: BaseException) -> bytes:
        return self.item(self.error_event(*describe(exc)))

    def end(self) -> bytes:
        return b""


NDJSON = NdjsonEncoder()
OPENAI_SSE = OpenAISseEncoder()


async def stream(
    request: web.Request, items: AsyncIterator[Any], encoder: Encoder, *, hold: int = 1
) -> web.StreamResponse:
    try:
        held: list[Any] = []
        while len(held) < hold and (item := await anext(items, None)) is not None:
            held.append(item)
        response = web.StreamResponse(
            headers={"Content-Type": encoder.content_type, "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if held:
            await response.write(b"".join(encoder.item(item) for item in held))
        try:
            async for item in items:
                await response.write(encoder.item(item))
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await response.write(encoder.error(exc))
        tail = encoder.end()
        if tail:
            await response.write(tail)
        await response.write_eof()
        return response
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


async def with_first(first: Any, rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """`first` (unless None: the iterator was empty), then the rest of `rest`; for a
    translator that awaited the first event before its own opening events. The caller
    closes `rest`."""
    if first is None:
        return
    yield first
    async for item in rest:
        yield item


async def drain(items: AsyncIterator[Any]) -> list[Any]:
    """Every item (for answers that are not streamed); the iterator is closed after."""
    try:
        return [item async for item in items]
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()
