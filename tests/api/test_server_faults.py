"""Faults through a real daemon: every error is JSON in the dialect's shape (templates that
try to include files or build huge values, unexpected exceptions, huge declared bodies),
507's two meanings are told apart, a bind failure undoes the start, a second signal exits
at once, and uploads interrupted by a killed daemon leave nothing behind."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from daemon_harness import DaemonThread, make_settings, running_daemon
from eventually import eventually
from gguf_factory import write_tiny_gguf
from test_server_api import post_json, request

from localserve.api.app import Daemon
from localserve.names import ModelName
from localserve.store.store import Store

HOSTILE_TEMPLATES = {
    "include": "{% include 'etc/passwd' %}",
    "import": "{% import 'macros.j2' as m %}{{ m.x() }}",
    "from_import": "{% from 'x.j2' import y %}{{ y }}",
    "huge_range": "{% for i in range(10**9) %}x{% endfor %}",
    "huge_repeat": "{{ 'a' * 1000000000 }}",
    "huge_power": "{{ 10 ** 100000000 }}",
    "recursion": "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "division": "{{ 1 / 0 }}",
}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path) as running:
        path = write_tiny_gguf(tmp_path / "a.gguf", "a")
        running.add_model("tiny", path)
        for name, template in HOSTILE_TEMPLATES.items():
            running.add_model(f"hostile-{name.replace('_', '-')}", path, template=template)
        yield running


@pytest.mark.parametrize("name", sorted(HOSTILE_TEMPLATES))
def test_a_hostile_chat_template_is_a_json_400_in_every_dialect(
    daemon: DaemonThread, name: str
) -> None:
    model = f"hostile-{name.replace('_', '-')}"
    messages = [{"role": "user", "content": "hi"}]
    status, body = post_json(daemon.base_url, "/api/chat", {"model": model, "messages": messages})
    assert status == 400 and "chat template" in body["error"] and body["code"] == "bad_request"
    status, body = post_json(daemon.base_url, "/api/generate", {"model": model, "prompt": "hi"})
    assert status == 400 and "chat template" in body["error"]
    status, body = post_json(
        daemon.base_url, "/v1/chat/completions", {"model": model, "messages": messages}
    )
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert "chat template" in body["error"]["message"]


def test_a_template_that_does_not_compile_is_refused_at_create(daemon: DaemonThread) -> None:
    status, body = post_json(
        daemon.base_url,
        "/api/create",
        {"model": "broken", "from": "tiny", "template": "{% for x in %}", "stream": False},
    )
    assert status == 400 and "invalid template" in body["error"]
    status, _ = post_json(daemon.base_url, "/api/show", {"model": "broken"})
    assert status == 404


def test_an_unexpected_exception_is_a_logged_json_500_in_the_dialects_shape(
    daemon: DaemonThread, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> list[Any]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(daemon.store, "list", broken)
    status, headers, data = request(daemon.base_url, "GET", "/api/tags")
    assert status == 500 and headers["Content-Type"].startswith("application/json")
    assert json.loads(data) == {
        "error": "internal error (logged by the daemon)",
        "code": "internal_error",
    }
    status, headers, data = request(daemon.base_url, "GET", "/v1/models")
    assert status == 500 and json.loads(data)["error"]["code"] == "internal_error"
    assert any("unhandled error in GET /api/tags" in r.getMessage() for r in caplog.records)


def test_a_huge_declared_body_is_refused_at_once_with_413(daemon: DaemonThread) -> None:
    with socket.create_connection(("127.0.0.1", daemon.daemon.port), timeout=5) as sock:
        sock.sendall(
            b"POST /api/generate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 107374182400\r\n\r\n{"
        )
        started = time.monotonic()
        answer = sock.recv(65536)
        assert time.monotonic() - started < 3
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["code"] == "body_too_large"


def test_507_tells_model_too_large_from_disk_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_daemon(tmp_path, max_ram_bytes=1024) as daemon:
        daemon.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        _assert_507_codes(daemon, monkeypatch)


def _assert_507_codes(daemon: DaemonThread, monkeypatch: pytest.MonkeyPatch) -> None:
    status, body = post_json(daemon.base_url, "/api/generate", {"model": "tiny", "prompt": "x"})
    assert status == 507 and body["code"] == "model_too_large"
    status, _, data = request(
        daemon.base_url,
        "POST",
        "/v1/chat/completions",
        {"model": "tiny", "messages": [{"role": "user", "content": "x"}]},
    )
    assert status == 507 and json.loads(data)["error"]["code"] == "model_too_large"

    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __enter__(self) -> FullDisk:
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

    monkeypatch.setattr(
        "localserve.store.store.os.fdopen", lambda *a, **k: FullDisk(real_fdopen(*a, **k))
    )
    payload = b"x" * 1000
    digest = "sha256:" + hashlib.sha256(payload).hexdigest()
    status, _, data = request(daemon.base_url, "POST", f"/api/blobs/{digest}", raw=payload)
    assert status == 507 and json.loads(data)["code"] == "disk_full"


def test_a_bind_failure_stops_the_scheduler_and_monitor_it_started(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = Daemon(make_settings(tmp_path, port=port))

        async def start() -> None:
            with pytest.raises(OSError):
                await daemon.start()

        asyncio.run(start())
    assert daemon.scheduler._task is None or daemon.scheduler._task.done()
    assert daemon.scheduler._closed
    assert daemon.monitor._task is None or daemon.monitor._task.done()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def answering(base: str) -> bool:
    try:
        return request(base, "GET", "/api/version")[0] == 200
    except OSError:
        return False


def _start_daemon_process(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "LOCALSERVE_HOST": f"127.0.0.1:{port}",
        "LOCALSERVE_MODELS": str(tmp_path / "models"),
        "LOCALSERVE_CONFIG": str(tmp_path / "none.toml"),
        "LOCALSERVE_NUM_THREADS": "1",
        "LOCALSERVE_SPARE_RUNNER": "0",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "localserve"], env=env, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: answering(base), 30, interval=0.05, what="the daemon answering")
    except AssertionError:
        process.kill()
        raise
    return process, base


class StderrLines:
    """Reads a process's stderr in a thread, so a test can wait for a line and still
    read everything at the end."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stderr is not None
        self._stream = process.stderr
        self._data = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in iter(self._stream.readline, b""):
            with self._lock:
                self._data += line

    def text(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def all(self, timeout: float = 10) -> bytes:
        """Everything, once the process closed its stderr."""
        self._thread.join(timeout)
        return self.text()


def test_a_second_signal_exits_at_once_and_kills_the_runners(tmp_path: Path) -> None:
    store = Store(tmp_path / "models")
    store.create_model(
        ModelName.parse("tiny"), store.import_file(write_tiny_gguf(tmp_path / "t.gguf", "t"))
    )
    process, base = _start_daemon_process(tmp_path)
    try:
        status, _ = post_json(
            base,
            "/api/generate",
            {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 1}},
        )
        assert status == 200
        runners = psutil.Process(process.pid).children(recursive=True)
        assert runners
        for runner in runners:  # a runner that never answers keeps the graceful stop waiting
            runner.suspend()
        stderr = StderrLines(process)
        process.send_signal(signal.SIGINT)
        eventually(lambda: b"shutting down" in stderr.text(), 10, what="the first signal handled")
        assert process.poll() is None, "the graceful shutdown should still be waiting"
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        assert process.wait(5) == 130
        assert time.monotonic() - started < 2
        _, alive = psutil.wait_procs(runners, timeout=5)
        assert alive == []
        assert b"second signal" in stderr.all()
    finally:
        if process.poll() is None:
            process.kill()


def test_uploads_cut_by_a_killed_daemon_leave_no_partial_files(tmp_path: Path) -> None:
    process, base = _start_daemon_process(tmp_path)
    port = int(base.rsplit(":", 1)[1])
    tmp_dir = tmp_path / "models" / "tmp"
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(
            b"POST /api/blobs/sha256:" + b"0" * 64 + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Length: 100000000\r\n\r\n" + b"x" * 4_000_000
        )
        eventually(
            lambda: any(p.suffix == ".part" and p.stat().st_size for p in tmp_dir.iterdir()),
            10,
            what="the upload reaching the store",
        )
        process.kill()
        process.wait(10)
        sock.close()
    finally:
        if process.poll() is None:
            process.kill()
    assert [p for p in tmp_dir.iterdir() if p.suffix == ".part"]
    process, _ = _start_daemon_process(tmp_path)  # start-up collects what nobody owns
    try:
        assert [p.name for p in tmp_dir.iterdir() if p.is_file()] == []
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)


def test_garbage_collection_keeps_a_temp_file_a_live_writer_holds(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    orphan = store.tmp_dir / "orphan.part"
    orphan.write_bytes(b"left by a killed daemon")
    with store.temp_file() as (live, handle):
        handle.write(b"still uploading")
        other = Store(tmp_path / "store")  # as a second daemon on the same store would
        other.collect_garbage()
        assert live.exists() and not orphan.exists()
        with live.open("rb") as reader, pytest.raises(BlockingIOError):
            fcntl.flock(reader.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
