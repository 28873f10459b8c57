"""The `localserve` command line: the typer app, assembled from the command modules.

Commands: serve, daemon start|stop|status|drain (`daemon_cmds`), fleet config
(`fleet_cmds`), run (`run`, its REPL in
`repl`), list (ls), ps, show, stop, pin, unpin (`models`), create, cp, rm, pull, catalog
(`store_cmds`), tui (top), version. The CLI talks to the daemon only through
`localserve.client.http`; commands that need the daemon start it in the background when
nothing answers (set `LOCALSERVE_NO_AUTOSTART=1` to turn that off; then they exit 3
instead). `daemon status` and `version` never start it. When the connection drops
during create, cp, rm or pull, the command reconnects and says whether the operation
finished (`recovery`).

Exit codes (stable; scripts may rely on them; `errors` maps errors to them):

    0    success
    1    any other error (a server error, an error inside a stream, a bug; also a 507:
         the model does not fit the memory budget, or the store's disk is full)
    2    bad input or usage: unknown option, missing file, invalid value, HTTP 400/413
    3    the daemon is unreachable (or could not be started), or the connection was
         lost and the operation did not finish
    4    model not found (HTTP 404); the message suggests `localserve pull <name>`
    5    the daemon is busy (HTTP 503); retry later
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer

from localserve.client.http import ClientError

# isort: split
from localserve.cli import daemon_cmds, fleet_cmds, keys_cmds, models, routes_cmds, store_cmds
from localserve.cli import run as run_cmd
from localserve.cli.chat import load_progress_shown
from localserve.cli.common import client_version, complete_model_name, get_settings, make_client
from localserve.cli.errors import EXIT_CODES, ExitCode, error_message, exit_code_for
from localserve.cli.repl import run_repl

__all__ = [
    "EXIT_CODES",
    "ExitCode",
    "app",
    "complete_model_name",
    "error_message",
    "exit_code_for",
    "load_progress_shown",
    "main",
    "run_repl",
]

app = typer.Typer(
    name="localserve",
    help="A local model manager: pull, create, run and serve GGUF models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 error, 2 bad input, 3 daemon unreachable, "
    "4 model not found, 5 busy, 130 interrupted.",
)
app.add_typer(daemon_cmds.daemon_app, name="daemon")
app.add_typer(fleet_cmds.fleet_app, name="fleet")
app.command()(daemon_cmds.serve)
app.command()(run_cmd.run)
app.command("list")(models.list_cmd)
app.command("ls", help="Alias of `list`.", hidden=True)(models.list_cmd)
app.command()(models.ps)
app.command()(models.show)
app.command()(store_cmds.rm)
app.command()(store_cmds.cp)
app.command()(models.stop)
app.command()(models.pin)
app.command()(models.unpin)
app.command()(store_cmds.create)
app.command()(store_cmds.pull)
app.command("catalog")(store_cmds.catalog_cmd)
app.add_typer(keys_cmds.keys_app, name="keys")  # issue 16: API keys
app.command("usage")(keys_cmds.usage)
# -- routes (issue 14): route set|show|list|history|delete, rollback, rollout
app.add_typer(routes_cmds.route_app, name="route")
app.command()(routes_cmds.rollback)
app.command()(routes_cmds.rollout)


@app.command()
def tui(
    readonly: Annotated[
        bool,
        typer.Option(
            "--readonly", help="Hide actions that change the daemon (pull, unload, delete)."
        ),
    ] = False,
    refresh: Annotated[
        float, typer.Option("--refresh", min=0.1, help="Refresh interval in seconds.")
    ] = 0.5,
) -> None:
    """The live dashboard: models, tokens/s, RAM and VRAM, chat, logs (alias: top)."""
    from localserve.tui.app import run as run_tui

    run_tui(readonly=readonly, refresh=refresh, settings=get_settings())


app.command("top", help="Alias of `tui`.")(tui)


@app.command()
def version() -> None:
    """Print the daemon's and this client's versions (never starts the daemon)."""
    settings = get_settings()
    mine = client_version()

    async def daemon_version() -> str:
        async with make_client(settings, timeout=5) as client:
            return await client.version()

    try:
        theirs = asyncio.run(daemon_version())
    except ClientError as exc:
        typer.echo(f"Warning: {error_message(exc)}", err=True)
        typer.echo(f"client version is {mine}")
        raise typer.Exit(int(exit_code_for(exc))) from None
    typer.echo(f"localserve version is {theirs}")
    typer.echo(f"client version is {mine}")


def main() -> None:
    """The `localserve` console script."""
    app(prog_name="localserve")


if __name__ == "__main__":
    main()
