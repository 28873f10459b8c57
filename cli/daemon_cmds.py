"""Running the daemon: `localserve serve` (foreground) and `localserve daemon
start|stop|status|drain` (background, with a pidfile and a log in the state dir).

`daemon drain` is the rolling-upgrade stop (issue 15): the daemon refuses new inference
requests with 503 + Retry-After (a router such as LiteLLM moves them to another node),
finishes the ones in flight, then exits; past `--timeout` it exits anyway, cancelling
what still runs."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from localserve.client import background
from localserve.client.http import ClientError
from localserve.config import Settings
from localserve.errors import ConfigError

# isort: split
from localserve.cli.common import JsonFlag, get_settings, make_client, print_json, spinner
from localserve.cli.errors import ExitCode, cli_errors, fail

daemon_app = typer.Typer(help="Run the daemon in the background: start, stop, status.")


def serve() -> None:
    """Run the daemon in the foreground (for service managers; Ctrl-C stops it)."""
    settings = get_settings()
    try:
        settings = settings.validate()
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    from localserve.api.app import serve as run_server

    with cli_errors():
        code = run_server(settings)
    raise typer.Exit(code)


@daemon_app.command("start")
def daemon_start(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the daemon to answer.")
    ] = background.START_TIMEOUT_S,
) -> None:
    """Start the daemon in the background (pidfile and log in the state dir)."""
    settings = get_settings()
    with cli_errors():
        settings.validate()
        if background.is_answering(settings):
            pid = background.managed_pid(settings)
            where = f" (pid {pid})" if pid else ""
            typer.echo(f"localserve daemon already running at {settings.base_url}{where}")
            return
        with spinner("starting localserve daemon..."):
            pid = background.start_background(settings, timeout=timeout)
    typer.echo(
        f"started localserve daemon (pid {pid}) at {settings.base_url}\n"
        f"log: {background.log_path(settings)}"
    )


@daemon_app.command("stop")
def daemon_stop(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = background.STOP_TIMEOUT_S,
) -> None:
    """Stop the background daemon (SIGTERM, then SIGKILL after the timeout)."""
    settings = get_settings()
    pid = background.managed_pid(settings)
    with cli_errors(), spinner("stopping localserve daemon..."):
        stopped = background.stop(settings, timeout=timeout)
    if stopped:
        typer.echo(f"stopped localserve daemon (pid {pid})")
    else:
        typer.echo("localserve daemon is not running")


@daemon_app.command("status")
def daemon_status(json_: JsonFlag = False) -> None:
    """Show whether the daemon runs and answers; exit 0 when it does, 3 when not."""
    settings = get_settings()
    with cli_errors():
        state = background.status(settings)
    node_state = _node_state(settings) if state.answering else None
    if json_:
        print_json({**state.to_dict(), "state": node_state})
    else:
        if state.answering and state.pid:
            line = f"running (pid {state.pid})"
        elif state.answering:
            line = "running (not started by `localserve daemon start`)"
        if state.answering and node_state not in (None, "serving"):
            line += f", {node_state}: refusing new inference requests"
        elif state.pid:
            line = f"not answering (pid {state.pid} is alive)"
        else:
            line = "not running"
        rows = [
            ("localserve daemon:", line),
            ("address:", state.base_url),
            ("version:", state.version or "-"),
            ("pidfile:", str(state.pidfile) + (" (stale)" if state.stale_pidfile else "")),
            ("log:", str(state.log_path)),
        ]
        for key, value in rows:
            typer.echo(f"{key:<19}{value}")
    raise typer.Exit(int(ExitCode.OK if state.answering else ExitCode.UNREACHABLE))


def _node_state(settings: Settings) -> str | None:
    """The daemon's drain state from /health; None when it does not say (an old daemon)."""

    async def ask() -> Any:
        async with make_client(settings, timeout=5) as client:
            return (await client.health()).get("state")

    try:
        value = asyncio.run(ask())
    except ClientError:
        return None
    return value if isinstance(value, str) else None


DRAIN_TIMEOUT_S = 300.0
EXIT_GRACE_S = 15.0  # after the drain timeout: the daemon's own stop (runners, sockets)


@daemon_app.command("drain")
def daemon_drain(
    timeout: Annotated[
        float,
        typer.Option(
            min=0,
            max=86400,
            help="Seconds in-flight requests may take; then the daemon exits anyway, "
            "cancelling them.",
        ),
    ] = DRAIN_TIMEOUT_S,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait until the daemon has exited.")
    ] = True,
    json_: JsonFlag = False,
) -> None:
    """Drain the daemon: refuse new inference (503 + Retry-After), finish in-flight
    requests, then exit (for rolling upgrades behind a router such as LiteLLM)."""
    settings = get_settings()

    async def start() -> dict[str, Any]:
        async with make_client(settings, timeout=30) as client:
            return await client.drain(timeout)

    with cli_errors():
        answer = asyncio.run(start())
    if json_ and not wait:
        print_json(answer)
        return
    if not json_:
        typer.echo(
            f"draining localserve daemon at {settings.base_url}: "
            f"{answer.get('in_flight', 0)} requests in flight, timeout {timeout:g}s"
        )
    if not wait:
        return
    with spinner("waiting for in-flight requests..."):
        exited = _wait_until_gone(settings, timeout + EXIT_GRACE_S)
    if json_:
        print_json({**answer, "exited": exited})
    elif exited:
        typer.echo("drained: the daemon has exited")
    if not exited:
        fail(
            f"the daemon still answers {timeout + EXIT_GRACE_S:g}s after the drain began",
            ExitCode.ERROR,
        )


def _wait_until_gone(settings: Settings, timeout_s: float) -> bool:
    """Poll until nothing answers at the daemon's address (bounded by `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not background.is_answering(settings, timeout=2):
            return True
        time.sleep(0.2)
    return False
