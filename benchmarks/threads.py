"""Adaptive llama.cpp threads benchmark (a script, not a test).

In one run on SmolLM2 through the daemon's /api/generate, decode tok/s of a runner with
LOCALSERVE_NUM_THREADS = the machine's physical cores, with LOCALSERVE_ADAPT_THREADS off
and on, each on a quiet machine and next to other busy processes (pure-Python spin loops,
one per `--hogs`). Rounds alternate between the two daemons, so drift hits both alike.
A third case has two models (two runners) generating at once, aggregate tok/s.
Expected: quiet, the same rate (the governor keeps every thread); busy and two models,
adaptive faster (each runner drops the threads whose cores others hold).

    .venv/bin/python benchmarks/threads.py [--tokens 300] [--rounds 3] [--hogs 1]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_daemon, smollm2_path
from tui_overhead import decode_rate

MODELS = ("bench", "other")  # the same file under two names: two runners
HOG = "import time\nend = time.time() + 600\nwhile time.time() < end: pass\n"


@contextlib.contextmanager
def busy_processes(count: int) -> Iterator[None]:
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(count)]
    try:
        time.sleep(1.5)  # a sample or two for the governor
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


def steady_rate(port: int, args: argparse.Namespace, round_: int) -> float:
    """Decode tok/s after a warm-up generation long enough (over a second) for an adaptive
    runner to have sampled the load of the moment; the other daemon's generation just
    before would otherwise count as load at the start."""
    decode_rate(port, 150, round_, "x")
    return decode_rate(port, args.tokens, round_, "m")


def decode_rate_of(port: int, model: str, tokens: int, tag: str) -> float:
    """Decode tok/s of one non-streamed generation, from the daemon's own timings."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    body = {
        "model": model,
        "prompt": f"[{tag}] Tell me a long story about the sea.",
        "stream": False,
        "options": {"num_predict": tokens},
    }
    conn.request("POST", "/api/generate", json.dumps(body))
    result = json.loads(conn.getresponse().read())
    conn.close()
    return float(result["eval_count"]) / (result["eval_duration"] / 1e9)


def two_models_at_once(port: int, tokens: int, round_: int) -> float:
    """Aggregate decode tok/s of two models generating at the same time (two runners)."""
    rates: list[float] = []
    workers = [
        threading.Thread(
            target=lambda m=model: rates.append(decode_rate_of(port, m, tokens, f"{round_}{m}"))
        )
        for model in MODELS
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(rates)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hogs", type=int, default=1)
    args = parser.parse_args()
    import psutil

    threads = psutil.cpu_count(logical=False) or 1
    model = smollm2_path()
    rates: dict[tuple[str, str], list[float]] = {}
    common = {
        "num_ctx": "2048",
        "num_threads": str(threads),
        "spare_runner": "0",
        "max_loaded": "2",
    }
    models = dict.fromkeys(MODELS, model)
    with (
        bench_daemon(models, adapt_threads="0", **common) as fixed,
        bench_daemon(models, adapt_threads="1", **common) as adaptive,
    ):
        ports = {"fixed": fixed, "adaptive": adaptive}
        for port in ports.values():
            for name in MODELS:
                decode_rate_of(port, name, 8, "warm")  # load and warm up both runners
        for round_ in range(args.rounds):
            order = list(ports.items()) if round_ % 2 == 0 else list(ports.items())[::-1]
            for name, port in order:
                rates.setdefault((name, "quiet"), []).append(steady_rate(port, args, round_))
            with busy_processes(args.hogs):
                for name, port in order:
                    rates.setdefault((name, "busy"), []).append(steady_rate(port, args, round_))
            for name, port in order:
                rates.setdefault((name, "2 models"), []).append(
                    two_models_at_once(port, args.tokens, round_)
                )
    print(
        f"SmolLM2 135M Q4_1, {args.tokens} tokens, {args.rounds} rounds, {threads} threads "
        f"configured, busy = {args.hogs} other busy process(es)"
    )
    for load in ("quiet", "busy", "2 models"):
        fixed_rate = statistics.median(rates[("fixed", load)])
        adaptive_rate = statistics.median(rates[("adaptive", load)])
        rounds = " ".join(f"{v:.1f}" for v in rates[("adaptive", load)])
        print(
            f"{load:8}  fixed {fixed_rate:6.1f} tok/s   adaptive {adaptive_rate:6.1f} tok/s "
            f"({rounds})   ratio {adaptive_rate / fixed_rate:.2f}"
        )


if __name__ == "__main__":
    main()
