"""`localserve fleet config NODE_URL...`: the LiteLLM proxy config of several nodes
(issue 15). The logic lives in localserve.fleet.litellm_config; this module only parses
options, reports errors and writes the file. See packaging/fleet/README.md."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from localserve.client.http import ClientError, DaemonUnreachableError
from localserve.errors import BadRequestError
from localserve.fleet.litellm_config import (
    DEFAULT_KEY_ENV,
    DEFAULT_MASTER_KEY_ENV,
    STRATEGIES,
    FleetOptions,
    build_config,
    discover,
    render_yaml,
)

# isort: split
from localserve.cli.errors import ExitCode, error_message, exit_code_for, fail

fleet_app = typer.Typer(help="Several localserve nodes behind the LiteLLM proxy.")


def _strategy(value: str) -> str:
    if value not in STRATEGIES:
        raise typer.BadParameter(f"one of {', '.join(STRATEGIES)}")
    return value


@fleet_app.command("config")
def fleet_config(
    nodes: Annotated[list[str], typer.Argument(help="Node base URLs, e.g. http://10.0.0.5:11435.")],
    strategy: Annotated[
        str,
        typer.Option(
            callback=_strategy, help=f"LiteLLM routing strategy: {', '.join(STRATEGIES)}."
        ),
    ] = "least-busy",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write the config here (else stdout).")
    ] = None,
    api_key_env: Annotated[
        list[str] | None,
        typer.Option(
            "--api-key-env",
            help=f"Environment variable of the proxy holding the nodes' API key (default "
            f"{DEFAULT_KEY_ENV}); give it once for all nodes or once per node, in order.",
        ),
    ] = None,
    num_retries: Annotated[int, typer.Option(min=0, help="Retries of a failed call.")] = 3,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds one call may take.")] = 600,
    allowed_fails: Annotated[
        int, typer.Option(min=0, help="Failures per minute before a node cools down.")
    ] = 1,
    cooldown: Annotated[
        float,
        typer.Option(min=0, help="Cooldown seconds when the node sent no Retry-After."),
    ] = 30,
    health_check_interval: Annotated[
        float, typer.Option(min=0, help="Seconds between health checks (0: none).")
    ] = 60,
    master_key_env: Annotated[
        str,
        typer.Option(
            help="Environment variable of the proxy with its own key (master_key; LiteLLM"
            " refuses to start without one); '' leaves master_key out of the config."
        ),
    ] = DEFAULT_MASTER_KEY_ENV,
    json_: Annotated[bool, typer.Option("--json", help="Write JSON instead of YAML.")] = False,
) -> None:
    """Write a LiteLLM proxy config for these nodes: their models and routes, a routing
    strategy, retries, cooldowns, health checks; run it with `litellm --config FILE`."""
    options = FleetOptions(
        strategy=strategy,
        num_retries=num_retries,
        timeout_s=timeout,
        allowed_fails=allowed_fails,
        cooldown_s=cooldown,
        health_check_interval_s=health_check_interval,
        master_key_env=master_key_env or None,
    )
    try:
        options.validate()
        found = asyncio.run(discover(nodes, api_key_env or ()))
        config = build_config(found, options)
    except BadRequestError as exc:
        fail(exc.message, ExitCode.USAGE)
    except DaemonUnreachableError as exc:
        fail(f"node {exc.base_url} is not reachable: {exc}", ExitCode.UNREACHABLE)
    except ClientError as exc:
        fail(f"a node refused: {error_message(exc)}", exit_code_for(exc))
    if json_:
        text = json.dumps(config, indent=2) + "\n"
    else:
        header = (
            "LiteLLM proxy config written by `localserve fleet config` for:\n"
            + "\n".join(f"  {node.url}: {', '.join(node.served)}" for node in found)
            + "\nRun: litellm --config THIS_FILE --port 4000"
        )
        text = render_yaml(config, header)
    if out is None:
        typer.echo(text, nl=False)
        return
    _write_atomically(out, text)
    served = sorted({name for node in found for name in node.served})
    typer.echo(
        f"wrote {out}: {len(config['model_list'])} deployments of {len(served)} models on "
        f"{len(found)} nodes ({options.strategy})",
        err=True,
    )


def _write_atomically(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
        ) as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except OSError as exc:
        fail(f"cannot write {path}: {exc.strerror or exc}", ExitCode.USAGE)
