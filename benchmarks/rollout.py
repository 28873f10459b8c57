"""Re-pointing a route under load (a script, not a test).

One daemon, two versions (two copies of SmolLM2 under different names, or with `--quick`
two tiny generated models), a route `assistant` on the first. `--streams` client threads
send requests back to back for `--seconds`, twice:

    baseline   the route stays where it is
    re-point   half way through, the route moves to the second version (blue/green: it
               loads beside the first, then new requests move; with --max-loaded 1 it
               must swap instead)

It prints the worst and p99 request latency of each phase, their ratio, and the failed
requests (the target: none, and a worst latency during the re-point within about one
model load of the baseline's).

    .venv/bin/python benchmarks/rollout.py [--seconds 20] [--streams 3] [--max-loaded 0]
    .venv/bin/python benchmarks/rollout.py --quick        # a smoke run on tiny models
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from common import bench_daemon, smollm2_path


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    conn.request(method, path, json.dumps(body) if body is not None else None)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data.strip() else None


class Load:
    """`streams` threads sending requests to the route back to back."""

    def __init__(self, port: int, streams: int, tokens: int) -> None:
        self.port = port
        self.streams = streams
        self.tokens = tokens
        self.samples: list[tuple[float, float, int, str]] = []  # start, latency, status, by
        self._stop = threading.Event()

    def _loop(self, index: int) -> None:
        body = {
            "model": "assistant",
            "prompt": f"Write one sentence about topic {index}.",
            "stream": False,
            "options": {"num_predict": self.tokens, "temperature": 0},
        }
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                status, data = call(self.port, "POST", "/api/generate", body)
                served = str((data or {}).get("served_by", ""))
            except OSError as exc:
                status, served = -1, repr(exc)
            self.samples.append((started, time.perf_counter() - started, status, served))

    def run(
        self, seconds: float, midway: Callable[[], None] | None = None
    ) -> list[tuple[float, float, int, str]]:
        """Requests for `seconds`; `midway` runs half way through."""
        self.samples = []
        self._stop.clear()
        threads = [threading.Thread(target=self._loop, args=(i,)) for i in range(self.streams)]
        for thread in threads:
            thread.start()
        time.sleep(seconds / 2)
        if midway is not None:
            midway()
        time.sleep(seconds / 2)
        self._stop.set()
        for thread in threads:
            thread.join(300)
        return self.samples


def summary(name: str, samples: list[tuple[float, float, int, str]]) -> tuple[float, int]:
    latencies = sorted(s[1] for s in samples)
    failed = sum(1 for s in samples if s[2] != 200)
    p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] if latencies else 0.0
    versions = sorted({s[3] for s in samples if s[2] == 200})
    print(
        f"{name:<9} requests {len(samples):4d}  failed {failed}  "
        f"median {statistics.median(latencies) * 1000:7.1f} ms  "
        f"p99 {p99 * 1000:7.1f} ms  worst {latencies[-1] * 1000:7.1f} ms  "
        f"served by {', '.join(versions)}"
    )
    return latencies[-1], failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--streams", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--max-loaded", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny models, a few seconds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            from gguf_factory import write_tiny_gguf

            first = write_tiny_gguf(Path(tmp) / "a.gguf", "a")
            second = write_tiny_gguf(Path(tmp) / "b.gguf", "b")
            args.seconds = min(args.seconds, 4.0)
            args.streams = min(args.streams, 2)
        else:
            first = second = smollm2_path()
        models = {"stable:v1": first, "candidate:v2": second}
        settings = {"max_loaded": str(args.max_loaded), "spare_runner": "0"}
        with bench_daemon(models, **settings) as port:
            status, _ = call(
                port, "POST", "/api/routes/assistant", {"targets": [{"model": "stable:v1"}]}
            )
            assert status == 200, status
            call(port, "POST", "/api/generate", {"model": "assistant", "prompt": ""})  # load
            load = Load(port, args.streams, args.tokens)
            baseline = load.run(args.seconds)

            def repoint() -> None:
                body = {"targets": [{"model": "candidate:v2"}], "reason": "benchmark"}
                status, _ = call(port, "POST", "/api/routes/assistant", body)
                assert status == 200, status

            moved = load.run(args.seconds, repoint)
        worst_base, failed_base = summary("baseline", baseline)
        worst_move, failed_move = summary("re-point", moved)
        print(f"worst latency during the re-point / baseline worst: {worst_move / worst_base:.2f}x")
        print(f"failed requests: {failed_base + failed_move} (target 0)")


if __name__ == "__main__":
    main()
