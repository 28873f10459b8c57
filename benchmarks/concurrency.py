"""Concurrency benchmark (a script, not a test): continuous batching in the runner.

In one run on SmolLM2, with a daemon started with LOCALSERVE_NUM_PARALLEL=8:

1. Aggregate decode tokens/s with 1, 2, 4 and 8 concurrent streams through /api/generate,
   against single-stream in-process llama-cpp-python (`create_completion(stream=True)`)
   measured in the same run. Aggregate decode rate = tokens received by all streams while
   every stream was decoding (from the last stream's first token to the first stream's
   last token) divided by that time, so prompt reading and stragglers are left out.
   Target at 4 streams: >= 2.0x the in-process single stream.
2. Time to first token of turn 10 of a chat versus turn 1 (/api/chat, streamed): with
   prompt-prefix reuse, turn 10 evaluates only its new tokens. Target: <= 1.5x.

Rounds are interleaved (baseline, then 1, 2, 4, 8 streams, again) and medians reported,
because a shared machine drifts.

    .venv/bin/python benchmarks/concurrency.py [--tokens 128] [--rounds 3] [--turns 10]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TOPICS, bench_daemon, in_process_stream, smollm2_path, stream_generate

STREAMS = (1, 2, 4, 8)


def prompt(tag: str, index: int) -> str:
    """A distinct raw ChatML prompt per stream and round (no prefix shared past the header)."""
    topic = TOPICS[index % len(TOPICS)]
    return (
        f"<|im_start|>user\n[{tag}-{index}] Write a long, detailed story about {topic}."
        "<|im_end|>\n<|im_start|>assistant\n"
    )


def in_process(llm: Any, tokens: int, tag: str) -> float:
    """Single-stream decode tokens/s of llama-cpp-python's create_completion(stream=True)."""
    return in_process_stream(llm, prompt(tag, 0), tokens)[1]


def concurrent(port: int, streams: int, tokens: int, tag: str) -> tuple[float, float]:
    """(aggregate decode tok/s while all streams decode, total tokens / wall time)."""
    stamps: list[list[float]] = [[] for _ in range(streams)]
    threads = [
        threading.Thread(target=stream_generate, args=(port, prompt(tag, i), tokens, stamps[i]))
        for i in range(streams)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    window_start = max(s[0] for s in stamps)
    window_end = min(s[-1] for s in stamps)
    inside = sum(1 for s in stamps for t in s if window_start < t <= window_end)
    steady = inside / (window_end - window_start) if window_end > window_start else 0.0
    return steady, sum(len(s) for s in stamps) / wall


def chat_ttfts(port: int, turns: int, tokens: int) -> list[float]:
    """Time to first token of each turn of one conversation (streamed /api/chat)."""
    messages: list[dict[str, str]] = [
        {"role": "system", "content": f"You are a friendly guide (session {time.time_ns()})."}
    ]
    ttfts = []
    for turn in range(turns):
        messages.append(
            {"role": "user", "content": f"Tell me one more thing about {TOPICS[turn % 8]}."}
        )
        body = {
            "model": "bench",
            "messages": messages,
            "stream": True,
            "options": {"temperature": 0, "num_predict": tokens},
        }
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        started = time.perf_counter()
        conn.request("POST", "/api/chat", json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        first = 0.0
        answer = []
        while line := response.readline():
            if not line.strip():
                continue
            item = json.loads(line)
            piece = (item.get("message") or {}).get("content") or ""
            if piece:
                answer.append(piece)
                if not first:
                    first = time.perf_counter()
            if item.get("done"):
                print(
                    f"  turn {turn + 1:2d}: TTFT {(first - started) * 1000:7.1f} ms   "
                    f"prompt_eval_count {item.get('prompt_eval_count')}"
                )
        conn.close()
        ttfts.append(first - started)
        messages.append({"role": "assistant", "content": "".join(answer)})
    return ttfts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--chat-tokens", type=int, default=48)
    parser.add_argument(
        "--runner-threads", type=int, default=0, help="the daemon's runner (default: as in-process)"
    )
    args = parser.parse_args()
    model = smollm2_path()
    import psutil

    threads = psutil.cpu_count(logical=False) or 1
    runner_threads = args.runner_threads or threads
    with bench_daemon(
        {"bench": model}, num_ctx="2048", num_parallel="8", num_threads=str(runner_threads)
    ) as port:
        import llama_cpp

        llm = llama_cpp.Llama(
            str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        concurrent(port, 1, 4, "warm")  # load and warm up the runner
        in_process(llm, 4, "warm")
        base: list[float] = []
        steady: dict[int, list[float]] = {n: [] for n in STREAMS}
        overall: dict[int, list[float]] = {n: [] for n in STREAMS}
        for round_ in range(args.rounds):
            base.append(in_process(llm, args.tokens, f"base{round_}"))
            for n in STREAMS:
                rate, total = concurrent(port, n, args.tokens, f"r{round_}n{n}")
                steady[n].append(rate)
                overall[n].append(total)
        del llm
        print(f"chat of {args.turns} turns, {args.chat_tokens} tokens per answer:")
        ttfts = chat_ttfts(port, args.turns, args.chat_tokens)
    print(
        f"\nSmolLM2 135M Q4_1, {args.tokens} tokens per stream, {args.rounds} rounds, "
        f"{threads} threads in-process, {runner_threads} in the runner "
        f"(LOCALSERVE_ADAPT_THREADS={os.environ.get('LOCALSERVE_ADAPT_THREADS', '1')}), "
        "LOCALSERVE_NUM_PARALLEL=8"
    )
    b = statistics.median(base)
    print(
        f"{'in-process, 1 stream':<24} decode {b:7.1f} tok/s   (rounds: "
        + ", ".join(f"{x:.1f}" for x in base)
        + ")"
    )
    for n in STREAMS:
        rate = statistics.median(steady[n])
        total = statistics.median(overall[n])
        target = "   (target >= 2.0x)" if n == 4 else ""
        print(
            f"{f'daemon, {n} stream' + ('s' if n > 1 else ''):<24} aggregate decode {rate:7.1f} "
            f"tok/s   ratio {rate / b:5.2f}x{target}   [incl. prompts: {total:6.1f} tok/s; "
            "rounds: " + ", ".join(f"{x:.1f}" for x in steady[n]) + "]"
        )
    ratio = ttfts[-1] / ttfts[0]
    print(
        f"chat TTFT: turn 1 {ttfts[0] * 1000:.1f} ms, turn {len(ttfts)} "
        f"{ttfts[-1] * 1000:.1f} ms, ratio {ratio:.2f}x (target <= 1.5x)"
    )


if __name__ == "__main__":
    main()
