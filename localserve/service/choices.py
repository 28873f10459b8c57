"""Several answers to one request (OpenAI's `n`): n generations of the same prompt, their
events merged and tagged with the index of their choice.

The n generations are n runner requests with the same prompt: the runner reads the prompt
once and copies its KV to the other slots (a request that arrives while another reads the
same prompt waits for that read; one that comes later finds it cached with its logits),
so `n` costs one prompt read and n decodes, in parallel as far as the model has slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import cast

from localserve.errors import BadRequestError
from localserve.service.inference import Answer, GenerationEvent, GenerationRequest, collect

MAX_CHOICES = 8  # `n` at most: each choice holds a runner slot while it decodes


def validate_n(raw: object) -> int:
    """OpenAI's `n`: 1 (absent or null) to MAX_CHOICES, else a 400 naming it."""
    if raw is None:
        return 1
    if type(raw) is not int or not 1 <= raw <= MAX_CHOICES:
        raise BadRequestError(f"field 'n' must be an integer from 1 to {MAX_CHOICES}")
    return raw


def choice_requests(request: GenerationRequest, n: int) -> list[GenerationRequest]:
    """`n` copies of `request`; with a seed, choice i samples with seed + i, so the
    choices differ and a request with the same seed gets the same choices again."""
    seed = request.options.get("seed")
    if n == 1 or seed is None or int(seed) < 0:
        return [request] * n
    return [
        dataclasses.replace(
            request,
            options={**request.options, "seed": (int(seed) + index) & 0xFFFFFFFF},
        )
        for index in range(n)
    ]


_END = object()


async def merged(
    streams: list[AsyncIterator[GenerationEvent]],
) -> AsyncIterator[tuple[int, GenerationEvent]]:
    """The events of all `streams` as they come, each with its stream's index. An error in
    one ends all; closing this iterator closes every stream (their runner requests are
    cancelled)."""
    if len(streams) == 1:
        only = streams[0]
        try:
            async for event in only:
                yield 0, event
        finally:
            await _close(only)
        return
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[GenerationEvent]) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event))
            queue.put_nowait((index, _END))
        except Exception as exc:
            queue.put_nowait((index, exc))
        finally:
            await _close(stream)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
    running = len(tasks)
    try:
        while running:
            index, item = await queue.get()
            if item is _END:
                running -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, cast(GenerationEvent, item)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)


async def collect_all(streams: list[AsyncIterator[GenerationEvent]]) -> list[Answer]:
    """Every stream's whole answer (run together; an error in one ends all)."""
    events: list[list[GenerationEvent]] = [[] for _ in streams]
    async for index, event in merged(streams):
        events[index].append(event)
    return [await collect(_replay(choice)) for choice in events]


async def _replay(events: list[GenerationEvent]) -> AsyncIterator[GenerationEvent]:
    for event in events:
        yield event


async def _close(stream: AsyncIterator[GenerationEvent]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


__all__ = ["MAX_CHOICES", "choice_requests", "collect_all", "merged", "validate_n"]
