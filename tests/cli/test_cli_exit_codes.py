"""Errors map to stable, documented exit codes with messages a user can act on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cli_harness import serving

from localserve.client import background
from localserve.client.http import (
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
from localserve.cli.app import error_message, exit_code_for


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (BadRequestAPIError(400, "bad"), 2),
        (APIError(413, "too large"), 2),
        (DaemonUnreachableError("http://127.0.0.1:1", "refused"), 3),
        (background.DaemonNotRunningError("http://127.0.0.1:1"), 3),
        (background.DaemonStartError("exited", Path("/x.log"), "boom"), 3),
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


def test_a_model_too_large_for_the_memory_budget_says_what_to_try() -> None:
    exc = APIError(
        507,
        "model x:latest needs about 900 MiB of RAM but the memory budget is 500 MiB",
        code="model_too_large",
    )
    message = error_message(exc, "x")
    assert message.startswith("model x:latest needs about 900 MiB")
    assert "memory budget" in message.splitlines()[1]
    assert "smaller quantization" in message and "LOCALSERVE_MAX_RAM" in message
    assert exit_code_for(exc) == 1


def test_a_full_disk_says_the_disk_of_the_model_store_is_full() -> None:
    for exc in (
        APIError(507, "disk full: not enough space in the model store", code="disk_full"),
        StreamAPIError(500, "disk full: not enough space in the model store", code="disk_full"),
    ):
        message = error_message(exc)
        assert "disk holding the daemon's model store" in message
        assert "memory budget" not in message
        assert exit_code_for(exc) == 1


def test_a_507_without_a_code_is_the_daemons_message() -> None:
    assert error_message(APIError(507, "insufficient storage")) == "insufficient storage"


def test_the_daemons_model_too_large_reaches_the_user(
    tmp_path: Path, tiny_model: Callable[..., Path]
) -> None:
    pytest.importorskip("localserve.api.app")
    with serving(tmp_path, LOCALSERVE_MAX_RAM="1M") as daemon:
        assert daemon.invoke("create", "big", "-f", str(tiny_model("b"))).exit_code == 0
        result = daemon.invoke("run", "big", "hi")
    assert result.exit_code == 1, result.output
    assert "does not fit in the daemon's memory budget" in result.stderr
    assert "LOCALSERVE_MAX_RAM" in result.stderr
