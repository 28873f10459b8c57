"""Fixtures for the CLI tests: a real daemon (`localserve serve` in a subprocess)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from cli_harness import CliDaemon, serving


@pytest.fixture(scope="module")
def cli_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliDaemon]:
    """`python -m localserve.cli.app serve` on a free loopback port, for a whole module."""
    pytest.importorskip("localserve.api.app")
    try:
        with serving(tmp_path_factory.mktemp("daemon")) as daemon:
            yield daemon
    except RuntimeError as exc:
        pytest.fail(str(exc))
