"""The daemon's handle on a runner (localserve.runner.handle.RunnerProcess) over an in-memory
stream: a step's `tokens` frame reaches each request as `token` frames of its own."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from localserve.errors import RunnerError
from localserve.runner.handle import RunnerProcess
from localserve.runner.protocol import HEADER, Frame, encode_frame


class FakeProcess:
    pid = 4242
    returncode: int | None = 0

    async def wait(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        pass


class FakeWriter:
    """Collects what the handle sends."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    async def drain(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def wait_closed(self) -> None:
        pass

    def sent(self) -> list[Frame]:
        import json

        frames, offset = [], 0
        while offset < len(self.data):
            (length,) = HEADER.unpack(self.data[offset : offset + HEADER.size])
            offset += HEADER.size
            frames.append(json.loads(self.data[offset : offset + length]))
            offset += length
        return frames


def _handle() -> tuple[RunnerProcess, asyncio.StreamReader, FakeWriter]:
    reader, writer = asyncio.StreamReader(), FakeWriter()
    runner = RunnerProcess(FakeProcess(), reader, writer)  # type: ignore[arg-type]
    return runner, reader, writer


def _done(request_id: str, eval_count: int) -> dict[str, Any]:
    return {
        "event": "done",
        "id": request_id,
        "done_reason": "length",
        "prompt_tokens": 1,
        "prompt_eval_count": 1,
        "prompt_eval_duration": 1,
        "eval_count": eval_count,
        "eval_duration": 1,
    }


async def test_a_steps_tokens_frame_reaches_each_request_as_token_frames_of_its_own() -> None:
    runner, reader, writer = _handle()
    generate = {"op": "generate", "prompt": "hi", "options": {}}
    async with runner.request(generate) as first, runner.request(generate) as second:
        a, b = (frame["id"] for frame in writer.sent())
        reader.feed_data(
            encode_frame({"event": "tokens", "texts": {a: "x", b: "y"}})
            + encode_frame({"event": "tokens", "texts": {b: "z", "gone": "late"}})
            + encode_frame(_done(a, 1))
            + encode_frame(_done(b, 2))
        )
        got_a = [frame async for frame in first]
        got_b = [frame async for frame in second]
    assert got_a == [{"event": "token", "id": a, "text": "x"}, _done(a, 1)]
    assert got_b == [
        {"event": "token", "id": b, "text": "y"},
        {"event": "token", "id": b, "text": "z"},
        _done(b, 2),
    ]
    reader.feed_eof()
    await runner.exited.wait()


async def test_a_runner_that_dies_mid_stream_fails_the_request() -> None:
    runner, reader, writer = _handle()
    async with runner.request({"op": "generate", "prompt": "hi", "options": {}}) as frames:
        (request_id,) = (frame["id"] for frame in writer.sent())
        reader.feed_data(encode_frame({"event": "tokens", "texts": {request_id: "x"}}))
        reader.feed_eof()
        with pytest.raises(RunnerError):
            async for frame in frames:
                assert frame == {"event": "token", "id": request_id, "text": "x"}
