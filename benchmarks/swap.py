"""Hot-swap benchmark (a script, not a test).

One run on two copies of SmolLM2 under different names with LOCALSERVE_MAX_LOADED=1:
time from request to first token when the model must be swapped in, against a cold start
(a fresh process: import llama_cpp, load the model, first token). Target: swap <= 0.8x
the cold start. Each measurement follows `--pause` seconds of quiet: the next spare runner
starts 0.25 s after a load at the earliest and needs ~0.2 s of CPU to import llama_cpp, and
a cold start measured while it starts would be slowed by it. `--pause 0` measures
back-to-back swaps, which find the spare not ready yet. Also the p99 latency of
GET /api/ps while four generations stream (target <= 10 ms).

    .venv/bin/python benchmarks/swap.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_daemon, smollm2_path

COLD_START = """
import sys, time
started = float(sys.argv[2])
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], n_ctx=2048, verbose=False)
for chunk in llm.create_completion("Hello", max_tokens=1, stream=True):
    break
print(time.time() - started)
"""


def cold_start(model: Path) -> float:
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-c", COLD_START, str(model), repr(started)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def first_token(port: int, model: str) -> float:
    # raw: the same two prompt tokens as the cold start, no chat template around them
    body = {"model": model, "prompt": "Hello", "raw": True, "options": {"num_predict": 1}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    started = time.perf_counter()
    conn.request("POST", "/api/generate", json.dumps(body))
    response = conn.getresponse()
    response.readline()
    elapsed = time.perf_counter() - started
    response.read()
    conn.close()
    return elapsed


def stream(port: int, model: str, tokens: int) -> None:
    body = {"model": model, "prompt": "Tell me a long story.", "options": {"num_predict": tokens}}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request("POST", "/api/generate", json.dumps(body))
    conn.getresponse().read()
    conn.close()


def ps_latencies(port: int, stop: threading.Event) -> list[float]:
    samples = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        started = time.perf_counter()
        conn.request("GET", "/api/ps")
        conn.getresponse().read()
        samples.append(time.perf_counter() - started)
        time.sleep(0.01)
    conn.close()
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--pause",
        type=float,
        default=1.5,
        help="seconds of quiet before each measurement (for the next spare runner to start)",
    )
    args = parser.parse_args()
    model = smollm2_path()
    with bench_daemon({"one": model, "two": model}, num_ctx="2048", max_loaded="1") as port:
        first_token(port, "one")  # warm: page cache, spare runner
        swaps, colds = [], []
        for round_ in range(args.rounds):
            time.sleep(args.pause)
            swaps.append(first_token(port, "two" if round_ % 2 == 0 else "one"))
            time.sleep(args.pause)
            colds.append(cold_start(model))
        # /api/ps latency while four generations stream (MAX_LOADED=1: same model).
        stop = threading.Event()
        holder: list[list[float]] = []
        sampler = threading.Thread(target=lambda: holder.append(ps_latencies(port, stop)))
        streams = [threading.Thread(target=stream, args=(port, "one", 200)) for _ in range(4)]
        sampler.start()
        for thread in streams:
            thread.start()
        for thread in streams:
            thread.join()
        stop.set()
        sampler.join()
    swap = statistics.median(swaps)
    cold = statistics.median(colds)
    latencies = sorted(holder[0])
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    print(f"SmolLM2 135M Q4_1, {args.rounds} rounds, {args.pause:g} s of quiet before each")
    print(
        f"swap to first token   median {swap * 1000:7.1f} ms  (all: "
        + ", ".join(f"{s * 1000:.0f}" for s in swaps)
        + ")"
    )
    print(
        f"cold start            median {cold * 1000:7.1f} ms  (all: "
        + ", ".join(f"{c * 1000:.0f}" for c in colds)
        + ")"
    )
    print(f"swap / cold           {swap / cold:.2f}  (target <= 0.8)")
    print(
        f"GET /api/ps during 4 streams: {len(latencies)} samples, "
        f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms "
        "(target <= 10 ms)"
    )


if __name__ == "__main__":
    main()
