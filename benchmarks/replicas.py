"""Replicas benchmark (a script, not a test): one runner with N slots against two replicas
with N/2 slots each, on SmolLM2 135M, in one run.

- `one`: a daemon with LOCALSERVE_NUM_PARALLEL=N (one runner, all threads);
- `two`: a daemon with LOCALSERVE_MAX_REPLICAS=2, LOCALSERVE_NUM_PARALLEL=N/2 and
  LOCALSERVE_CPU_REPLICAS=1 (each replica pinned to half the CPUs, one thread per CPU);
  a warm-up burst makes the autoscaler add the second replica before measuring.

Each round sends N streams with distinct prompts at once (/api/generate, temperature 0,
`--tokens` each) and reports what the users see: aggregate tok/s (all tokens / wall time
from the first send to the last token) and TTFT p50/p95 per request. Rounds alternate the
two daemons (both stay loaded; each measurement waits `--pause` seconds of quiet).

On a machine with few cores replicas share them and should not win: the honest result
here is how much they cost. They pay with several GPUs, or with more cores than one
llama.cpp process uses well.

    .venv/bin/python benchmarks/replicas.py [--streams 4] [--tokens 128] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TOPICS, bench_daemon, smollm2_path, stream_generate


def _stream(port: int, prompt: str, tokens: int, out: list[tuple[float, float, int]]) -> None:
    """One streamed generation: (send time, first-token time, tokens) appended to `out`."""
    sent = time.perf_counter()
    stamps: list[float] = []
    count = stream_generate(port, prompt, tokens, stamps)
    out.append((sent, stamps[0] if stamps else 0.0, count))


def burst(port: int, streams: int, tokens: int, salt: str) -> tuple[float, list[float]]:
    """`streams` requests at once: (aggregate tok/s over the wall time, TTFTs in s)."""
    results: list[tuple[float, float, int]] = []
    threads = [
        threading.Thread(
            target=_stream,
            args=(port, f"{salt} Tell a story about {TOPICS[i % len(TOPICS)]}.", tokens, results),
        )
        for i in range(streams)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    total = sum(count for _, _, count in results)
    return total / wall, [first - sent for sent, first, _ in results]


def _replicas(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", "/api/ps")
    rows = json.loads(conn.getresponse().read())["models"]
    return len(rows[0].get("replicas", [])) if rows else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pause", type=float, default=1.5)
    args = parser.parse_args()
    model = smollm2_path()
    common = {"num_ctx": "1024", "keep_alive": "1h", "spare_runner": "0"}
    with ExitStack() as stack:
        one = stack.enter_context(
            bench_daemon({"bench": model}, num_parallel=str(args.streams), **common)
        )
        two = stack.enter_context(
            bench_daemon(
                {"bench": model},
                num_parallel=str(max(1, args.streams // 2)),
                max_replicas="2",
                cpu_replicas="1",
                scale_queue="1",
                scale_wait="0",
                **common,
            )
        )
        for port in (one, two):  # load, and give `two` its second replica
            for _ in range(10):
                burst(port, args.streams, 8, "warm-up")
                if port == one or _replicas(port) >= 2:
                    break
        print(f"replicas: one={_replicas(one)}, two={_replicas(two)}")
        rows: dict[str, list[tuple[float, list[float]]]] = {"one": [], "two": []}
        for index in range(args.rounds):
            order = [("one", one), ("two", two)]
            for name, port in order if index % 2 == 0 else order[::-1]:
                time.sleep(args.pause)
                rows[name].append(burst(port, args.streams, args.tokens, f"r{index}{name}"))
    print(f"{args.streams} streams x {args.tokens} tokens, {args.rounds} rounds (median)")
    print("| setup | aggregate tok/s | TTFT p50 ms | TTFT p95 ms |")
    print("|---|---|---|---|")
    medians = {}
    for name, runs in rows.items():
        rate = statistics.median(r for r, _ in runs)
        ttfts = sorted(t for _, times in runs for t in times)
        p50 = ttfts[len(ttfts) // 2] * 1000
        p95 = ttfts[min(len(ttfts) - 1, int(len(ttfts) * 0.95))] * 1000
        medians[name] = rate
        label = "one runner" if name == "one" else "two pinned replicas"
        print(f"| {label} | {rate:.1f} | {p50:.0f} | {p95:.0f} |")
    print(f"two replicas / one runner: {medians['two'] / medians['one']:.2f}x aggregate")


if __name__ == "__main__":
    main()
