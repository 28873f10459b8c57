"""Fixtures for the CLI tests: a real daemon (`localserve serve` in a subprocess)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from cli_harness import CliDaemon, child_env, cli_env, free_port, wait_until_answering


@pytest.fixture(scope="module")
def cli_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliDaemon]:
    """`python -m localserve.cli.app serve` on a free loopback port, for a whole module."""
    pytest.importorskip("localserve.server")
    base = tmp_path_factory.mktemp("daemon")
    port = free_port()
    env = cli_env(base, port)
    log = base / "serve.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "localserve.cli.app", "serve"],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=child_env(env),
        )
    try:
        wait_until_answering(f"http://127.0.0.1:{port}", process, timeout=60)
        yield CliDaemon(env=env, base_url=f"http://127.0.0.1:{port}", log=log)
    except RuntimeError as exc:
        pytest.fail(f"{exc}; log:\n{log.read_text()}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
