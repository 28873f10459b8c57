"""OpenAI's dialect, the /v1 sub-app (SSE streaming, OpenAI's error shape): each route
translates its body into a service request and the service's events into OpenAI's
chunks.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from localserve.api.requests import embedding_inputs, inference_of, models_of, read_json
from localserve.api.streaming import OPENAI_SSE, stream
from localserve.errors import BadRequestError
from localserve.service.inference import (
    Answer,
    EmbeddingRequest,
    Finished,
    Generation,
    GenerationEvent,
    GenerationRequest,
    Thinking,
    Token,
    ToolCalls,
    collect,
)
from localserve.service.options import (
    get_bool,
    get_int,
    get_str,
    parse_keep_alive,
    parse_options,
    refuse_unsupported,
)
from localserve.service.prompts import validate_messages
from localserve.service.thinking import THINK_LEVELS
from localserve.service.tools import (
    ToolCall,
    validate_parallel_tool_calls,
    validate_tool_choice,
    validate_tools,
)

FINISH_REASONS = {"stop": "stop", "length": "length", "cancel": "stop"}


def _finish_reason(finished: Finished, calls: list[ToolCall]) -> str:
    if calls:
        return "tool_calls"
    return FINISH_REASONS.get(finished.done_reason, "stop")


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


def _usage(finished: Finished) -> dict[str, Any]:
    """OpenAI's usage: `prompt_tokens` counts the whole prompt; the part read from the
    prompt cache is in `prompt_tokens_details.cached_tokens`."""
    prompt = max(finished.prompt_tokens, finished.prompt_eval_count)
    completion = finished.eval_count
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": finished.cached_tokens},
    }


def _reasoning_effort(body: dict[str, Any]) -> str | None:
    """OpenAI's `reasoning_effort` as a thinking level ("minimal" counts as "low")."""
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort == "minimal":
        return "low"
    if effort not in THINK_LEVELS:
        raise BadRequestError("reasoning_effort must be minimal, low, medium or high")
    return str(effort)


def _include_usage(body: dict[str, Any]) -> bool:
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise BadRequestError("stream_options must be an object")
    return bool((stream_options or {}).get("include_usage"))


class _Completion:
    """OpenAI's answer objects for one generation: chat (`chat.completion[.chunk]`,
    `delta`/`message`) or legacy completions (`text_completion`, `text`)."""

    def __init__(self, model: str, chat: bool) -> None:
        self.chat = chat
        self.base = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_localserve",
        }

    def _chunk_choice(self, text: str | None, finish: str | None, first: bool) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
            if not first and text is not None:
                delta = {"content": text}
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}

    async def chunks(
        self, events: AsyncIterator[GenerationEvent], include_usage: bool
    ) -> AsyncIterator[dict[str, Any]]:
        first = True
        calls: list[ToolCall] = []
        async for event in events:
            if isinstance(event, Token):
                yield {**self.base, "choices": [self._chunk_choice(event.text, None, first)]}
                first = False
                continue
            if isinstance(event, Thinking | ToolCalls):
                if isinstance(event, Thinking):
                    delta: dict[str, Any] = {"reasoning_content": event.text}
                else:
                    calls.extend(event.calls)
                    delta = {"tool_calls": [c.to_openai(i) for i, c in enumerate(event.calls)]}
                if first:
                    delta = {"role": "assistant", "content": None, **delta}
                    first = False
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                yield {**self.base, "choices": [choice]}
                continue
            finish = _finish_reason(event, calls)
            closing = self._chunk_choice(None if self.chat else "", finish, False)
            yield {**self.base, "choices": [closing]}
            if include_usage:
                yield {**self.base, "choices": [], "usage": _usage(event)}

    def whole(self, answer: Answer) -> dict[str, Any]:
        text, finished, calls = answer.text, answer.finished, answer.calls
        finish = _finish_reason(finished, calls)
        if self.chat:
            message: dict[str, Any] = {"role": "assistant", "content": text or None}
            if calls:
                message["tool_calls"] = [call.to_openai() for call in calls]
            else:
                message["content"] = text
            if answer.thinking:
                message["reasoning_content"] = answer.thinking
            choice: dict[str, Any] = {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
            }
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {
            **self.base,
            "object": "chat.completion" if self.chat else "text_completion",
            "choices": [choice],
            "usage": _usage(finished),
        }


async def _answer(
    request: web.Request, body: dict[str, Any], generation: Generation, *, chat: bool
) -> web.StreamResponse:
    completion = _Completion(generation.model_name, chat)
    if get_bool(body, "stream", False):
        chunks = completion.chunks(generation.events(), _include_usage(body))
        return await stream(request, chunks, OPENAI_SSE)
    return web.json_response(completion.whole(await collect(generation.events())))


def _generation_request(body: dict[str, Any], endpoint: str, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        model=get_str(body, "model", required=True) or "",
        endpoint=endpoint,
        options=_options(body),
        format=_response_format(body),
        keep_alive_s=parse_keep_alive(body.get("keep_alive")),
        think=_reasoning_effort(body),
        **fields,
    )


# Fields OpenAI clients send that localserve does not act on yet: refused by name.
UNSUPPORTED = {
    "logprobs": "token log probabilities are not implemented yet",
    "top_logprobs": "token log probabilities are not implemented yet",
    "logit_bias": "logit biases are not implemented",
    "audio": "this model does not support audio",
    "prediction": "predicted outputs are not implemented",
}


def _refuse(body: dict[str, Any]) -> None:
    refuse_unsupported(body, UNSUPPORTED)
    n = body.get("n")
    if n is not None and n != 1:
        raise BadRequestError("field 'n' is not supported: one choice per request (n=1)")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _refuse(body)
    messages = validate_messages(body.get("messages"))
    if not messages:
        raise BadRequestError("messages must not be empty")
    _include_usage(body)
    tools = validate_tools(body["tools"]) if body.get("tools") else []
    generation_request = _generation_request(
        body,
        "v1/chat/completions",
        messages=messages,
        tools=tools or None,
        tool_choice=validate_tool_choice(body.get("tool_choice"), tools),
        parallel_tool_calls=validate_parallel_tool_calls(body.get("parallel_tool_calls")),
    )
    generation = await inference_of(request).start(generation_request)
    return await _answer(request, body, generation, chat=True)


async def completions(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    _refuse(body)
    if body.get("echo"):
        raise BadRequestError("field 'echo' is not supported")
    best_of = body.get("best_of")
    if best_of is not None and best_of != 1:
        raise BadRequestError("field 'best_of' is not supported: one completion per request")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequestError("prompt must be a string (token arrays and batches are unsupported)")
    if body.get("suffix"):
        raise BadRequestError("suffix is not supported")
    _include_usage(body)
    generation_request = _generation_request(body, "v1/completions", prompt=prompt, raw=True)
    generation = await inference_of(request).start(generation_request)
    return await _answer(request, body, generation, chat=False)


def _model_object(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "localserve"}


async def models(request: web.Request) -> web.Response:
    stored = await models_of(request).list()
    data = [_model_object(m.name.display(), m.modified_at.timestamp()) for m in stored]
    return web.json_response({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    stored = await models_of(request).get(request.match_info["model"])
    return web.json_response(_model_object(stored.name.display(), stored.modified_at.timestamp()))


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    """OpenAI's base64 encoding: little-endian float32 bytes."""
    if encoding == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


async def embeddings(request: web.Request) -> web.Response:
    body = await read_json(request)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadRequestError("encoding_format must be 'float' or 'base64'")
    result = await inference_of(request).embed(
        EmbeddingRequest(
            model=get_str(body, "model", required=True) or "",
            inputs=embedding_inputs(body.get("input")),
            dimensions=get_int(body, "dimensions"),
        )
    )
    return web.json_response(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "embedding": _encode(vector, encoding), "index": index}
                for index, vector in enumerate(result.vectors)
            ],
            "model": result.model,
            "usage": {
                "prompt_tokens": result.prompt_eval_count,
                "total_tokens": result.prompt_eval_count,
            },
        }
    )
