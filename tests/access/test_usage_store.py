"""The usage database: kept across a kill -9 of the daemon (a real `python -m localserve`
process), and a corrupt file moved aside at start-up without stopping the daemon."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil
from eventually import eventually
from gguf_factory import write_tiny_gguf

from localserve.access.keys import KeyStore
from localserve.access.usage import FILE_NAME, UsageRecord, UsageStore
from localserve.names import ModelName
from localserve.store.store import Store


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get(base: str, path: str, secret: str | None = None, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def _answering(base: str) -> bool:
    try:
        _get(base, "/api/version")
    except OSError:
        return False
    return True


def _start(tmp_path: Path, env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    daemon_env = {
        **env,
        "LOCALSERVE_HOST": f"127.0.0.1:{port}",
        "LOCALSERVE_MODELS": str(tmp_path / "models"),
        "LOCALSERVE_STATE_DIR": str(tmp_path / "state"),
        "LOCALSERVE_CONFIG": str(tmp_path / "none.toml"),
        "LOCALSERVE_KEYS_FILE": str(tmp_path / "keys.json"),
        "LOCALSERVE_NUM_THREADS": "1",
        "LOCALSERVE_SPARE_RUNNER": "0",
        "LOCALSERVE_API_KEY": "",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "localserve"],
        env=daemon_env,
        stdout=subprocess.DEVNULL,
        stderr=(tmp_path / f"daemon-{port}.log").open("wb"),
    )
    eventually(lambda: _answering(f"http://127.0.0.1:{port}"), 60, what="the daemon answering")
    return process


def test_usage_survives_a_kill_9_of_the_daemon(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    store = Store(tmp_path / "models")
    store.create_model(
        ModelName.parse("tiny"), store.import_file(write_tiny_gguf(tmp_path / "t.gguf"))
    )
    _, secret = KeyStore(tmp_path / "keys.json").add("chat")
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    daemon = _start(tmp_path, subprocess_env, port)
    generated = 0
    try:
        for n in (2, 3):
            body = {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": n}}
            generated += _get(base, "/api/generate", secret, body)["eval_count"]
        runners = psutil.Process(daemon.pid).children(recursive=True)
        daemon.send_signal(signal.SIGKILL)
        daemon.wait(30)
        for runner in runners:  # the killed daemon's own runners, left behind
            with contextlib.suppress(psutil.NoSuchProcess):
                runner.kill()
        port = _free_port()
        base = f"http://127.0.0.1:{port}"
        daemon = _start(tmp_path, subprocess_env, port)
        (row,) = _get(base, "/api/usage", secret)["usage"]
        assert row["key"] == "chat" and row["requests"] == 2
        assert row["generated_tokens"] == generated == 5
    finally:
        daemon.kill()
        daemon.wait(30)


def test_a_corrupt_usage_file_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b"this is not a database" * 100)
    usage = UsageStore(tmp_path)
    usage.open()
    assert usage.notice is not None and "moved it to" in usage.notice
    assert [p.name for p in tmp_path.glob(FILE_NAME + ".corrupt-*")]
    usage.record_now(UsageRecord("k", "m", prompt_tokens=3, generated_tokens=4))
    (row,) = usage.summary_now()
    assert (row["requests"], row["prompt_tokens"], row["generated_tokens"]) == (1, 3, 4)
    usage.close()
    reopened = UsageStore(tmp_path)
    reopened.open()
    assert reopened.notice is None and reopened.summary_now()[0]["requests"] == 1


def test_a_daemon_with_a_corrupt_usage_file_starts_and_says_so(tmp_path: Path) -> None:
    from daemon_harness import running_daemon

    (tmp_path / "state").mkdir()
    (tmp_path / "state" / FILE_NAME).write_bytes(b"\x00garbage" * 512)
    with running_daemon(tmp_path, keys_file=tmp_path / "keys.json") as daemon:
        answer = _get(daemon.base_url, "/api/usage")
        assert answer["usage"] == [] and "unreadable" in answer["notice"]


def test_rate_limited_requests_are_counted_apart_and_since_filters(tmp_path: Path) -> None:
    usage = UsageStore(tmp_path)
    usage.open()
    usage.record_now(UsageRecord("k", "m", generated_tokens=2, at=1_000_000.0))
    usage.record_now(UsageRecord("k", "m", generated_tokens=5))
    usage.record_now(UsageRecord("k", "m", rate_limited=True))
    (row,) = usage.summary_now(since=2_000_000.0)
    assert (row["requests"], row["rate_limited"], row["generated_tokens"]) == (1, 1, 5)
    assert usage.summary_now(key="other") == []
    usage.close()


def test_usage_with_a_bad_since_is_a_400(tmp_path: Path) -> None:
    from daemon_harness import running_daemon

    with running_daemon(tmp_path, keys_file=tmp_path / "keys.json") as daemon:
        try:
            _get(daemon.base_url, "/api/usage?since=soon")
        except urllib.error.HTTPError as exc:
            assert exc.code == 400 and b"since" in exc.read()
        else:
            raise AssertionError("expected a 400")
