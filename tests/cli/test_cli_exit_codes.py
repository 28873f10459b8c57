"""Errors map to stable, documented exit codes with messages a user can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from localserve import daemon
from localserve.client import (
    APIError,
    BadRequestAPIError,
    BusyAPIError,
    DaemonUnreachableError,
    ModelNotFoundAPIError,
    StreamAPIError,
)
from localserve.errors import ConfigError

# isort: split
from localserve.cli import app as cli
from localserve.cli.app import ExitCode, error_message, exit_code_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BadRequestAPIError(400, "bad"), 2),
        (APIError(413, "too large"), 2),
        (DaemonUnreachableError("http://127.0.0.1:1", "refused"), 3),
        (daemon.DaemonNotRunningError("http://127.0.0.1:1"), 3),
        (daemon.DaemonStartError("exited", Path("/x.log"), "boom"), 3),
        (ModelNotFoundAPIError(404, "model 'x' not found"), 4),
        (BusyAPIError(503, "queue full", 2.0), 5),
        (APIError(500, "bug"), 1),
        (StreamAPIError(500, "runner crashed"), 1),
        (ConfigError("bad host"), 2),
        (FileNotFoundError(2, "missing", "x.gguf"), 2),
        (KeyboardInterrupt(), 130),
        (RuntimeError("?"), 1),
    ],
)
def test_exit_code_for_each_error(exc: BaseException, code: int) -> None:
    assert exit_code_for(exc) == code


def test_exit_code_table_is_documented() -> None:
    assert {int(c) for c in cli.EXIT_CODES} == {0, 1, 2, 3, 4, 5, 130}
    doc = cli.__doc__ or ""
    for code in cli.EXIT_CODES:
        assert f"    {int(code):<5}" in doc


def test_not_found_suggests_pull() -> None:
    message = error_message(ModelNotFoundAPIError(404, "model 'x:latest' not found"), "x")
    assert "localserve pull x" in message


def test_unreachable_says_how_to_start_the_daemon() -> None:
    message = error_message(DaemonUnreachableError("http://127.0.0.1:9", "refused"))
    assert "http://127.0.0.1:9" in message and "localserve daemon start" in message


def test_busy_mentions_retry_after() -> None:
    assert "retry after 2s" in error_message(BusyAPIError(503, "queue full", 2.0))


def test_unauthorized_points_at_the_api_key() -> None:
    assert "LOCALSERVE_API_KEY" in error_message(APIError(401, "missing bearer token"))


def test_exit_codes_are_ints_for_shells() -> None:
    assert int(ExitCode.INTERRUPTED) == 130 and int(ExitCode.BUSY) == 5
