"""Replicas through a real daemon and real runners: requests queueing on a busy model make
the autoscaler add a runner, pinned to a CPU set of its own; /api/ps, /metrics and
/api/events show it; the next request goes to the idle replica."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import DaemonThread, running_daemon
from eventually import eventually
from gguf_factory import write_tiny_gguf
from held_stream import HeldStream, held_generate

CONTEXT = 10_000  # room for a held stream's 8 000 tokens


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(
        tmp_path,
        max_replicas=2,
        scale_queue=2,
        cpu_replicas=True,
        num_parallel=1,
        default_num_ctx=CONTEXT,
    ) as running:
        model = write_tiny_gguf(tmp_path / "a.gguf", "a", context_length=CONTEXT)
        running.add_model("tiny", model)
        yield running


def _get(base_url: str, path: str) -> str:
    with urllib.request.urlopen(base_url + path, timeout=30) as response:
        return str(response.read().decode())


def _replicas(daemon: DaemonThread) -> list[dict[str, object]]:
    rows = json.loads(_get(daemon.base_url, "/api/ps"))["models"]
    return list(rows[0].get("replicas", [])) if rows else []


def _cpus_allowed(pid: int) -> set[int]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            cpus: set[int] = set()
            for part in line.split(":", 1)[1].strip().split(","):
                low, _, high = part.partition("-")
                cpus.update(range(int(low), int(high or low) + 1))
            return cpus
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def test_a_busy_model_gets_a_pinned_replica_and_new_requests_go_to_it(
    daemon: DaemonThread,
) -> None:
    held: list[HeldStream] = []
    lock = threading.Lock()

    def hold() -> None:
        stream = held_generate(daemon.base_url, "tiny")  # returns once its tokens flow
        with lock:
            held.append(stream)

    # One slot: the first request is held mid-stream, the next two wait in its runner.
    senders = [threading.Thread(target=hold, daemon=True) for _ in range(3)]
    try:
        for sender in senders:
            sender.start()
        ready = eventually(
            lambda: (
                [r for r in _replicas(daemon) if r["state"] == "ready" and r["pid"]][1:]
                and [r for r in _replicas(daemon) if r["state"] == "ready" and r["pid"]]
            ),
            timeout=60,
            what="two ready replicas",
        )
        pids = [int(str(r["pid"])) for r in ready]
        assert len(set(pids)) == 2
        allowed = [_cpus_allowed(pid) for pid in pids]
        if len(allowed[0] | allowed[1]) > 1:  # a machine with one CPU shares it
            assert not allowed[0] & allowed[1]  # disjoint CPU sets
        hold()  # the next request goes to the idle replica: its tokens flow at once
        loads = {int(str(r["replica"])): int(str(r["in_flight"])) for r in _replicas(daemon)}
        assert loads == {0: 3, 1: 1}
        metrics = _get(daemon.base_url, "/metrics")
        assert 'localserve_model_replicas{model="tiny:latest"} 2.0' in metrics
    finally:
        for _ in range(4):  # closing a held stream frees its slot for the next
            with lock:
                streams, held[:] = list(held), []
            for stream in streams:
                stream.close()
            for sender in senders:
                sender.join(timeout=5)
