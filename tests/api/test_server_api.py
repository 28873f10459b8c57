"""The HTTP API against a real daemon with real runner processes and tiny GGUF models."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import DaemonThread, running_daemon
from eventually import eventually
from gguf_factory import write_tiny_gguf


def request(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def post_json(base: str, path: str, body: Any) -> tuple[int, Any]:
    status, _, data = request(base, "POST", path, body)
    return status, json.loads(data) if data.strip() else None


def ndjson(data: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in data.splitlines() if line.strip()]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path) as running:
        running.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        yield running


def test_generate_streams_tokens_then_a_final_chunk_with_timings(daemon: DaemonThread) -> None:
    status, _, data = request(
        daemon.base_url,
        "POST",
        "/api/generate",
        {"model": "tiny", "prompt": "hello", "options": {"num_predict": 7}},
    )
    assert status == 200
    lines = ndjson(data)
    assert "".join(x["response"] for x in lines) == "a" * 7
    final = lines[-1]
    assert final["done"] is True and final["done_reason"] == "length"
    for key in (
        "total_duration",
        "load_duration",
        "prompt_eval_count",
        "prompt_eval_duration",
        "eval_count",
        "eval_duration",
    ):
        assert isinstance(final[key], int), key
    assert final["eval_count"] == 7
    assert final["prompt_eval_count"] > 0
    assert final["total_duration"] >= final["load_duration"] > 0
    assert all(x["done"] is False for x in lines[:-1])


def test_generate_without_stream_returns_one_object(daemon: DaemonThread) -> None:
    status, body = post_json(
        daemon.base_url,
        "/api/generate",
        {"model": "tiny:latest", "prompt": "x", "stream": False, "options": {"num_predict": 3}},
    )
    assert status == 200
    assert body["response"] == "aaa" and body["done"] is True and body["eval_count"] == 3


def test_stop_strings_end_generation_with_reason_stop(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        d.add_model("tiny", write_tiny_gguf(tmp_path / "s.gguf", "s"))
        status, body = post_json(
            d.base_url,
            "/api/generate",
            {
                "model": "tiny",
                "prompt": "x",
                "stream": False,
                "options": {"num_predict": 20, "stop": ["sss"]},
            },
        )
    assert status == 200
    assert body["response"] == "" and body["done_reason"] == "stop"


def test_chat_uses_message_shape_streaming_and_not(daemon: DaemonThread) -> None:
    messages = [{"role": "user", "content": "hi"}]
    status, _, data = request(
        daemon.base_url,
        "POST",
        "/api/chat",
        {"model": "tiny", "messages": messages, "options": {"num_predict": 4}},
    )
    lines = ndjson(data)
    assert status == 200
    assert "".join(x["message"]["content"] for x in lines) == "aaaa"
    assert lines[-1]["done"] is True and lines[-1]["message"]["role"] == "assistant"
    status, body = post_json(
        daemon.base_url,
        "/api/chat",
        {"model": "tiny", "messages": messages, "stream": False, "options": {"num_predict": 2}},
    )
    assert body["message"] == {"role": "assistant", "content": "aa"}


def test_empty_prompt_loads_and_keep_alive_zero_unloads(daemon: DaemonThread) -> None:
    status, body = post_json(daemon.base_url, "/api/generate", {"model": "tiny"})
    assert status == 200 and body["done_reason"] == "load"
    assert [m["model"] for m in daemon.ps()] == ["tiny:latest"]
    status, body = post_json(daemon.base_url, "/api/generate", {"model": "tiny", "keep_alive": 0})
    assert status == 200 and body["done_reason"] == "unload"
    assert daemon.ps() == []


def test_keep_alive_expires_after_its_duration(daemon: DaemonThread) -> None:
    post_json(daemon.base_url, "/api/generate", {"model": "tiny", "keep_alive": "1s"})
    _, _, data = request(daemon.base_url, "GET", "/api/ps")
    (row,) = json.loads(data)["models"]
    assert row["state"] == "ready" and row["load_progress"] == 1.0
    assert row["gpu_layers"] == 0 and row["pid"] > 0 and row["slots"] >= 1
    assert row["threads"] == 1  # test daemons run 1 thread
    eventually(lambda: daemon.ps() == [], 10, interval=0.05, what="expiry after a 1 s keep-alive")
    assert daemon.ps() == []


def test_embed_returns_one_normalised_vector_per_input(daemon: DaemonThread) -> None:
    status, body = post_json(daemon.base_url, "/api/embed", {"model": "tiny", "input": ["a", "b"]})
    assert status == 200
    assert len(body["embeddings"]) == 2 and len(body["embeddings"][0]) == 64
    norm = sum(v * v for v in body["embeddings"][0]) ** 0.5
    assert abs(norm - 1.0) < 1e-3
    assert body["prompt_eval_count"] > 0
    status, body = post_json(daemon.base_url, "/api/embeddings", {"model": "tiny", "prompt": "a"})
    assert status == 200 and len(body["embedding"]) == 64


def test_tags_show_copy_delete_round_trip(daemon: DaemonThread) -> None:
    _, _, data = request(daemon.base_url, "GET", "/api/tags")
    (entry,) = json.loads(data)["models"]
    assert entry["name"] == "tiny:latest"
    assert entry["details"]["quantization_level"] == "F32"
    assert entry["details"]["family"] == "llama"
    status, shown = post_json(daemon.base_url, "/api/show", {"model": "tiny"})
    assert status == 200 and shown["details"]["format"] == "gguf"
    assert shown["model_info"]["llama.block_count"] == 2
    status, _ = post_json(daemon.base_url, "/api/copy", {"source": "tiny", "destination": "b:v1"})
    assert status == 200
    _, _, data = request(daemon.base_url, "GET", "/api/tags")
    assert {m["name"] for m in json.loads(data)["models"]} == {"tiny:latest", "b:v1"}
    blobs = list((daemon.settings.models_dir / "blobs").iterdir())
    assert len(blobs) == 1
    status, _, _ = request(daemon.base_url, "DELETE", "/api/delete", {"model": "tiny"})
    assert status == 200
    assert len(list((daemon.settings.models_dir / "blobs").iterdir())) == 1  # b:v1 keeps it
    status, _, _ = request(daemon.base_url, "DELETE", "/api/delete", {"model": "b:v1"})
    assert status == 200
    assert list((daemon.settings.models_dir / "blobs").iterdir()) == []
    status, _body = post_json(daemon.base_url, "/api/delete", {"model": "b:v1"})
    assert status == 405


def _upload(base: str, data: bytes) -> tuple[int, str]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, _, _ = request(base, "POST", f"/api/blobs/{digest}", raw=data)
    return status, digest


def test_create_from_uploaded_blob_then_generate(daemon: DaemonThread, tmp_path: Path) -> None:
    data = write_tiny_gguf(tmp_path / "z.gguf", "z").read_bytes()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    status, _, _ = request(daemon.base_url, "HEAD", f"/api/blobs/{digest}")
    assert status == 404
    assert _upload(daemon.base_url, data)[0] == 201
    status, _, _ = request(daemon.base_url, "HEAD", f"/api/blobs/{digest}")
    assert status == 200
    status, _, body = request(
        daemon.base_url,
        "POST",
        "/api/create",
        {
            "model": "zed",
            "files": {"z.gguf": digest},
            "system": "be terse",
            "parameters": {"num_predict": 2},
        },
    )
    assert status == 200 and ndjson(body)[-1] == {"status": "success"}
    status, body = post_json(
        daemon.base_url, "/api/generate", {"model": "zed", "prompt": "q", "stream": False}
    )
    assert body["response"] == "zz"  # the stored num_predict applies
    status, shown = post_json(daemon.base_url, "/api/show", {"model": "zed"})
    assert shown["system"] == "be terse" and "num_predict" in shown["parameters"]


def test_upload_with_wrong_digest_is_refused_and_leaves_nothing(daemon: DaemonThread) -> None:
    before = set((daemon.settings.models_dir / "blobs").iterdir())
    wrong = "sha256:" + "0" * 64
    status, _, body = request(daemon.base_url, "POST", f"/api/blobs/{wrong}", raw=b"GGUFxxxx")
    assert status == 400 and b"digest mismatch" in body
    assert set((daemon.settings.models_dir / "blobs").iterdir()) == before
    assert list((daemon.settings.models_dir / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a model at all", "not a GGUF"),
        (b"GGUF\x03\x00\x00\x00garbage", "corrupt"),
    ],
)
def test_create_from_a_bad_file_is_400_and_registers_nothing(
    daemon: DaemonThread, content: bytes, message: str
) -> None:
    status, digest = _upload(daemon.base_url, content)
    assert status == 201
    status, body = post_json(
        daemon.base_url, "/api/create", {"model": "bad", "files": {"bad.gguf": digest}}
    )
    assert status == 400 and message in body["error"]
    status, _, _ = request(daemon.base_url, "HEAD", f"/api/blobs/{digest}")
    assert status == 404
    _, _, data = request(daemon.base_url, "GET", "/api/tags")
    assert [m["name"] for m in json.loads(data)["models"]] == ["tiny:latest"]


def test_create_from_a_truncated_gguf_says_truncated(daemon: DaemonThread, tmp_path: Path) -> None:
    data = write_tiny_gguf(tmp_path / "t.gguf", "t").read_bytes()
    status, digest = _upload(daemon.base_url, data[: len(data) - 5000])
    status, body = post_json(
        daemon.base_url, "/api/create", {"model": "cut", "files": {"cut.gguf": digest}}
    )
    assert status == 400 and "truncated" in body["error"]


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/api/generate", {"prompt": "x"}, 400),
        ("/api/generate", {"model": 5, "prompt": "x"}, 400),
        ("/api/generate", {"model": "tiny", "prompt": 5}, 400),
        ("/api/generate", {"model": "tiny", "prompt": "x", "options": "hot"}, 400),
        ("/api/generate", {"model": "tiny", "prompt": "x", "options": {"temperature": "hot"}}, 400),
        ("/api/generate", {"model": "tiny", "prompt": "x", "stream": "yes"}, 400),
        ("/api/generate", {"model": "tiny", "prompt": "x", "keep_alive": "forever"}, 400),
        ("/api/generate", {"model": "tiny", "prompt": "x", "format": "yaml"}, 400),
        ("/api/generate", ["not", "an", "object"], 400),
        ("/api/chat", {"model": "tiny", "messages": "hi"}, 400),
        ("/api/chat", {"model": "tiny", "messages": [{"role": "wizard", "content": "x"}]}, 400),
        ("/api/embed", {"model": "tiny", "input": 3}, 400),
        ("/api/generate", {"model": "../../etc/passwd", "prompt": "x"}, 400),
        ("/api/generate", {"model": "a/b/c/d", "prompt": "x"}, 400),
        ("/api/generate", {"model": "x" * 1000, "prompt": "x"}, 400),
        ("/api/show", {"model": "tiny:../../x"}, 400),
        ("/api/copy", {"source": "tiny"}, 400),
        ("/api/create", {"model": "m", "files": {"m.gguf": "sha256:../../etc"}}, 400),
        ("/api/create", {"model": "m", "files": {"m.gguf": "sha256:" + "a" * 64}}, 404),
        ("/api/generate", {"model": "missing-model", "prompt": "x"}, 404),
        ("/api/show", {"model": "missing-model"}, 404),
        ("/api/copy", {"source": "missing-model", "destination": "y"}, 404),
    ],
)
def test_bad_input_gets_a_clear_json_error(
    daemon: DaemonThread, path: str, body: Any, status: int
) -> None:
    got, response = post_json(daemon.base_url, path, body)
    assert got == status
    assert isinstance(response["error"], str) and response["error"]


def test_unknown_model_error_names_the_model(daemon: DaemonThread) -> None:
    status, body = post_json(daemon.base_url, "/api/chat", {"model": "llama9", "messages": []})
    assert status == 404 and "llama9" in body["error"] and "pull" in body["error"]


def test_malformed_json_and_malformed_digest_urls_are_400(daemon: DaemonThread) -> None:
    status, _, body = request(daemon.base_url, "POST", "/api/generate", raw=b"{nope")
    assert status == 400 and b"invalid JSON" in body
    status, _, body = request(daemon.base_url, "POST", "/api/blobs/sha256:..%2F..%2Fx", raw=b"x")
    assert status == 400


def _stream_lines(base: str, path: str, body: Any) -> tuple[http.client.HTTPConnection, Any]:
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def _long_model(tmp_path: Path, d: DaemonThread, name: str = "long", char: str = "l") -> None:
    d.add_model(name, write_tiny_gguf(tmp_path / f"{name}.gguf", char, context_length=32768))


def test_runner_killed_mid_request_ends_stream_with_error_and_daemon_recovers(
    tmp_path: Path,
) -> None:
    with running_daemon(tmp_path, default_num_ctx=32768) as d:
        _long_model(tmp_path, d)
        conn, response = _stream_lines(
            d.base_url,
            "/api/generate",
            {"model": "long", "prompt": "x", "options": {"num_predict": 30000}},
        )
        first = json.loads(response.readline())
        assert first["response"] == "l"
        (row,) = d.ps()
        os.kill(row["pid"], signal.SIGKILL)
        lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
        conn.close()
        assert "error" in lines[-1]
        assert "killed" in lines[-1]["error"] or "exited" in lines[-1]["error"]
        status, body = post_json(
            d.base_url,
            "/api/generate",
            {"model": "long", "prompt": "x", "stream": False, "options": {"num_predict": 3}},
        )
        assert status == 200 and body["response"] == "lll"
        assert d.ps()[0]["pid"] != row["pid"]


def test_client_disconnect_cancels_generation_and_frees_the_runner(tmp_path: Path) -> None:
    with running_daemon(tmp_path, default_num_ctx=32768) as d:
        _long_model(tmp_path, d)
        conn, response = _stream_lines(
            d.base_url,
            "/api/generate",
            {"model": "long", "prompt": "x", "options": {"num_predict": 30000}},
        )
        response.readline()
        assert d.ps()[0]["in_flight"] == 1
        conn.close()
        eventually(lambda: d.ps()[0]["in_flight"] == 0, 5, what="the cancelled request gone")
        assert d.ps()[0]["in_flight"] == 0
        started = time.time()
        _status, body = post_json(
            d.base_url,
            "/api/generate",
            {"model": "long", "prompt": "y", "stream": False, "options": {"num_predict": 2}},
        )
        assert body["response"] == "ll"
        assert time.time() - started < 5  # not stuck behind the abandoned generation


def test_queue_overflow_answers_503_with_retry_after(tmp_path: Path) -> None:
    with running_daemon(tmp_path, default_num_ctx=32768, max_queue=1) as d:
        _long_model(tmp_path, d)
        long_body = {"model": "long", "prompt": "x", "options": {"num_predict": 30000}}
        first_conn, first = _stream_lines(d.base_url, "/api/generate", long_body)
        first.readline()
        host, port = d.base_url.removeprefix("http://").split(":")
        second_conn = http.client.HTTPConnection(host, int(port), timeout=60)
        second_conn.request("POST", "/api/generate", json.dumps(long_body))
        eventually(lambda: d.ps()[0]["in_flight"] >= 2, 5, what="the second request queued")
        status, headers, body = request(d.base_url, "POST", "/api/generate", long_body)
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        assert "busy" in json.loads(body)["error"]
        for conn in (first_conn, second_conn):
            conn.close()


def test_max_loaded_one_swaps_models_and_every_answer_is_right(tmp_path: Path) -> None:
    with running_daemon(tmp_path, max_loaded=1) as d:
        for char in "abc":
            d.add_model(f"m{char}", write_tiny_gguf(tmp_path / f"{char}.gguf", char))
        for char in "abcabc":
            _status, body = post_json(
                d.base_url,
                "/api/generate",
                {
                    "model": f"m{char}",
                    "prompt": "x",
                    "stream": False,
                    "options": {"num_predict": 2},
                },
            )
            assert body["response"] == char * 2
            assert len(d.ps()) == 1


def test_host_header_not_loopback_is_refused(daemon: DaemonThread) -> None:
    status, _, body = request(
        daemon.base_url, "GET", "/api/tags", headers={"Host": "evil.example:11435"}
    )
    assert status == 403 and b"not allowed" in body


def test_cross_origin_requests_are_refused_unless_configured(tmp_path: Path) -> None:
    with running_daemon(tmp_path) as d:
        status, _, _ = request(
            d.base_url, "GET", "/api/tags", headers={"Origin": "http://evil.example"}
        )
        assert status == 403
    with running_daemon(tmp_path, origins=("http://app.local",)) as d:
        status, headers, _ = request(
            d.base_url, "GET", "/api/tags", headers={"Origin": "http://app.local"}
        )
        assert status == 200
        assert headers["Access-Control-Allow-Origin"] == "http://app.local"


def test_api_key_is_required_when_configured(tmp_path: Path) -> None:
    with running_daemon(tmp_path, api_key="s3cret") as d:
        status, _, _ = request(d.base_url, "GET", "/api/tags")
        assert status == 401
        status, _, _ = request(
            d.base_url, "GET", "/api/tags", headers={"Authorization": "Bearer s3cret"}
        )
        assert status == 200


def test_oversized_json_body_is_413(tmp_path: Path) -> None:
    with running_daemon(tmp_path, max_body_bytes=1000) as d:
        status, _, body = request(
            d.base_url, "POST", "/api/generate", {"model": "x", "prompt": "p" * 5000}
        )
        assert status == 413 and b"too large" in body


def test_openapi_describes_every_registered_route(daemon: DaemonThread) -> None:
    _status, _, data = request(daemon.base_url, "GET", "/openapi.json")
    document = json.loads(data)
    app = daemon.daemon.build_app()
    for resource_route in app.router.routes():
        info = resource_route.resource.get_info() if resource_route.resource else {}
        path = info.get("path") or info.get("formatter")
        assert path in document["paths"], path
        assert resource_route.method.lower() in document["paths"][path]


def test_version_and_root(daemon: DaemonThread) -> None:
    status, _, data = request(daemon.base_url, "GET", "/api/version")
    assert status == 200 and json.loads(data)["version"]
    status, _, data = request(daemon.base_url, "GET", "/")
    assert data == b"localserve is running"
    status, _, data = request(daemon.base_url, "HEAD", "/")
    assert status == 200


def test_ps_and_tags_show_the_same_model_id(daemon: DaemonThread) -> None:
    post_json(daemon.base_url, "/api/generate", {"model": "tiny"})
    _, _, tags = request(daemon.base_url, "GET", "/api/tags")
    _, _, ps = request(daemon.base_url, "GET", "/api/ps")
    assert json.loads(ps)["models"][0]["digest"] == json.loads(tags)["models"][0]["digest"]


def test_per_model_num_parallel_gives_slots_shown_in_ps(tmp_path: Path) -> None:
    with running_daemon(tmp_path, default_num_ctx=32768) as d:
        _long_model(tmp_path, d)
        d.add_model("wide", tmp_path / "long.gguf", parameters={"num_parallel": 3})
        long_body = {"model": "wide", "prompt": "x", "options": {"num_predict": 30000}}
        streams = [_stream_lines(d.base_url, "/api/generate", long_body) for _ in range(2)]
        for _, response in streams:
            assert json.loads(response.readline())["response"] == "l"
        _, _, data = request(d.base_url, "GET", "/api/ps")
        (row,) = json.loads(data)["models"]
        assert row["slots"] == 3 and row["slots_busy"] == 2 and row["queue_depth"] == 0
        for conn, _ in streams:
            conn.close()
