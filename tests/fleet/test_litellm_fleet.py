"""Three localserve nodes behind a real LiteLLM proxy (issue 15).

The nodes are real daemon processes on loopback, each with its own store holding a tiny
model named `tiny` that answers with the node's own letter, so every answer says which
node served it. The proxy is LiteLLM from PyPI (its own venv, tests/fleet/fleet_harness.py)
with the config `localserve fleet config` writes (the same code, asked of the nodes).

What is shown: requests spread across the nodes; a node killed (SIGKILL) under load
loses no request (the proxy retries on another node; a client sees at most a retried
request); a draining node gets no new requests while it finishes the one it holds, then
exits on its own; a node that comes back is used again.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_harness import (
    LiteLLMUnavailable,
    NodeProcess,
    Proxy,
    add_tiny_model,
    litellm_executable,
    wait_for,
    write_proxy_config,
)
from held_stream import HeldStream

pytestmark = [pytest.mark.cpu_heavy, pytest.mark.timeout(900)]

LETTERS = ("a", "b", "c")
TOKENS = 64  # per answer: the letter repeated


@pytest.fixture(scope="module")
def litellm() -> Path:
    try:
        return litellm_executable()
    except LiteLLMUnavailable as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"LiteLLM could not be installed (offline?): {exc}")


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, litellm: Path
) -> Iterator[tuple[list[NodeProcess], Proxy]]:
    """One fleet for the module (a proxy takes ~30 s to start): the tests run in file
    order, each leaving it as the next expects (the drain test, which ends a node, last)."""
    tmp_path = tmp_path_factory.mktemp("fleet")
    nodes = [NodeProcess(tmp_path / f"node-{letter}") for letter in LETTERS]
    proxy: Proxy | None = None
    try:
        for node, letter in zip(nodes, LETTERS, strict=True):
            node.base.mkdir(parents=True)
            add_tiny_model(node, letter)
            node.start()
        config = write_proxy_config(
            nodes,
            tmp_path / "litellm.yaml",
            strategy="simple-shuffle",
            num_retries=3,
            timeout_s=60,
            allowed_fails=0,
            cooldown_s=3,
            health_check_interval_s=2,
        )
        proxy = Proxy(litellm, config).start()
        yield nodes, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        for node in nodes:
            node.stop()


def _letter_of(body: Any) -> str:
    text = body["choices"][0]["message"]["content"]
    assert text and set(text) <= set(LETTERS) and len(set(text)) == 1, text
    return str(text[0])


def _ask(proxy: Proxy, tokens: int = TOKENS, client_retries: int = 1) -> tuple[str, int]:
    """One chat completion through the proxy: (the node's letter, client retries used).
    A client may retry once (what "at most a retried request" allows); more is a loss."""
    for attempt in range(client_retries + 1):
        status, _, body = proxy.chat("hi", tokens)
        if status == 200:
            assert len(body["choices"][0]["message"]["content"]) == tokens
            return _letter_of(body), attempt
    raise AssertionError(f"request lost: {status} {body!r}\n{proxy.log()[-3000:]}")


def _wait_all_healthy(proxy: Proxy, nodes: list[NodeProcess]) -> None:
    seen: set[str] = set()

    def all_used() -> bool:
        seen.add(_ask(proxy)[0])
        return len(seen) == len(nodes)

    wait_for(all_used, 120, f"every node answering through the proxy (seen {seen})", 0)


def test_requests_spread_across_the_nodes(fleet: tuple[list[NodeProcess], Proxy]) -> None:
    nodes, proxy = fleet
    before = [node.served() for node in nodes]
    letters = Counter(_ask(proxy)[0] for _ in range(30))
    assert set(letters) == set(LETTERS), letters  # simple-shuffle: 3 * (2/3)^30 to miss one
    after = [node.served() for node in nodes]
    for node_letter, old, new in zip(LETTERS, before, after, strict=True):
        # each node's own count agrees (health checks add a few requests of their own)
        assert new - old >= letters[node_letter], (node_letter, old, new, letters)
    status, headers, _body = proxy.chat("hi", 3)
    assert status == 200 and headers.get("x-litellm-model-id", "").startswith("tiny@127.0.0.1:")


def test_a_killed_node_loses_no_request_and_is_used_again_when_back(
    fleet: tuple[list[NodeProcess], Proxy],
) -> None:
    nodes, proxy = fleet
    _wait_all_healthy(proxy, nodes)
    victim = nodes[1]
    results: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    done_before_kill = threading.Event()

    def client(count: int) -> None:
        try:
            for index in range(count):
                results.append(_ask(proxy, tokens=2000))
                if index == 2:
                    done_before_kill.set()
        except BaseException as exc:  # reported below
            errors.append(exc)

    clients = [threading.Thread(target=client, args=(12,)) for _ in range(4)]
    for thread in clients:
        thread.start()
    assert done_before_kill.wait(120), "no answers under load"
    victim.kill()  # mid-load: requests are in flight on it
    for thread in clients:
        thread.join(600)
    assert not errors, errors
    assert len(results) == 48  # none lost
    retried = sum(retries for _, retries in results)
    assert retried <= 4, f"{retried} client retries"  # at most one per request in flight
    after_kill = Counter(letter for letter, _ in results[-12:])
    assert "b" not in after_kill or after_kill["b"] <= 4, after_kill

    victim.start()  # the same store and port

    def victim_used() -> bool:
        return _ask(proxy)[0] == "b"

    wait_for(victim_used, 180, "the node that came back answering through the proxy", 0.2)


def test_a_draining_node_gets_no_new_requests_and_exits_when_done(
    fleet: tuple[list[NodeProcess], Proxy],
) -> None:
    nodes, proxy = fleet
    _wait_all_healthy(proxy, nodes)
    draining = nodes[0]
    held = HeldStream(
        draining.url,
        "/api/generate",
        {"model": "tiny", "prompt": "x", "options": {"num_predict": 4000}},
        headers=draining.headers,
    )
    assert held.status == 200 and held.first_line()["response"] == "a"
    served_before = draining.served()
    from fleet_harness import post_json

    status, _, answer = post_json(
        draining.url + "/api/drain", {"timeout": 300}, headers=draining.headers
    )
    assert status == 202 and answer["in_flight"] == 1
    letters = Counter(_ask(proxy, client_retries=0)[0] for _ in range(15))
    assert "a" not in letters and sum(letters.values()) == 15, letters
    assert draining.served() == served_before  # refused (503) requests were not served
    assert draining.process is not None and draining.process.poll() is None  # still finishing
    rest = held.finish()
    assert rest[-1]["done"] is True and rest[-1]["eval_count"] == 4000
    assert draining.process.wait(60) == 0  # drained, then exited by itself
    assert all(_ask(proxy, client_retries=0)[0] != "a" for _ in range(5))
