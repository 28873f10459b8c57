"""Routes (served names): `route set|show|list|history|delete`, `rollback`, `rollout`.

    localserve route set assistant qwen2.5:0.5b            one version
    localserve route set assistant a:v1=90 b:v2=10         an A/B split (relative weights)
    localserve route show assistant [--json]               weights and live figures
    localserve route list [--json]
    localserve route history assistant [--json]
    localserve route delete assistant
    localserve rollback assistant [--to N]                 the previous state, or revision N
    localserve rollout assistant --to b:v2 --steps 5,25,50,100 --every 10m \\
        --max-error-rate 2% --max-ttft-p95 1.5x
    localserve rollout status|pause|resume|abort assistant

The daemon checks and parses everything (one parser for the API and the CLI); a 409 (a
rollout in progress, a route changed meanwhile) exits 1 with the daemon's message.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from localserve.client import routes_display as show
from localserve.client.http import LocalserveClient

# isort: split
from localserve.cli import render
from localserve.cli.common import JsonFlag, get_settings, make_client, need_daemon, print_json
from localserve.cli.errors import ExitCode, cli_errors, fail

T = TypeVar("T")

route_app = typer.Typer(
    help="Served names: point a name at versions, A/B splits, history.",
    no_args_is_help=True,
)
RouteArgument = Annotated[str, typer.Argument(help="Route name, e.g. assistant.")]
ReasonOption = Annotated[
    str | None, typer.Option("--reason", "-m", help="Why (kept in the route's history).")
]
ROLLOUT_ACTIONS = ("status", "pause", "resume", "abort")


def _call(action: Callable[[LocalserveClient], Awaitable[T]]) -> T:
    settings = get_settings()
    need_daemon(settings)

    async def main() -> T:
        async with make_client(settings) as client:
            return await action(client)

    with cli_errors():
        return asyncio.run(main())


def parse_target(text: str) -> tuple[str, float]:
    """`model=weight` (weight a number >= 0) or `model` (weight 1)."""
    model, sep, weight = text.rpartition("=")
    if not sep:
        return text, 1.0
    if not model:
        fail(f"invalid target {text!r}: expected MODEL or MODEL=WEIGHT", ExitCode.USAGE)
    try:
        return model, float(weight.rstrip("%"))
    except ValueError:
        fail(f"invalid weight in {text!r}: expected a number, e.g. a:v1=90", ExitCode.USAGE)


def _print_route(route: dict[str, Any]) -> None:
    typer.echo("\n".join(show.route_summary(route)))
    typer.echo("")
    typer.echo(render.format_table(show.VERSION_HEADERS, show.version_rows(route)))


@route_app.command("set")
def set_cmd(
    name: RouteArgument,
    targets: Annotated[
        list[str], typer.Argument(help="MODEL or MODEL=WEIGHT, e.g. a:v1=90 b:v2=10.")
    ],
    reason: ReasonOption = None,
    expect_revision: Annotated[
        int | None,
        typer.Option("--expect-revision", help="Refuse (409) unless the route is at this one."),
    ] = None,
    json_: JsonFlag = False,
) -> None:
    """Point a route at installed models (creates it); in-flight requests finish where
    they are, new ones move once the new versions are loaded."""
    parsed = [parse_target(t) for t in targets]
    route = _call(
        lambda c: c.set_route(name, parsed, reason=reason, expected_revision=expect_revision)
    )
    if json_:
        print_json(route)
        return
    typer.echo(
        f"{route['name']} -> {show.targets_text(route['targets'])} (revision {route['revision']})"
    )


@route_app.command("show")
def show_cmd(name: RouteArgument, json_: JsonFlag = False) -> None:
    """A route: its targets and weights, each version's live figures, its rollout."""
    route = _call(lambda c: c.route(name))
    if json_:
        print_json(route)
    else:
        _print_route(route)


@route_app.command("list")
def list_cmd(json_: JsonFlag = False) -> None:
    """Every route (NAME, TARGETS, REVISION, UPDATED, ROLLOUT)."""
    routes = _call(lambda c: c.routes())
    if json_:
        print_json({"routes": routes})
    else:
        typer.echo(render.format_table(show.LIST_HEADERS, show.list_rows(routes)))


@route_app.command("history")
def history_cmd(name: RouteArgument, json_: JsonFlag = False) -> None:
    """A route's changes, oldest first; `rollback --to REV` returns to one."""
    data = _call(lambda c: c.route_history(name))
    if json_:
        print_json(data)
    else:
        typer.echo(render.format_table(show.HISTORY_HEADERS, show.history_rows(data["history"])))


@route_app.command("delete")
def delete_cmd(name: RouteArgument) -> None:
    """Remove a route (its models stay installed)."""
    removed = _call(lambda c: c.delete_route(name))
    typer.echo(f"deleted route '{removed['deleted']}'")


def rollback(
    name: RouteArgument,
    to: Annotated[
        int | None, typer.Option("--to", help="The revision to return to (route history).")
    ] = None,
    reason: ReasonOption = None,
    json_: JsonFlag = False,
) -> None:
    """Return a route to its previous state at once (or to revision --to)."""
    route = _call(lambda c: c.rollback_route(name, to, reason=reason))
    if json_:
        print_json(route)
        return
    typer.echo(
        f"{route['name']} -> {show.targets_text(route['targets'])} (revision {route['revision']})"
    )


def rollout(
    first: Annotated[
        str, typer.Argument(help="The route, or one of status, pause, resume, abort.")
    ],
    name: Annotated[str | None, typer.Argument(help="The route (after an action).")] = None,
    to: Annotated[str | None, typer.Option("--to", help="The candidate model.")] = None,
    steps: Annotated[
        str | None, typer.Option("--steps", help="Traffic percentages (default 5,25,50,100).")
    ] = None,
    every: Annotated[
        str | None, typer.Option("--every", help="How long each step lasts (default 10m).")
    ] = None,
    max_error_rate: Annotated[
        str | None, typer.Option("--max-error-rate", help="Abort above this, e.g. 2%.")
    ] = None,
    max_ttft_p95: Annotated[
        str | None,
        typer.Option("--max-ttft-p95", help="1.5x the stable version's, or 800ms (default 1.5x)."),
    ] = None,
    min_tok_s: Annotated[
        str | None,
        typer.Option("--min-tok-s", help="Abort below this share of the stable rate, e.g. 0.8x."),
    ] = None,
    max_poor_rate: Annotated[
        str | None,
        typer.Option(
            "--max-poor-rate",
            help="Empty or length-cut answers allowed over the stable version's, e.g. 10%.",
        ),
    ] = None,
    min_requests: Annotated[
        int | None,
        typer.Option("--min-requests", help="Candidate requests a step needs to be judged."),
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option("--shadow", help="Copy this share of requests to the candidate, e.g. 10%."),
    ] = None,
    reason: ReasonOption = None,
    json_: JsonFlag = False,
) -> None:
    """Move a route to a candidate in steps, rolling back by itself on a breach; or
    `rollout status|pause|resume|abort NAME`."""
    if first in ROLLOUT_ACTIONS:
        if name is None:
            fail(f"usage: localserve rollout {first} NAME", ExitCode.USAGE)
        action = None if first == "status" else first
        route_name = name
        state = _call(lambda c: c.rollout(route_name, action, reason))
    else:
        if name is not None:
            fail(
                f"unknown rollout action {first!r}: use {', '.join(ROLLOUT_ACTIONS)}",
                ExitCode.USAGE,
            )
        if to is None:
            fail("missing --to: the candidate model", ExitCode.USAGE)
        candidate = to
        state = _call(
            lambda c: c.start_rollout(
                first,
                candidate,
                steps=steps,
                every=every,
                max_error_rate=max_error_rate,
                max_ttft_p95=max_ttft_p95,
                min_tokens_per_second=min_tok_s,
                max_poor_rate=max_poor_rate,
                min_requests=min_requests,
                shadow=shadow,
            )
        )
    if json_:
        print_json(state)
        return
    typer.echo(f"{state['route']}: {show.rollout_text(state)}")
    window = state.get("window") or {}
    rows = [
        [label, *_window_cells(window.get(key) or {})]
        for label, key in ((state["stable"], "stable"), (state["candidate"], "candidate"))
    ]
    typer.echo(render.format_table(WINDOW_HEADERS, rows))
    if state.get("next_step_in_s") is not None:
        typer.echo(f"next judgement in {state['next_step_in_s']:.0f} s")
    shadow = state.get("shadow_results")
    if state.get("shadow") and shadow:
        typer.echo(show.shadow_text(shadow))


WINDOW_HEADERS = ("VERSION", "REQUESTS", "ERRORS", "TTFT P95", "TOK/S", "POOR")


def _window_cells(figures: dict[str, Any]) -> list[str]:
    row = show.version_rows({"targets": [], "versions": {"x": figures}})[0]
    return row[3:]
