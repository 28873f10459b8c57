"""Peers benchmark (a script, not a test): localserve side by side with llama.cpp's server.

One run on SmolLM2 135M Q4_1, with these contenders:

- `in-process`: llama-cpp-python's `create_completion(stream=True)` in this process (single
  stream only; the same call as benchmarks/common.py in_process_stream, with time stamps);
- `engine`: localserve's batching engine (localserve.runner.engine.Engine) stepped in this
  process, no daemon: N requests submitted at once, `step()` while it has work;
- `llama-server`: llama.cpp's own HTTP server (`-c num_ctx*N -np N -t T`), streamed through
  its `/v1/completions` (SSE);
- `generate`: a localserve daemon (LOCALSERVE_NUM_PARALLEL=N) through `/api/generate`
  (NDJSON, raw prompt);
- `v1`: the same daemon through `/v1/completions` (SSE).

At 1, 2, 4 and 8 concurrent streams, each with N slots, with a distinct raw ChatML prompt per
stream and, as a second variant, one prompt shared by every stream; temperature 0, the same
number of tokens per stream for everyone (each API's max tokens; the counts each server
reports are checked, and a stream that stops early is reported). Metrics, as a user sees them:

- aggregate tok/s: all tokens of all streams / wall time from the first send to the last
  token (prompt reading and stragglers included);
- TTFT per request (from that request's send), p50 and p95;
- decode tok/s per stream: tokens after the first / time after the first;
- CPU seconds used during the measurement: the server (llama-server's process; the daemon
  and its runner, children counted recursively; this process for in-process contenders),
  the client (this process, for HTTP contenders), and everything else on the machine
  ("others": noise from other programs; it should stay near 0);
- warm TTFT: the same prompt sent twice, the second's TTFT (prompt-prefix caches).

Only one contender works at a time: the others are started but idle, each measurement waits
`--pause` seconds of quiet first (llama.cpp's threads spin for a while after work), rounds
are interleaved (contender order reversed every other round) and medians are reported with
per-round values. The HTTP load generator runs in this process: one thread per stream with
http.client (blocked reads release the GIL; a parsed line costs microseconds).

Targets (localserve contenders, distinct prompts): single-stream decode >= llama-server's;
4- and 8-stream aggregate >= llama-server's; TTFT p95 at 4 streams <= 2x its single-request
TTFT; warm TTFT <= llama-server's + 3 ms; 4-stream aggregate >= 2.0x in-process single stream.

    .venv/bin/python benchmarks/peers.py [--tokens 128] [--streams 1,2,4,8] [--rounds 2]
        [--threads T] [--num-ctx 2048] [--pause 1.5] [--contenders engine,llama-server,...]
        [--llama-server PATH | --skip-llama-server] [--markdown] [--batch-invariant]
        [--no-flash-attn]

`--batch-invariant` runs localserve (the engine, and the daemon through
LOCALSERVE_BATCH_INVARIANT=1) in its batch-invariant mode. Flash attention is on everywhere
by default (localserve's default, llama-server's `-fa auto`); `--no-flash-attn` turns it off
for the engine contender, the daemon (LOCALSERVE_FLASH_ATTN=0) and llama-server (`-fa off`).

llama-server: ../shared/peers/build-llama-server.sh DIR builds it (DIR/bin/llama-server).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TOPICS, bench_daemon, free_port, smollm2_path

DEFAULT_LLAMA_SERVER = "/work/peers/llama-server/bin/llama-server"
CONTENDERS = ("in-process", "engine", "llama-server", "generate", "v1")
LOCALSERVE = ("engine", "generate", "v1")  # the contenders the targets are about
# Same-length salts keep prompts the same size for everyone while no contender can reuse
# another's cache (generate and v1 share one daemon, hence one runner's prefix cache).
SALT = {"in-process": "P", "engine": "E", "llama-server": "L", "generate": "G", "v1": "V"}
WARM_TOKENS = 8  # tokens per request of the warm-TTFT pair


def prompt(tag: str, index: int) -> str:
    """A distinct raw ChatML prompt per tag and stream (as in benchmarks/concurrency.py)."""
    topic = TOPICS[index % len(TOPICS)]
    return (
        f"<|im_start|>user\n[{tag}-{index}] Write a long, detailed story about {topic}."
        "<|im_end|>\n<|im_start|>assistant\n"
    )


# ---- one stream, one measurement ----------------------------------------------------------


@dataclass
class Stream:
    """One request as the client saw it."""

    sent: float = 0.0
    stamps: list[float] = field(default_factory=list)  # arrival of every chunk with text
    count: int | None = None  # tokens the server says it generated (None: not reported)
    finish: str = "?"

    @property
    def tokens(self) -> int:
        return self.count if self.count is not None else len(self.stamps)

    @property
    def ttft(self) -> float:
        return self.stamps[0] - self.sent if self.stamps else float("nan")

    @property
    def decode(self) -> float:
        if len(self.stamps) < 2 or self.stamps[-1] <= self.stamps[0]:
            return float("nan")
        return (self.tokens - 1) / (self.stamps[-1] - self.stamps[0])


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass
class Measurement:
    tokens: int  # asked for per stream
    streams: list[Stream]
    server_cpu: float
    client_cpu: float | None  # None: the client is the server (in-process contenders)
    others_cpu: float  # CPU seconds of every other program on the machine meanwhile

    @property
    def aggregate(self) -> float:
        started = min(s.sent for s in self.streams)
        ended = max((s.stamps[-1] for s in self.streams if s.stamps), default=started)
        total = sum(s.tokens for s in self.streams)
        return total / (ended - started) if ended > started else float("nan")

    @property
    def wall(self) -> float:
        started = min(s.sent for s in self.streams)
        return max((s.stamps[-1] for s in self.streams if s.stamps), default=started) - started

    @property
    def noisy(self) -> bool:
        """Other programs took more than 5% of the machine's CPU time meanwhile."""
        return self.others_cpu > 0.05 * self.wall * (psutil.cpu_count() or 1)

    @property
    def ttfts(self) -> list[float]:
        return [s.ttft for s in self.streams]

    @property
    def decode(self) -> float:
        return statistics.median(s.decode for s in self.streams)


# ---- CPU accounting -------------------------------------------------------------------------


def tree_cpu(roots: list[psutil.Process], *, children: bool = True) -> dict[int, float]:
    """user + system CPU seconds of each process in the trees under `roots` (of the roots
    alone without `children`)."""
    out: dict[int, float] = {}
    for root in roots:
        try:
            procs = [root, *(root.children(recursive=True) if children else [])]
        except psutil.NoSuchProcess:
            continue
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            out[proc.pid] = times.user + times.system
    return out


def delta(before: dict[int, float], after: dict[int, float]) -> float:
    return sum(value - before.get(pid, 0.0) for pid, value in after.items())


def machine_busy() -> float:
    """CPU seconds all CPUs have spent not idle since boot."""
    times = psutil.cpu_times()
    idle = times.idle + getattr(times, "iowait", 0.0)
    guest = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)  # in user, nice
    return sum(times) - idle - guest


SELF = psutil.Process()


# ---- contenders -----------------------------------------------------------------------------


class Contender:
    name = ""
    in_process = False  # the server is this process (no separate client to account)

    def roots(self) -> list[psutil.Process]:
        """The server's processes (their children are counted too, except for this
        process: its children are the other contenders' servers)."""
        return [SELF]

    def run(self, prompts: list[str], tokens: int) -> list[Stream]:
        raise NotImplementedError


class InProcess(Contender):
    """llama-cpp-python's create_completion(stream=True): one stream at a time."""

    name = "in-process"
    in_process = True

    def __init__(self, model: Path, num_ctx: int, threads: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(
            str(model), n_ctx=num_ctx, n_threads=threads, n_threads_batch=threads, verbose=False
        )

    def run(self, prompts: list[str], tokens: int) -> list[Stream]:
        assert len(prompts) == 1, "in-process is single stream only"
        stream = Stream(sent=time.perf_counter())
        chunks = cast(
            Iterator[dict[str, Any]],
            self.llm.create_completion(prompts[0], max_tokens=tokens, temperature=0, stream=True),
        )
        for chunk in chunks:
            now = time.perf_counter()
            choice = chunk["choices"][0]
            if choice["text"]:
                stream.stamps.append(now)
            if choice.get("finish_reason"):
                stream.finish = str(choice["finish_reason"])
        # llama-cpp-python reports no count while streaming; "length" means max_tokens exactly.
        stream.count = tokens if stream.finish == "length" else None
        return [stream]

    def close(self) -> None:
        self.llm.close()


class EngineContender(Contender):
    """localserve.runner.engine.Engine stepped in this process."""

    name = "engine"
    in_process = True

    def __init__(
        self,
        model: Path,
        num_ctx: int,
        slots: int,
        threads: int,
        batch_invariant: bool = False,
        flash_attn: bool = True,
    ) -> None:
        from localserve.runner.engine import Engine

        self.current: dict[str, Stream] = {}
        self.errors: list[str] = []
        self.engine = Engine(self.emit)
        self.engine.load(
            str(model),
            num_ctx=num_ctx,
            num_parallel=slots,
            num_threads=threads,
            batch_invariant=batch_invariant,
            flash_attn=flash_attn,
        )

    def emit(self, frame: Mapping[str, Any]) -> None:
        now = time.perf_counter()
        event = frame.get("event")
        if event == "tokens":  # one frame per step: every sequence's new text
            for request_id, text in frame["texts"].items():
                if text:
                    self.current[request_id].stamps.append(now)
            return
        stream = self.current[str(frame.get("id"))]
        if event == "done":
            stream.count = int(frame.get("eval_count", 0))
            stream.finish = str(frame.get("done_reason"))
        elif event == "error":
            self.errors.append(str(frame.get("message")))

    def run(self, prompts: list[str], tokens: int) -> list[Stream]:
        self.current = {}
        self.errors = []
        for index, text in enumerate(prompts):
            request_id = f"r{index}"
            self.current[request_id] = Stream(sent=time.perf_counter())
            self.engine.submit(request_id, text, {"temperature": 0, "num_predict": tokens})
        while self.engine.has_work:
            self.engine.step()
        if self.errors:
            raise RuntimeError(f"engine: {self.errors[0]}")
        return list(self.current.values())

    def close(self) -> None:
        self.engine.close()


Parser = Callable[[bytes, float, Stream], bool]


def parse_ndjson(line: bytes, now: float, stream: Stream) -> bool:
    """One /api/generate line; True at the final one."""
    if not line.strip():
        return False
    item = json.loads(line)
    if item.get("error"):
        raise RuntimeError(f"/api/generate: {item['error']}")
    if item.get("response"):
        stream.stamps.append(now)
    if item.get("done"):
        stream.count = int(item.get("eval_count", 0))
        stream.finish = str(item.get("done_reason"))
        return True
    return False


def parse_sse(line: bytes, now: float, stream: Stream) -> bool:
    """One line of an OpenAI-style completion stream; True at `[DONE]`."""
    if not line.startswith(b"data:"):
        return False
    data = line[5:].strip()
    if data == b"[DONE]":
        return True
    item = json.loads(data)
    if item.get("error"):
        raise RuntimeError(f"SSE error: {item['error']}")
    for choice in item.get("choices") or []:
        if choice.get("text"):
            stream.stamps.append(now)
        if choice.get("finish_reason"):
            stream.finish = str(choice["finish_reason"])
    usage = item.get("usage")
    if usage and usage.get("completion_tokens") is not None:
        stream.count = int(usage["completion_tokens"])
    timings = item.get("timings")  # llama-server's own numbers, when it sends no usage
    if timings and stream.count is None and timings.get("predicted_n") is not None:
        stream.count = int(timings["predicted_n"])
    return False


def http_streams(port: int, path: str, bodies: list[dict[str, Any]], parse: Parser) -> list[Stream]:
    """POST every body at once (one thread and connection each, connected beforehand, sent
    together through a barrier) and read the streams."""
    streams = [Stream() for _ in bodies]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(bodies))

    def worker(index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        stream = streams[index]
        try:
            conn.connect()
            payload = json.dumps(bodies[index]).encode()
            barrier.wait()
            stream.sent = time.perf_counter()
            conn.request("POST", path, payload, {"Content-Type": "application/json"})
            response = conn.getresponse()
            if response.status != 200:
                raise RuntimeError(f"{path}: HTTP {response.status}: {response.read(500)!r}")
            while line := response.readline():
                if parse(line, time.perf_counter(), stream):
                    break
        except BaseException as exc:  # reported by the caller
            errors.append(exc)
            barrier.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]
    return streams


def completion_body(text: str, tokens: int) -> dict[str, Any]:
    return {
        "model": "bench",
        "prompt": text,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


class HttpContender(Contender):
    def __init__(self, name: str, port: int, roots: list[psutil.Process]) -> None:
        self.name = name
        self.port = port
        self._roots = roots

    def roots(self) -> list[psutil.Process]:
        return self._roots

    def run(self, prompts: list[str], tokens: int) -> list[Stream]:
        if self.name == "generate":
            bodies = [
                {
                    "model": "bench",
                    "prompt": text,
                    "raw": True,
                    "stream": True,
                    "options": {"temperature": 0, "num_predict": tokens},
                }
                for text in prompts
            ]
            return http_streams(self.port, "/api/generate", bodies, parse_ndjson)
        bodies = [completion_body(text, tokens) for text in prompts]
        return http_streams(self.port, "/v1/completions", bodies, parse_sse)


# ---- servers ----------------------------------------------------------------------------------


def llama_server_flags(binary: str) -> tuple[list[str], str]:
    """(extra flags this build supports, its version line)."""
    try:
        helptext = subprocess.run(
            [binary, "--help"], capture_output=True, text=True, timeout=30
        ).stdout
        version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        sys.exit(f"llama-server at {binary} does not run: {exc}")
    extra = ["--no-webui"] if "--no-webui" in helptext else []
    lines = (version.stdout + version.stderr).strip().splitlines()
    return extra, next((line for line in lines if "version" in line), "version unknown")


@contextlib.contextmanager
def llama_server(
    binary: str, model: Path, num_ctx: int, slots: int, threads: int, extra: list[str]
) -> Iterator[tuple[int, psutil.Process, list[str]]]:
    """llama-server on a free port; yields (port, process, command line) once /health is 200."""
    port = free_port()
    command = [
        binary,
        "-m",
        str(model),
        "-c",
        str(num_ctx * slots),
        "-np",
        str(slots),
        "-t",
        str(threads),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        *extra,
    ]
    with tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = Path(log.name).read_text(errors="replace")[-2000:]
                    sys.exit(f"llama-server did not start ({' '.join(command)}):\n{tail}")
                try:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    conn.request("GET", "/health")
                    status = conn.getresponse().status
                    conn.close()
                    if status == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            yield port, psutil.Process(proc.pid), command
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def daemon_process() -> psutil.Process:
    """The `python -m localserve` child that bench_daemon started."""
    for child in SELF.children():
        with contextlib.suppress(psutil.Error):
            cmdline = child.cmdline()
            if cmdline[1:3] == ["-m", "localserve"]:
                return child
    sys.exit("cannot find the localserve daemon's process")


# ---- the run ----------------------------------------------------------------------------------


Key = tuple[str, int, str]  # (contender, streams, "distinct" | "shared")


@dataclass
class Results:
    tokens: int
    runs: dict[Key, list[Measurement]] = field(default_factory=dict)
    warm: dict[str, list[float]] = field(default_factory=dict)  # second TTFT of a pair
    cold: dict[str, list[float]] = field(default_factory=dict)  # first TTFT of a pair
    notes: list[str] = field(default_factory=list)
    noisy: list[str] = field(default_factory=list)  # measurements other programs disturbed

    def check(self, label: str, m: Measurement) -> None:
        """Note a measurement other programs disturbed, and streams that stopped early."""
        tokens = m.tokens
        if m.noisy:
            self.noisy.append(label)
        for index, stream in enumerate(m.streams):
            if stream.count is None:
                self.notes.append(
                    f"{label}: stream {index} reported no token count "
                    f"({len(stream.stamps)} chunks counted, finish {stream.finish})"
                )
            elif stream.count != tokens or stream.finish != "length":
                self.notes.append(
                    f"{label}: stream {index} stopped after {stream.count} of {tokens} tokens "
                    f"(finish {stream.finish})"
                )


def measure(contender: Contender, prompts: list[str], tokens: int) -> Measurement:
    roots = contender.roots()
    tree = not contender.in_process
    client = [SELF] if tree else []
    server_before = tree_cpu(roots, children=tree)
    client_before = tree_cpu(client, children=False)
    busy_before = machine_busy()
    streams = contender.run(prompts, tokens)
    busy = machine_busy() - busy_before
    server = delta(server_before, tree_cpu(roots, children=tree))
    client_cpu = delta(client_before, tree_cpu(client, children=False)) if client else None
    others = busy - server - (client_cpu or 0.0)
    return Measurement(tokens, streams, server, client_cpu, max(others, 0.0))


def describe(m: Measurement) -> str:
    client = f"{m.client_cpu:5.2f}" if m.client_cpu is not None else "    -"
    return (
        f"agg {m.aggregate:7.1f} tok/s  TTFT p50 {percentile(m.ttfts, 50) * 1000:7.1f} "
        f"p95 {percentile(m.ttfts, 95) * 1000:7.1f} ms  decode {m.decode:6.1f} tok/s  "
        f"CPU s server {m.server_cpu:5.2f} client {client} others {m.others_cpu:5.2f}"
    )


def run_group(
    contenders: list[Contender],
    slots: int,
    args: argparse.Namespace,
    results: Results,
) -> None:
    """Warm up the contenders of one stream count, then measure them round by round."""
    for contender in contenders:
        contender.run([prompt(f"{SALT[contender.name]}warm{slots}", 0)], 4)
        time.sleep(args.pause)
    for round_ in range(args.rounds):
        order = contenders if round_ % 2 == 0 else contenders[::-1]
        for contender in order:
            salt = SALT[contender.name]
            variants = [("distinct", [prompt(f"{salt}{round_}d{slots}", i) for i in range(slots)])]
            if slots > 1:
                shared = prompt(f"{salt}{round_}s{slots}", 0)
                variants.append(("shared", [shared] * slots))
            for variant, prompts in variants:
                time.sleep(args.pause)
                m = measure(contender, prompts, args.tokens)
                plural = "s" if slots > 1 else ""
                label = f"{contender.name}, {slots} stream{plural}, {variant}, round {round_ + 1}"
                results.check(label, m)
                results.runs.setdefault((contender.name, slots, variant), []).append(m)
                print(
                    f"  round {round_ + 1}  {contender.name:<12} {slots} x {variant:<8} "
                    + describe(m),
                    flush=True,
                )
            if slots == 1:  # warm TTFT: the same prompt twice
                again = [prompt(f"{salt}{round_}w", 0)]
                pair: list[Stream] = []
                for which in ("first", "again"):
                    time.sleep(args.pause)
                    m = measure(contender, again, WARM_TOKENS)
                    results.check(f"{contender.name}, warm TTFT {which}, round {round_ + 1}", m)
                    pair.append(m.streams[0])
                first, second = pair
                results.cold.setdefault(contender.name, []).append(first.ttft)
                results.warm.setdefault(contender.name, []).append(second.ttft)
                print(
                    f"  round {round_ + 1}  {contender.name:<12} warm TTFT: first "
                    f"{first.ttft * 1000:6.1f} ms, same prompt again {second.ttft * 1000:6.1f} ms",
                    flush=True,
                )


# ---- the report ---------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values)


def rounds_of(values: list[float], scale: float = 1.0, fmt: str = ".1f") -> str:
    return ", ".join(format(v * scale, fmt) for v in values)


@dataclass
class Row:
    contender: str
    streams: int
    variant: str
    aggregate: float
    agg_ratio: float | None
    ttft50: float
    ttft95: float
    decode: float
    decode_ratio: float | None
    server_cpu: float
    client_cpu: float | None
    others_cpu: float
    agg_rounds: list[float]


def rows(results: Results) -> list[Row]:
    out = []
    for (name, streams, variant), ms in sorted(
        results.runs.items(), key=lambda kv: (kv[0][2], kv[0][1], CONTENDERS.index(kv[0][0]))
    ):
        peer = results.runs.get(("llama-server", streams, variant))
        agg = med([m.aggregate for m in ms])
        dec = med([m.decode for m in ms])
        peer_agg = med([m.aggregate for m in peer]) if peer else None
        peer_dec = med([m.decode for m in peer]) if peer else None
        clients = [m.client_cpu for m in ms if m.client_cpu is not None]
        out.append(
            Row(
                contender=name,
                streams=streams,
                variant=variant,
                aggregate=agg,
                agg_ratio=agg / peer_agg if peer_agg else None,
                ttft50=med([percentile(m.ttfts, 50) for m in ms]),
                ttft95=med([percentile(m.ttfts, 95) for m in ms]),
                decode=dec,
                decode_ratio=dec / peer_dec if peer_dec else None,
                server_cpu=med([m.server_cpu for m in ms]),
                client_cpu=med(clients) if clients else None,
                others_cpu=med([m.others_cpu for m in ms]),
                agg_rounds=[m.aggregate for m in ms],
            )
        )
    return out


def ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def table(all_rows: list[Row], markdown: bool) -> list[str]:
    head = [
        "contender",
        "streams",
        "prompts",
        "aggregate tok/s",
        "vs llama-server",
        "TTFT p50 ms",
        "TTFT p95 ms",
        "decode tok/s/stream",
        "vs llama-server",
        "CPU s server",
        "CPU s client",
        "CPU s others",
        "aggregate per round",
    ]
    body = [
        [
            r.contender,
            str(r.streams),
            r.variant,
            f"{r.aggregate:.1f}",
            ratio(r.agg_ratio),
            f"{r.ttft50 * 1000:.1f}",
            f"{r.ttft95 * 1000:.1f}",
            f"{r.decode:.1f}",
            ratio(r.decode_ratio),
            f"{r.server_cpu:.2f}",
            f"{r.client_cpu:.2f}" if r.client_cpu is not None else "(same)",
            f"{r.others_cpu:.2f}",
            rounds_of(r.agg_rounds),
        ]
        for r in all_rows
    ]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return lines + ["| " + " | ".join(cells) + " |" for cells in body]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    return [
        "  ".join(
            cell.rjust(w) if i not in (0, 2) else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        )
        for cells in [head, *body]
    ]


def targets(results: Results, all_rows: list[Row]) -> list[str]:
    by = {(r.contender, r.streams, r.variant): r for r in all_rows}
    lines = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    peer1 = by.get(("llama-server", 1, "distinct"))
    base = by.get(("in-process", 1, "distinct"))
    for name in LOCALSERVE:
        one = by.get((name, 1, "distinct"))
        if one and peer1:
            lines.append(
                f"{name:<9} single-stream decode {one.decode:6.1f} vs llama-server "
                f"{peer1.decode:6.1f} tok/s ({ratio(one.decode / peer1.decode)}, target >= 1.00x)"
                f"  {verdict(one.decode >= peer1.decode)}"
            )
        for n in (4, 8):
            mine, peer = by.get((name, n, "distinct")), by.get(("llama-server", n, "distinct"))
            if mine and peer:
                lines.append(
                    f"{name:<9} {n}-stream aggregate {mine.aggregate:6.1f} vs llama-server "
                    f"{peer.aggregate:6.1f} tok/s ({ratio(mine.aggregate / peer.aggregate)}, "
                    f"target >= 1.00x)  {verdict(mine.aggregate >= peer.aggregate)}"
                )
        four = by.get((name, 4, "distinct"))
        if four and one:
            lines.append(
                f"{name:<9} TTFT p95 at 4 streams {four.ttft95 * 1000:6.1f} ms vs single request "
                f"{one.ttft50 * 1000:6.1f} ms ({ratio(four.ttft95 / one.ttft50)}, target <= 2.00x)"
                f"  {verdict(four.ttft95 <= 2 * one.ttft50)}"
            )
        if four and base:
            lines.append(
                f"{name:<9} 4-stream aggregate {four.aggregate:6.1f} vs in-process single stream "
                f"{base.aggregate:6.1f} tok/s ({ratio(four.aggregate / base.aggregate)}, "
                f"target >= 2.00x)  {verdict(four.aggregate >= 2 * base.aggregate)}"
            )
        if name in results.warm and "llama-server" in results.warm:
            mine_w, peer_w = med(results.warm[name]), med(results.warm["llama-server"])
            lines.append(
                f"{name:<9} warm TTFT {mine_w * 1000:6.1f} ms vs llama-server "
                f"{peer_w * 1000:6.1f} ms ({(mine_w - peer_w) * 1000:+.1f} ms, target <= +3 ms)"
                f"  {verdict(mine_w <= peer_w + 0.003)}"
            )
    return lines


def report(results: Results, args: argparse.Namespace, header: list[str]) -> None:
    all_rows = rows(results)
    print()
    for line in header:
        print(line)
    print()
    for line in table(all_rows, markdown=False):
        print(line)
    if results.warm:
        print("\nwarm TTFT (the same prompt twice; medians, rounds in brackets):")
        for name in CONTENDERS:
            if name in results.warm:
                print(
                    f"  {name:<12} first {med(results.cold[name]) * 1000:6.1f} ms "
                    f"[{rounds_of(results.cold[name], 1000)}]   second "
                    f"{med(results.warm[name]) * 1000:6.1f} ms "
                    f"[{rounds_of(results.warm[name], 1000)}]"
                )
    lines = targets(results, all_rows)
    if lines:
        print("\ntargets:")
        for line in lines:
            print("  " + line)
    if results.noisy:
        count = sum(len(ms) for ms in results.runs.values()) + 2 * sum(
            len(w) for w in results.warm.values()
        )
        print(
            f"\nWARNING: in {len(results.noisy)} of {count} measurements other programs used more "
            "than 5% of the CPUs (column 'CPU s others'): those numbers are noise, e.g. "
            + "; ".join(results.noisy[:3])
        )
    if results.notes:
        print("\nnotes (token counts; rates above use the counts received):")
        for note in results.notes:
            print("  " + note)
    if args.markdown:
        print()
        for line in header:
            print(line + "  ")
        print()
        for line in table(all_rows, markdown=True):
            print(line)
        if results.warm:
            print("\n| contender | warm TTFT ms (first) | warm TTFT ms (same prompt again) |")
            print("|---|---|---|")
            for name in CONTENDERS:
                if name in results.warm:
                    print(
                        f"| {name} | {med(results.cold[name]) * 1000:.1f} | "
                        f"{med(results.warm[name]) * 1000:.1f} |"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--streams", default="1,2,4,8", help="concurrent stream counts")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="default: physical cores")
    parser.add_argument("--num-ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--pause", type=float, default=1.5, help="quiet seconds before each")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    parser.add_argument("--llama-server", default=DEFAULT_LLAMA_SERVER, metavar="PATH")
    parser.add_argument("--skip-llama-server", action="store_true")
    parser.add_argument("--markdown", action="store_true", help="also print Markdown tables")
    parser.add_argument(
        "--no-flash-attn",
        action="store_true",
        help="flash attention off everywhere (LOCALSERVE_FLASH_ATTN=0, llama-server -fa off)",
    )
    parser.add_argument(
        "--batch-invariant",
        action="store_true",
        help="localserve in its batch-invariant mode (LOCALSERVE_BATCH_INVARIANT=1)",
    )
    args = parser.parse_args()
    streams = sorted({int(s) for s in args.streams.split(",") if s.strip()})
    chosen = [c.strip() for c in args.contenders.split(",") if c.strip()]
    unknown = sorted(set(chosen) - set(CONTENDERS))
    if unknown:
        parser.error(f"unknown contenders {unknown}; choose from {', '.join(CONTENDERS)}")
    threads = args.threads or psutil.cpu_count(logical=False) or 1
    model = smollm2_path()
    notes_head: list[str] = []
    extra: list[str] = []
    if "llama-server" in chosen:
        if args.skip_llama_server:
            chosen.remove("llama-server")
            notes_head.append("llama-server skipped (--skip-llama-server): no ratios against it")
        elif not os.access(args.llama_server, os.X_OK):
            sys.exit(
                f"llama-server not found at {args.llama_server}: build it with "
                "../shared/peers/build-llama-server.sh DIR and pass --llama-server "
                "DIR/bin/llama-server, or run with --skip-llama-server"
            )
        else:
            extra, version = llama_server_flags(args.llama_server)
            if args.no_flash_attn:
                extra += ["-fa", "off"]
            notes_head.append(f"llama-server {args.llama_server} ({version})")
    header = [
        f"SmolLM2 135M Q4_1, {args.tokens} tokens per stream, temperature 0, {args.rounds} "
        f"rounds (medians), {threads} threads everywhere, num_ctx {args.num_ctx} per slot, "
        f"N slots for N streams, {psutil.cpu_count()} CPUs",
        "daemon: LOCALSERVE_SPARE_RUNNER=0, LOCALSERVE_ADAPT_THREADS="
        + os.environ.get("LOCALSERVE_ADAPT_THREADS", "1")
        + f", LOCALSERVE_BATCH_INVARIANT={int(args.batch_invariant)}"
        + (" (engine too)" if args.batch_invariant else "")
        + (", flash attention off everywhere" if args.no_flash_attn else ""),
        *notes_head,
    ]
    for line in header:
        print(line, flush=True)
    results = Results(tokens=args.tokens)
    for n in streams:
        with contextlib.ExitStack() as stack:
            group: list[Contender] = []
            if "in-process" in chosen and n == 1:
                in_proc = InProcess(model, args.num_ctx, threads)
                stack.callback(in_proc.close)
                group.append(in_proc)
            if "engine" in chosen:
                engine = EngineContender(
                    model, args.num_ctx, n, threads, args.batch_invariant, not args.no_flash_attn
                )
                stack.callback(engine.close)
                group.append(engine)
            if "llama-server" in chosen:
                port, proc, command = stack.enter_context(
                    llama_server(args.llama_server, model, args.num_ctx, n, threads, extra)
                )
                if n == streams[0]:
                    print("llama-server command: " + " ".join(command[1:]), flush=True)
                group.append(HttpContender("llama-server", port, [proc]))
            if "generate" in chosen or "v1" in chosen:
                port = stack.enter_context(
                    bench_daemon(
                        {"bench": model},
                        num_ctx=str(args.num_ctx),
                        num_parallel=str(n),
                        num_threads=str(threads),
                        keep_alive="1h",
                        spare_runner="0",
                        batch_invariant="1" if args.batch_invariant else "0",
                        flash_attn="0" if args.no_flash_attn else "1",
                    )
                )
                daemon = daemon_process()
                for name in ("generate", "v1"):
                    if name in chosen:
                        group.append(HttpContender(name, port, [daemon]))
            print(f"{n} stream{'s' if n > 1 else ''}: " + ", ".join(c.name for c in group))
            run_group(group, n, args, results)
    report(results, args, header)


if __name__ == "__main__":
    main()
