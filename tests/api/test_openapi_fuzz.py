"""`/openapi.json` against the daemon that serves it: every route is described with its
statuses, and schemathesis-generated requests (valid and invalid ones) never get a 5xx
or a status the document does not list for that operation.

The daemon is real (runner processes, a tiny GGUF model named `tiny`), its pulls go to a
local fake hub. Generated bodies are steered towards `tiny` (else nearly every request
would be a 404) and kept cheap: few tokens, and load-time options from a small set, so
a run costs few model loads.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from daemon_harness import DaemonThread, running_daemon
from fake_hf_server import FakeHub
from gguf_factory import write_tiny_gguf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from localserve.api.app import EXTRA_ROUTES, ROUTES
from localserve.api.openapi import PATH_PARAMETERS

MODEL = "tiny"
# No 5xx, only documented statuses; and each answer has the documented media type, body
# shape (errors: the dialect's error object) and headers (503: Retry-After).
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# Operations not fuzzed, and why.
EXCLUDED = {
    # An endless SSE stream (keep-alives every 15 s): a generated request never completes.
    # tests/telemetry/test_events.py covers it.
    ("GET", "/api/events"): "an endless event stream",
    # A valid request drains the shared daemon: every later inference request would be a
    # 503. tests/api/test_fleet_api.py covers it.
    ("POST", "/api/drain"): "drains the shared daemon",
}
# Examples per operation and generation mode: the generation routes cost a decode each.
CHEAP_EXAMPLES = 30
GENERATION_EXAMPLES = 15
GENERATION_PATHS = {
    "/api/generate",
    "/api/chat",
    "/api/embed",
    "/api/embeddings",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/messages/count_tokens",
}
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Load-time options: each new value is a new model load, so only a few values are sent.
LOAD_OPTIONS: dict[str, tuple[int, ...]] = {
    "num_ctx": (512, 256),
    "num_parallel": (1,),
    "num_gpu": (0,),
}


@dataclass
class Live:
    daemon: DaemonThread
    schema: Any
    blob_digest: str
    session: requests.Session


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("fuzz")
    hub = FakeHub()
    with pytest.MonkeyPatch.context() as patch, running_daemon(tmp) as daemon:
        patch.delenv("HF_TOKEN", raising=False)
        patch.setattr("localserve.store.hub.get_token", lambda: None)
        daemon.call(hub.start())
        patch.setenv("HF_ENDPOINT", hub.url)
        digest = daemon.add_model(MODEL, write_tiny_gguf(tmp / "tiny.gguf", "a"))
        schema = schemathesis.openapi.from_url(daemon.base_url + "/openapi.json")
        with requests.Session() as session:
            try:
                yield Live(daemon, schema, digest, session)
            finally:
                daemon.call(hub.stop())


def _routes() -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in ROUTES + EXTRA_ROUTES]


def _responses(live: Live, method: str, path: str) -> dict[str, Any]:
    operation = live.schema[path][method]
    responses: dict[str, Any] = operation.definition.raw["responses"]
    return responses


def test_every_route_is_in_the_document_with_its_statuses(live: Live) -> None:
    response = live.session.get(live.daemon.base_url + "/openapi.json", timeout=30)
    document = response.json()
    assert response.status_code == 200 and document["openapi"].startswith("3.1")
    app = live.daemon.daemon.build_app()
    registered = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        registered.add((route.method, info.get("path") or info.get("formatter")))
    assert registered == set(_routes())
    for method, path in registered:
        operation = document["paths"][path][method.lower()]
        statuses = set(operation["responses"])
        assert {"200", "403", "413"} <= statuses, (method, path)
        assert ("401" in statuses) == (path != "/"), (method, path)
        for status, described in operation["responses"].items():
            if int(status) >= 400:
                schema = described["content"]["application/json"]["schema"]["$ref"]
                expected = "OpenAIError" if path.startswith("/v1/") else "OllamaError"
                if path.startswith("/v1/messages"):  # Anthropic's sub-app, Anthropic's shape
                    expected = "AnthropicError"
                assert schema.endswith(expected), (method, path, status)
    generation = [document["paths"][path]["post"]["responses"] for path in sorted(GENERATION_PATHS)]
    for statuses in generation:
        assert {"400", "404", "422", "500", "503", "507"} <= set(statuses)
        assert "Retry-After" in statuses["503"]["headers"]
    blob = document["paths"]["/api/blobs/{digest}"]["post"]["responses"]
    assert {"200", "201", "400", "507"} <= set(blob)
    assert {"502", "507"} <= set(document["paths"]["/api/pull"]["post"]["responses"])


def test_request_bodies_declare_types_and_required_fields(live: Live) -> None:
    document = live.session.get(live.daemon.base_url + "/openapi.json", timeout=30).json()
    schemas = document["components"]["schemas"]

    def body(path: str) -> dict[str, Any]:
        ref = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        schema: dict[str, Any] = schemas[ref["schema"]["$ref"].rsplit("/", 1)[1]]
        assert "additionalProperties" not in schema, path  # unknown fields are ignored
        return schema

    required = {
        "/api/generate": ["model"],
        "/api/chat": ["model", "messages"],
        "/api/embed": ["model", "input"],
        "/api/create": ["model"],
        "/api/copy": ["source", "destination"],
        "/api/pull": ["model"],
        "/v1/chat/completions": ["model", "messages"],
        "/v1/completions": ["model", "prompt"],
        "/v1/embeddings": ["model", "input"],
    }
    for path, fields in required.items():
        assert body(path)["required"] == fields, path
    assert schemas["KeepAlive"]["type"] == ["string", "number"]
    assert schemas["Options"]["properties"]["num_predict"]["type"] == "integer"
    assert schemas["Options"]["properties"]["temperature"]["type"] == "number"
    assert schemas["Message"]["properties"]["role"]["enum"] == [
        "assistant",
        "system",
        "tool",
        "user",
    ]
    format_types = {s["type"] for s in schemas["Format"]["anyOf"]}
    assert format_types == {"string", "object"}
    stop_types = {s["type"] for s in schemas["Options"]["properties"]["stop"]["anyOf"]}
    assert stop_types == {"string", "array"}


# ---- the fuzz run ---------------------------------------------------------------------------


def _steer(case: Any, live: Live, choice: int) -> Any:
    """Point a generated case at the installed model some of the time; keep it cheap."""
    body = case.body if isinstance(case.body, dict) else None
    path = case.operation.path
    if body is not None:
        if (path in GENERATION_PATHS or path == "/api/show") and choice % 3 and "model" in body:
            body["model"] = MODEL
        if path in ("/api/create", "/api/delete") and choice % 2 and "model" in body:
            body["model"] = f"fuzz-{choice}"  # models the run creates and deletes
        if path == "/api/create" and choice % 2 and "from" in body:
            body["from"] = MODEL
        if path == "/api/create" and choice % 2 and isinstance(body.get("files"), dict):
            body["files"] = {"model.gguf": live.blob_digest}
        if path == "/api/copy" and choice % 2:
            body["source"], body["destination"] = MODEL, f"fuzz-{choice}"
        if path == "/api/pull" and choice % 2 and "model" in body:
            body["model"] = f"hf.co/fuzz/repo-{choice}"  # unknown to the fake hub
        for options_key in ("options", "parameters"):
            options = body.get(options_key)
            if isinstance(options, dict):
                _tame_options(options, choice)
        for field in TOKEN_FIELDS:
            if isinstance(body.get(field), int) and not isinstance(body[field], bool):
                body[field] = body[field] % 4
    if path == "/v1/models/{model}" and choice % 2:
        case.path_parameters["model"] = MODEL
    if path == "/api/blobs/{digest}" and choice % 2:
        if case.method == "HEAD":
            case.path_parameters["digest"] = live.blob_digest
        elif isinstance(data := getattr(case.body, "data", case.body), bytes):
            case.path_parameters["digest"] = "sha256:" + hashlib.sha256(data).hexdigest()
    return case


def _tame_options(options: dict[str, Any], choice: int) -> None:
    value = options.get("num_predict")
    if isinstance(value, int) and not isinstance(value, bool):
        options["num_predict"] = value % 4
    for name, allowed in LOAD_OPTIONS.items():
        value = options.get(name)
        if isinstance(value, int) and not isinstance(value, bool):
            options[name] = allowed[choice % len(allowed)]


def _fuzz_params() -> list[Any]:
    """(method, path, mode) for every route; negative mode only where an input can be
    wrong: a body, or a path parameter with a pattern (any string is a valid name)."""
    params = []
    for route in ROUTES + EXTRA_ROUTES:
        method, path, spec = route.method, route.path, route.spec
        constrained = [p for p, schema in PATH_PARAMETERS.items() if "pattern" in schema]
        has_input = spec.body is not None or any(f"{{{p}}}" in path for p in constrained)
        modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if has_input else [])
        for mode in modes:
            marks = []
            if (method, path) in EXCLUDED:
                marks.append(pytest.mark.skip(reason=EXCLUDED[(method, path)]))
            params.append(
                pytest.param(method, path, mode, id=f"{method} {path} {mode}", marks=marks)
            )
    return params


@pytest.mark.parametrize(("method", "path", "mode"), _fuzz_params())
def test_generated_requests_get_documented_non_5xx_statuses(
    live: Live, method: str, path: str, mode: GenerationMode
) -> None:
    operation = live.schema[path][method]
    budget = GENERATION_EXAMPLES if path in GENERATION_PATHS else CHEAP_EXAMPLES
    seen: set[int] = set()

    @settings(
        max_examples=budget,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode), choice=st.integers(0, 5))
    def run(case: Any, choice: int) -> None:
        case = _steer(case, live, choice)
        response = case.call(session=live.session, timeout=60)
        seen.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    started = time.monotonic()
    run()
    documented = {int(s) for s in _responses(live, method, path)}
    print(f"{method} {path} {mode}: {sorted(seen)} in {time.monotonic() - started:.1f}s")
    assert seen and seen <= documented, (seen, documented)


# ---- 5xx the fuzzing found, as fixed reproducers ---------------------------------------------

_MESSAGES = [{"role": "user", "content": "hi"}]
FINDINGS = {
    "stream_options not an object (chat)": (
        "/v1/chat/completions",
        {"model": MODEL, "messages": _MESSAGES, "max_tokens": 1, "stream_options": "x"},
    ),
    "stream_options not an object (completions)": (
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "max_tokens": 1, "stream": True, "stream_options": [1]},
    ),
    "response_format.json_schema not an object": (
        "/v1/chat/completions",
        {
            "model": MODEL,
            "messages": _MESSAGES,
            "max_tokens": 1,
            "response_format": {"type": "json_schema", "json_schema": "x"},
        },
    ),
}


@pytest.mark.parametrize("name", sorted(FINDINGS))
def test_malformed_openai_fields_are_400_not_500(live: Live, name: str) -> None:
    path, body = FINDINGS[name]
    response = live.session.post(live.daemon.base_url + path, json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("keep_alive", [1e300, "9999999999h"])
def test_ps_answers_after_a_keep_alive_beyond_any_date(live: Live, keep_alive: Any) -> None:
    base = live.daemon.base_url
    body = {"model": MODEL, "prompt": "x", "stream": False, "options": {"num_predict": 1}}
    try:
        loaded = live.session.post(
            base + "/api/generate", json={**body, "keep_alive": keep_alive}, timeout=60
        )
        assert loaded.status_code == 200, loaded.text
        response = live.session.get(base + "/api/ps", timeout=60)
        assert response.status_code == 200, response.text
        (row,) = [m for m in response.json()["models"] if m["name"] == f"{MODEL}:latest"]
        assert isinstance(row["expires_at"], str)
    finally:  # unload, so the rest of the run sees an ordinary keep-alive
        live.session.post(base + "/api/generate", json={"model": MODEL, "keep_alive": 0})
