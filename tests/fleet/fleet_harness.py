"""Harness for fleet tests and the fleet benchmark: localserve nodes as real daemon
processes on loopback (each with its own store), and a real LiteLLM proxy in front.

LiteLLM comes from PyPI, into its own virtual environment (`.venv-litellm` at the repo
root, reused when present): `litellm[proxy]` pins packages (rich, among others) at
versions that do not match this project's, so it cannot live in `.venv`. When it cannot
be installed, `litellm_executable()` raises `LiteLLMUnavailable`; tests skip on it
unless `CI` is set (CI has the package registry, so there it is a failure).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
LITELLM_VENV = ROOT / ".venv-litellm"
LITELLM_SPEC = "litellm[proxy]"
NODE_KEY = "fleet-node-key"
KEY_ENV = "LOCALSERVE_FLEET_TEST_KEY"  # the proxy's variable with the nodes' key
MASTER_KEY = "sk-fleet-test-master-key"  # the proxy's own (LITELLM_MASTER_KEY)


class LiteLLMUnavailable(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def litellm_executable(timeout_s: float = 600) -> Path:
    """`.venv-litellm/bin/litellm`, installing it first when missing."""
    executable = LITELLM_VENV / "bin" / "litellm"
    if executable.exists():
        return executable
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", str(LITELLM_VENV)],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "-q", LITELLM_SPEC],
            check=True,
            capture_output=True,
            timeout=timeout_s,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        output = getattr(exc, "stderr", b"") or b""
        raise LiteLLMUnavailable(
            f"cannot install {LITELLM_SPEC} into {LITELLM_VENV}: {exc}\n{output[-2000:]!r}"
        ) from exc
    if not executable.exists():
        raise LiteLLMUnavailable(f"{executable} missing after the install")
    return executable


def get_json(url: str, timeout: float = 10, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def post_json(
    url: str, body: Any, timeout: float = 120, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    data = json.dumps(body).encode()
    request = urllib.request.Request(
        url, data, {"Content-Type": "application/json", **(headers or {})}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text.decode(errors="replace")
        return exc.code, dict(exc.headers), parsed


def answering(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except (OSError, urllib.error.URLError):
        return False


def wait_for(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(interval)


@dataclass
class NodeProcess:
    """One `python -m localserve` on loopback with its own store under `base`."""

    base: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {NODE_KEY}"}

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            "LOCALSERVE_HOST": f"127.0.0.1:{self.port}",
            "LOCALSERVE_MODELS": str(self.base / "models"),
            "LOCALSERVE_STATE_DIR": str(self.base / "state"),
            "LOCALSERVE_CONFIG": str(self.base / "none.toml"),
            "LOCALSERVE_NUM_THREADS": "1",
            "LOCALSERVE_SPARE_RUNNER": "0",
            "LOCALSERVE_KEEP_ALIVE": "-1",
            "LOCALSERVE_API_KEY": NODE_KEY,
            **self.extra_env,
        }

    def start(self, timeout: float = 60) -> NodeProcess:
        self.base.mkdir(parents=True, exist_ok=True)
        log = (self.base / "node.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "localserve"],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_for(lambda: self._alive() and answering(self.url + "/"), timeout, f"node {self.url}")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"node {self.url} exited: {self.log()[-3000:]}")
        return True

    def log(self) -> str:
        path = self.base / "node.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self) -> None:
        """SIGKILL the daemon and its runners (a machine that dies)."""
        import psutil

        if self.process is None or self.process.poll() is not None:
            return
        children = psutil.Process(self.process.pid).children(recursive=True)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()
        psutil.wait_procs(children, timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.kill()

    def metrics(self) -> str:
        request = urllib.request.Request(self.url + "/metrics", headers=self.headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return str(response.read().decode())

    def served(self, endpoint: str = "v1/chat/completions") -> float:
        """Requests this node answered (localserve_requests_total, status ok)."""
        total = 0.0
        for line in self.metrics().splitlines():
            wanted = not endpoint or f'endpoint="{endpoint}"' in line
            if line.startswith("localserve_requests_total{") and 'status="ok"' in line and wanted:
                total += float(line.rsplit(" ", 1)[1])
        return total


def add_tiny_model(node: NodeProcess, answer: str, name: str = "tiny") -> None:
    """A tiny GGUF in the node's store that always answers `answer` (so the answer says
    which node served it), with room for long generations."""
    from gguf_factory import write_tiny_gguf

    from localserve.names import ModelName
    from localserve.store.store import Store

    store = Store(node.base / "models")
    path = write_tiny_gguf(node.base / f"{name}.gguf", answer, context_length=4096)
    store.create_model(ModelName.parse(name), store.import_file(path))


@dataclass
class Proxy:
    """`litellm --config` on loopback."""

    executable: Path
    config: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 180) -> Proxy:
        env = {
            **os.environ,
            KEY_ENV: NODE_KEY,
            "LITELLM_MASTER_KEY": MASTER_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download at start-up
            "LITELLM_TELEMETRY": "False",
            "NO_DOCS": "True",
        }
        env.pop("PYTHONPATH", None)
        log = (self.config.parent / "litellm.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(self.executable),
                "--config",
                str(self.config),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--num_workers",
                "1",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.config.parent,
        )
        log.close()

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"litellm exited: {self.log()[-4000:]}")
            return answering(self.url + "/health/liveliness")

        wait_for(up, timeout, "the LiteLLM proxy answering", interval=0.5)
        return self

    def log(self) -> str:
        path = self.config.parent / "litellm.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def chat(
        self, content: str, max_tokens: int, *, model: str = "tiny", timeout: float = 120
    ) -> tuple[int, dict[str, str], Any]:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
        }
        return post_json(
            self.url + "/v1/chat/completions",
            body,
            timeout=timeout,
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        )


def write_proxy_config(
    nodes: list[NodeProcess], path: Path, strategy: str = "simple-shuffle", **options: Any
) -> Path:
    """The config `localserve fleet config` writes (the same code), asked of the nodes."""
    from localserve.fleet.litellm_config import FleetOptions, build_config, discover, render_yaml

    previous = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = NODE_KEY
    try:
        found = asyncio.run(discover([n.url for n in nodes], [KEY_ENV]))
    finally:
        if previous is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = previous
    config = build_config(found, FleetOptions(strategy=strategy, **options))
    path.write_text(render_yaml(config, "fleet test"))
    return path
