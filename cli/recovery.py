"""After the connection to the daemon dropped during a command that changes the store
(create, cp, rm, pull): reconnect, starting the daemon as commands do when that is
allowed, and tell the user what the store holds now. The operation may well have
finished before the daemon died; the exit code says which (0: it did, 3: it did not,
run the command again; a pull resumes where it stopped).

A model's version is its manifest digest (as /api/tags reports it): every create and
pull writes a new manifest (it records its creation time), and a copy writes the
source's manifest unchanged, so its digest equals the source's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NoReturn

import typer

from localserve.client.http import ClientError
from localserve.config import Settings
from localserve.errors import LocalserveError
from localserve.names import ModelName

# isort: split
from localserve.cli.common import make_client, start_daemon_if_needed
from localserve.cli.errors import ExitCode, error_message, fail

Versions = Mapping[str, str]  # model name, as /api/tags spells it -> manifest digest


@dataclass(frozen=True)
class Outcome:
    """What an interrupted operation left behind: `done` or not, in words."""

    done: bool
    text: str


def canonical(name: str) -> str:
    """The name as /api/tags spells it ("tiny" -> "tiny:latest"), case-folded: names
    match case-insensitively."""
    try:
        return ModelName.parse(name).display().lower()
    except LocalserveError:
        return name.lower()


async def fetch_versions(settings: Settings) -> Versions:
    """Each installed model's manifest digest."""
    async with make_client(settings) as client:
        models = await client.list_models()
    return {str(m.get("name")).lower(): str(m.get("digest") or "") for m in models}


async def versions_before(settings: Settings) -> Versions | None:
    """The store before an operation, to compare with afterwards; None when the daemon
    does not answer (the operation then fails on its own)."""
    try:
        return await fetch_versions(settings)
    except ClientError:
        return None


def lost(command: str) -> str:
    return f"connection to the daemon was lost during {command}"


def reconnect(settings: Settings, command: str, unknown: str) -> Versions:
    """Reach the daemon again (starting it when allowed) and read the store. When that
    fails, exit 3 saying that `unknown` ("whether 'x' was created") is unknown."""
    try:
        start_daemon_if_needed(settings, "reconnecting to the localserve daemon...")
        return asyncio.run(fetch_versions(settings))
    except (ClientError, LocalserveError) as exc:
        fail(
            f"{lost(command)}; {error_message(exc)}\n"
            f"{unknown[0].upper()}{unknown[1:]} is unknown until the daemon answers "
            "again (then see `localserve list`).",
            ExitCode.UNREACHABLE,
        )


def report(command: str, outcome: Outcome) -> ExitCode:
    """Say what happened on stderr; the exit code: 0 when done, 3 when not."""
    typer.echo(f"{lost(command)}; {outcome.text}", err=True)
    return ExitCode.OK if outcome.done else ExitCode.UNREACHABLE


def finish(command: str, outcome: Outcome) -> NoReturn:
    """Report and exit with the outcome's code."""
    raise typer.Exit(int(report(command, outcome)))


# ---- what each command left behind ---------------------------------------------------------


def _written(
    name: str, before: Versions | None, after: Versions, command: str, verb: str
) -> Outcome:
    key = canonical(name)
    now = after.get(key)
    if now is None:
        return Outcome(False, f"the model '{name}' was not {verb}; run the command again")
    if before is None:
        return Outcome(
            False,
            f"the model '{name}' exists, but it may predate this {command}; "
            "run the command again to be sure",
        )
    if before.get(key) == now:
        return Outcome(
            False, f"the model '{name}' was not {verb} (it is unchanged); run the command again"
        )
    return Outcome(True, f"the model '{name}' exists now ({verb})")


def created(name: str, before: Versions | None, after: Versions) -> Outcome:
    """`create NAME`: done when NAME's manifest is new or changed."""
    return _written(name, before, after, "create", "created")


def pulled(name: str, before: Versions | None, after: Versions) -> Outcome:
    """`pull NAME`: done when NAME's manifest is new or changed; else rerun to resume."""
    outcome = _written(name, before, after, "pull", "pulled")
    if outcome.done:
        return outcome
    return Outcome(
        False, f"the pull of '{name}' did not finish; run the command again to resume it"
    )


def copied(source: str, destination: str, after: Versions) -> Outcome:
    """`cp SOURCE DESTINATION`: done when DESTINATION holds SOURCE's manifest."""
    now = after.get(canonical(destination))
    if now is not None and now == after.get(canonical(source)):
        return Outcome(True, f"the model '{destination}' exists now (copied from '{source}')")
    return Outcome(False, f"the model '{destination}' was not copied; run the command again")


def deleted(name: str, after: Versions) -> Outcome:
    """`rm NAME`: done when NAME is gone."""
    if canonical(name) in after:
        return Outcome(False, f"the model '{name}' was not deleted; run the command again")
    return Outcome(True, f"the model '{name}' is gone now (deleted)")
