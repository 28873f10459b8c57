"""OpenAI-compatible routes under /v1/ (SSE streaming, OpenAI's error shape)."""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from localserve.api.ollama import daemon_of, embedding_inputs, read_json
from localserve.errors import BadRequestError
from localserve.names import ModelName
from localserve.runner.protocol import Frame
from localserve.service.inference import ResolvedModel, closing
from localserve.service.options import get_bool, get_str, parse_keep_alive, parse_options
from localserve.service.prompts import validate_messages

FINISH_REASONS = {"stop": "stop", "length": "length", "cancel": "stop"}


def openai_error(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    kinds = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "invalid_request_error",
        422: "invalid_request_error",
        503: "server_busy",
        507: "insufficient_storage",
    }
    return {
        "error": {
            "message": message,
            "type": kinds.get(status, "api_error"),
            "param": None,
            "code": code,
        }
    }


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI sampling fields as Ollama options."""
    raw: dict[str, Any] = {}
    mapping = {
        "temperature": "temperature",
        "top_p": "top_p",
        "seed": "seed",
        "presence_penalty": "presence_penalty",
        "frequency_penalty": "frequency_penalty",
        "stop": "stop",
    }
    for field, option in mapping.items():
        if body.get(field) is not None:
            raw[option] = body[field]
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None:
        raw["num_predict"] = max_tokens
    return parse_options(raw)


def _response_format(body: dict[str, Any]) -> str | dict[str, Any] | None:
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise BadRequestError("response_format must be an object")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        json_schema = fmt.get("json_schema")
        schema = json_schema.get("schema") if isinstance(json_schema, dict) else None
        if not isinstance(schema, dict):
            raise BadRequestError("response_format.json_schema.schema must be an object")
        return schema
    raise BadRequestError("response_format.type must be text, json_object or json_schema")


def _usage(frame: Frame) -> dict[str, int]:
    prompt = int(frame.get("prompt_eval_count", 0))
    completion = int(frame.get("eval_count", 0))
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


async def _sse(request: web.Request, events: AsyncIterator[dict[str, Any]]) -> web.StreamResponse:
    async with closing(events):
        first = await anext(events, None)  # an error before it gets its real status
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        if first is not None:
            await response.write(b"data: " + json.dumps(first).encode() + b"\n\n")
        try:
            async for event in events:
                await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            raise
        except Exception as exc:
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            error = openai_error(
                getattr(exc, "status", 500), message, getattr(exc, "code", "internal_error")
            )
            await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _run(
    request: web.Request,
    model: ResolvedModel,
    prompt: str,
    body: dict[str, Any],
    *,
    chat: bool,
) -> web.StreamResponse:
    daemon = daemon_of(request)
    stream = get_bool(body, "stream", False)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise BadRequestError("stream_options must be an object")
    include_usage = bool((stream_options or {}).get("include_usage"))
    frames = daemon.service.generate(
        model,
        prompt,
        fmt=_response_format(body),
        keep_alive_s=parse_keep_alive(body.get("keep_alive")),
        endpoint="v1/chat/completions" if chat else "v1/completions",
    )
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    base = {
        "id": ident,
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model.name,
        "system_fingerprint": "fp_localserve",
    }

    def choice(text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        if chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
            if not first and text is not None:
                delta = {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    if stream:

        async def events() -> AsyncIterator[dict[str, Any]]:
            first = True
            async with closing(frames):
                async for frame in frames:
                    if frame.get("event") == "done":
                        finish = FINISH_REASONS.get(str(frame.get("done_reason")), "stop")
                        yield {**base, "choices": [choice(None if chat else "", finish, False)]}
                        if include_usage:
                            yield {**base, "choices": [], "usage": _usage(frame)}
                    else:
                        yield {**base, "choices": [choice(str(frame.get("text", "")), None, first)]}
                        first = False

        return await _sse(request, events())

    parts: list[str] = []
    final: Frame = {}
    async with closing(frames):
        async for frame in frames:
            if frame.get("event") == "done":
                final = frame
            else:
                parts.append(str(frame.get("text", "")))
    text = "".join(parts)
    finish = FINISH_REASONS.get(str(final.get("done_reason")), "stop")
    result_choice: dict[str, Any] = (
        {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }
        if chat
        else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    )
    return web.json_response(
        {
            **base,
            "object": "chat.completion" if chat else "text_completion",
            "choices": [result_choice],
            "usage": _usage(final),
        }
    )


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    daemon = daemon_of(request)
    model = await daemon.service.resolve(
        get_str(body, "model", required=True) or "", _options(body)
    )
    messages = validate_messages(body.get("messages"))
    if not messages:
        raise BadRequestError("messages must not be empty")
    return await _run(request, model, daemon.service.chat_prompt(model, messages), body, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    daemon = daemon_of(request)
    model = await daemon.service.resolve(
        get_str(body, "model", required=True) or "", _options(body)
    )
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequestError("prompt must be a string (token arrays and batches are unsupported)")
    if body.get("suffix"):
        raise BadRequestError("suffix is not supported")
    return await _run(request, model, prompt, body, chat=False)


def _model_object(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "localserve"}


async def models(request: web.Request) -> web.Response:
    stored = await asyncio.to_thread(daemon_of(request).store.list)
    data = [_model_object(m.name.display(), m.modified_at.timestamp()) for m in stored]
    return web.json_response({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    name = ModelName.parse(request.match_info["model"])
    stored = await asyncio.to_thread(daemon_of(request).store.get, name)
    return web.json_response(_model_object(name.display(), stored.modified_at.timestamp()))


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """OpenAI's base64 encoding: little-endian float32 bytes."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    daemon = daemon_of(request)
    resolved = await daemon.service.resolve(get_str(body, "model", required=True) or "", {})
    inputs = embedding_inputs(body.get("input"))
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequestError("encoding_format must be 'float' or 'base64'")
    vectors, count, _ = await daemon.service.embed(
        resolved, inputs, truncate=True, normalize=True, keep_alive_s=None
    )
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": _encode(vector, encoding), "index": index}
                for index, vector in enumerate(vectors)
            ],
            "model": resolved.name,
            "usage": {"prompt_tokens": count, "total_tokens": count},
        }
    )
