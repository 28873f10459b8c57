"""Helpers for the CLI tests: free ports, the LOCALSERVE_* environment of a test daemon,
and a handle on a running `localserve serve` for CliRunner invocations."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from eventually import eventually
from typer.testing import CliRunner, Result

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cli_env(base: Path, port: int, **extra: str) -> dict[str, str]:
    """LOCALSERVE_* for a daemon whose store and state live under `base`."""
    return {
        "LOCALSERVE_HOST": f"127.0.0.1:{port}",
        "LOCALSERVE_MODELS": str(base / "models"),
        "LOCALSERVE_STATE_DIR": str(base / "state"),
        "LOCALSERVE_CONFIG": str(base / "absent-config.toml"),
        "LOCALSERVE_SPARE_RUNNER": "0",
        "LOCALSERVE_NUM_THREADS": "1",
        "LOCALSERVE_API_KEY": "",
        **extra,
    }


def child_env(env: dict[str, str]) -> dict[str, str]:
    full = {**os.environ, **env}
    full["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), full.get("PYTHONPATH")) if p)
    return full


def wait_until_answering(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    """Return once `url` answers /api/version; RuntimeError when the process exits first
    or nothing answers within `timeout`."""

    def answering() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/api/version", timeout=1):
                return True
        except OSError:
            return False

    try:
        eventually(answering, timeout, interval=0.1, what=f"the daemon answering at {url}")
    except AssertionError as exc:
        raise RuntimeError(f"daemon did not answer: {exc}") from None


@dataclass
class CliDaemon:
    """A running `localserve serve` and the environment that points the CLI at it."""

    env: dict[str, str]
    base_url: str
    log: Path

    def invoke(self, *args: str, input: str | None = None, **extra_env: str) -> Result:
        from localserve.cli.app import app

        runner = CliRunner()
        return runner.invoke(app, list(args), input=input, env={**self.env, **extra_env})


@contextlib.contextmanager
def serving(
    base: Path,
    command: list[str] | None = None,
    daemon_env: dict[str, str] | None = None,
    **extra: str,
) -> Iterator[CliDaemon]:
    """A daemon (`localserve serve`, or `command`) on a free port with its store under
    `base`; `extra` goes to the daemon and the CLI, `daemon_env` to the daemon only.
    Raises RuntimeError, with the log, when it does not come up."""
    port = free_port()
    env = cli_env(base, port, **extra)
    log = base / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            command or [sys.executable, "-m", "localserve.cli.app", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**child_env(env), **(daemon_env or {})},
        )
    try:
        try:
            wait_until_answering(f"http://127.0.0.1:{port}", process, timeout=60)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; log:\n{log.read_text()}") from exc
        yield CliDaemon(env=env, base_url=f"http://127.0.0.1:{port}", log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
