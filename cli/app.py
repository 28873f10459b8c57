"""The `localserve` command line.

Commands: serve, daemon start|stop|status, run, list (ls), ps, show, rm, cp, create, pull,
stop, version. The CLI talks to the daemon only through `localserve.client`; commands that
need the daemon start it in the background when nothing answers (set
`LOCALSERVE_NO_AUTOSTART=1` to turn that off; then they exit 3 instead). `daemon status`
and `version` never start it.

Exit codes (stable; scripts may rely on them):

    0    success
    1    any other error (a server error, an error inside a stream, a bug)
    2    bad input or usage: unknown option, missing file, invalid value, HTTP 400/413
    3    the daemon is unreachable (or could not be started)
    4    model not found (HTTP 404); the message suggests `localserve pull <name>`
    5    the daemon is busy (HTTP 503); retry later
    130  interrupted (Ctrl-C)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from enum import IntEnum
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from localserve import daemon
from localserve.client import (
    APIError,
    BadRequestAPIError,
    BusyAPIError,
    ClientError,
    DaemonUnreachableError,
    LocalserveClient,
    ModelNotFoundAPIError,
    file_digest,
)
from localserve.config import Settings, load_settings, parse_duration
from localserve.errors import ConfigError, LocalserveError
from localserve.names import ModelName

# isort: split
from localserve.cli import render, repl

# ---- exit codes ------------------------------------------------------------------------


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
    ExitCode.UNREACHABLE: "the daemon is unreachable or could not be started",
    ExitCode.NOT_FOUND: "model not found (HTTP 404)",
    ExitCode.BUSY: "the daemon is busy (HTTP 503)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
}

T = TypeVar("T")

NO_AUTOSTART_ENV = "LOCALSERVE_NO_AUTOSTART"
LARGE_FILE_BYTES = 64 * 1024 * 1024  # hash/upload progress bars from this size up


def exit_code_for(exc: BaseException) -> ExitCode:
    """The documented exit code of an exception raised while running a command."""
    if isinstance(exc, KeyboardInterrupt):
        return ExitCode.INTERRUPTED
    if isinstance(exc, DaemonUnreachableError | daemon.DaemonNotRunningError):
        return ExitCode.UNREACHABLE
    if isinstance(exc, daemon.DaemonStartError):
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
    if isinstance(exc, ConfigError | repl.ReplError | FileNotFoundError | IsADirectoryError):
        return ExitCode.USAGE
    return ExitCode.ERROR


def error_message(exc: BaseException, model: str | None = None) -> str:
    """What the user reads for an exception (without the "Error: " prefix)."""
    if isinstance(exc, DaemonUnreachableError):
        return (
            f"could not connect to the localserve daemon at {exc.base_url}. "
            "Start it with `localserve daemon start` (or `localserve serve`)."
        )
    if isinstance(exc, daemon.DaemonNotRunningError):
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
    if isinstance(exc, FileNotFoundError | IsADirectoryError) and exc.filename:
        return f"no such file: {exc.filename}"
    return str(exc) or type(exc).__name__


def fail(message: str, code: ExitCode = ExitCode.ERROR) -> NoReturn:
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
        repl.ReplError,
        FileNotFoundError,
        IsADirectoryError,
    ) as exc:
        fail(error_message(exc, model), exit_code_for(exc))


# ---- shared plumbing -------------------------------------------------------------------


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def _spinner(text: str = "") -> contextlib.AbstractContextManager[Any]:
    """A spinner on stderr, only when stderr is a terminal."""
    if sys.stderr.isatty():
        return stderr_console().status(text, spinner="dots")
    return contextlib.nullcontext()


@contextlib.asynccontextmanager
async def load_progress_shown(
    client: LocalserveClient, model: str, status: Any
) -> AsyncIterator[None]:
    """While the block runs, show the daemon's load progress for `model` on `status` (a
    rich Status, or None when there is no spinner)."""
    if status is None:
        yield
        return
    try:
        wanted: str | None = ModelName.parse(model).display()
    except LocalserveError:
        wanted = None  # the request will say what is wrong with the name

    async def watch() -> None:
        with contextlib.suppress(ClientError):
            async for event in client.events(["load_progress", "loaded"]):
                if wanted is not None and event.get("model") != wanted:
                    continue
                if event["type"] == "loaded":
                    status.update("")  # loaded: the plain spinner until the first token
                else:
                    progress = float(event.get("progress") or 0.0)
                    status.update(f"loading {model} {progress:.0%}")

    watcher = asyncio.create_task(watch())
    try:
        yield
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def get_settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)


def need_daemon(settings: Settings) -> None:
    """Make sure the daemon answers, starting it in the background when allowed."""
    with cli_errors(), _spinner("starting localserve daemon..."):
        pid = daemon.ensure_running(settings, autostart=settings.autostart)
    if pid:
        typer.echo(
            f"started localserve daemon (pid {pid}) at {settings.base_url}; "
            f"log: {daemon.log_path(settings)}",
            err=True,
        )


def make_client(settings: Settings, timeout: float | None = None) -> LocalserveClient:
    return LocalserveClient(settings.base_url, api_key=settings.api_key, timeout=timeout)


def complete_model_name(incomplete: str) -> list[str]:
    """Shell completion: the installed models whose name starts with `incomplete`. Asks a
    running daemon (briefly); never starts one, and offers nothing when none answers."""

    async def installed() -> list[str]:
        async with make_client(load_settings(), timeout=2.0) as client:
            return [str(m["name"]) for m in await client.list_models()]

    try:
        names = asyncio.run(installed())
    except Exception:  # completion must never fail loudly in the user's shell
        return []
    short = [n.removesuffix(":latest") for n in names]  # "tiny" for "tiny:latest"
    return sorted({n for n in [*names, *short] if n.startswith(incomplete)})


def client_version() -> str:
    try:
        return metadata.version("localserve")
    except metadata.PackageNotFoundError:
        import localserve

        return str(getattr(localserve, "__version__", "unknown"))


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def byte_progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=stderr_console(),
        transient=False,
    )


# ---- the app ---------------------------------------------------------------------------

app = typer.Typer(
    name="localserve",
    help="A local model manager: pull, create, run and serve GGUF models.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 ok, 1 error, 2 bad input, 3 daemon unreachable, "
    "4 model not found, 5 busy, 130 interrupted.",
)
daemon_app = typer.Typer(help="Run the daemon in the background: start, stop, status.")
app.add_typer(daemon_app, name="daemon")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print the raw JSON response.")]
ModelArgument = Annotated[
    str, typer.Argument(help="Model name.", autocompletion=complete_model_name)
]


@app.command()
def serve() -> None:
    """Run the daemon in the foreground (for service managers; Ctrl-C stops it)."""
    settings = get_settings()
    try:
        settings = settings.validate()
    except ConfigError as exc:
        fail(str(exc), ExitCode.USAGE)
    from localserve.server import serve as run_server

    with cli_errors():
        code = run_server(settings)
    raise typer.Exit(code)


# ---- daemon start|stop|status ----------------------------------------------------------


@daemon_app.command("start")
def daemon_start(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the daemon to answer.")
    ] = daemon.START_TIMEOUT_S,
) -> None:
    """Start the daemon in the background (pidfile and log in the state dir)."""
    settings = get_settings()
    with cli_errors():
        settings.validate()
        if daemon.is_answering(settings):
            pid = daemon.managed_pid(settings)
            where = f" (pid {pid})" if pid else ""
            typer.echo(f"localserve daemon already running at {settings.base_url}{where}")
            return
        with _spinner("starting localserve daemon..."):
            pid = daemon.start_background(settings, timeout=timeout)
    typer.echo(
        f"started localserve daemon (pid {pid}) at {settings.base_url}\n"
        f"log: {daemon.log_path(settings)}"
    )


@daemon_app.command("stop")
def daemon_stop(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait after SIGTERM before SIGKILL.")
    ] = daemon.STOP_TIMEOUT_S,
) -> None:
    """Stop the background daemon (SIGTERM, then SIGKILL after the timeout)."""
    settings = get_settings()
    pid = daemon.managed_pid(settings)
    with cli_errors(), _spinner("stopping localserve daemon..."):
        stopped = daemon.stop(settings, timeout=timeout)
    if stopped:
        typer.echo(f"stopped localserve daemon (pid {pid})")
    else:
        typer.echo("localserve daemon is not running")


@daemon_app.command("status")
def daemon_status(json_: JsonFlag = False) -> None:
    """Show whether the daemon runs and answers; exit 0 when it does, 3 when not."""
    settings = get_settings()
    with cli_errors():
        state = daemon.status(settings)
    if json_:
        print_json(state.to_dict())
    else:
        if state.answering and state.pid:
            line = f"running (pid {state.pid})"
        elif state.answering:
            line = "running (not started by `localserve daemon start`)"
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


# ---- run -------------------------------------------------------------------------------


def _parse_format(value: str | None) -> str | dict[str, Any] | None:
    if value is None or value == "":
        return None
    if value == "json":
        return "json"
    try:
        schema = json.loads(value)
    except ValueError:
        schema = None
    if not isinstance(schema, dict):
        fail(f'invalid --format {value!r}: use "json" or a JSON schema object', ExitCode.USAGE)
    return schema


async def stream_chat(
    settings: Settings,
    model: str,
    messages: list[dict[str, Any]],
    *,
    options: dict[str, Any] | None,
    format: str | dict[str, Any] | None,
    keep_alive: str | None,
    write: Callable[[str], None],
) -> tuple[str, dict[str, Any]]:
    """Stream one chat answer to `write`; return (answer, final chunk). A spinner runs on
    stderr (when it is a terminal) until the first token."""
    answer: list[str] = []
    final: dict[str, Any] = {}
    async with contextlib.AsyncExitStack() as spinner:
        status = spinner.enter_context(_spinner())
        async with make_client(settings) as client:
            await spinner.enter_async_context(load_progress_shown(client, model, status))
            chunks: AsyncIterator[dict[str, Any]] = client.chat(
                model, messages, options=options or None, format=format, keep_alive=keep_alive
            )
            async for chunk in chunks:
                content = str((chunk.get("message") or {}).get("content") or "")
                if content:
                    await spinner.aclose()  # first token: stop the spinner (no-op afterwards)
                    answer.append(content)
                    write(content)
                if chunk.get("done"):
                    final = chunk
    return "".join(answer), final


def _stdout_write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _print_timings(final: dict[str, Any]) -> None:
    for line in render.timing_lines(final):
        typer.echo(line, err=True)


@app.command()
def run(
    model: Annotated[
        str,
        typer.Argument(help="Model name, e.g. smollm2:135m.", autocompletion=complete_model_name),
    ],
    prompt: Annotated[
        list[str] | None,
        typer.Argument(help="The prompt; read from stdin when stdin is not a terminal."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Print timings (tokens/s) to stderr.")
    ] = False,
    format_: Annotated[
        str | None, typer.Option("--format", help='Answer format: "json" or a JSON schema.')
    ] = None,
    keepalive: Annotated[
        str | None,
        typer.Option("--keepalive", help='Keep the model loaded this long ("5m", "0", "-1").'),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="A system message.")] = None,
) -> None:
    """Chat with a model: one answer for a prompt, or an interactive session."""
    fmt = _parse_format(format_)
    if keepalive is not None:
        try:
            parse_duration(keepalive, 0.0)
        except ConfigError as exc:
            fail(f"invalid --keepalive: {exc}", ExitCode.USAGE)
    parts = [" ".join(prompt)] if prompt else []
    interactive = not parts and sys.stdin.isatty()
    if not parts and not interactive:
        parts = [sys.stdin.read()]
    elif parts and not sys.stdin.isatty():
        parts.insert(0, sys.stdin.read())
    text = " ".join(p for p in parts if p.strip())

    settings = get_settings()
    need_daemon(settings)
    conversation = repl.Conversation(system=system, verbose=verbose, format=fmt)
    if interactive:
        run_repl(settings, model, conversation, keepalive)
        return
    with cli_errors(model):
        if not text.strip():
            call_pulling(settings, model, lambda: asyncio.run(_load(settings, model, keepalive)))
            return
        answer, final = call_pulling(
            settings,
            model,
            lambda: asyncio.run(
                stream_chat(
                    settings,
                    model,
                    conversation.chat_messages(text),
                    options=None,
                    format=fmt,
                    keep_alive=keepalive,
                    write=_stdout_write,
                )
            ),
        )
    if not answer.endswith("\n"):
        _stdout_write("\n")
    if verbose:
        _print_timings(final)


def call_pulling(settings: Settings, model: str, action: Callable[[], T]) -> T:
    """Run `action`; when it finds a Hugging Face model missing, pull it and run it again
    (Ollama's `run` pulls too; other names exit 4 suggesting `localserve pull`)."""
    try:
        return action()
    except ModelNotFoundAPIError:
        if not is_hub_name(model):
            raise
    asyncio.run(pull_with_progress(settings, model))
    return action()


async def _load(settings: Settings, model: str, keep_alive: str | None, status: Any = None) -> None:
    async with make_client(settings) as client, load_progress_shown(client, model, status):
        await client.load(model, keep_alive)


def _load_with_spinner(settings: Settings, model: str, keep_alive: str | None) -> None:
    with _spinner(f"loading {model}") as status:
        asyncio.run(_load(settings, model, keep_alive, status))


async def _show(settings: Settings, model: str) -> dict[str, Any]:
    async with make_client(settings) as client:
        return await client.show(model)


def run_repl(
    settings: Settings,
    model: str,
    conversation: repl.Conversation,
    keep_alive: str | None,
) -> None:
    """The interactive session (see localserve.cli.repl for the commands)."""
    with cli_errors(model):
        call_pulling(settings, model, lambda: _load_with_spinner(settings, model, keep_alive))
    with repl.readline_history(settings.state_dir):
        while True:
            try:
                message = repl.read_message(input)
            except EOFError:
                typer.echo()
                return
            except KeyboardInterrupt:
                typer.echo("\nUse Ctrl + d or /bye to exit.")
                continue
            if not message.strip():
                continue
            try:
                command = repl.parse_command(message)
                if command.kind == "bye":
                    return
                _repl_step(settings, model, conversation, command, keep_alive)
            except repl.ReplError as exc:
                typer.echo(f"Error: {exc}")
            except KeyboardInterrupt:
                typer.echo()
            except ClientError as exc:
                typer.echo(f"Error: {error_message(exc, model)}", err=True)


def _repl_step(
    settings: Settings,
    model: str,
    conversation: repl.Conversation,
    command: repl.Command,
    keep_alive: str | None,
) -> None:
    kind = command.kind
    if kind == "help":
        typer.echo(repl.HELP_TEXT)
    elif kind == "clear":
        conversation.clear()
        typer.echo("Cleared session context")
    elif kind == "set_parameter":
        typer.echo(conversation.set_parameter(command.args))
    elif kind == "set_system":
        conversation.system = command.text or None
        typer.echo("Set system message." if command.text else "Cleared system message.")
    elif kind == "set_verbose":
        conversation.verbose = True
        typer.echo("Set 'verbose' mode.")
    elif kind == "set_quiet":
        conversation.verbose = False
        typer.echo("Set 'quiet' mode.")
    elif kind == "set_format":
        conversation.format = "json"
        typer.echo("Set format to 'json' mode.")
    elif kind == "set_noformat":
        conversation.format = None
        typer.echo("Disabled format.")
    elif kind == "show":
        _repl_show(settings, model, conversation, command.args[0])
    elif kind == "message":
        answer, final = asyncio.run(
            stream_chat(
                settings,
                model,
                conversation.chat_messages(command.text),
                options=conversation.options,
                format=conversation.format,
                keep_alive=keep_alive,
                write=_stdout_write,
            )
        )
        _stdout_write("\n" if answer.endswith("\n") else "\n\n")
        conversation.record(command.text, answer)
        if conversation.verbose:
            _print_timings(final)


def _repl_show(settings: Settings, model: str, conversation: repl.Conversation, what: str) -> None:
    data = asyncio.run(_show(settings, model))
    if what == "info":
        typer.echo(render.render_show(data))
    elif what == "parameters":
        text = render.parameters_text(data.get("parameters"))
        session = render.parameters_text(conversation.options)
        typer.echo("Model defined parameters:\n" + (text or "No parameters were specified."))
        if session:
            typer.echo("User defined parameters:\n" + session)
    elif what == "system":
        typer.echo(conversation.system or data.get("system") or "No system message was specified.")
    elif what == "template":
        typer.echo(data.get("template") or "No prompt template was specified.")
    elif what == "modelfile":
        typer.echo(render.modelfile_text(model, data))


# ---- list, ps, show --------------------------------------------------------------------


async def _list(settings: Settings) -> list[dict[str, Any]]:
    async with make_client(settings) as client:
        return await client.list_models()


async def _ps(settings: Settings) -> list[dict[str, Any]]:
    async with make_client(settings) as client:
        return await client.ps()


@app.command("list")
def list_cmd(json_: JsonFlag = False) -> None:
    """List the models in the store (NAME, ID, SIZE, MODIFIED)."""
    settings = get_settings()
    need_daemon(settings)
    with cli_errors():
        models = asyncio.run(_list(settings))
    if json_:
        print_json({"models": models})
    else:
        typer.echo(render.format_table(render.LIST_HEADERS, render.list_rows(models)))


app.command("ls", help="Alias of `list`.", hidden=True)(list_cmd)


@app.command()
def ps(json_: JsonFlag = False) -> None:
    """List the loaded models (NAME, ID, SIZE, PROCESSOR, CONTEXT, UNTIL)."""
    settings = get_settings()
    need_daemon(settings)
    with cli_errors():
        models = asyncio.run(_ps(settings))
    if json_:
        print_json({"models": models})
    else:
        typer.echo(render.format_table(render.PS_HEADERS, render.ps_rows(models)))


@app.command()
def show(
    model: ModelArgument,
    json_: JsonFlag = False,
    modelfile: Annotated[bool, typer.Option("--modelfile", help="Show the Modelfile.")] = False,
    template: Annotated[bool, typer.Option("--template", help="Show the template.")] = False,
    system: Annotated[bool, typer.Option("--system", help="Show the system message.")] = False,
    parameters: Annotated[bool, typer.Option("--parameters", help="Show the parameters.")] = False,
) -> None:
    """Show a model's details: architecture, parameters, context length, quantization..."""
    if sum((json_, modelfile, template, system, parameters)) > 1:
        fail(
            "only one of --json, --modelfile, --template, --system, --parameters",
            ExitCode.USAGE,
        )
    settings = get_settings()
    need_daemon(settings)
    with cli_errors(model):
        data = asyncio.run(_show(settings, model))
    if json_:
        print_json(data)
    elif modelfile:
        typer.echo(render.modelfile_text(model, data), nl=False)
    elif template:
        typer.echo(data.get("template") or "")
    elif system:
        typer.echo(data.get("system") or "")
    elif parameters:
        typer.echo(render.parameters_text(data.get("parameters")))
    else:
        typer.echo(render.render_show(data))


# ---- rm, cp, stop ----------------------------------------------------------------------


@app.command()
def rm(
    models: Annotated[
        list[str], typer.Argument(help="Model names.", autocompletion=complete_model_name)
    ],
) -> None:
    """Remove models (their blobs are collected when nothing else uses them)."""
    settings = get_settings()
    need_daemon(settings)

    async def remove_all() -> ExitCode:
        code = ExitCode.OK
        async with make_client(settings) as client:
            for name in models:
                try:
                    await client.delete(name)
                except (ModelNotFoundAPIError, BadRequestAPIError) as exc:
                    typer.echo(f"Error: {error_message(exc, None)}", err=True)
                    if code == ExitCode.OK:
                        code = exit_code_for(exc)
                    continue
                typer.echo(f"deleted '{name}'")
        return code

    with cli_errors():
        code = asyncio.run(remove_all())
    raise typer.Exit(int(code))


@app.command()
def cp(
    source: Annotated[
        str, typer.Argument(help="Existing model.", autocompletion=complete_model_name)
    ],
    destination: Annotated[str, typer.Argument(help="New name.")],
) -> None:
    """Copy a model under a new name (no bytes are copied)."""
    settings = get_settings()
    need_daemon(settings)

    async def copy() -> None:
        async with make_client(settings) as client:
            await client.copy(source, destination)

    with cli_errors(source):
        asyncio.run(copy())
    typer.echo(f"copied '{source}' to '{destination}'")


@app.command()
def stop(model: ModelArgument) -> None:
    """Unload a model now."""
    settings = get_settings()
    need_daemon(settings)

    async def unload() -> None:
        async with make_client(settings) as client:
            await client.unload(model)

    with cli_errors(model):
        asyncio.run(unload())


@app.command()
def pin(model: ModelArgument) -> None:
    """Load a model and keep it loaded (evicted last, never expires)."""
    _load_with_keep_alive(model, -1)
    typer.echo(f"pinned {model}")


@app.command()
def unpin(
    model: ModelArgument,
    keepalive: Annotated[
        str, typer.Option("--keepalive", help="Keep-alive from now on, e.g. 5m.")
    ] = "5m",
) -> None:
    """Let a pinned model expire again after its keep-alive."""
    _load_with_keep_alive(model, keepalive)
    typer.echo(f"unpinned {model} (keep-alive {keepalive})")


def _load_with_keep_alive(model: str, keep_alive: str | float) -> None:
    settings = get_settings()
    need_daemon(settings)

    async def load() -> None:
        async with make_client(settings) as client:
            await client.load(model, keep_alive=keep_alive)

    with cli_errors(model):
        asyncio.run(load())


# ---- create, pull ----------------------------------------------------------------------


def _hash_file(path: Path, size: int, show_progress: bool) -> str:
    if not show_progress:
        return file_digest(path)
    with byte_progress() as progress:
        task = progress.add_task("hashing", total=size)
        return file_digest(path, lambda n: progress.advance(task, n))


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="Name of the new model.")],
    file: Annotated[Path, typer.Option("--file", "-f", help="The GGUF file.", dir_okay=False)],
    template: Annotated[
        str | None, typer.Option("--template", help="Chat template (Jinja) override.")
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="Default system message.")] = None,
) -> None:
    """Create a model from a local GGUF file (uploaded to the daemon's store)."""
    if not file.is_file():
        fail(f"no such file: {file}", ExitCode.USAGE)
    settings = get_settings()
    need_daemon(settings)
    size = file.stat().st_size
    show_progress = sys.stderr.isatty() and size >= LARGE_FILE_BYTES

    async def upload_and_create(digest: str) -> None:
        async with make_client(settings) as client:
            if await client.has_blob(digest):
                typer.echo(f"using existing blob {digest}", err=True)
            elif show_progress:
                with byte_progress() as progress:
                    task: TaskID = progress.add_task("uploading", total=size)
                    await client.push_blob(file, digest, lambda n: progress.advance(task, n))
            else:
                await client.push_blob(file, digest)
            last = None
            async for item in client.create(
                name, files={file.name: digest}, template=template, system=system
            ):
                status = item.get("status")
                if status and status != last:
                    typer.echo(status, err=True)
                    last = status

    with cli_errors():
        digest = _hash_file(file, size, show_progress)
        asyncio.run(upload_and_create(digest))


async def pull_with_progress(settings: Settings, model: str, *, as_json: bool = False) -> None:
    """Stream /api/pull: NDJSON lines as is, or a progress bar per digest and the status
    lines on stderr."""
    async with make_client(settings) as client:
        if as_json:
            async for item in client.pull(model):
                typer.echo(json.dumps(item))
            return
        tasks: dict[str, TaskID] = {}
        last = None
        with byte_progress() as progress:
            async for item in client.pull(model):
                status = str(item.get("status") or "")
                digest = item.get("digest")
                total = int(item.get("total") or 0)
                if digest and total:
                    if digest not in tasks:
                        label = f"pulling {render.short_id(digest)}"
                        tasks[digest] = progress.add_task(label, total=total)
                    completed = int(item.get("completed") or 0)
                    progress.update(tasks[digest], total=total, completed=completed)
                elif status and status != last:
                    progress.console.print(status, highlight=False)
                    last = status


def is_hub_name(model: str) -> bool:
    """Hugging Face names, which `run` pulls when they are missing."""
    return model.lower().startswith(("hf.co/", "huggingface.co/"))


@app.command()
def pull(
    model: Annotated[str, typer.Argument(help="Model name, e.g. hf.co/org/repo:Q4_K_M.")],
    json_: Annotated[
        bool, typer.Option("--json", help="Print the NDJSON progress stream as is.")
    ] = False,
) -> None:
    """Download a model (progress bars per file; Ctrl-C stops, exit 130)."""
    settings = get_settings()
    need_daemon(settings)

    with cli_errors():
        asyncio.run(pull_with_progress(settings, model, as_json=json_))


# ---- version ---------------------------------------------------------------------------


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
