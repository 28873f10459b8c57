"""Fair share: the interactive key's time to first token while another key floods.

One run, two daemons on the same model (SmolLM2 135M) and settings, one with fair share
(`LOCALSERVE_FAIR_SHARE=1`, the default) and one without (first come first served):

- `batch` keeps `--flood` generation requests outstanding (each resent as it ends, so
  its queue never drains), `--batch-tokens` tokens each;
- `chat` sends `--requests` short streaming chats one after another and measures each
  one's TTFT (until its first content chunk), while the flood runs.

Prints the interactive key's p50/p95 TTFT with and without fair share and their ratio
(target: p95 with fair share at most a third of the p95 without), and the flood's
throughput in both (fair share should not cost the batch key its throughput).

    .venv/bin/python benchmarks/fairness.py            # the full run
    .venv/bin/python benchmarks/fairness.py --quick    # a smoke run (seconds, no verdict)
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TOPICS, bench_daemon, smollm2_path


def _post(port: int, secret: str, path: str, body: dict[str, object]) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request(
        "POST",
        path,
        json.dumps(body),
        {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"},
    )
    return conn.getresponse()


def flood(port: int, secret: str, tokens: int, stop: threading.Event, done: list[int]) -> None:
    """One of the batch key's loops: a generation, then another, until `stop`."""
    index = 0
    while not stop.is_set():
        body = {
            "model": "bench",
            "prompt": f"Write a long essay about {TOPICS[index % len(TOPICS)]}.",
            "stream": False,
            "options": {"num_predict": tokens, "temperature": 0},
        }
        response = _post(port, secret, "/api/generate", body)
        answer = json.loads(response.read())
        done.append(int(answer.get("eval_count", 0)))
        index += 1


def interactive_ttft(port: int, secret: str, index: int) -> float:
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": f"One line about {TOPICS[index % len(TOPICS)]}."}],
        "stream": True,
        "options": {"num_predict": 8, "temperature": 0},
    }
    started = time.perf_counter()
    response = _post(port, secret, "/api/chat", body)
    for line in response:
        chunk = json.loads(line)
        if chunk.get("message", {}).get("content") or chunk.get("done"):
            ttft = time.perf_counter() - started
            response.read()
            return ttft
    raise RuntimeError("the chat ended without a chunk")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def run(fair: bool, args: argparse.Namespace, model: Path) -> tuple[list[float], float]:
    """(the interactive key's TTFTs, the flood's tokens per second)."""
    from localserve.access.keys import KeyStore

    with tempfile.TemporaryDirectory() as tmp:
        keys = KeyStore(Path(tmp) / "keys.json")
        batch = keys.add("batch")[1]
        chat = keys.add("chat")[1]
        with bench_daemon(
            {"bench": model},
            keys_file=str(Path(tmp) / "keys.json"),
            state_dir=tmp,
            fair_share="1" if fair else "0",
            num_parallel=str(args.parallel),
            num_ctx="1024",
        ) as port:
            interactive_ttft(port, chat, 0)  # load and warm up
            stop = threading.Event()
            done: list[int] = []
            loops = [
                threading.Thread(target=flood, args=(port, batch, args.batch_tokens, stop, done))
                for _ in range(args.flood)
            ]
            started = time.perf_counter()
            for loop in loops:
                loop.start()
            time.sleep(args.warmup)  # the flood's queue fills
            ttfts = [interactive_ttft(port, chat, i + 1) for i in range(args.requests)]
            stop.set()
            for loop in loops:
                loop.join()
            rate = sum(done) / (time.perf_counter() - started)
    return ttfts, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--flood", type=int, default=16, help="batch requests outstanding")
    parser.add_argument("--batch-tokens", type=int, default=128)
    parser.add_argument("--requests", type=int, default=20, help="interactive chats measured")
    parser.add_argument("--parallel", type=int, default=2, help="LOCALSERVE_NUM_PARALLEL")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of flood first")
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny numbers")
    args = parser.parse_args()
    if args.quick:
        args.flood, args.batch_tokens, args.requests, args.warmup = 4, 16, 3, 0.5
    model = smollm2_path()
    results = {fair: run(fair, args, model) for fair in (True, False)}
    print(
        f"SmolLM2 135M Q4_1, num_parallel {args.parallel}; batch key: {args.flood} requests "
        f"outstanding x {args.batch_tokens} tokens; chat key: {args.requests} chats, 8 tokens"
    )
    for fair, (ttfts, rate) in results.items():
        label = "fair share" if fair else "first come first served"
        print(
            f"{label:<24} chat TTFT p50 {statistics.median(ttfts) * 1000:8.1f} ms   "
            f"p95 {percentile(ttfts, 0.95) * 1000:8.1f} ms   batch {rate:7.1f} tok/s"
        )
    p95_fair = percentile(results[True][0], 0.95)
    p95_fifo = percentile(results[False][0], 0.95)
    rate_ratio = results[True][1] / results[False][1] if results[False][1] else 0.0
    print(
        f"p95 TTFT ratio fair/fifo {p95_fair / p95_fifo:.2f}x (target <= 0.33x); "
        f"batch throughput ratio {rate_ratio:.2f}x (target >= 0.9x)"
        + ("   [--quick: no verdict]" if args.quick else "")
    )


if __name__ == "__main__":
    main()
