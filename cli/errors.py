"""How the CLI fails: the documented exit codes (table in `localserve.cli.app`), the
message a user reads for each error, and the context manager that turns one into the
other."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from enum import IntEnum
from typing import NoReturn

import typer

from localserve.client import background
from localserve.client.http import (
    APIError,
    BadRequestAPIError,
    BusyAPIError,
    ClientError,
    DaemonUnreachableError,
    ModelNotFoundAPIError,
)
from localserve.errors import ConfigError, LocalserveError


class ReplError(ValueError):
    """A command the REPL cannot carry out; the message is shown to the user."""


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1
    USAGE = 2
    UNREACHABLE = 3
    NOT_FOUND = 4
    BUSY = 5
    INTERRUPTED = 130


EXIT_CODES: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "any other error (server error, error inside a stream, bug)",
    ExitCode.USAGE: "bad input or usage (invalid option or value, missing file, HTTP 400/413)",
    ExitCode.UNREACHABLE: (
        "the daemon is unreachable or could not be started, or the connection was lost "
        "and the operation did not finish"
    ),
    ExitCode.NOT_FOUND: "model not found (HTTP 404)",
    ExitCode.BUSY: "the daemon is busy (HTTP 503)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

NO_AUTOSTART_ENV = "LOCALSERVE_NO_AUTOSTART"

# The daemon's machine-readable codes of its two 507s, and what the user can do about each.
MODEL_TOO_LARGE = "model_too_large"
DISK_FULL = "disk_full"
ADVICE: dict[str, str] = {
    MODEL_TOO_LARGE: (
        "The model does not fit in the daemon's memory budget: try a smaller quantization "
        "(e.g. a :Q4_K_M tag or below) or a smaller num_ctx, or raise the budget "
        "(LOCALSERVE_MAX_RAM, or a smaller LOCALSERVE_RAM_RESERVE)."
    ),
    DISK_FULL: (
        "The disk holding the daemon's model store (LOCALSERVE_MODELS) is full: free some "
        "space (e.g. `localserve rm` models you no longer need) and try again; "
        "a pull resumes where it stopped."
    ),
}


def error_code(exc: BaseException) -> str | None:
    """The daemon's machine-readable code of an API error ("disk_full", ...), if any."""
    code = getattr(exc, "code", None)
    return code if isinstance(code, str) else None


def exit_code_for(exc: BaseException) -> ExitCode:
    """The documented exit code of an exception raised while running a command."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, DaemonUnreachableError | background.DaemonNotRunningError):
        return ExitCode.UNREACHABLE
    if isinstance(exc, background.DaemonStartError):
        return ExitCode.UNREACHABLE
    if isinstance(exc, ModelNotFoundAPIError):
        return ExitCode.NOT_FOUND
    if isinstance(exc, BusyAPIError):
        return ExitCode.BUSY
    if isinstance(exc, BadRequestAPIError):
        return ExitCode.USAGE
    if isinstance(exc, APIError):
        if exc.status in (400, 413, 422):
            return ExitCode.USAGE
        if exc.status == 404:
            return ExitCode.NOT_FOUND
        if exc.status == 503:
            return ExitCode.BUSY
        return ExitCode.ERROR
    if isinstance(exc, ConfigError | ReplError | FileNotFoundError | IsADirectoryError):
        return ExitCode.USAGE
    return ExitCode.ERROR


def error_message(exc: BaseException, model: str | None = None) -> str:
    """What the user reads for an exception (without the "Error: " prefix)."""
    if isinstance(exc, DaemonUnreachableError):
        return (
            f"could not connect to the localserve daemon at {exc.base_url}. "
            "Start it with `localserve daemon start` (or `localserve serve`)."
        )
    if isinstance(exc, background.DaemonNotRunningError):
        return (
            f"could not connect to the localserve daemon at {exc.base_url} "
            f"(not starting one: {NO_AUTOSTART_ENV} is set, or the address is not local). "
            "Start it with `localserve daemon start` (or `localserve serve`)."
        )
    if isinstance(exc, ModelNotFoundAPIError | APIError) and exit_code_for(exc) == 4:
        text = str(exc) or "model not found"
        if model:
            text += f"\nTry: localserve pull {model}"
        return text
    if isinstance(exc, BusyAPIError):
        text = f"the daemon is busy: {exc}"
        if exc.retry_after:
            text += f" (retry after {exc.retry_after:g}s)"
        return text
    if isinstance(exc, APIError) and exc.status in (401, 403):
        return f"{exc} (set LOCALSERVE_API_KEY to the daemon's API key)"
    if isinstance(exc, APIError) and error_code(exc) in ADVICE:
        return f"{exc}\n{ADVICE[str(error_code(exc))]}"
    if isinstance(exc, FileNotFoundError | IsADirectoryError) and exc.filename:
        return f"no such file: {exc.filename}"
    return str(exc) or type(exc).__name__


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> NoReturn:
    """Print `Error: message` on stderr and exit with `code`."""
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(int(code))


@contextlib.contextmanager
def cli_errors(model: str | None = None) -> Iterator[None]:
    """Turn the errors of a command into a message on stderr and its exit code."""
    try:
        yield
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        typer.echo("", err=True)
        raise typer.Exit(int(ExitCode.INTERRUPTED)) from None
    except (
        ClientError,
        LocalserveError,
        ReplError,
        FileNotFoundError,
        IsADirectoryError,
    ) as exc:
        fail(error_message(exc, model), exit_code_for(exc))
