"""TUI overhead benchmark (a script, not a test).

In one run on SmolLM2: decode tokens/s streamed through the daemon's /api/generate with
the TUI attached (a separate process running the Textual app headless, `run_test`, on the
dashboard, at its fastest refresh: 0.1 s) against the same with no TUI. Each round is a
set of generations, without and with the TUI, in rotating order, so
drift on a shared machine hits both alike. Prints the medians, the ratio of the medians
and the median of the per-round ratios. Target: with-TUI decode tok/s >= 0.98x without.
A third variant holds an /api/events connection that never reads (a stalled consumer).
The order of the three rotates from round to round.

    .venv/bin/python benchmarks/tui_overhead.py [--tokens 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_daemon, smollm2_path

PROMPT = (
    "<|im_start|>user\nWrite a long story about lighthouse keeper number {i}.<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def decode_rate(port: int, tokens: int, round_: int, variant: str) -> float:
    """Stream one generation; decode tok/s from the first token to the last."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {
        "model": "bench",
        "prompt": f"[{round_}{variant}] " + PROMPT.format(i=round_),
        "raw": True,
        "stream": True,
        "options": {"num_predict": tokens, "temperature": 0},
    }
    conn.request("POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    first = 0.0
    count = 0
    while line := response.readline():
        item = json.loads(line)
        if item.get("response"):
            count += 1
            if not first:
                first = time.perf_counter()
    ended = time.perf_counter()
    conn.close()
    return (count - 1) / (ended - first)


class TuiProcess:
    """The TUI in a child process (as a user would run it), headless."""

    def __init__(self, port: int) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--tui-child", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"the TUI did not start: {line!r}")

    def stop(self) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        import psutil

        times = psutil.Process(self.process.pid).cpu_times()
        cpu = times.user + times.system
        self.process.stdin.write("stop\n")
        self.process.stdin.flush()
        report = json.loads(self.process.stdout.readline())
        self.process.wait(30)
        return {**report, "cpu_s": cpu}


async def tui_child(port: int) -> None:
    from localserve.client.http import LocalserveClient
    from localserve.tui.app import REFRESH_STEPS, LocalserveApp
    from localserve.tui.screens import DashboardScreen

    renders = 0
    original = DashboardScreen.render_state

    def counting(self: DashboardScreen, state: Any, changed: set[str]) -> None:
        nonlocal renders
        renders += 1
        original(self, state, changed)

    DashboardScreen.render_state = counting  # type: ignore[method-assign]
    client = LocalserveClient(f"http://127.0.0.1:{port}")
    app = LocalserveApp(client, refresh=REFRESH_STEPS[0], owns_source=True)
    async with app.run_test(size=(160, 48)) as pilot:
        while not app.state.connected:
            await pilot.pause(0.05)
        await pilot.pause(0.5)  # subscribed to the event stream
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        report = {"renders": renders, "state_version": app.state.version, "refresh": app.refresh_s}
    print(json.dumps(report), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--tui-child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tui_child:
        asyncio.run(tui_child(args.tui_child))
        return
    import psutil

    threads = psutil.cpu_count(logical=False) or 1
    model = smollm2_path()
    without: list[float] = []
    with_tui: list[float] = []
    with_stalled: list[float] = []
    reports: list[dict[str, Any]] = []
    with bench_daemon({"bench": model}, num_ctx="2048", num_threads=str(threads)) as port:
        decode_rate(port, 8, -1, "w")  # load and warm up the runner
        variants: list[tuple[list[float], Callable[[], float]]] = [
            (without, lambda: decode_rate(port, args.tokens, round_, "a")),
            (with_tui, lambda: measure_with_tui(port, args.tokens, round_, reports)),
            (with_stalled, lambda: measure_with_stalled_reader(port, args.tokens, round_)),
        ]
        for round_ in range(args.rounds):
            shift = round_ % len(variants)  # rotate the order, so drift hits all alike
            for results, measure in variants[shift:] + variants[:shift]:
                results.append(measure())
    base = statistics.median(without)
    attached = statistics.median(with_tui)
    renders = sum(r["renders"] for r in reports)
    cpu = sum(r["cpu_s"] for r in reports)
    print(
        f"SmolLM2 135M Q4_1, {args.tokens} tokens, {args.rounds} rounds, {threads} threads, "
        f"TUI refresh {reports[0]['refresh']:g}s ({renders} dashboard renders while measured, "
        f"TUI process CPU {cpu:.1f}s in all, start-up included)"
    )
    print(f"no TUI        decode {base:6.1f} tok/s   (rounds: {_rounds(without)})")
    print(f"TUI attached  decode {attached:6.1f} tok/s   (rounds: {_rounds(with_tui)})")
    pairs = statistics.median(w / b for w, b in zip(with_tui, without, strict=True))
    print(
        f"ratio {attached / base:.3f} of the medians, {pairs:.3f} median per round (target >= 0.98)"
    )
    stalled = statistics.median(with_stalled)
    stalled_pairs = statistics.median(w / b for w, b in zip(with_stalled, without, strict=True))
    print(f"stalled reader decode {stalled:6.1f} tok/s   (rounds: {_rounds(with_stalled)})")
    print(f"ratio {stalled / base:.3f} of the medians, {stalled_pairs:.3f} median per round")


def measure_with_tui(port: int, tokens: int, round_: int, reports: list[dict[str, Any]]) -> float:
    tui = TuiProcess(port)
    try:
        return decode_rate(port, tokens, round_, "b")
    finally:
        reports.append(tui.stop())


def measure_with_stalled_reader(port: int, tokens: int, round_: int) -> float:
    """Decode rate while an /api/events client never reads (its socket buffer stays full)."""
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(("127.0.0.1", port))
    reader.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    try:
        return decode_rate(port, tokens, round_, "c")
    finally:
        reader.close()


def _rounds(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
