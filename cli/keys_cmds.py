"""API keys and usage: `keys add|list|revoke`, `usage`.

Keys are managed through the daemon (`/api/keys`, admin scope), so a revoked key stops
working at once; `--local` edits the keys file in the config dir directly instead (the
daemon notices the change on its next request), for a daemon that is not running.
The secret of a new key is printed once, on stdout; only its hash is stored.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

import typer

from localserve.access.keys import KeyLimits, KeyStore
from localserve.client.display import usage_cells
from localserve.client.http import LocalserveClient
from localserve.config import Settings
from localserve.errors import LocalserveError

# isort: split
from localserve.cli import render
from localserve.cli.common import JsonFlag, get_settings, make_client, need_daemon, print_json
from localserve.cli.errors import ExitCode, cli_errors, fail

keys_app = typer.Typer(help="API keys: scopes, limits, priority (the secret is shown once).")

LocalFlag = Annotated[
    bool,
    typer.Option("--local", help="Edit the keys file directly instead of asking the daemon."),
]
KEY_HEADERS = ["NAME", "KEY", "SCOPES", "RPM", "TPM", "CONCURRENT", "PRIORITY", "CREATED", "STATE"]
USAGE_HEADERS = ["KEY", "MODEL", "REQUESTS", "ERRORS", "429s", "PROMPT", "GENERATED", "BUSY"]


def _limit(value: int) -> str:
    return str(value) if value else "-"


def key_rows(keys: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for key in keys:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(float(key["created_at"] or 0)))
        rows.append(
            [
                str(key["name"]),
                f"{key['hint']}..." if key.get("hint") else "-",
                ",".join(key["scopes"]),
                _limit(int(key["rpm"])),
                _limit(int(key["tpm"])),
                _limit(int(key["concurrent"])),
                str(key["priority"]),
                created,
                "active" if key["active"] else "revoked",
            ]
        )
    return rows


def usage_rows(usage: list[dict[str, Any]]) -> list[list[str]]:
    return [usage_cells(row) for row in usage]


def _local_store(settings: Settings) -> KeyStore:
    return KeyStore(settings.keys_file)


def _local(action: Any) -> Any:
    """Run a keys-file action; its errors exit with their meaning (2 for bad input)."""
    try:
        return action()
    except LocalserveError as exc:
        code = ExitCode.USAGE if exc.status in (400, 500) else ExitCode.ERROR
        if exc.status == 404:
            code = ExitCode.NOT_FOUND
        fail(exc.message, code)


async def _with_client(settings: Settings, call: Any) -> Any:
    async with make_client(settings) as client:
        return await call(client)


@keys_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The key's name (letters, digits, . _ -).")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="read, admin or model:GLOB (repeat; default: model:* and read).",
        ),
    ] = None,
    rpm: Annotated[
        int, typer.Option("--rpm", min=0, help="Requests per minute (0: no limit).")
    ] = 0,
    tpm: Annotated[
        int, typer.Option("--tpm", min=0, help="Prompt + generated tokens per minute.")
    ] = 0,
    concurrent: Annotated[
        int, typer.Option("--concurrent", min=0, help="Requests at once (0: no limit).")
    ] = 0,
    priority: Annotated[
        int,
        typer.Option("--priority", min=-100, max=100, help="Served first among waiting keys."),
    ] = 0,
    weight: Annotated[
        float, typer.Option("--weight", min=0.001, max=1000, help="Share of the slots.")
    ] = 1.0,
    local: LocalFlag = False,
    json_: JsonFlag = False,
) -> None:
    """Add an API key; prints its secret once (store it now: only its hash is kept)."""
    settings = get_settings()
    if local:
        key, secret = _local(
            lambda: _local_store(settings).add(
                name,
                scopes=scope or None,
                limits=KeyLimits(rpm, tpm, concurrent),
                priority=priority,
                weight=weight,
            )
        )
        answer: dict[str, Any] = {"key": key.public(), "secret": secret}
    else:
        need_daemon(settings)
        fields: dict[str, Any] = {"rpm": rpm, "tpm": tpm, "concurrent": concurrent}
        fields.update(priority=priority, weight=weight)
        if scope:
            fields["scopes"] = scope

        async def create(client: LocalserveClient) -> dict[str, Any]:
            return await client.add_key(name, **fields)

        with cli_errors():
            answer = asyncio.run(_with_client(settings, create))
    if json_:
        print_json(answer)
        return
    typer.echo(
        f"added key {name!r} ({', '.join(answer['key']['scopes'])}); its secret, shown once:",
        err=True,
    )
    typer.echo(answer["secret"])


@keys_app.command("list")
def list_keys(local: LocalFlag = False, json_: JsonFlag = False) -> None:
    """List the API keys (never their secrets)."""
    settings = get_settings()
    if local:
        keys = [k.public() for k in _local(lambda: _local_store(settings).keys()).values()]
    else:
        need_daemon(settings)

        async def listed(client: LocalserveClient) -> list[dict[str, Any]]:
            return await client.list_keys()

        with cli_errors():
            keys = asyncio.run(_with_client(settings, listed))
    if json_:
        print_json({"keys": keys})
    else:
        typer.echo(render.format_table(KEY_HEADERS, key_rows(keys)))


@keys_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The key to revoke.")],
    local: LocalFlag = False,
) -> None:
    """Revoke an API key; through the daemon it stops working at once."""
    settings = get_settings()
    if local:
        _local(lambda: _local_store(settings).revoke(name))
    else:
        need_daemon(settings)

        async def revoked(client: LocalserveClient) -> dict[str, Any]:
            return await client.revoke_key(name)

        with cli_errors():
            asyncio.run(_with_client(settings, revoked))
    typer.echo(f"revoked key {name!r}")


def usage(
    since: Annotated[
        str | None, typer.Option("--since", help="How far back: 7d, 24h, 30m (default: all).")
    ] = None,
    key: Annotated[str | None, typer.Option("--key", help="Only this key.")] = None,
    json_: JsonFlag = False,
) -> None:
    """Usage per API key and model: requests, errors, 429s, tokens, runner busy time."""
    settings = get_settings()
    need_daemon(settings)

    async def read(client: LocalserveClient) -> dict[str, Any]:
        return await client.usage(since, key)

    with cli_errors():
        answer = asyncio.run(_with_client(settings, read))
    if json_:
        print_json(answer)
        return
    if answer.get("notice"):
        typer.echo(f"note: {answer['notice']}", err=True)
    typer.echo(render.format_table(USAGE_HEADERS, usage_rows(answer["usage"])))
