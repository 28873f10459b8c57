"""The spare runner pool: one runner process started ahead of need (Python and llama_cpp
already imported), so a swap pays only for the model load.

The first spare is made after the first load. The next one starts once no model is
decoding (its start, ~0.2 s of CPU for Python and llama_cpp, stalls a decoding runner's
threads: it cost a first answer ~35 % of its tok/s on 2 cores), but no sooner than
`SPARE_REFILL_DELAY_S` after a load, and no later than `SPARE_REFILL_DEADLINE_S`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Protocol

from localserve.runner.handle import RunnerProcess

SPARE_REFILL_DELAY_S = 0.25
SPARE_REFILL_DEADLINE_S = 5.0

Post = Callable[[Callable[[], None]], None]


class RunnerFactory(Protocol):
    async def __call__(self) -> RunnerProcess: ...


async def spawn_runner() -> RunnerProcess:
    return await RunnerProcess.spawn()


class SpareRunnerPool:
    """Keeps one runner process started ahead of need.

    `post` runs a callable in the scheduler's owner task: the quiet check of
    `refill_when_quiet` reads the scheduler's models there.
    """

    def __init__(self, factory: RunnerFactory, enabled: bool, post: Post) -> None:
        self._factory = factory
        self._enabled = enabled
        self._post = post
        self._spare: asyncio.Task[RunnerProcess] | None = None
        self._refill_deadline: float | None = None

    async def take(self) -> RunnerProcess:
        """The spare if it is alive, else a fresh runner."""
        spare, self._spare = self._spare, None
        runner: RunnerProcess | None = None
        if spare is not None:
            with contextlib.suppress(Exception):
                runner = await spare
            if runner is not None and not runner.alive:
                runner = None
        if runner is None:
            runner = await self._factory()
        return runner

    def refill(self) -> None:
        """Start the next spare now (unless disabled or one exists)."""
        if self._enabled and self._spare is None:
            self._spare = asyncio.create_task(self._factory(), name="spare-runner")

    def refill_when_quiet(self, decoding: Callable[[], bool]) -> None:
        """After a load: refill once `decoding()` is false, checked every
        SPARE_REFILL_DELAY_S, at the latest SPARE_REFILL_DEADLINE_S from now."""
        self._refill_deadline = time.monotonic() + SPARE_REFILL_DEADLINE_S
        self._check_later(decoding, SPARE_REFILL_DELAY_S)

    def _check_later(self, decoding: Callable[[], bool], delay: float) -> None:
        def check() -> None:
            if self._refill_deadline is None or not self._enabled:
                return
            if decoding() and time.monotonic() < self._refill_deadline:
                self._check_later(decoding, SPARE_REFILL_DELAY_S)
                return
            self._refill_deadline = None
            self.refill()

        asyncio.get_running_loop().call_later(delay, self._post, check)

    def disable(self) -> None:
        """Start no more spares (the daemon is shutting down)."""
        self._enabled = False

    def pids(self) -> set[int]:
        """The spare runner's pid, once it has started."""
        spare = self._spare
        if spare is None or not spare.done() or spare.cancelled() or spare.exception():
            return set()
        return {spare.result().pid}

    async def close(self) -> None:
        """Stop the spare (or its start)."""
        self.disable()
        spare, self._spare = self._spare, None
        if spare is None:
            return
        if not spare.done():
            spare.cancel()
        with contextlib.suppress(BaseException):
            runner = await spare
            await runner.stop()
