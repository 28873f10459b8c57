"""Ollama-compatible routes under /api/ (same field names, NDJSON streaming)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from localserve import __version__
from localserve.errors import (
    BadRequestError,
    LocalserveError,
    NotFoundError,
    TooLargeError,
)
from localserve.names import ModelName, parse_digest
from localserve.runner.protocol import Frame
from localserve.service.inference import ResolvedModel, closing
from localserve.service.options import (
    get_bool,
    get_str,
    parse_format,
    parse_keep_alive,
    parse_options,
    require_object,
)
from localserve.service.prompts import check_template, validate_messages
from localserve.store.gguf_facts import ModelFacts
from localserve.store.store import StoredModel

if TYPE_CHECKING:
    from localserve.api.app import Daemon

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
FOREVER_YEAR_CUTOFF = 2200


def daemon_of(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


async def read_json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except json.JSONDecodeError as exc:
        raise BadRequestError(f"invalid JSON body: {exc.msg} at position {exc.pos}") from exc
    except UnicodeDecodeError as exc:
        raise BadRequestError("request body is not UTF-8") from exc
    return require_object(body)


def model_field(body: dict[str, Any]) -> str:
    """Ollama accepts `model` and the older `name`."""
    value = get_str(body, "model") or get_str(body, "name")
    if not value:
        raise BadRequestError("missing field 'model'")
    return value


def details_of(facts: ModelFacts) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": facts.architecture,
        "families": [facts.architecture],
        "parameter_size": facts.parameter_size,
        "quantization_level": facts.quantization,
    }


def model_entry(stored: StoredModel) -> dict[str, Any]:
    name = stored.name.display()
    return {
        "name": name,
        "model": name,
        "modified_at": stored.modified_at.isoformat().replace("+00:00", "Z"),
        "size": stored.manifest.model_size,
        "digest": stored.digest.removeprefix("sha256:"),
        "details": details_of(stored.manifest.facts),
    }


def timing_fields(frame: Frame) -> dict[str, Any]:
    return {
        "done_reason": frame.get("done_reason", "stop"),
        "total_duration": frame.get("total_duration", 0),
        "load_duration": frame.get("load_duration", 0),
        "prompt_eval_count": frame.get("prompt_eval_count", 0),
        "prompt_eval_duration": frame.get("prompt_eval_duration", 0),
        "eval_count": frame.get("eval_count", 0),
        "eval_duration": frame.get("eval_duration", 0),
    }


async def ndjson_response(
    request: web.Request, items: AsyncIterator[dict[str, Any]], *, hold: int = 1
) -> web.StreamResponse:
    """Stream NDJSON. The first `hold` items are awaited before the headers go out, so an
    error before them gets its real HTTP status; a later error becomes an {"error"} line.
    """
    async with closing(items):
        held: list[dict[str, Any]] = []
        while len(held) < hold and (item := await anext(items, None)) is not None:
            held.append(item)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        for item in held:
            await response.write(json.dumps(item).encode() + b"\n")
        try:
            async for item in items:
                await response.write(json.dumps(item).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            code = getattr(exc, "code", "internal_error")
            await response.write(json.dumps({"error": message, "code": code}).encode() + b"\n")
        await response.write_eof()
        return response


async def _collect(items: AsyncIterator[dict[str, Any]], merge: Callable[..., None]) -> None:
    async with closing(items):
        async for item in items:
            merge(item)


# ---- generate / chat ---------------------------------------------------------------------


async def _load_or_unload(
    request: web.Request, model: ResolvedModel, keep_alive: float | None, chat: bool
) -> web.Response:
    daemon = daemon_of(request)
    base: dict[str, Any] = {"model": model.name, "created_at": now_iso(), "done": True}
    if chat:
        base["message"] = {"role": "assistant", "content": ""}
    else:
        base["response"] = ""
    if keep_alive == 0:
        await daemon.scheduler.unload(model.stored.name)
        return web.json_response({**base, "done_reason": "unload"})
    load_ns = await daemon.service.load(model, keep_alive)
    return web.json_response({**base, "done_reason": "load", "load_duration": load_ns})


async def _generation(
    request: web.Request,
    model: ResolvedModel,
    prompt: str,
    body: dict[str, Any],
    *,
    chat: bool,
) -> web.StreamResponse:
    daemon = daemon_of(request)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    fmt = parse_format(body.get("format"))
    stream = get_bool(body, "stream", True)
    frames = daemon.service.generate(
        model, prompt, fmt=fmt, keep_alive_s=keep_alive, endpoint="chat" if chat else "generate"
    )

    def chunk(frame: Frame) -> dict[str, Any]:
        item: dict[str, Any] = {"model": model.name, "created_at": now_iso()}
        done = frame.get("event") == "done"
        text = "" if done else str(frame.get("text", ""))
        if chat:
            item["message"] = {"role": "assistant", "content": text}
        else:
            item["response"] = text
        item["done"] = done
        if done:
            item.update(timing_fields(frame))
            if not chat:
                item["context"] = []
        return item

    async def items() -> AsyncIterator[dict[str, Any]]:
        async with closing(frames):
            async for frame in frames:
                yield chunk(frame)

    if stream:
        return await ndjson_response(request, items())
    parts: list[str] = []
    final: dict[str, Any] = {}

    def merge(item: dict[str, Any]) -> None:
        nonlocal final
        if item["done"]:
            final = item
        else:
            parts.append(item["message"]["content"] if chat else item["response"])

    await _collect(items(), merge)
    if chat:
        final["message"] = {"role": "assistant", "content": "".join(parts)}
    else:
        final["response"] = "".join(parts)
    return web.json_response(final)


async def generate(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    daemon = daemon_of(request)
    options = parse_options(body.get("options"))
    model = await daemon.service.resolve(model_field(body), options)
    prompt = get_str(body, "prompt") or ""
    if body.get("images"):
        raise BadRequestError("images are not supported by this model runner")
    if not prompt:
        return await _load_or_unload(
            request, model, parse_keep_alive(body.get("keep_alive")), False
        )
    raw = get_bool(body, "raw", False)
    full_prompt = daemon.service.generate_prompt(model, prompt, get_str(body, "system"), raw)
    return await _generation(request, model, full_prompt, body, chat=False)


async def chat(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    daemon = daemon_of(request)
    options = parse_options(body.get("options"))
    model = await daemon.service.resolve(model_field(body), options)
    messages = validate_messages(body.get("messages", []))
    if not messages:
        return await _load_or_unload(request, model, parse_keep_alive(body.get("keep_alive")), True)
    prompt = daemon.service.chat_prompt(model, messages)
    return await _generation(request, model, prompt, body, chat=True)


# ---- embeddings -----------------------------------------------------------------------------


def embedding_inputs(raw: Any) -> list[str]:
    if isinstance(raw, str):
        return [raw]
    if isinstance(raw, list) and all(isinstance(x, str) for x in raw):
        return list(raw)
    raise BadRequestError("input must be a string or a list of strings")


async def embed(request: web.Request) -> web.Response:
    body = await read_json(request)
    daemon = daemon_of(request)
    model = await daemon.service.resolve(model_field(body), parse_options(body.get("options")))
    started = time.perf_counter_ns()
    vectors, count, load_ns = await daemon.service.embed(
        model,
        embedding_inputs(body.get("input")),
        truncate=get_bool(body, "truncate", True),
        normalize=True,
        keep_alive_s=parse_keep_alive(body.get("keep_alive")),
    )
    return web.json_response(
        {
            "model": model.name,
            "embeddings": vectors,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": load_ns,
            "prompt_eval_count": count,
        }
    )


async def embeddings_legacy(request: web.Request) -> web.Response:
    body = await read_json(request)
    daemon = daemon_of(request)
    model = await daemon.service.resolve(model_field(body), parse_options(body.get("options")))
    prompt = get_str(body, "prompt") or ""
    if not prompt:
        return web.json_response({"embedding": []})
    vectors, _, _ = await daemon.service.embed(
        model,
        [prompt],
        truncate=True,
        normalize=False,
        keep_alive_s=parse_keep_alive(body.get("keep_alive")),
    )
    return web.json_response({"embedding": vectors[0]})


# ---- model management ---------------------------------------------------------------------


async def tags(request: web.Request) -> web.Response:
    models = await asyncio.to_thread(daemon_of(request).store.list)
    return web.json_response({"models": [model_entry(m) for m in models]})


async def ps(request: web.Request) -> web.Response:
    daemon = daemon_of(request)
    snapshot = daemon.scheduler.snapshot()
    # The same ID as /api/tags: the manifest's digest (the blob's if it was deleted).
    digests = await asyncio.to_thread(_manifest_digests, daemon, [r["model"] for r in snapshot])
    rows = []
    for row in snapshot:
        rows.append(
            {
                "name": row["model"],
                "model": row["model"],
                "size": row["size"],
                "digest": digests.get(row["model"], row["digest"]).removeprefix("sha256:"),
                "details": details_of(row["facts"]),
                "expires_at": iso(row["expires_at"]) if row["expires_at"] else now_iso(),
                "size_vram": row["size_vram"],
                "gpu_layers": row["gpu_layers"],
                "context_length": row["context_length"],
                "state": row["state"],
                "load_progress": row["load_progress"],
                "in_flight": row["in_flight"],
                "slots": row["slots"],
                "slots_busy": row["slots_busy"],
                "queue_depth": row["queue_depth"],
                "pid": row["pid"],
                "threads": row["threads"],
            }
        )
    return web.json_response({"models": rows})


def _manifest_digests(daemon: Daemon, names: list[str]) -> dict[str, str]:
    found = {}
    for name in names:
        with contextlib.suppress(LocalserveError):
            found[name] = daemon.store.get(ModelName.parse(name)).digest
    return found


async def show(request: web.Request) -> web.Response:
    body = await read_json(request)
    daemon = daemon_of(request)
    stored = await asyncio.to_thread(daemon.store.get, ModelName.parse(model_field(body)))
    manifest = stored.manifest
    facts = manifest.facts
    parameters = "\n".join(
        f"{key:<20} {json.dumps(v) if isinstance(v, str) else v}"
        for key, value in sorted(manifest.parameters.items())
        for v in (value if isinstance(value, list) else [value])
    )
    template = manifest.template or facts.chat_template or ""
    info = dict(facts.metadata)
    info["general.parameter_count"] = facts.parameter_count
    capabilities = ["completion"] + (["embedding"] if facts.pooling else [])
    return web.json_response(
        {
            "license": str(facts.metadata.get("general.license", "")),
            "modelfile": _modelfile(stored, template, parameters),
            "parameters": parameters,
            "template": template,
            "system": manifest.system or "",
            "details": details_of(manifest.facts),
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": stored.modified_at.isoformat().replace("+00:00", "Z"),
            "source": manifest.source,
        }
    )


def _modelfile(stored: StoredModel, template: str, parameters: str) -> str:
    lines = [
        f"# Modelfile generated by localserve for {stored.name.display()}",
        f"FROM {stored.manifest.model_digest}",
    ]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if stored.manifest.system:
        lines.append(f'SYSTEM """{stored.manifest.system}"""')
    lines.extend(f"PARAMETER {line}" for line in parameters.splitlines())
    return "\n".join(lines) + "\n"


async def copy(request: web.Request) -> web.Response:
    body = await read_json(request)
    source = ModelName.parse(get_str(body, "source", required=True))
    destination = ModelName.parse(get_str(body, "destination", required=True))
    await asyncio.to_thread(daemon_of(request).store.copy, source, destination)
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    body = await read_json(request)
    daemon = daemon_of(request)
    name = ModelName.parse(model_field(body))
    await asyncio.to_thread(daemon.store.get, name)  # 404 before touching anything
    await daemon.scheduler.unload(name)
    await asyncio.to_thread(daemon.store.delete, name)
    return web.Response(status=200)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


async def root(request: web.Request) -> web.Response:
    return web.Response(text="localserve is running")


# ---- blobs and create ----------------------------------------------------------------------


async def blob_head(request: web.Request) -> web.Response:
    digest = parse_digest(request.match_info["digest"])
    if await asyncio.to_thread(daemon_of(request).store.has_blob, digest):
        return web.Response(status=200)
    raise NotFoundError(f"blob {digest} not found")


async def blob_upload(request: web.Request) -> web.Response:
    """Stream the body into the store, verify it against the digest in the URL."""
    daemon = daemon_of(request)
    expected = parse_digest(request.match_info["digest"])
    store = daemon.store
    if await asyncio.to_thread(store.has_blob, expected):
        await request.release()
        return web.Response(status=200)
    limit = daemon.settings.max_blob_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLargeError(f"blob larger than the limit of {limit} bytes")
    hasher = hashlib.sha256()
    size = 0
    with store.temp_file() as (path, handle):
        async for chunk in request.content.iter_chunked(1024 * 1024):
            size += len(chunk)
            if size > limit:
                raise TooLargeError(f"blob larger than the limit of {limit} bytes")
            hasher.update(chunk)
            await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(_flush_and_sync, handle)
        actual = f"sha256:{hasher.hexdigest()}"
        await asyncio.to_thread(store.register_blob, path, actual, expected)
    return web.Response(status=201)


def _flush_and_sync(handle: Any) -> None:
    import os

    handle.flush()
    os.fsync(handle.fileno())


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    daemon = daemon_of(request)
    name = ModelName.parse(model_field(body))
    stream = get_bool(body, "stream", True)
    if body.get("quantize"):
        raise BadRequestError("quantize is not supported: create from an already quantized GGUF")
    if body.get("adapters"):
        raise BadRequestError("adapters are not supported")
    if body.get("modelfile"):
        raise BadRequestError(
            "modelfile is not supported; send 'files' (uploaded blobs) or 'from' instead"
        )
    template = get_str(body, "template")
    if template is not None:
        check_template(template)
    system = get_str(body, "system")
    raw_parameters = body.get("parameters")
    if raw_parameters is not None and not isinstance(raw_parameters, dict):
        raise BadRequestError("parameters must be an object")
    parameters = parse_options(raw_parameters) if raw_parameters else None
    files = body.get("files")
    source_name = get_str(body, "from")
    store = daemon.store

    if files is not None:
        if not isinstance(files, dict) or not files:
            raise BadRequestError("files must be an object of file name -> digest")
        ggufs = [(k, v) for k, v in files.items() if str(k).lower().endswith(".gguf")]
        if len(ggufs) != 1 or len(files) != 1:
            raise BadRequestError("exactly one .gguf file is supported in files")
        file_name, digest_text = ggufs[0]
        digest = parse_digest(digest_text)

        async def from_blob() -> AsyncIterator[dict[str, Any]]:
            # The GGUF is checked before the first line, so a bad file gets a real 400.
            await asyncio.to_thread(
                store.create_model,
                name,
                digest,
                template=template,
                system=system,
                parameters=parameters,
                source={"type": "upload", "file": str(file_name)},
            )
            yield {"status": "parsing GGUF"}
            yield {"status": "writing manifest"}
            yield {"status": "success"}

        items = from_blob()
    elif source_name is not None:
        base = await asyncio.to_thread(store.get, ModelName.parse(source_name))

        async def from_model() -> AsyncIterator[dict[str, Any]]:
            manifest = base.manifest
            await asyncio.to_thread(
                store.create_model,
                name,
                manifest.model_digest,
                template=template if template is not None else manifest.template,
                system=system if system is not None else manifest.system,
                parameters={**manifest.parameters, **(parameters or {})},
                source={**manifest.source, "from": base.name.display()},
            )
            yield {"status": "writing manifest"}
            yield {"status": "success"}

        items = from_model()
    else:
        raise BadRequestError("create needs 'files' (uploaded blobs) or 'from' (a model)")

    if stream:
        return await ndjson_response(request, items)
    await _collect(items, lambda item: None)
    return web.json_response({"status": "success"})


async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    daemon = daemon_of(request)
    raw_name = model_field(body)
    name = ModelName.parse(raw_name)
    stream = get_bool(body, "stream", True)
    items = daemon.pull(name, raw_name)
    if stream:
        # Hold "pulling manifest" until the hub answered: unknown repos and quants get
        # their real status instead of an error line after a 200.
        return await ndjson_response(request, items, hold=2)
    last: dict[str, Any] = {}

    def merge(item: dict[str, Any]) -> None:
        last.update(item)

    await _collect(items, merge)
    return web.json_response({"status": last.get("status", "success")})


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

__all__ = ["DAEMON_KEY", "Handler"]
