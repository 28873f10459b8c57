"""The daemon as a process: SIGTERM/SIGINT stop it gracefully, with its runners."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest
from eventually import eventually
from gguf_factory import write_tiny_gguf
from test_server_faults import answering

from localserve.names import ModelName
from localserve.store.store import Store


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_the_daemon_and_its_runners(tmp_path: Path, signum: int) -> None:
    store = Store(tmp_path / "models")
    digest = store.import_file(write_tiny_gguf(tmp_path / "t.gguf", "t"))
    store.create_model(ModelName.parse("tiny"), digest)
    port = _free_port()
    env = {
        **os.environ,
        "LOCALSERVE_HOST": f"127.0.0.1:{port}",
        "LOCALSERVE_MODELS": str(tmp_path / "models"),
        "LOCALSERVE_CONFIG": str(tmp_path / "none.toml"),
        "LOCALSERVE_NUM_THREADS": "1",
    }
    daemon = subprocess.Popen([sys.executable, "-m", "localserve"], env=env, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        eventually(lambda: answering(base), 30, interval=0.05, what="the daemon answering")
        body = json.dumps(
            {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 2}}
        ).encode()
        with urllib.request.urlopen(base + "/api/generate", body, timeout=60) as response:
            assert json.loads(response.read())["response"] == "tt"
        children = psutil.Process(daemon.pid).children(recursive=True)
        assert children, "a runner process should be running"
        daemon.send_signal(signum)
        assert daemon.wait(20) == 0
        _, alive = psutil.wait_procs(children, timeout=10)
        assert alive == []
        assert b"shutting down" in (daemon.stderr.read() if daemon.stderr else b"")
    finally:
        if daemon.poll() is None:
            daemon.kill()
