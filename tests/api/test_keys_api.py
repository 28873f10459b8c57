"""API keys against a real daemon on loopback: authentication (Bearer, x-api-key), scopes
on every route of the table, limits and their 429s in each dialect's shape, key
management over HTTP, usage totals, queue position headers."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import write_tiny_gguf

from localserve.access.keys import KeyLimits, KeyStore
from localserve.access.scopes import route_permission
from localserve.api.routes import EXTRA_ROUTES, ROUTES


def call(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    key: str | None = None,
    header: str = "bearer",
    raw: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers: dict[str, str] = {"Content-Type": "application/json"}
    if key is not None:
        if header == "bearer":
            headers["Authorization"] = f"Bearer {key}"
        else:
            headers["x-api-key"] = key
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def generate(base: str, key: str | None, model: str = "tiny", **extra: Any) -> tuple[int, Any]:
    body = {"model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 2}}
    status, _, data = call(base, "POST", "/api/generate", {**body, **extra}, key=key)
    return status, json.loads(data)


@pytest.fixture
def keyed(tmp_path: Path) -> Iterator[tuple[DaemonThread, dict[str, str]]]:
    """A daemon that requires keys, with an admin, a reader, a tiny-only key and a
    limited key."""
    store = KeyStore(tmp_path / "keys.json")
    secrets = {
        "admin": store.add("ops", scopes=["admin"])[1],
        "reader": store.add("dash", scopes=["read"])[1],
        "tiny": store.add("chat", scopes=["model:tiny*"])[1],
        "limited": store.add("batch", limits=KeyLimits(rpm=2))[1],
    }
    with running_daemon(tmp_path, keys_file=tmp_path / "keys.json", require_keys=True) as d:
        d.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        d.add_model("other", write_tiny_gguf(tmp_path / "b.gguf", "b"))
        yield d, secrets


def test_a_key_works_as_bearer_and_as_x_api_key(keyed: tuple[DaemonThread, dict[str, str]]) -> None:
    daemon, keys = keyed
    for header in ("bearer", "x-api-key"):
        status, _, data = call(
            daemon.base_url, "GET", "/api/tags", key=keys["reader"], header=header
        )
        assert status == 200, data
        assert {m["name"] for m in json.loads(data)["models"]} == {"tiny:latest", "other:latest"}


def test_unknown_and_revoked_keys_get_the_same_401(
    keyed: tuple[DaemonThread, dict[str, str]],
) -> None:
    daemon, keys = keyed
    base = daemon.base_url
    status, _, revoked = call(base, "DELETE", "/api/keys/dash", key=keys["admin"])
    assert status == 200 and json.loads(revoked)["key"]["active"] is False
    answers = [call(base, "GET", "/api/tags", key=k) for k in (keys["reader"], "lsk_nope")]
    assert [a[0] for a in answers] == [401, 401]
    assert answers[0][2] == answers[1][2]  # nothing tells a revoked key from an unknown one
    assert json.loads(answers[0][2])["code"] == "unauthorized"
    status, _, missing = call(base, "GET", "/api/tags")
    assert status == 401 and b"missing API key" in missing


def test_a_key_outside_its_scopes_gets_403_naming_the_scope(
    keyed: tuple[DaemonThread, dict[str, str]],
) -> None:
    daemon, keys = keyed
    base = daemon.base_url
    status, body = generate(base, keys["tiny"], model="other")
    assert status == 403 and body["code"] == "insufficient_scope"
    assert "model:other" in body["error"]
    assert generate(base, keys["tiny"])[0] == 200
    status, _, data = call(
        base, "POST", "/api/copy", {"source": "tiny", "destination": "t2"}, key=keys["reader"]
    )
    assert status == 403 and "'admin'" in json.loads(data)["error"]
    status, _, data = call(
        base, "POST", "/v1/chat/completions", {"model": "other", "messages": []}, key=keys["tiny"]
    )
    error = json.loads(data)["error"]  # OpenAI's shape under /v1
    assert (
        status == 403 and error["type"] == "permission_error" and "model:other" in error["message"]
    )


ALL_ROUTES = [(r.method, r.path) for r in ROUTES + EXTRA_ROUTES]


def _concrete(path: str) -> str:
    return (
        path.replace("{digest}", "sha256:" + "0" * 64)
        .replace("{model}", "tiny")
        .replace("{name}", "nothing-here")
    )


@pytest.mark.parametrize(("method", "path"), ALL_ROUTES, ids=[f"{m} {p}" for m, p in ALL_ROUTES])
def test_every_route_checks_its_scope(
    keyed: tuple[DaemonThread, dict[str, str]], method: str, path: str
) -> None:
    """A key lacking the route's permission gets 403 (public routes never do); a key
    holding it is not refused for scope (whatever the handler then says)."""
    daemon, keys = keyed
    permission = route_permission(method, path)
    body = {"model": "tiny", "prompt": "", "messages": [], "input": "x"}
    if path == "/api/events":  # a stream: only the refusal is checked
        body = None
    lacking = {
        "read": "tiny",
        "admin": "reader",
        "inference": "reader",
        "public": "reader",
        "own": "tiny",
    }
    status, _, data = call(
        daemon.base_url, method, _concrete(path), body, key=keys[lacking[permission]]
    )
    if permission in ("public", "own"):
        assert status != 403
    else:
        assert status == 403, (status, data)
        if method != "HEAD":
            assert b"insufficient_scope" in data
    if path in ("/api/events", "/api/drain"):  # a stream; a drain would stop the daemon
        return
    holder = {
        "read": "reader",
        "admin": "admin",
        "inference": "tiny",
        "public": "tiny",
        "own": "tiny",
    }
    status, _, data = call(
        daemon.base_url, method, _concrete(path), body, key=keys[holder[permission]]
    )
    assert status not in (401, 403) or b"insufficient_scope" not in data, (status, data)


def test_requests_over_the_limit_get_429_with_rate_limit_headers_in_each_dialect(
    keyed: tuple[DaemonThread, dict[str, str]],
) -> None:
    daemon, keys = keyed
    base = daemon.base_url
    status, headers, _ = call(
        base,
        "POST",
        "/api/generate",
        {"model": "tiny", "prompt": "x", "stream": True, "options": {"num_predict": 1}},
        key=keys["limited"],
    )
    assert status == 200
    assert headers["x-ratelimit-limit-requests"] == "2"
    assert headers["x-ratelimit-remaining-requests"] == "1"
    assert generate(base, keys["limited"])[0] == 200
    status, headers, data = call(
        base,
        "POST",
        "/api/generate",
        {"model": "tiny", "prompt": "x", "stream": False},
        key=keys["limited"],
    )
    body = json.loads(data)
    assert status == 429 and body["code"] == "rate_limit_exceeded"
    assert "2 requests per minute" in body["error"]
    assert int(headers["Retry-After"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"].endswith("s")
    status, headers, data = call(
        base,
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}]},
        key=keys["limited"],
    )
    error = json.loads(data)["error"]
    assert status == 429 and error["code"] == "rate_limit_exceeded"
    assert error["type"] == "rate_limit_error" and "Retry-After" in headers
    if any(p == "/v1/messages" for _, p in ALL_ROUTES):
        status, headers, data = call(
            base,
            "POST",
            "/v1/messages",
            {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]},
            key=keys["limited"],
            header="x-api-key",
        )
        answer = json.loads(data)
        assert status == 429 and answer["type"] == "error", answer
        assert answer["error"]["type"] == "rate_limit_error"
        assert "Retry-After" in headers


def test_the_openai_client_sees_a_rate_limit_error(
    keyed: tuple[DaemonThread, dict[str, str]],
) -> None:
    import openai

    daemon, keys = keyed
    client = openai.OpenAI(base_url=daemon.base_url + "/v1", api_key=keys["limited"], max_retries=0)
    for _ in range(2):
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}])
    assert caught.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_keys_are_managed_over_http_and_a_new_key_works_at_once(
    keyed: tuple[DaemonThread, dict[str, str]],
) -> None:
    daemon, keys = keyed
    base = daemon.base_url
    status, _, data = call(
        base,
        "POST",
        "/api/keys",
        {"name": "fresh", "scopes": ["model:*"], "rpm": 10, "priority": 2},
        key=keys["admin"],
    )
    created = json.loads(data)
    assert status == 200 and created["secret"].startswith("lsk_")
    assert created["key"]["rpm"] == 10 and "secret_hash" not in created["key"]
    assert generate(base, created["secret"])[0] == 200
    status, _, data = call(base, "GET", "/api/keys", key=keys["admin"])
    listed = {k["name"]: k for k in json.loads(data)["keys"]}
    assert listed["fresh"]["priority"] == 2 and "secret_hash" not in listed["fresh"]
    assert created["secret"] not in data.decode()
    assert call(base, "DELETE", "/api/keys/fresh", key=keys["admin"])[0] == 200
    assert generate(base, created["secret"])[0] == 401  # revoked: stops at once


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x", "rpm": -1}, "rpm"),
        ({"name": "x", "tpm": "lots"}, "tpm"),
        ({"name": "x", "scopes": ["everything"]}, "scopes"),
        ({"name": "x", "colour": "red"}, "colour"),
        ({"name": "bad name"}, "name"),
        ({"name": "x", "weight": 0}, "weight"),
    ],
)
def test_a_bad_key_is_a_400_naming_the_field(
    keyed: tuple[DaemonThread, dict[str, str]], body: dict[str, Any], field: str
) -> None:
    daemon, keys = keyed
    status, _, data = call(daemon.base_url, "POST", "/api/keys", body, key=keys["admin"])
    assert status == 400 and field in json.loads(data)["error"]


def test_usage_totals_equal_the_sum_of_the_requests_token_counts(
    keyed: tuple[DaemonThread, dict[str, str]],
) -> None:
    daemon, keys = keyed
    base = daemon.base_url
    prompt = generated = 0
    for n in (1, 3, 2):  # OpenAI's usage counts the whole prompt, as usage does
        status, _, data = call(
            base,
            "POST",
            "/v1/completions",
            {"model": "tiny", "prompt": "x" * n, "max_tokens": n},
            key=keys["tiny"],
        )
        assert status == 200
        counts = json.loads(data)["usage"]
        prompt += counts["prompt_tokens"]
        generated += counts["completion_tokens"]
    status, _, data = call(
        base,
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "q"}], "max_tokens": 2},
        key=keys["tiny"],
    )
    usage = json.loads(data)["usage"]
    prompt += usage["prompt_tokens"]
    generated += usage["completion_tokens"]
    status, _, data = call(
        base, "POST", "/api/embed", {"model": "tiny", "input": ["ab", "c"]}, key=keys["tiny"]
    )
    prompt += json.loads(data)["prompt_eval_count"]
    assert generate(base, keys["tiny"], model="other")[0] == 403  # refused before: not usage
    status, _, data = call(base, "GET", "/api/usage?since=1h", key=keys["tiny"])
    rows = json.loads(data)["usage"]
    assert status == 200 and {r["key"] for r in rows} == {"chat"}  # a key sees its own only
    (row,) = rows
    assert row["model"] == "tiny:latest" and row["requests"] == 5 and row["errors"] == 0
    assert (row["prompt_tokens"], row["generated_tokens"]) == (prompt, generated)
    assert row["busy_seconds"] > 0


def test_metrics_count_requests_and_429s_per_key(
    keyed: tuple[DaemonThread, dict[str, str]],
) -> None:
    daemon, keys = keyed
    base = daemon.base_url
    for _ in range(3):
        generate(base, keys["limited"])
    status, _, data = call(base, "GET", "/metrics", key=keys["reader"])
    assert status == 200
    text = data.decode()
    assert 'localserve_key_requests_total{key="batch",model="tiny:latest",status="ok"} 2.0' in text
    assert 'localserve_key_rate_limited_total{key="batch",limit="requests"} 1.0' in text
    assert 'localserve_key_generated_tokens_total{key="batch",model="tiny:latest"} 4.0' in text


def test_loopback_without_keys_works_as_before_and_a_valid_key_still_counts(
    tmp_path: Path,
) -> None:
    store = KeyStore(tmp_path / "keys.json")
    _, secret = store.add("chat", scopes=["model:tiny"])
    with running_daemon(tmp_path, keys_file=tmp_path / "keys.json") as daemon:
        daemon.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        base = daemon.base_url
        assert generate(base, None)[0] == 200  # anonymous on loopback
        assert call(base, "GET", "/api/keys")[0] == 200
        assert generate(base, "sk-no-key")[0] == 200  # a placeholder, as OpenAI's client sends
        assert generate(base, secret)[0] == 200
        status, _, _ = call(base, "GET", "/api/tags", key=secret)
        assert status == 403  # a valid key keeps its scopes even where none is required


def test_the_legacy_api_key_is_an_admin_key(tmp_path: Path) -> None:
    with running_daemon(tmp_path, api_key="s3cret", keys_file=tmp_path / "keys.json") as daemon:
        base = daemon.base_url
        assert call(base, "GET", "/api/tags")[0] == 401
        assert call(base, "GET", "/api/tags", key="s3cret")[0] == 200
        assert call(base, "GET", "/api/tags", key="s3cret", header="x-api-key")[0] == 200
        status, _, data = call(base, "POST", "/api/keys", {"name": "n"}, key="s3cret")
        assert status == 200 and json.loads(data)["secret"].startswith("lsk_")


def test_requiring_keys_without_any_is_a_config_error_at_start(tmp_path: Path) -> None:
    from localserve.errors import ConfigError

    with (
        pytest.raises(ConfigError, match="keys add"),
        running_daemon(tmp_path, require_keys=True, keys_file=tmp_path / "none.json"),
    ):
        pass
