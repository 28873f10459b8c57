"""HTTP overhead benchmark (a script, not a test).

In one run on SmolLM2: decode tokens/s and time to first token (TTFT) in-process with
llama-cpp-python, versus streamed through the daemon's /api/generate (NDJSON) and
/v1/completions (SSE). Prints medians and the ratios against the in-process baseline.
Targets: HTTP decode tok/s >= 0.97x in-process; TTFT within 3 ms of in-process.

    .venv/bin/python benchmarks/overhead.py [--tokens 128] [--rounds 5]
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import bench_daemon, in_process_stream, smollm2_path

# ChatML, SmolLM2's format, sent raw so both sides decode the very same tokens.
PROMPTS = [
    "<|im_start|>user\nWrite a long story about lighthouse keeper number {i}.<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|>user\nExplain in detail how bread rises (variant {i}).<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|im_start|>user\nDescribe the ocean at length, part {i}.<|im_end|>\n<|im_start|>assistant\n",
]


def prompt_for(round_: int, variant: str) -> str:
    """A prompt that starts differently every time, so no run reuses a cached prefix and
    every TTFT includes the whole prompt evaluation."""
    return f"[{round_}{variant}] " + PROMPTS[round_ % len(PROMPTS)].format(i=round_)


def in_process(llm: object, tokens: int, round_: int) -> list[tuple[float, float]]:
    return [in_process_stream(llm, prompt_for(round_, "a"), tokens)]


def over_http(port: int, path: str, tokens: int, round_: int) -> list[tuple[float, float]]:
    results = []
    for _ in range(1):
        prompt = prompt_for(round_, "b" if path == "/api/generate" else "c")
        if path == "/api/generate":
            body = {
                "model": "bench",
                "prompt": prompt,
                "raw": True,
                "options": {"temperature": 0, "num_predict": tokens},
            }
        else:
            body = {
                "model": "bench",
                "prompt": prompt,
                "temperature": 0,
                "max_tokens": tokens,
                "stream": True,
            }
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        started = time.perf_counter()
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        first = 0.0
        count = 0
        while line := response.readline():
            text = line.strip()
            if not text or text == b"data: [DONE]":
                continue
            item = json.loads(text.removeprefix(b"data: "))
            piece = (
                item.get("response")
                if "response" in item
                else (item["choices"][0].get("text") if item.get("choices") else "")
            )
            if piece:
                count += 1
                if not first:
                    first = time.perf_counter()
        ended = time.perf_counter()
        conn.close()
        results.append((first - started, (count - 1) / (ended - first)))
    return results


def summarise(label: str, runs: list[tuple[float, float]]) -> tuple[float, float]:
    ttft = statistics.median(r[0] for r in runs)
    rate = statistics.median(r[1] for r in runs)
    print(f"{label:<22} TTFT {ttft * 1000:7.1f} ms   decode {rate:6.1f} tok/s")
    return ttft, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = smollm2_path()
    import psutil

    threads = psutil.cpu_count(logical=False) or 1
    with bench_daemon({"bench": model}, num_ctx="2048", num_threads=str(threads)) as port:
        import llama_cpp

        llm = llama_cpp.Llama(
            str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, verbose=False
        )
        over_http(port, "/api/generate", 4, -1)  # load and warm up the runner
        in_process(llm, 4, -1)
        # Interleave so drift on a shared machine hits every variant alike.
        base, ollama_api, openai_api = [], [], []
        for round_ in range(args.rounds):
            base += in_process(llm, args.tokens, round_)
            ollama_api += over_http(port, "/api/generate", args.tokens, round_)
            openai_api += over_http(port, "/v1/completions", args.tokens, round_)
    print(f"SmolLM2 135M Q4_1, {args.tokens} tokens, {args.rounds} rounds, {threads} threads")
    b_ttft, b_rate = summarise("in-process", base)
    for label, runs in (("/api/generate", ollama_api), ("/v1/completions", openai_api)):
        ttft, rate = summarise(label, runs)
        print(
            f"{'':<22} decode ratio {rate / b_rate:.3f} (target >= 0.97)   "
            f"TTFT delta {(ttft - b_ttft) * 1000:+.1f} ms (target <= 3 ms)"
        )


if __name__ == "__main__":
    main()
