"""A runner process: `python -m localserve.runner --fd N` serves one model.

The daemon starts it with one end of a Unix socket pair as fd N. The runner imports
llama_cpp at once, says `ready`, then waits for `load`, so a runner can be started ahead of
need. Generation runs on localserve.runner.engine.Engine: `num_parallel` slots of `num_ctx`
tokens each in one llama.cpp context, decoded together (continuous batching), with
prompt-prefix reuse per slot. Requests beyond the free slots wait in the engine's queue.

Threads: a reader thread receives frames and puts every op on a queue (it answers `stats`
itself, at once); the main thread takes all queued ops between engine steps (load,
generate, embed, cancel), then runs one batched decode step and one embedding chunk, and
blocks on the queue only while there is nothing to do. So a cancel takes effect before the
next step, and a long embedding does not stall generation for its whole duration (while
sequences generate, a chunk takes about as long as a decode step's prompt share). Frames go
out under one send lock; the main thread's frames are sent together after each round: one
write, and one `tokens` frame, per decode step for all sequences. Embeddings use an
embedding context over the same model (localserve.runner.embed), created on first use.
A CPU sampler thread feeds the thread policy (localserve.runner.threads). See
localserve.runner.protocol for the messages.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import queue
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator

import psutil

from localserve.runner.embed import Embedder, embed_batch
from localserve.runner.engine import Engine, StepStats
from localserve.runner.errors import RequestError
from localserve.runner.protocol import (
    Frame,
    LoadedFrame,
    LoadProgressFrame,
    RunnerFrame,
    StatsFrame,
    encode_frame,
    error_frame,
    recv_frame,
)
from localserve.runner.threads import SAMPLE_INTERVAL_S, CpuSampler, ThreadPolicy, usable_cpus

__all__ = ["RequestError", "Runner", "main"]


class LoadProgress:
    """Sends `load_progress` frames while llama.cpp loads: at most one per step of
    progress or per interval, and always the last (1.0)."""

    def __init__(
        self,
        send: Callable[[LoadProgressFrame], None],
        step: float = 0.05,
        interval_s: float = 0.1,
    ) -> None:
        self.send = send
        self.step = step
        self.interval_s = interval_s
        self.sent = -1.0
        self.sent_at = 0.0

    def __call__(self, progress: float) -> None:
        now = time.monotonic()
        if progress < 1.0 and (
            progress - self.sent < self.step and now - self.sent_at < self.interval_s
        ):
            return
        if progress <= self.sent:
            return
        self.sent, self.sent_at = progress, now
        self.send({"event": "load_progress", "progress": round(progress, 4)})


_FUNCTION_PREFIX = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_:]*: |error loading model: )+")
# ggml.h's ggml_log_level (llama_cpp._logger's table predates DEBUG = 1).
LLAMA_LOG_ERROR = 4
LLAMA_LOG_CONT = 5


def _without_path(text: str, path: str) -> str:
    """`text` with the model's file path (which names the store) replaced."""
    return text.replace(path, "<model file>") if path else text


@contextlib.contextmanager
def _llama_errors() -> Iterator[list[str]]:
    """Collect llama.cpp's error log lines while a model loads (its reason for a refusal),
    still passing every line on to llama_cpp's own logger."""
    import llama_cpp
    from llama_cpp import _logger

    lines: list[str] = []
    last = [0]

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level == LLAMA_LOG_ERROR or (level == LLAMA_LOG_CONT and last[0] == LLAMA_LOG_ERROR):
            lines.append(text.decode("utf-8", errors="replace"))
        if level != LLAMA_LOG_CONT:
            last[0] = level
        try:
            _logger.llama_log_callback(level, text, user_data)
        except UnicodeDecodeError:  # its logger decodes strictly; names may not be UTF-8
            print(text.decode("utf-8", errors="replace"), end="", file=sys.stderr, flush=True)

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))


def _load_reason(lines: list[str], path: str) -> str:
    """llama.cpp's first error line, without function names or the file path."""
    for line in lines:
        reason = _FUNCTION_PREFIX.sub("", _without_path(line.strip(), path))
        if reason:
            return reason[:500]
    return ""


def _rss() -> int:
    try:
        return int(psutil.Process().memory_info().rss)
    except Exception:
        return 0


class Runner:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        # Ops with the time they arrived (perf_counter_ns): a request that came in while a
        # step ran counts as sent then, not when the step ended (see Engine.submit).
        self.work: queue.Queue[tuple[Frame, int] | None] = queue.Queue()
        self.engine = Engine(self.post, self.flush)
        self.embedder: Embedder | None = None
        self.load_params: Frame = {}
        self._outbox: list[bytes] = []  # the main thread's frames, sent together each round
        self.policy: ThreadPolicy | None = None  # set by a load with adapt_threads
        self._fixed_threads = 0
        self._applied_threads = 0  # the count llama.cpp was last told
        self.cpu = CpuSampler()
        # The sampler thread's latest reading of other processes' load (cores), and a
        # count of readings, so the main thread applies each one once.
        self._other_load = 0.0
        self._readings = 0
        self._applied = 0
        self._sampler: threading.Thread | None = None

    def send(self, message: RunnerFrame) -> None:
        data = encode_frame(message)
        with self.send_lock:
            self.sock.sendall(data)

    def post(self, message: RunnerFrame) -> None:
        """Queue a frame from the main thread; `flush` sends the queue in one write, so the
        daemon wakes once per decode step rather than once per token of every sequence."""
        self._outbox.append(encode_frame(message))

    def flush(self) -> None:
        if self._outbox:
            data = b"".join(self._outbox)
            self._outbox.clear()
            with self.send_lock:
                self.sock.sendall(data)

    # ---- reader thread -----------------------------------------------------------------

    def read_loop(self) -> None:
        try:
            while True:
                message = recv_frame(self.sock)
                if message is None:
                    break
                op = message.get("op")
                if op == "stats":
                    engine = self.engine
                    stats: StatsFrame = {
                        "event": "stats",
                        "rss": _rss(),
                        "slots": len(engine.slots),
                        "slots_busy": engine.busy_slots,
                        "threads": self.threads,
                    }
                    if self.policy is not None:
                        stats["others_load"] = self._other_load
                    self.send(stats)
                elif op == "shutdown":
                    break
                else:
                    self.work.put((message, time.perf_counter_ns()))
        except OSError:
            pass
        finally:
            self.work.put(None)

    # ---- main thread -------------------------------------------------------------------

    def serve(self) -> int:
        threading.Thread(target=self.read_loop, name="runner-reader", daemon=True).start()
        try:
            return self._loop()
        except OSError:
            return 0  # the daemon went away while we were sending
        finally:
            if self.embedder is not None:
                self.embedder.close()
            self.engine.close()

    @property
    def has_work(self) -> bool:
        return self.engine.has_work or (self.embedder is not None and self.embedder.has_work)

    def _loop(self) -> int:
        while True:
            # Block only when idle; otherwise take what has arrived and step.
            messages: list[tuple[Frame, int] | None] = []
            if not self.has_work:
                messages.append(self.work.get())
            while True:
                try:
                    messages.append(self.work.get_nowait())
                except queue.Empty:
                    break
            for item in messages:
                if item is None:
                    self.flush()
                    return 0
                if not self.handle(*item):
                    self.flush()
                    return 1
            self.flush()
            if self.has_work:
                self._step()
                self.flush()

    def _step(self) -> None:
        """One decode step of the engine and one chunk of embeddings, with the threads the
        policy picks (before the step: a prompt read needs the right count most)."""
        policy = self.policy
        if policy is not None:
            if self._readings != self._applied:
                self._applied = self._readings
                policy.reading(self._other_load)
            self._set_threads(policy.next_threads())
            self._log_decisions(policy)
        stats = StepStats()
        if self.engine.has_work:
            stats = self.engine.step()
        embedder = self.embedder
        if embedder is not None and embedder.has_work:
            budget = embedder.busy_chunk() if self.engine.generating else embedder.n_batch
            read = embedder.step(budget)
            stats.tokens += read
            stats.prompt_tokens += read  # never a step the policy compares
        if policy is not None:
            policy.observe(stats)
            self._log_decisions(policy)

    def _set_threads(self, threads: int) -> None:
        if threads != self._applied_threads:
            self._applied_threads = threads
            self.engine.set_threads(threads)
            if self.embedder is not None:
                self.embedder.set_threads(threads)

    def _log_decisions(self, policy: ThreadPolicy) -> None:
        for decision in policy.decisions:
            print(
                f"runner {os.getpid()}: decoding with {decision} "
                f"(max {policy.max_threads}; other processes use {policy.load:.1f} cores)",
                file=sys.stderr,
                flush=True,
            )
        policy.decisions.clear()

    def _sample_cpu(self) -> None:
        """Sampler thread: other processes' load over each SAMPLE_INTERVAL_S, idle or not,
        so the first step after an idle spell already knows the load of the moment."""
        self.cpu.restart()
        while True:
            time.sleep(SAMPLE_INTERVAL_S)
            other = self.cpu.other_cores()
            if other is not None:
                self._other_load = other
                self._readings += 1

    @property
    def threads(self) -> int:
        """The threads decodes use now."""
        if self.policy is not None:
            return self.policy.threads
        return self._fixed_threads

    def handle(self, message: Frame, received_ns: int | None = None) -> bool:
        """Run one op (that arrived at `received_ns`); False when the runner must exit (a
        failed load)."""
        op = message.get("op")
        request_id = str(message.get("id", ""))
        try:
            if op == "load":
                self.load(message)
            elif op == "cancel":
                if self.embedder is None or not self.embedder.cancel(request_id):
                    self.engine.cancel(request_id)
            elif not self.engine.loaded:
                raise RequestError("internal", "no model loaded")
            elif op == "generate":
                self.engine.submit(
                    request_id,
                    str(message.get("prompt") or ""),
                    dict(message.get("options") or {}),
                    message.get("format"),
                    logprobs=message.get("logprobs"),
                    prefix=message.get("prefix"),
                    return_tokens=bool(message.get("return_tokens", False)),
                    received_ns=received_ns,
                )
            elif op == "embed":
                self.embed(request_id, message)
            else:
                raise RequestError("bad_request", f"unknown op {op!r}")
        except RequestError as exc:
            text = _without_path(str(exc), str(self.load_params.get("path") or ""))
            self.post(error_frame(request_id or None, exc.kind, text))
            return op != "load"
        except Exception as exc:
            text = _without_path(repr(exc), str(self.load_params.get("path") or ""))
            self.post(error_frame(request_id or None, "internal", text))
            return op != "load"
        return True

    def load(self, message: Frame) -> None:
        started = time.perf_counter()
        self.load_params = message
        path = str(message["path"])
        if not os.path.isfile(path):
            print(f"runner {os.getpid()}: no model file at {path}", file=sys.stderr, flush=True)
            raise RequestError("load_failed", "the model file is missing")
        cpus = message.get("cpus")
        if cpus:  # a replica pinned to a CPU set of its own (LOCALSERVE_CPU_REPLICAS)
            try:
                os.sched_setaffinity(0, [int(cpu) for cpu in cpus])
            except (AttributeError, OSError, ValueError) as exc:
                raise RequestError("bad_request", f"cannot pin to CPUs {cpus}: {exc}") from exc
        threads = int(message.get("num_threads") or os.cpu_count() or 1)
        self._fixed_threads = self._applied_threads = threads
        self.policy = None
        if message.get("adapt_threads") and threads > 1:
            self.policy = ThreadPolicy(threads, len(usable_cpus()))
            if self._sampler is None:
                self._sampler = threading.Thread(
                    target=self._sample_cpu, name="runner-cpu-sampler", daemon=True
                )
                self._sampler.start()
        batch_invariant = bool(message.get("batch_invariant", False))
        with _llama_errors() as llama_errors:
            try:
                info = self.engine.load(
                    path,
                    num_ctx=int(message.get("num_ctx", 2048)),
                    num_parallel=int(message.get("num_parallel") or 1),
                    num_gpu=int(message.get("num_gpu", 0)),
                    num_threads=threads,
                    num_batch=int(message.get("num_batch") or 512),
                    tensor_split=message.get("tensor_split") or None,
                    on_progress=LoadProgress(self.send),
                    batch_invariant=batch_invariant,
                    flash_attn=bool(message.get("flash_attn", True)),
                )
            except (RequestError, ValueError, RuntimeError, OSError) as exc:
                raise self._load_error(exc, path, llama_errors) from exc
        loaded: LoadedFrame = {
            "event": "loaded",
            "load_duration": int((time.perf_counter() - started) * 1e9),
            "rss": _rss(),
            "n_ctx": info.n_ctx,
            "slots": info.slots,
            "n_gpu_layers": int(message.get("num_gpu", 0)),
            "threads": self.threads,
            "batch_invariant": info.batch_invariant,
            "embed_batch": embed_batch(int(message.get("num_gpu", 0))),
        }
        self.post(loaded)

    @staticmethod
    def _load_error(exc: Exception, path: str, llama_errors: list[str]) -> RequestError:
        """A load failure for the daemon, by its kind: `load_failed` when llama.cpp refused
        the file, `context_failed` when the model loaded but no context could be made (each
        with llama.cpp's reason, never the path)."""
        print(f"runner {os.getpid()}: loading {path} failed: {exc}", file=sys.stderr, flush=True)
        reason = _load_reason(llama_errors, path)
        detail = _without_path(str(exc), path)
        if isinstance(exc, RequestError) and exc.kind == "context_failed":
            return RequestError("context_failed", f"{detail}: {reason}" if reason else detail)
        message = "llama.cpp refused the model file"
        return RequestError("load_failed", f"{message}: {reason or detail}")

    def embed(self, request_id: str, message: Frame) -> None:
        """Queue an embedding request; its chunks run between decode steps."""
        if self.embedder is None:
            params = self.load_params
            self.embedder = Embedder(
                self.engine.model,
                self.post,
                num_ctx=int(params.get("num_ctx", 2048)),
                num_threads=self._applied_threads or 1,
                num_gpu=int(params.get("num_gpu", 0)),
            )
        self.embedder.submit(
            request_id,
            [str(x) for x in message.get("inputs") or []],
            truncate=bool(message.get("truncate", True)),
            normalize=bool(message.get("normalize", True)),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localserve.runner")
    parser.add_argument("--fd", type=int, required=True, help="socket fd inherited from the daemon")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    import llama_cpp  # noqa: F401 - import before `ready` so a spare runner is warm

    runner = Runner(sock)
    runner.send({"event": "ready", "pid": os.getpid()})
    code = runner.serve()
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
