"""Fleet benchmark (issue 15): aggregate tok/s and p95 TTFT through the LiteLLM proxy over
1, 2 and 3 localserve nodes, against one node directly, in one run; then the failover
time when one of three nodes is killed (SIGKILL) under load.

    .venv/bin/python benchmarks/fleet.py            # SmolLM2-135M on every node
    .venv/bin/python benchmarks/fleet.py --quick    # a smoke run (tiny model, no verdict)

All nodes run on this machine and share its cores, so more nodes do not add throughput
here: the honest figures are LiteLLM's overhead (TTFT and tok/s through the proxy over
one node vs that node directly) and the failover time. On machines of their own, nodes
add up (each is one llama.cpp process with all of its machine's cores or GPU).

One proxy serves three model groups, `fleet1` (node 1), `fleet2` (nodes 1-2) and
`fleet3` (nodes 1-3), all made by localserve.fleet.litellm_config from what the nodes
report. Streams are OpenAI chat completions (the openai client), `--concurrency` at once.
LiteLLM comes from tests/fleet/fleet_harness.py's own venv (`.venv-litellm`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "fleet"), str(ROOT)]

from fleet_harness import (  # noqa: E402
    KEY_ENV,
    MASTER_KEY,
    NODE_KEY,
    NodeProcess,
    Proxy,
    litellm_executable,
    wait_for,
)

from localserve.fleet.litellm_config import (  # noqa: E402
    FleetOptions,
    Node,
    build_config,
    render_yaml,
)


def add_model(node: NodeProcess, path: Path) -> None:
    from localserve.names import ModelName
    from localserve.store.store import Store

    store = Store(node.base / "models")
    store.create_model(ModelName.parse("bench"), store.import_file(path))


def model_file(quick: bool, work: Path) -> Path:
    if quick:
        from gguf_factory import write_tiny_gguf

        return write_tiny_gguf(work / "tiny.gguf", "a", context_length=4096)
    from benchmarks.common import smollm2_path

    return smollm2_path()


def proxy_config(nodes: list[NodeProcess], path: Path) -> Path:
    """Groups fleet1..fleetN: the first k nodes each."""
    found = [Node(n.url, ("bench",), None, key_env=KEY_ENV) for n in nodes]
    base = build_config(
        found,
        FleetOptions(
            num_retries=3, timeout_s=300, allowed_fails=0, cooldown_s=5, health_check_interval_s=5
        ),
    )
    deployments = base["model_list"]
    model_list: list[dict[str, Any]] = []
    for k in range(1, len(nodes) + 1):
        for deployment in deployments[:k]:
            entry = copy.deepcopy(deployment)
            entry["model_name"] = f"fleet{k}"
            entry["model_info"]["id"] = f"fleet{k}-{deployment['model_info']['id']}"
            model_list.append(entry)
    base["model_list"] = model_list
    path.write_text(render_yaml(base, "fleet benchmark"))
    return path


def stream_once(base_url: str, api_key: str, model: str, tokens: int) -> tuple[float, int, float]:
    """(TTFT s, completion tokens, total s) of one streamed chat completion."""
    import openai

    client = openai.OpenAI(base_url=base_url + "/v1", api_key=api_key, max_retries=0, timeout=300)
    started = time.perf_counter()
    ttft = float("nan")
    pieces = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Tell me a story about a lighthouse keeper."}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if pieces == 0:
                ttft = time.perf_counter() - started
            pieces += 1
    return ttft, pieces, time.perf_counter() - started


def load(
    base_url: str, api_key: str, model: str, requests: int, concurrency: int, tokens: int
) -> dict[str, float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(
            pool.map(lambda _: stream_once(base_url, api_key, model, tokens), range(requests))
        )
    wall = time.perf_counter() - started
    ttfts = sorted(r[0] for r in results)
    p95 = ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))]
    return {
        "tok_s": sum(r[1] for r in results) / wall,
        "ttft_p50_ms": statistics.median(ttfts) * 1000,
        "ttft_p95_ms": p95 * 1000,
    }


def failover(
    proxy: Proxy, victim: NodeProcess, concurrency: int, tokens: int, seconds: float
) -> dict[str, float]:
    """Load on fleet3; kill `victim` a third of the way in. Failover time: the longest
    request that was running at the kill, minus the median request before it."""
    stop = time.perf_counter() + seconds
    kill_at = time.perf_counter() + seconds / 3
    spans: list[tuple[float, float]] = []
    errors: list[str] = []
    lock = threading.Lock()

    def worker() -> None:
        while time.perf_counter() < stop:
            begin = time.perf_counter()
            try:
                stream_once(proxy.url, MASTER_KEY, "fleet3", tokens)
            except Exception as exc:  # counted: a client-visible failure
                with lock:
                    errors.append(type(exc).__name__)
                continue
            with lock:
                spans.append((begin, time.perf_counter()))

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    while time.perf_counter() < kill_at:
        time.sleep(0.05)
    killed = time.perf_counter()
    victim.kill()
    for thread in threads:
        thread.join()
    before = [end - begin for begin, end in spans if end < killed]
    across = [end - begin for begin, end in spans if begin <= killed <= end]
    typical = statistics.median(before) if before else float("nan")
    return {
        "requests": len(spans),
        "client_errors": len(errors),
        "typical_s": typical,
        "failover_s": (max(across) - typical) if across else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smoke run: tiny numbers")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.concurrency, args.tokens = 6, 2, 16
    executable = litellm_executable()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        path = model_file(args.quick, work)
        nodes = [NodeProcess(work / f"node{i}") for i in range(3)]
        proxy: Proxy | None = None
        try:
            for node in nodes:
                node.base.mkdir(parents=True)
                add_model(node, path)
                node.start()
            proxy = Proxy(executable, proxy_config(nodes, work / "litellm.yaml")).start()
            for k in (1, 2, 3):  # warm every node and group (loads, first health checks)
                for _ in range(k):
                    stream_once(proxy.url, MASTER_KEY, f"fleet{k}", 2)
            rows = [
                (
                    "direct, 1 node",
                    load(
                        nodes[0].url,
                        NODE_KEY,
                        "bench",
                        args.requests,
                        args.concurrency,
                        args.tokens,
                    ),
                )
            ]
            for k in (1, 2, 3):
                rows.append(
                    (
                        f"LiteLLM, {k} node{'s' if k > 1 else ''}",
                        load(
                            proxy.url,
                            MASTER_KEY,
                            f"fleet{k}",
                            args.requests,
                            args.concurrency,
                            args.tokens,
                        ),
                    )
                )
            print(
                f"{args.requests} streams x {args.tokens} tokens, {args.concurrency} at once"
                + ("   [--quick: no verdict]" if args.quick else "")
            )
            print(f"{'':<18}{'tok/s':>10}{'TTFT p50 ms':>14}{'TTFT p95 ms':>14}")
            for name, row in rows:
                print(
                    f"{name:<18}{row['tok_s']:>10.1f}{row['ttft_p50_ms']:>14.1f}"
                    f"{row['ttft_p95_ms']:>14.1f}"
                )
            direct, one = rows[0][1], rows[1][1]
            print(
                f"LiteLLM overhead over one node: TTFT p50 "
                f"{one['ttft_p50_ms'] - direct['ttft_p50_ms']:+.1f} ms, tok/s "
                f"{100 * (one['tok_s'] / direct['tok_s'] - 1):+.1f}%"
            )
            wait_for(lambda: True, 1, "")
            result = failover(
                proxy, nodes[2], args.concurrency, args.tokens, seconds=6 if args.quick else 30
            )
            print(
                f"failover (kill 1 of 3 under load): {result['requests']:.0f} requests, "
                f"{result['client_errors']:.0f} client-visible errors, typical request "
                f"{result['typical_s'] * 1000:.0f} ms, failover adds "
                f"{result['failover_s'] * 1000:.0f} ms"
            )
        finally:
            if proxy is not None:
                proxy.stop()
            for node in nodes:
                node.stop()


if __name__ == "__main__":
    main()
