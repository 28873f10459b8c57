"""TUI overhead benchmark (a script, not a test).

In one run on SmolLM2: decode tokens/s streamed through the daemon's /api/generate with
the TUI attached (a separate process running the Textual app headless, `run_test`, on the
dashboard, at its fastest refresh: 0.1 s) against the same with no TUI. Each round is a
pair of generations, one without and one with the TUI, in alternating order (ABBA), so
drift on a shared machine hits both alike. Prints the medians, the ratio of the medians
and the median of the per-round ratios. Target: with-TUI decode tok/s >= 0.98x without.

    .venv/bin/python benchmarks/tui_overhead.py [--tokens 256] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import statistics
import subprocess
import sys
import time
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
    from localserve.client import LocalserveClient
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
    reports: list[dict[str, Any]] = []
    with bench_daemon({"bench": model}, num_ctx="2048", num_threads=str(threads)) as port:
        decode_rate(port, 8, -1, "w")  # load and warm up the runner
        for round_ in range(args.rounds):
            if round_ % 2:
                with_tui.append(measure_with_tui(port, args.tokens, round_, reports))
                without.append(decode_rate(port, args.tokens, round_, "a"))
            else:
                without.append(decode_rate(port, args.tokens, round_, "a"))
                with_tui.append(measure_with_tui(port, args.tokens, round_, reports))
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


def measure_with_tui(port: int, tokens: int, round_: int, reports: list[dict[str, Any]]) -> float:
    tui = TuiProcess(port)
    try:
        return decode_rate(port, tokens, round_, "b")
    finally:
        reports.append(tui.stop())


def _rounds(values: list[float]) -> str:
    return " ".join(f"{v:.1f}" for v in values)


if __name__ == "__main__":
    main()
