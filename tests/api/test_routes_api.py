"""Routes against a real daemon (real runners, tiny models that each answer with one
character, so every answer says which version served it): set, show, history and
rollback through the API and the CLI; one route used by both dialects; stickiness; the
delete guard; bad input; a rollback while a request streams; updates under a steady
stream of requests with zero failures (room for both versions, and room for one); and
a canary rollout to a candidate that cannot load, which rolls itself back."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from eventually import eventually
from gguf_factory import read_gguf_parts, write_tiny_gguf
from test_server_api import ndjson, post_json, request
from typer.testing import CliRunner

VERSION_HEADER = "X-Localserve-Version"


def add_versions(daemon: DaemonThread, tmp_path: Path) -> None:
    daemon.add_model("a:v1", write_tiny_gguf(tmp_path / "a.gguf", "a"))
    daemon.add_model("b:v2", write_tiny_gguf(tmp_path / "b.gguf", "b"))


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path) as running:
        add_versions(running, tmp_path)
        yield running


def set_route(daemon: DaemonThread, name: str, body: dict[str, Any]) -> tuple[int, Any]:
    return post_json(daemon.base_url, f"/api/routes/{name}", body)


def generate(
    daemon: DaemonThread,
    model: str,
    headers: dict[str, str] | None = None,
    num_predict: int = 3,
) -> tuple[int, dict[str, str], dict[str, Any]]:
    body = {
        "model": model,
        "prompt": "hi",
        "stream": False,
        "options": {"num_predict": num_predict},
    }
    status, got, data = request(
        daemon.base_url, "POST", "/api/generate", body, headers=headers or {}
    )
    return status, got, json.loads(data)


def answer_of(daemon: DaemonThread, model: str, **kwargs: Any) -> str:
    status, _, data = generate(daemon, model, **kwargs)
    assert status == 200, data
    return str(data["response"])


def test_a_route_serves_both_dialects_keeping_the_requested_name(daemon: DaemonThread) -> None:
    status, route = set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}]})
    assert status == 200, route
    assert route["name"] == "assistant:latest" and route["revision"] == 1

    status, headers, data = generate(daemon, "assistant")
    assert status == 200 and data["response"] == "aaa"
    assert data["model"] == "assistant" and data["served_by"] == "a:v1"
    assert headers[VERSION_HEADER] == "a:v1"

    # Streaming Ollama chat: the final chunk says which version served.
    status, headers, raw = request(
        daemon.base_url,
        "POST",
        "/api/chat",
        {
            "model": "assistant",
            "messages": [{"role": "user", "content": "hi"}],
            "options": {"num_predict": 2},
        },
    )
    chunks = ndjson(raw)
    assert status == 200 and headers[VERSION_HEADER] == "a:v1"
    assert all(c["model"] == "assistant" for c in chunks)
    assert chunks[-1]["done"] and chunks[-1]["served_by"] == "a:v1"

    # The OpenAI dialect, through the real openai client.
    import openai

    client = openai.OpenAI(base_url=daemon.base_url + "/v1", api_key="unused")
    raw_answer = client.chat.completions.with_raw_response.create(
        model="assistant", messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    completion = raw_answer.parse()
    assert raw_answer.headers[VERSION_HEADER] == "a:v1"
    assert completion.model == "assistant"
    assert completion.choices[0].message.content == "aa"
    assert (completion.model_extra or {})["served_by"] == "a:v1"
    stream = client.chat.completions.create(
        model="assistant", messages=[{"role": "user", "content": "hi"}], max_tokens=2, stream=True
    )
    chunks_v1 = list(stream)
    assert {c.model for c in chunks_v1} == {"assistant"}
    assert (chunks_v1[-1].model_extra or {}).get("served_by") == "a:v1"

    # Listed as a model by both dialects; /api/show shows its version.
    status, _, tags = request(daemon.base_url, "GET", "/api/tags")
    listed = {m["name"]: m for m in json.loads(tags)["models"]}
    assert listed["assistant:latest"]["route"] == {"targets": [{"model": "a:v1", "weight": 1.0}]}
    assert listed["assistant:latest"]["digest"] == listed["a:v1"]["digest"]
    ids = {m.id for m in client.models.list()}
    assert {"assistant:latest", "a:v1", "b:v2"} <= ids
    assert client.models.retrieve("assistant").id == "assistant:latest"
    status, shown = post_json(daemon.base_url, "/api/show", {"model": "assistant"})
    assert status == 200 and "completion" in shown["capabilities"]

    # A plain model answers as before: no version header, no served_by.
    status, headers, data = generate(daemon, "b:v2")
    assert data["response"] == "bbb" and "served_by" not in data
    assert VERSION_HEADER not in headers


def test_set_history_and_rollback_through_the_api(daemon: DaemonThread) -> None:
    set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}], "reason": "launch"})
    status, route = set_route(
        daemon, "assistant", {"targets": [{"model": "b:v2"}], "reason": "v2", "who": "cli"}
    )
    assert status == 200 and route["revision"] == 2
    assert eventually(lambda: answer_of(daemon, "assistant") == "bbb", 60)

    status, history = request(daemon.base_url, "GET", "/api/routes/assistant/history")[::2]
    changes = json.loads(history)["history"]
    assert [(c["revision"], c["who"], c["reason"]) for c in changes] == [
        (1, "api", "launch"),
        (2, "cli", "v2"),
    ]
    assert changes[1]["old"] == [{"model": "a:v1", "weight": 1.0}]

    # a:v1 is still loaded: the rollback switches at once, no load wait.
    status, route = post_json(daemon.base_url, "/api/routes/assistant/rollback", {})
    assert status == 200 and route["targets"] == [{"model": "a:v1", "weight": 1.0, "share": 1.0}]
    assert not route["warming"]
    assert answer_of(daemon, "assistant") == "aaa"
    status, route = post_json(daemon.base_url, "/api/routes/assistant/rollback", {"to": 2})
    assert status == 200 and route["revision"] == 4
    assert eventually(lambda: answer_of(daemon, "assistant") == "bbb", 60)
    last = json.loads(request(daemon.base_url, "GET", "/api/routes/assistant/history")[2])
    assert last["history"][-1]["reason"] == "rollback to revision 2"

    status, listing = request(daemon.base_url, "GET", "/api/routes")[::2]
    assert [r["name"] for r in json.loads(listing)["routes"]] == ["assistant:latest"]
    status, _, _ = request(daemon.base_url, "DELETE", "/api/routes/assistant")
    assert status == 200
    assert generate(daemon, "assistant")[0] == 404


def test_an_ab_split_is_sticky_per_session_header_and_openai_user(daemon: DaemonThread) -> None:
    status, _ = set_route(
        daemon,
        "assistant",
        {"targets": [{"model": "a:v1", "weight": 50}, {"model": "b:v2", "weight": 50}]},
    )
    assert status == 200
    seen = set()
    for index in range(12):
        headers = {"X-Localserve-Session": f"chat-{index}"}
        answers = {answer_of(daemon, "assistant", headers=headers) for _ in range(3)}
        assert len(answers) == 1, (index, answers)  # one conversation, one version
        seen |= answers
    assert seen == {"aaa", "bbb"}  # 12 conversations over a 50/50 split use both

    for user in ("alice", "bob", "carol", "dave"):
        served = set()
        for _ in range(3):
            status, headers, data = request(
                daemon.base_url,
                "POST",
                "/v1/chat/completions",
                {
                    "model": "assistant",
                    "messages": [{"role": "user", "content": "x"}],
                    "max_tokens": 1,
                    "user": user,
                },
            )
            assert status == 200
            served.add(headers[VERSION_HEADER])
            assert json.loads(data)["served_by"] == headers[VERSION_HEADER]
        assert len(served) == 1, (user, served)


@pytest.mark.parametrize(
    ("name", "body", "status", "message"),
    [
        ("assistant", {"targets": [{"model": "nope:v9"}]}, 404, "'nope:v9' not found"),
        ("assistant", {"targets": [{"model": "assistant"}]}, 400, "cannot point at itself"),
        ("assistant", {"targets": [{"model": "a:v1", "weight": -1}]}, 400, "must be a number >= 0"),
        (
            "assistant",
            {"targets": [{"model": "a:v1", "weight": 0}, {"model": "b:v2", "weight": 0}]},
            400,
            "all zero",
        ),
        ("assistant", {"targets": []}, 400, "at least one target"),
        ("assistant", {}, 400, "missing field 'targets'"),
        ("assistant", {"targets": [{"model": "a:v1"}], "colour": "red"}, 400, "colour"),
        ("a:v1", {"targets": [{"model": "b:v2"}]}, 409, "is an installed model"),
        ("chain", {"targets": [{"model": "base"}]}, 400, "is a route"),
        ("assistant", {"targets": [{"model": "a:v1"}], "expected_revision": 3}, 409, "revision"),
    ],
)
def test_bad_routes_get_a_clear_error_and_change_nothing(
    daemon: DaemonThread, name: str, body: dict[str, Any], status: int, message: str
) -> None:
    assert set_route(daemon, "base", {"targets": [{"model": "a:v1"}]})[0] == 200
    got, answer = set_route(daemon, name, body)
    assert got == status, answer
    assert message in answer["error"]
    _, listing = request(daemon.base_url, "GET", "/api/routes")[::2]
    assert [r["name"] for r in json.loads(listing)["routes"]] == ["base:latest"]


def test_two_edits_naming_one_revision_one_wins_the_other_is_409(daemon: DaemonThread) -> None:
    set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}]})
    results: list[int] = []

    def edit(model: str) -> None:
        body = {"targets": [{"model": model}], "expected_revision": 1}
        results.append(set_route(daemon, "assistant", body)[0])

    threads = [threading.Thread(target=edit, args=(m,)) for m in ("a:v1", "b:v2") * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [200, 409, 409, 409]
    history = json.loads(request(daemon.base_url, "GET", "/api/routes/assistant/history")[2])
    assert [c["revision"] for c in history["history"]] == [1, 2]


def test_deleting_a_model_a_route_uses_is_409_unless_forced(daemon: DaemonThread) -> None:
    set_route(
        daemon,
        "assistant",
        {"targets": [{"model": "a:v1", "weight": 90}, {"model": "b:v2", "weight": 10}]},
    )
    set_route(daemon, "solo", {"targets": [{"model": "b:v2"}]})
    status, _, data = request(daemon.base_url, "DELETE", "/api/delete", {"model": "b:v2"})
    error = json.loads(data)["error"]
    assert status == 409 and "assistant:latest (10%)" in error and "solo:latest" in error
    assert generate(daemon, "b:v2")[0] == 200  # still installed

    status, _, data = request(
        daemon.base_url, "DELETE", "/api/delete", {"model": "b:v2", "force": True}
    )
    assert status == 200
    assert json.loads(data)["routes"] == [
        {"route": "assistant:latest", "targets": [{"model": "a:v1", "weight": 90.0}]},
        {"route": "solo:latest", "targets": []},
    ]
    assert generate(daemon, "b:v2")[0] == 404
    assert answer_of(daemon, "assistant") == "aaa"
    assert generate(daemon, "solo")[0] == 404


def test_a_rollback_while_a_request_streams_lets_it_finish_on_its_version(
    daemon: DaemonThread,
) -> None:
    set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}]})
    assert answer_of(daemon, "assistant") == "aaa"
    set_route(daemon, "assistant", {"targets": [{"model": "b:v2"}]})
    assert eventually(lambda: answer_of(daemon, "assistant") == "bbb", 60)

    body = {"model": "assistant", "prompt": "hi", "options": {"num_predict": 400}}
    req = urllib.request.Request(
        daemon.base_url + "/api/generate", data=json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(req, timeout=120) as response:
        first = json.loads(response.readline())
        assert first["response"] == "b"
        status, route = post_json(daemon.base_url, "/api/routes/assistant/rollback", {})
        assert status == 200 and not route["warming"]  # a:v1 is still loaded
        assert answer_of(daemon, "assistant") == "aaa"  # new requests: the old version
        rest = [json.loads(line) for line in response if line.strip()]
    text = first["response"] + "".join(c.get("response", "") for c in rest)
    assert rest[-1]["done"] and rest[-1]["served_by"] == "b:v2"
    assert set(text) == {"b"} and len(text) == 400


class Load:
    """A steady stream of requests from a few threads until `stop()`; every outcome."""

    def __init__(self, daemon: DaemonThread, model: str, threads: int = 3) -> None:
        self.daemon = daemon
        self.model = model
        self.outcomes: list[tuple[float, int, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                status, _, data = generate(self.daemon, self.model, num_predict=4)
                text = str(data.get("response", data.get("error")))
            except Exception as exc:  # a dropped connection is a failure too
                status, text = -1, repr(exc)
            self.outcomes.append((time.monotonic(), status, text))

    def answers_since(self, since: float) -> list[str]:
        return [text for when, status, text in self.outcomes if when > since and status == 200]

    def stop(self) -> list[tuple[float, int, str]]:
        self._stop.set()
        for thread in self._threads:
            thread.join(120)
        return self.outcomes


@pytest.mark.parametrize("max_loaded", [0, 1], ids=["room-for-both", "room-for-one"])
def test_a_route_moves_under_steady_load_without_a_failed_request(
    tmp_path: Path, max_loaded: int
) -> None:
    with running_daemon(tmp_path, max_loaded=max_loaded) as daemon:
        add_versions(daemon, tmp_path)
        set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}]})
        load = Load(daemon, "assistant")
        try:
            eventually(lambda: len(load.answers_since(0)) >= 6, 60, what="load running")
            for model, char in (("b:v2", "bbbb"), ("a:v1", "aaaa"), ("b:v2", "bbbb")):
                moved = time.monotonic()
                assert set_route(daemon, "assistant", {"targets": [{"model": model}]})[0] == 200
                eventually(
                    lambda since=moved, char=char: load.answers_since(since)[-3:] == [char] * 3,
                    120,
                    what=f"the route serving {model}",
                )
        finally:
            outcomes = load.stop()
        failed = [o for o in outcomes if o[1] != 200 or o[2] not in ("aaaa", "bbbb")]
        assert not failed, failed
        assert len(outcomes) >= 12


def _broken_model(tmp_path: Path) -> Path:
    """A well-formed GGUF llama.cpp refuses to load (a tensor the architecture needs is
    missing): every request to it fails with a 422."""
    parts = read_gguf_parts(write_tiny_gguf(tmp_path / "ok.gguf", "c"))
    parts.tensors = [t for t in parts.tensors if t.name != b"blk.1.ffn_down.weight"]
    parts.layout(32)
    path = tmp_path / "broken.gguf"
    path.write_bytes(parts.to_bytes())
    return path


def test_a_rollout_to_a_candidate_that_fails_rolls_itself_back(
    daemon: DaemonThread, tmp_path: Path
) -> None:
    daemon.add_model("broken:v3", _broken_model(tmp_path))
    set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}]})
    status, state = post_json(
        daemon.base_url,
        "/api/routes/assistant/rollout",
        {"to": "broken:v3", "steps": [50, 100], "every": "1h", "min_requests": 2},
    )
    assert status == 200, state
    assert state["status"] == "running" and state["percent"] == 50
    status, again = post_json(daemon.base_url, "/api/routes/assistant/rollout", {"to": "b:v2"})
    assert status == 409 and "already has a rollout" in again["error"]

    def rolled_back() -> bool:
        generate(daemon, "assistant")  # some go to the candidate and fail
        got = json.loads(request(daemon.base_url, "GET", "/api/routes/assistant/rollout")[2])
        return bool(got["status"] == "aborted")

    eventually(rolled_back, 120, what="the rollout aborting")
    got = json.loads(request(daemon.base_url, "GET", "/api/routes/assistant/rollout")[2])
    assert "candidate broken:v3: error rate" in got["reason"]
    route = json.loads(request(daemon.base_url, "GET", "/api/routes/assistant")[2])
    assert route["targets"] == [{"model": "a:v1", "weight": 100.0, "share": 1.0}]
    assert all(answer_of(daemon, "assistant") == "aaa" for _ in range(5))
    history = json.loads(request(daemon.base_url, "GET", "/api/routes/assistant/history")[2])
    assert history["history"][-1]["who"] == "rollout"
    assert history["history"][-1]["reason"].startswith("rollout aborted:")
    metrics = request(daemon.base_url, "GET", "/metrics")[2].decode()
    assert (
        'localserve_route_requests_total{outcome="error",route="assistant:latest",version="broken:v3"}'
        in metrics
    )
    assert 'localserve_route_weight{route="assistant:latest",version="a:v1"} 1.0' in metrics


def _cli(daemon: DaemonThread, *args: str) -> Any:
    from localserve.cli.app import app

    env = {
        "LOCALSERVE_HOST": daemon.base_url.removeprefix("http://"),
        "LOCALSERVE_NO_AUTOSTART": "1",
        "LOCALSERVE_API_KEY": "",
        "LOCALSERVE_CONFIG": str(Path(daemon.settings.state_dir) / "absent.toml"),
    }
    return CliRunner().invoke(app, list(args), env=env)


def test_the_cli_sets_shows_lists_rolls_back_and_deletes(daemon: DaemonThread) -> None:
    result = _cli(daemon, "route", "set", "assistant", "a:v1", "-m", "launch")
    assert result.exit_code == 0, result.output
    assert "assistant:latest -> a:v1 (revision 1)" in result.output
    result = _cli(daemon, "route", "set", "assistant", "a:v1=90", "b:v2=10")
    assert result.exit_code == 0 and "a:v1=90 b:v2=10" in result.output

    result = _cli(daemon, "route", "show", "assistant")
    assert result.exit_code == 0, result.output
    assert "VERSION" in result.output and "90%" in result.output and "10%" in result.output
    shown = json.loads(_cli(daemon, "route", "show", "assistant", "--json").output)
    assert shown["revision"] == 2
    listed = json.loads(_cli(daemon, "route", "list", "--json").output)
    assert [r["name"] for r in listed["routes"]] == ["assistant:latest"]
    assert "assistant:latest" in _cli(daemon, "route", "list").output

    history = _cli(daemon, "route", "history", "assistant")
    assert history.exit_code == 0 and "launch" in history.output and "cli" in history.output

    result = _cli(daemon, "rollback", "assistant")
    assert result.exit_code == 0 and "-> a:v1 (revision 3)" in result.output
    result = _cli(daemon, "rollback", "assistant", "--to", "2")
    assert result.exit_code == 0 and "a:v1=90 b:v2=10" in result.output

    result = _cli(daemon, "route", "set", "assistant", "a:v1=-5")
    assert result.exit_code == 2 and "must be a number >= 0" in result.output
    result = _cli(daemon, "route", "set", "assistant", "ghost:v0")
    assert result.exit_code == 4 and "ghost:v0" in result.output

    result = _cli(daemon, "rm", "b:v2")
    assert result.exit_code == 1 and "assistant:latest (10%)" in result.output
    result = _cli(daemon, "rm", "--force", "b:v2")
    assert result.exit_code == 0, result.output
    assert "route 'assistant:latest' now points at a:v1=90" in result.output

    result = _cli(daemon, "rollout", "assistant", "--to", "a:v1")
    assert result.exit_code == 2 and "already the route's stable version" in result.output
    result = _cli(daemon, "rollout", "status", "assistant")
    assert result.exit_code == 4

    result = _cli(daemon, "run", "assistant", "hello")
    assert result.exit_code == 0, result.output
    assert "a" in result.output

    result = _cli(daemon, "route", "delete", "assistant")
    assert result.exit_code == 0 and "deleted route 'assistant:latest'" in result.output


def test_route_changes_and_rollout_steps_reach_api_events_and_ps(daemon: DaemonThread) -> None:
    import asyncio

    from localserve.client.http import LocalserveClient

    kinds = ["route_changed", "rollout_step", "rollout_paused", "rollout_aborted"]

    async def main() -> list[dict[str, Any]]:
        async with LocalserveClient(daemon.base_url) as client:
            subscribed = asyncio.Event()
            seen: list[dict[str, Any]] = []

            async def read() -> None:
                async for event in client.events(types=kinds, subscribed=subscribed):
                    seen.append(event)
                    if event["type"] == "rollout_aborted":
                        return

            reader = asyncio.create_task(read())
            await asyncio.wait_for(subscribed.wait(), 30)
            await client.set_route("assistant", [("a:v1", 1)], reason="launch")
            await client.start_rollout("assistant", "b:v2", steps="50", every="1h")
            await client.rollout("assistant", "pause")
            await client.rollout("assistant", "abort", reason="enough")
            await asyncio.wait_for(reader, 30)
            return seen

    seen = asyncio.run(main())
    assert [e["type"] for e in seen] == [
        "route_changed",
        "route_changed",
        "rollout_step",
        "rollout_paused",
        "route_changed",
        "rollout_aborted",
    ]
    assert seen[0]["new"] == [{"model": "a:v1", "weight": 1.0}] and seen[0]["who"] == "cli"
    assert seen[2]["percent"] == 50 and seen[2]["candidate"] == "b:v2"
    assert seen[-1]["reason"] == "enough"
    assert answer_of(daemon, "assistant") == "aaa"
    _, _, data = request(daemon.base_url, "GET", "/api/ps")
    rows = {row["name"]: row for row in json.loads(data)["models"]}
    assert rows["a:v1"]["routes"] == {"assistant:latest": 1.0}


def test_a_model_created_over_a_name_in_use_swaps_under_load_without_a_failure(
    daemon: DaemonThread, tmp_path: Path
) -> None:
    """`create` over the name a route serves: in-flight requests finish on the old file,
    new ones wait for the new one to load; nothing fails."""
    set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}]})
    load = Load(daemon, "assistant")
    try:
        eventually(lambda: len(load.answers_since(0)) >= 6, 60, what="load running")
        moved = time.monotonic()
        daemon.add_model("a:v1", write_tiny_gguf(tmp_path / "c.gguf", "c"))  # a new revision
        eventually(lambda: load.answers_since(moved)[-3:] == ["cccc"] * 3, 120, what="the new file")
    finally:
        outcomes = load.stop()
    failed = [o for o in outcomes if o[1] != 200 or o[2] not in ("aaaa", "cccc")]
    assert not failed, failed


def test_routes_and_a_rollout_survive_a_daemon_restart(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as daemon:
        add_versions(daemon, tmp_path)
        set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}]})
        status, _ = post_json(
            daemon.base_url,
            "/api/routes/assistant/rollout",
            {"to": "b:v2", "steps": "25,50", "every": "1h"},
        )
        assert status == 200
    with running_daemon(tmp_path) as restarted:  # the same store
        route = json.loads(request(restarted.base_url, "GET", "/api/routes/assistant")[2])
        assert route["targets"] == [
            {"model": "a:v1", "weight": 75.0, "share": 0.75},
            {"model": "b:v2", "weight": 25.0, "share": 0.25},
        ]
        rollout = route["rollout"]
        assert rollout["status"] == "running" and rollout["percent"] == 25
        assert rollout["log"][-1]["event"] == "resumed after a restart"
        assert 3500 < rollout["next_step_in_s"] <= 3600  # a fresh window
        answers = {answer_of(restarted, "assistant") for _ in range(60)}
        assert answers == {"aaa", "bbb"}  # 75/25: 60 draws use both (p of not: 3e-8)
        status, _ = post_json(restarted.base_url, "/api/routes/assistant/rollout/abort", {})
        assert status == 200
        assert answer_of(restarted, "assistant") == "aaa"


@pytest.mark.parametrize(("candidate", "agreement"), [("same:v2", 1.0), ("b:v2", 0.0)])
def test_shadow_traffic_compares_the_candidate_without_serving_it(
    daemon: DaemonThread, tmp_path: Path, candidate: str, agreement: float
) -> None:
    daemon.add_model("same:v2", write_tiny_gguf(tmp_path / "same.gguf", "a"))  # answers as a:v1
    set_route(daemon, "assistant", {"targets": [{"model": "a:v1"}]})
    status, state = post_json(
        daemon.base_url,
        "/api/routes/assistant/rollout",
        {"to": candidate, "steps": [1], "every": "1h", "shadow": "100%"},
    )
    assert status == 200 and state["shadow"] == 1.0, state

    def compared() -> dict[str, Any] | None:
        body = {"model": "assistant", "prompt": "hi", "stream": False}
        body["options"] = {"num_predict": 3, "temperature": 0}
        status, headers, data = request(daemon.base_url, "POST", "/api/generate", body)
        assert status == 200
        if headers[VERSION_HEADER] == "a:v1":
            assert json.loads(data)["response"] == "aaa"  # the served answer is the stable's
        got = json.loads(request(daemon.base_url, "GET", "/api/routes/assistant/rollout")[2])
        shadow: dict[str, Any] = got["shadow_results"]
        return shadow if shadow["greedy"] >= 3 else None

    shadow = eventually(compared, 120, what="three shadow comparisons")
    assert shadow["errors"] == 0
    assert shadow["agreement_rate"] == agreement
    assert shadow["length_ratio"] == 1.0  # both answer num_predict tokens
    result = _cli(daemon, "rollout", "status", "assistant")
    assert result.exit_code == 0 and "shadow" in result.output and "agreement" in result.output
