"""Ollama's dialect under /api/ (same field names, NDJSON streaming): each route
translates its body into a service request and the service's answer into Ollama's shape.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from localserve import __version__
from localserve.api import routing as routing_api
from localserve.api.payloads import ModelDetails, PsModel, PsResponse, ShowResponse, TagsModel
from localserve.api.requests import (
    embedding_inputs,
    inference_of,
    model_field,
    models_of,
    read_json,
    routing_of,
)
from localserve.api.streaming import NDJSON, drain, stream
from localserve.errors import BadRequestError, NotFoundError
from localserve.runner.protocol import MAX_TOP_LOGPROBS
from localserve.service.go_template import is_go_template, translate_go_template
from localserve.service.inference import (
    EmbeddingRequest,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Logprob,
    Thinking,
    Token,
    ToolCalls,
    collect,
)
from localserve.service.modelfile import (
    Modelfile,
    ModelfileMessage,
    modelfile_to_create_request,
    parse_modelfile,
    render_modelfile,
)
from localserve.service.models import CreateRequest
from localserve.service.options import (
    get_bool,
    get_int,
    get_str,
    parse_format,
    parse_keep_alive,
    parse_options,
    refuse_unsupported,
)
from localserve.service.prompts import validate_messages
from localserve.service.thinking import THINK_LEVELS
from localserve.service.tools import (
    ToolCall,
    template_supports_thinking,
    template_supports_tools,
    validate_tools,
)
from localserve.store.gguf_facts import ModelFacts
from localserve.store.store import StoredModel


def now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def details_of(facts: ModelFacts) -> ModelDetails:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": facts.architecture,
        "families": [facts.architecture],
        "parameter_size": facts.parameter_size,
        "quantization_level": facts.quantization,
    }


def model_entry(stored: StoredModel) -> TagsModel:
    name = stored.name.display()
    return {
        "name": name,
        "model": name,
        "modified_at": stored.modified_at.isoformat().replace("+00:00", "Z"),
        "size": stored.manifest.model_size,
        "digest": stored.digest.removeprefix("sha256:"),
        "details": details_of(stored.manifest.facts),
    }


# ---- generate / chat ---------------------------------------------------------------------


# Fields /api/chat does not act on (it has messages, not token context): refused by name.
CHAT_UNSUPPORTED = {
    "context": "token context is for /api/generate; send the conversation as messages",
}


def _generation_request(body: dict[str, Any], *, chat: bool) -> GenerationRequest | None:
    """The body as a service request; None for Ollama's load/unload (no prompt)."""
    if chat:
        refuse_unsupported(body, CHAT_UNSUPPORTED)
    options = parse_options(body.get("options"))
    common: dict[str, Any] = {
        "model": model_field(body),
        "options": options,
        "format": parse_format(body.get("format")),
        "keep_alive_s": parse_keep_alive(body.get("keep_alive")),
        "think": _think(body.get("think")),
        "logprobs": _logprobs(body),
    }
    if chat:
        messages = validate_messages(body.get("messages", []))
        if not messages:
            return None
        tools = validate_tools(body["tools"]) if body.get("tools") else None
        return GenerationRequest(endpoint="chat", messages=messages, tools=tools, **common)
    if body.get("images"):
        raise BadRequestError("images are not supported by this model runner")
    prompt = get_str(body, "prompt") or ""
    suffix = get_str(body, "suffix")
    if not prompt and not suffix:
        return None
    return GenerationRequest(
        endpoint="generate",
        prompt=prompt,
        suffix=suffix or None,
        template=get_str(body, "template") or None,
        system=get_str(body, "system"),
        raw=get_bool(body, "raw", False),
        context=_context(body.get("context")),
        return_context=True,
        **common,
    )


def _logprobs(body: dict[str, Any]) -> int | None:
    """Ollama's `logprobs: true` (+ `top_logprobs: N`, 0..20): alternatives per token."""
    wanted = get_bool(body, "logprobs", False)
    top = body.get("top_logprobs")
    if top is None:
        top = 0
    elif type(top) is not int or not 0 <= top <= MAX_TOP_LOGPROBS:
        raise BadRequestError(
            f"field 'top_logprobs' must be an integer from 0 to {MAX_TOP_LOGPROBS}"
        )
    if top and not wanted:
        raise BadRequestError("field 'top_logprobs' needs 'logprobs': true")
    return top if wanted else None


def _context(raw: Any) -> list[int] | None:
    """Ollama's `context` (the token ids a generate answer returned): a list of ids."""
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list) or not all(type(t) is int and t >= 0 for t in raw):
        raise BadRequestError("field 'context' must be a list of token ids (integers >= 0)")
    return raw


def _think(raw: Any) -> bool | str | None:
    """Ollama's `think`: true, false, or a level ("low", "medium", "high")."""
    if raw is None or isinstance(raw, bool) or raw in THINK_LEVELS:
        return raw  # type: ignore[no-any-return]
    raise BadRequestError(f"think must be true, false or one of {', '.join(THINK_LEVELS)}")


class _Chunks:
    """Ollama's chunks of one answer: `response` (generate) or `message` (chat), with
    `thinking` apart."""

    def __init__(self, model: str, chat: bool, *, logprobs: bool = False) -> None:
        self.model = model
        self.chat = chat
        self.logprobs = logprobs  # the request asked for them: every text chunk has a list

    def text(
        self,
        text: str,
        *,
        done: bool = False,
        thinking: str = "",
        logprobs: Sequence[Logprob] = (),
    ) -> dict[str, Any]:
        item: dict[str, Any] = {"model": self.model, "created_at": now_iso()}
        if self.chat:
            item["message"] = {"role": "assistant", "content": text}
            if thinking:
                item["message"]["thinking"] = thinking
        else:
            item["response"] = text
            if thinking:
                item["thinking"] = thinking
        if self.logprobs and (logprobs or not done):
            item["logprobs"] = list(logprobs)
        item["done"] = done
        return item

    def final(
        self,
        finished: Finished,
        text: str = "",
        calls: list[ToolCall] | None = None,
        thinking: str = "",
        logprobs: Sequence[Logprob] = (),
    ) -> dict[str, Any]:
        """The done chunk; it carries the answer's tool calls, as Ollama's does, and
        (generate) the token context of the prompt and answer."""
        item = self.text(text, done=True, thinking=thinking, logprobs=logprobs)
        if calls:
            item["message"]["tool_calls"] = [call.to_ollama() for call in calls]
        item.update(finished.timings())
        if finished.context is not None:
            item["context"] = finished.context
        if finished.served_by:  # a route answered: the version that served (issue 14)
            item["served_by"] = finished.served_by
        return item

    async def stream(self, events: AsyncIterator[GenerationEvent]) -> AsyncIterator[Any]:
        calls: list[ToolCall] = []
        async for event in events:
            if isinstance(event, Token):
                yield self.text(event.text, logprobs=event.logprobs)
            elif isinstance(event, Thinking):
                yield self.text("", thinking=event.text)
            elif isinstance(event, ToolCalls):
                calls.extend(event.calls)
            else:
                yield self.final(event, calls=calls)


async def _generation(request: web.Request, *, chat: bool) -> web.StreamResponse:
    body = await read_json(request)
    generation = _generation_request(body, chat=chat)
    if generation is None:
        return await _load_or_unload(request, body, chat)
    started = await inference_of(request).start(generation)
    chunks = _Chunks(started.model_name, chat, logprobs=generation.logprobs is not None)
    if get_bool(body, "stream", True):
        return await stream(request, chunks.stream(started.events()), NDJSON)
    answer = await collect(started.events())
    final = chunks.final(
        answer.finished, answer.text, answer.calls, answer.thinking, answer.logprobs
    )
    return web.json_response(final)


async def _load_or_unload(request: web.Request, body: dict[str, Any], chat: bool) -> web.Response:
    """Ollama's empty prompt: load the model (or unload it with keep_alive 0)."""
    inference = inference_of(request)
    raw_name = model_field(body)
    keep_alive = parse_keep_alive(body.get("keep_alive"))
    if keep_alive == 0:
        name = await inference.unload(raw_name)
        return web.json_response(
            {**_Chunks(name, chat).text("", done=True), "done_reason": "unload"}
        )
    name, load_ns = await inference.load(raw_name, parse_options(body.get("options")), keep_alive)
    base = _Chunks(name, chat).text("", done=True)
    return web.json_response({**base, "done_reason": "load", "load_duration": load_ns})


async def generate(request: web.Request) -> web.StreamResponse:
    return await _generation(request, chat=False)


async def chat(request: web.Request) -> web.StreamResponse:
    return await _generation(request, chat=True)


# ---- embeddings -----------------------------------------------------------------------------


async def embed(request: web.Request) -> web.Response:
    body = await read_json(request)
    started = time.perf_counter_ns()
    result = await inference_of(request).embed(
        EmbeddingRequest(
            model=model_field(body),
            inputs=embedding_inputs(body.get("input")),
            options=parse_options(body.get("options")),
            truncate=get_bool(body, "truncate", True),
            keep_alive_s=parse_keep_alive(body.get("keep_alive")),
            dimensions=get_int(body, "dimensions"),
        )
    )
    return web.json_response(
        {
            "model": result.model,
            "embeddings": result.vectors,
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": result.load_duration,
            "prompt_eval_count": result.prompt_eval_count,
        }
    )


async def embeddings_legacy(request: web.Request) -> web.Response:
    body = await read_json(request)
    inference = inference_of(request)
    raw_name = model_field(body)
    options = parse_options(body.get("options"))
    prompt = get_str(body, "prompt") or ""
    if not prompt:
        await inference.resolve(raw_name, options)  # an unknown model is still a 404
        return web.json_response({"embedding": []})
    result = await inference.embed(
        EmbeddingRequest(
            model=raw_name,
            inputs=[prompt],
            options=options,
            normalize=False,
            keep_alive_s=parse_keep_alive(body.get("keep_alive")),
        )
    )
    return web.json_response({"embedding": result.vectors[0]})


# ---- model management ---------------------------------------------------------------------


async def tags(request: web.Request) -> web.Response:
    models = await models_of(request).list()
    routes = await routing_api.tag_entries(request, model_entry)  # routes list as models
    return web.json_response({"models": [model_entry(m) for m in models] + routes})


async def ps(request: web.Request) -> web.Response:
    models = models_of(request)
    routing = routing_of(request)
    snapshot = models.running()
    # The same ID as /api/tags: the manifest's digest (the blob's if it was deleted).
    digests = await models.manifest_digests([r["model"] for r in snapshot])
    rows: list[PsModel] = [
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
            "queued_by_key": row.get("queued_by_key", {}),
            "routes": routing.shares_of(row["model"]),  # issue 14: {route: share}
            "replicas": list(row.get("replicas", [])),
        }
        for row in snapshot
    ]
    answer: PsResponse = {"models": rows}
    return web.json_response(answer)


async def show(request: web.Request) -> web.Response:
    body = await read_json(request)
    # A route shows its largest-weight version (clients call show on what tags lists).
    stored = await models_of(request).get(routing_of(request).primary_name(model_field(body)))
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
    if get_bool(body, "verbose", False):  # the tokenizer arrays too, as Ollama's verbose
        info.update(await models_of(request).tokenizer_arrays(stored))
    capabilities = ["completion"] + (["embedding"] if facts.pooling else [])
    if template_supports_tools(template):
        capabilities.append("tools")
    if template_supports_thinking(template):
        capabilities.append("thinking")
    if facts.fim_tokens:
        capabilities.append("insert")
    answer: ShowResponse = {
        "license": "\n\n".join(manifest.license) or str(facts.metadata.get("general.license", "")),
        "modelfile": _modelfile(stored, template),
        "parameters": parameters,
        "template": manifest.template_source or template,
        "system": manifest.system or "",
        "details": details_of(manifest.facts),
        "model_info": info,
        "capabilities": capabilities,
        "modified_at": stored.modified_at.isoformat().replace("+00:00", "Z"),
        "source": manifest.source,
        "messages": manifest.messages,
    }
    return web.json_response(answer)


def _modelfile(stored: StoredModel, template: str) -> str:
    """A Modelfile that `create` reads back (FROM the blob's digest)."""
    manifest, name = stored.manifest, stored.name.display()
    modelfile = Modelfile(
        from_=manifest.model_digest,
        template=manifest.template_source or template or None,
        system=manifest.system,
        parameters=dict(manifest.parameters),
        messages=[ModelfileMessage(m["role"], m["content"]) for m in manifest.messages],
        licenses=list(manifest.license),
    )
    return render_modelfile(
        modelfile,
        header=(
            f"Modelfile generated by localserve for {name}\n"
            f"To build a new Modelfile based on this one, replace FROM with:\nFROM {name}"
        ),
    )


async def copy(request: web.Request) -> web.Response:
    body = await read_json(request)
    source = get_str(body, "source", required=True) or ""
    destination = get_str(body, "destination", required=True) or ""
    await models_of(request).copy(source, destination)
    return web.Response(status=200)


async def delete(request: web.Request) -> web.Response:
    """Delete a model; one a route uses is a 409 naming the route, unless `force` (the
    model then leaves its routes: the answer says what each now points at)."""
    body = await read_json(request)
    name = model_field(body)
    models = models_of(request)
    await models.get(name)  # 404 before touching any route
    removals = await routing_of(request).release_model(name, force=get_bool(body, "force", False))
    await models.delete(name)
    if not removals:
        return web.Response(status=200)
    routes = [{"route": r.route, "targets": [t.to_json() for t in r.targets]} for r in removals]
    return web.json_response({"routes": routes})


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": __version__})


async def root(request: web.Request) -> web.Response:
    return web.Response(text="localserve is running")


# ---- blobs and create ----------------------------------------------------------------------


async def blob_head(request: web.Request) -> web.Response:
    digest = request.match_info["digest"]
    if await models_of(request).has_blob(digest):
        return web.Response(status=200)
    raise NotFoundError(f"blob {digest} not found")


async def blob_upload(request: web.Request) -> web.Response:
    """Stream the body into the store, verified against the digest in the URL."""
    created = await models_of(request).upload_blob(
        request.match_info["digest"],
        request.content.iter_chunked(1024 * 1024),
        request.content_length,
    )
    if not created:
        await request.release()
    return web.Response(status=201 if created else 200)


def _create_request(body: dict[str, Any]) -> CreateRequest:
    if body.get("quantize"):
        raise BadRequestError("quantize is not supported: create from an already quantized GGUF")
    if body.get("adapters"):
        raise BadRequestError("adapters are not supported")
    text = body.get("modelfile")
    if text is not None:
        if not isinstance(text, str):
            raise BadRequestError("field 'modelfile' must be a string")
        from_modelfile = modelfile_to_create_request(parse_modelfile(text))
        sent = {k: v for k, v in body.items() if k != "modelfile" and v is not None}
        body = {**from_modelfile, **sent}  # fields sent beside the Modelfile win
    raw_parameters = body.get("parameters")
    if raw_parameters is not None and not isinstance(raw_parameters, dict):
        raise BadRequestError("parameters must be an object")
    template = get_str(body, "template")
    template_source = None
    if template is not None and is_go_template(template):
        template_source, template = template, translate_go_template(template)
    raw_messages = body.get("messages")
    messages = validate_messages(raw_messages) if raw_messages is not None else None
    if messages and any(m["role"] not in ("system", "user", "assistant") for m in messages):
        raise BadRequestError("messages roles must be system, user or assistant")
    license_text = body.get("license")
    licenses = [license_text] if isinstance(license_text, str) else license_text
    if licenses is not None and not (
        isinstance(licenses, list) and all(isinstance(x, str) for x in licenses)
    ):
        raise BadRequestError("field 'license' must be a string or a list of strings")
    fields: dict[str, Any] = {
        "name": model_field(body),
        "template": template,
        "template_source": template_source,
        "system": get_str(body, "system"),
        "parameters": parse_options(raw_parameters) if raw_parameters else None,
        "messages": [{"role": m["role"], "content": m["content"]} for m in messages]
        if messages is not None
        else None,
        "license": licenses,
    }
    files = body.get("files")
    if files is not None:
        if not isinstance(files, dict) or not files:
            raise BadRequestError("files must be an object of file name -> digest")
        ggufs = [(k, v) for k, v in files.items() if str(k).lower().endswith(".gguf")]
        if len(ggufs) != 1 or len(files) != 1:
            raise BadRequestError("exactly one .gguf file is supported in files")
        file_name, digest = ggufs[0]
        if not isinstance(digest, str):
            raise BadRequestError("files must map a file name to a digest string")
        return CreateRequest(file_digest=digest, file_name=str(file_name), **fields)
    source = get_str(body, "from")
    if source is None:
        raise BadRequestError(
            "create needs 'files' (uploaded blobs), 'from' (a model) or 'modelfile'"
        )
    return CreateRequest(from_model=source, **fields)


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    items = models_of(request).create(_create_request(body))
    if get_bool(body, "stream", True):
        return await stream(request, items, NDJSON)
    await drain(items)
    return web.json_response({"status": "success"})


async def pull(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    items = models_of(request).pull(model_field(body))
    if get_bool(body, "stream", True):
        # Hold "pulling manifest" until the hub answered: unknown repos and quants get
        # their real status instead of an error line after a 200.
        return await stream(request, items, NDJSON, hold=2)
    last: dict[str, Any] = {}
    for item in await drain(items):
        last.update(item)
    return web.json_response({"status": last.get("status", "success")})
