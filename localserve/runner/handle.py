"""The daemon's handle on one runner process (see localserve.runner.main and .protocol).

`RunnerProcess.spawn()` starts `python -m localserve.runner` with one end of a socket pair,
then a reader task routes each incoming frame to the request that owns its id: a step's
`tokens` frame becomes one `token` frame ({event, id, text, logprobs?}) per request in it,
so callers see per-request frames (`token`s, then `done` or `embeddings`; or an `error`).
When the process dies, every open request receives an error frame, so no caller waits
forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from localserve.errors import BadRequestError, LocalserveError, ModelLoadError, RunnerError
from localserve.runner.protocol import Frame, LoadOp, ProtocolError, encode_frame, read_frame

log = logging.getLogger("localserve.runner.handle")
_request_ids = itertools.count(1)


def new_request_id() -> str:
    return f"r{next(_request_ids)}"


@dataclass(frozen=True)
class LoadResult:
    load_duration_ns: int
    rss: int
    n_ctx: int
    batch_invariant: bool = False  # the mode the runner decodes in (see runner.engine)


class RunnerProcess:
    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self._reader = reader
        self._writer = writer
        self._requests: dict[str, asyncio.Queue[Frame]] = {}
        self._control: asyncio.Queue[Frame] = asyncio.Queue()
        self._exit_callbacks: list[Callable[[RunnerProcess], None]] = []
        self.exited = asyncio.Event()
        self.rss = 0
        self.threads = 0  # llama.cpp threads the runner decodes with (its last report)
        self._model_path = ""  # kept out of every error message (it names the store)
        self._read_task = asyncio.create_task(self._read_loop(), name=f"runner-{self.pid}")

    @classmethod
    async def spawn(cls, *, startup_timeout: float = 60.0) -> RunnerProcess:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "localserve.runner",
                "--fd",
                str(child_sock.fileno()),
                pass_fds=(child_sock.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            child_sock.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent_sock)
        runner = cls(process, reader, writer)
        try:
            frame = await asyncio.wait_for(runner._control.get(), startup_timeout)
        except TimeoutError as exc:
            await runner.kill()
            raise RunnerError("runner process did not start in time") from exc
        if frame.get("event") != "ready":
            await runner.kill()
            raise RunnerError(f"runner failed to start: {frame.get('message', frame)}")
        return runner

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    def on_exit(self, callback: Callable[[RunnerProcess], None]) -> None:
        self._exit_callbacks.append(callback)

    def _scrub(self, text: str) -> str:
        """An error text from the runner without the model's file path."""
        return text.replace(self._model_path, "<model file>") if self._model_path else text

    def _load_failure(self, frame: Frame) -> LocalserveError:
        """The error for a load the runner did not finish: ModelLoadError when llama.cpp
        refused the file, RunnerError when the runner died or failed otherwise."""
        raw = str(frame.get("message") or "unknown error")
        log.warning("runner %s could not load %s: %s", self.pid, self._model_path, raw)
        detail = self._scrub(raw)
        kind = frame.get("kind")
        if kind == "load_failed":
            return ModelLoadError(detail)
        if kind == "context_failed":
            return RunnerError(f"the runner could not make a context for the model ({detail})")
        if kind == "crashed":
            return RunnerError(f"the runner crashed while loading the model ({detail})")
        return RunnerError(f"the runner failed while loading the model: {detail}")

    def _describe_exit(self) -> str:
        code = self.process.returncode
        if code is None:
            return "runner closed its connection"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = str(-code)
            return f"runner process was killed by signal {name}"
        return f"runner process exited with code {code}"

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await read_frame(self._reader)
                if frame is None:
                    break
                if frame.get("event") == "tokens":
                    self._route_tokens(frame)
                    continue
                request_id = frame.get("id")
                queue = self._requests.get(str(request_id)) if request_id else None
                if queue is not None:
                    queue.put_nowait(frame)
                elif frame.get("event") == "stats":
                    self.rss = int(frame.get("rss", 0))
                    self.threads = int(frame.get("threads", self.threads))
                elif request_id and frame.get("event") != "error":
                    continue  # a late frame for a request that was abandoned
                else:
                    self._control.put_nowait(frame)
        except (ProtocolError, ConnectionError, ValueError) as exc:
            log.warning("runner %s: protocol failure: %s", self.pid, exc)
        finally:
            with contextlib.suppress(ProcessLookupError):
                await asyncio.wait_for(self.process.wait(), 5)
            reason = self._describe_exit()
            self.exited.set()
            failure: Frame = {"event": "error", "kind": "crashed", "message": reason}
            for queue in self._requests.values():
                queue.put_nowait(failure)
            self._control.put_nowait(failure)
            for callback in self._exit_callbacks:
                callback(self)

    def _route_tokens(self, frame: Frame) -> None:
        """One step's texts, as one `token` frame per request (late ones are dropped)."""
        texts = frame.get("texts")
        if not isinstance(texts, dict):
            raise ProtocolError("a tokens frame without texts")
        requests = self._requests
        logprobs = frame.get("logprobs") or {}
        for request_id, text in texts.items():
            queue = requests.get(request_id)
            if queue is not None:
                token: Frame = {"event": "token", "id": request_id, "text": text}
                if request_id in logprobs:
                    token["logprobs"] = logprobs[request_id]
                queue.put_nowait(token)

    async def _send(self, message: Mapping[str, Any]) -> None:
        if not self.alive:
            raise RunnerError(self._describe_exit())
        try:
            self._writer.write(encode_frame(message))
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise RunnerError(f"runner connection lost: {exc}") from exc

    async def load(
        self,
        path: str,
        *,
        num_ctx: int,
        num_gpu: int,
        num_threads: int,
        timeout: float,
        num_parallel: int = 1,
        tensor_split: list[float] | None = None,
        on_progress: Callable[[float], None] | None = None,
        adapt_threads: bool = False,
        batch_invariant: bool = False,
        flash_attn: bool = True,
        cpus: list[int] | None = None,
    ) -> LoadResult:
        """Load the model at `path`; ModelLoadError when llama.cpp refuses the file.
        `batch_invariant`: decode so that a request's tokens do not depend on the requests
        beside it (slower); `flash_attn`: flash attention on CPU too (as llama-server's
        "auto"; off decodes faster beside long contexts; see localserve.runner.engine);
        `cpus`: pin the runner to these CPUs (a replica's own set)."""
        self._model_path = path
        load: LoadOp = {
            "op": "load",
            "path": path,
            "num_ctx": num_ctx,
            "num_gpu": num_gpu,
            "num_threads": num_threads,
            "adapt_threads": adapt_threads,
            "num_parallel": num_parallel,
            "tensor_split": tensor_split,
            "batch_invariant": batch_invariant,
            "flash_attn": flash_attn,
        }
        if cpus:
            load["cpus"] = cpus
        await self._send(load)
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await self._control.get()
            except TimeoutError as exc:
                raise RunnerError(f"model load timed out after {timeout:.0f}s") from exc
            if frame.get("event") != "load_progress":
                break
            if on_progress is not None:
                on_progress(float(frame.get("progress", 0.0)))
        if frame.get("event") != "loaded":
            raise self._load_failure(frame)
        self.rss = int(frame.get("rss", 0))
        self.threads = int(frame.get("threads", 0))
        return LoadResult(
            load_duration_ns=int(frame.get("load_duration", 0)),
            rss=self.rss,
            n_ctx=int(frame.get("n_ctx", num_ctx)),
            batch_invariant=bool(frame.get("batch_invariant", False)),
        )

    @contextlib.asynccontextmanager
    async def request(self, message: Frame) -> AsyncIterator[AsyncIterator[Frame]]:
        """Send one request; yield an iterator of its frames up to done/error.

        Leaving the block early (client gone, exception) cancels the request in the runner.
        """
        request_id = new_request_id()
        queue: asyncio.Queue[Frame] = asyncio.Queue()
        self._requests[request_id] = queue
        finished = False

        async def frames() -> AsyncIterator[Frame]:
            nonlocal finished
            while True:
                frame = await queue.get()
                event = frame.get("event")
                if event == "error":
                    finished = True
                    kind = frame.get("kind")
                    message_text = self._scrub(str(frame.get("message", "runner error")))
                    if kind == "bad_request":
                        raise BadRequestError(message_text)
                    raise RunnerError(message_text)
                yield frame
                if event in ("done", "embeddings"):
                    finished = True
                    return

        try:
            if not self.alive:
                raise RunnerError(self._describe_exit())
            await self._send({**message, "id": request_id})
            yield frames()
        finally:
            self._requests.pop(request_id, None)
            if not finished and self.alive:
                with contextlib.suppress(RunnerError):
                    await self._send({"op": "cancel", "id": request_id})

    async def refresh_stats(self) -> int:
        with contextlib.suppress(RunnerError):
            await self._send({"op": "stats"})
        return self.rss

    async def stop(self, timeout: float = 5.0) -> None:
        """Ask the runner to exit; kill it if it does not within `timeout`."""
        if self.alive:
            with contextlib.suppress(RunnerError):
                await self._send({"op": "shutdown"})
            try:
                await asyncio.wait_for(self.exited.wait(), timeout)
            except TimeoutError:
                await self.kill()
        await self._close_writer()

    async def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.exited.wait(), 5)
        await self._close_writer()

    async def _close_writer(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


__all__ = ["LoadResult", "RunnerProcess", "new_request_id"]
