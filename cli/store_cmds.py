"""Commands that change the model store: `create`, `cp`, `rm`, `pull`; and `catalog`, the
short names `pull` knows.

`create NAME -f FILE` takes a GGUF file (a `.gguf` name or GGUF magic bytes), uploaded as a
blob, or a Modelfile (`localserve.service.modelfile`): a FROM naming a local GGUF (relative
to the Modelfile's directory) is uploaded and replaced by its digest; a FROM naming an
installed model or a blob digest goes to the daemon as is.

When the connection to the daemon drops during one of them, the command reconnects and
says whether the operation finished (see `localserve.cli.recovery`): exit 0 when it did,
3 when it did not.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TaskID

from localserve.client.http import (
    APIError,
    BadRequestAPIError,
    DaemonUnreachableError,
    ModelNotFoundAPIError,
)
from localserve.errors import BadRequestError
from localserve.service.modelfile import (
    Modelfile,
    from_kind,
    modelfile_to_create_request,
    parse_modelfile,
)
from localserve.store import catalog

# isort: split
from localserve.cli import recovery, render
from localserve.cli.common import (
    complete_model_name,
    get_settings,
    make_client,
    need_daemon,
    print_json,
)
from localserve.cli.errors import ExitCode, cli_errors, error_message, exit_code_for, fail
from localserve.cli.progress import (
    LARGE_FILE_BYTES,
    byte_progress,
    hash_file,
    pull_with_progress,
)

MODELFILE_MAX_BYTES = 4 * 1024 * 1024


def is_gguf_file(path: Path) -> bool:
    """A `.gguf` name or GGUF magic bytes (anything else `create -f` reads as a Modelfile)."""
    if path.suffix.lower() == ".gguf":
        return True
    with path.open("rb") as handle:
        return handle.read(4) == b"GGUF"


def read_modelfile(path: Path) -> Modelfile:
    """Parse a Modelfile, or exit 2 saying what is wrong with it."""
    if path.stat().st_size > MODELFILE_MAX_BYTES:
        fail(f"{path} is neither a GGUF file nor a Modelfile (too large)", ExitCode.USAGE)
    try:
        return parse_modelfile(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        fail(f"{path} is neither a GGUF file nor a UTF-8 Modelfile", ExitCode.USAGE)
    except BadRequestError as exc:
        fail(f"{path}: {exc.message}", ExitCode.USAGE)


def modelfile_gguf(modelfile: Modelfile, directory: Path) -> Path | None:
    """The local GGUF a Modelfile's FROM names (relative to the Modelfile's directory), or
    None when FROM names a model or a blob digest; exits 2 for a missing file."""
    kind = from_kind(modelfile.from_)
    if kind == "digest":
        return None
    candidate = (directory / Path(modelfile.from_).expanduser()).resolve()
    if candidate.is_dir():
        fail(
            f"FROM {modelfile.from_} is a directory: localserve creates models from one GGUF "
            "file (convert safetensors with llama.cpp's convert_hf_to_gguf.py)",
            ExitCode.USAGE,
        )
    if candidate.is_file():
        return candidate
    if kind == "path":
        fail(f"FROM {modelfile.from_}: no such file ({candidate})", ExitCode.USAGE)
    return None


def create(
    name: Annotated[str, typer.Argument(help="Name of the new model.")],
    file: Annotated[
        Path,
        typer.Option("--file", "-f", help="A Modelfile, or a GGUF file to upload.", dir_okay=False),
    ] = Path("Modelfile"),
    template: Annotated[
        str | None,
        typer.Option("--template", help="Chat template override (Jinja or Ollama's Go)."),
    ] = None,
    system: Annotated[str | None, typer.Option("--system", help="Default system message.")] = None,
) -> None:
    """Create a model from a Modelfile (FROM a local GGUF, which is uploaded, an installed
    model or a blob digest; PARAMETER, TEMPLATE, SYSTEM, MESSAGE, LICENSE) or from a GGUF
    file."""
    if not file.is_file():
        fail(f"no such file: {file}", ExitCode.USAGE)
    modelfile: Modelfile | None = None
    upload: Path | None = file
    if not is_gguf_file(file):
        modelfile = read_modelfile(file)
        upload = modelfile_gguf(modelfile, file.parent)
        if upload is None:  # FROM a model or a blob: checked here, before the daemon
            request_fields(modelfile, file)
    settings = get_settings()
    need_daemon(settings)
    size = upload.stat().st_size if upload is not None else 0
    show_progress = sys.stderr.isatty() and size >= LARGE_FILE_BYTES

    async def upload_and_create(body: dict[str, Any], digest: str | None) -> None:
        async with make_client(settings) as client:
            if upload is not None and digest is not None:
                if await client.has_blob(digest):
                    typer.echo(f"using existing blob {digest}", err=True)
                elif show_progress:
                    with byte_progress() as progress:
                        task: TaskID = progress.add_task("uploading", total=size)
                        await client.push_blob(upload, digest, lambda n: progress.advance(task, n))
                else:
                    await client.push_blob(upload, digest)
            last = None
            # The whole body: `client.create` has no parameters for messages and license.
            request = {"model": name, "stream": True, **body}
            async for item in client._stream("/api/create", request):
                status = item.get("status")
                if status and status != last:
                    typer.echo(status, err=True)
                    last = status

    with cli_errors():
        digest = hash_file(upload, size, show_progress) if upload is not None else None
        if modelfile is None:
            body: dict[str, Any] = {"files": {file.name: digest}}
        else:
            if upload is not None and digest is not None:
                modelfile.from_ = digest  # the uploaded blob
            body = request_fields(modelfile, file, upload.name if upload else "model.gguf")
        if template is not None:
            body["template"] = template
        if system is not None:
            body["system"] = system
        before = asyncio.run(recovery.versions_before(settings))
        try:
            asyncio.run(upload_and_create(body, digest))
        except DaemonUnreachableError:
            after = recovery.reconnect(settings, "create", f"whether '{name}' was created")
            recovery.finish("create", recovery.created(name, before, after))


def request_fields(
    modelfile: Modelfile, file: Path, filename: str = "model.gguf"
) -> dict[str, Any]:
    """The /api/create fields of a Modelfile, or exit 2 naming the problem."""
    try:
        return modelfile_to_create_request(modelfile, filename)
    except BadRequestError as exc:
        fail(f"{file}: {exc.message}", ExitCode.USAGE)


def catalog_cmd(
    json_: Annotated[bool, typer.Option("--json", help="Print the catalog as JSON.")] = False,
) -> None:
    """List the catalog: the short names `pull` knows (NAME, REPO, QUANT, DESCRIPTION)."""
    rows = catalog.listing()
    if json_:
        print_json({"models": rows})
        return
    table = [
        [
            str(row["name"]) + (" (offline)" if row["offline"] else ""),
            ", ".join(a for a in row["aliases"] if not a.endswith(":latest")),
            f"hf.co/{row['repo']}:{row['quant']}",
            str(row["description"]),
        ]
        for row in rows
    ]
    typer.echo(render.format_table(("NAME", "ALSO", "FROM", "DESCRIPTION"), table))


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
        try:
            asyncio.run(copy())
        except DaemonUnreachableError:
            after = recovery.reconnect(settings, "cp", f"whether '{destination}' was copied")
            outcome = recovery.copied(source, destination, after)
            if outcome.done:
                typer.echo(f"copied '{source}' to '{destination}'")
            recovery.finish("cp", outcome)
    typer.echo(f"copied '{source}' to '{destination}'")


def rm(
    models: Annotated[
        list[str], typer.Argument(help="Model names.", autocompletion=complete_model_name)
    ],
    force: Annotated[
        bool,
        typer.Option("--force", help="Also when a route uses it: the model leaves the route."),
    ] = False,
) -> None:
    """Remove models (their blobs are collected when nothing else uses them); one a route
    uses is refused unless --force (issue 14)."""
    settings = get_settings()
    need_daemon(settings)
    pending = list(models)  # the first one is in flight
    code = ExitCode.OK

    def worst(new: ExitCode) -> None:
        nonlocal code
        if code == ExitCode.OK:  # the first failure decides the exit code
            code = new

    async def remove_pending() -> None:
        async with make_client(settings) as client:
            while pending:
                name = pending[0]
                try:
                    answer = await client.delete(name, force=force)
                except (ModelNotFoundAPIError, BadRequestAPIError) as exc:
                    typer.echo(f"Error: {error_message(exc, None)}", err=True)
                    worst(exit_code_for(exc))
                except APIError as exc:
                    if exc.status != 409:
                        raise
                    typer.echo(f"Error: {error_message(exc, None)}", err=True)
                    worst(exit_code_for(exc))
                else:
                    typer.echo(f"deleted '{name}'")
                    for moved in answer.get("routes", []) if isinstance(answer, dict) else []:
                        now = " ".join(f"{t['model']}={t['weight']:g}" for t in moved["targets"])
                        typer.echo(
                            f"route '{moved['route']}' now points at {now}"
                            if now
                            else f"route '{moved['route']}' removed (it had no other version)"
                        )
                pending.pop(0)

    with cli_errors():
        while pending:
            try:
                asyncio.run(remove_pending())
            except DaemonUnreachableError:
                name = pending.pop(0)
                after = recovery.reconnect(settings, "rm", f"whether '{name}' was deleted")
                outcome = recovery.deleted(name, after)
                worst(recovery.report("rm", outcome))
                if outcome.done:
                    typer.echo(f"deleted '{name}'")
    raise typer.Exit(int(code))


def pull(
    model: Annotated[
        str,
        typer.Argument(
            help="A catalog name (llama3.2, qwen2.5:0.5b, nomic-embed-text; `localserve "
            "catalog` lists them) or hf.co/<org>/<repo>[:<quant>]."
        ),
    ],
    json_: Annotated[
        bool, typer.Option("--json", help="Print the NDJSON progress stream as is.")
    ] = False,
) -> None:
    """Download a model: a catalog name (`localserve catalog` lists them: llama3.2,
    qwen2.5:0.5b, gemma3, nomic-embed-text, ...) or any hf.co/<org>/<repo>[:<quant>] GGUF
    repo (progress bars per file; Ctrl-C stops, exit 130; pulling again resumes)."""
    settings = get_settings()
    need_daemon(settings)

    with cli_errors():
        before = asyncio.run(recovery.versions_before(settings))
        try:
            asyncio.run(pull_with_progress(settings, model, as_json=json_))
        except DaemonUnreachableError:
            after = recovery.reconnect(settings, "pull", f"whether '{model}' was pulled")
            recovery.finish("pull", recovery.pulled(model, before, after))
