"""OpenAI's dialect, the /v1 sub-app (SSE streaming, OpenAI's error shape): each route
translates its body into a service request and the service's events into OpenAI's
chunks.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiohttp import web

from localserve.api import routing as routing_api
from localserve.api.requests import embedding_inputs, inference_of, models_of, read_json
from localserve.api.streaming import OPENAI_SSE, stream
from localserve.errors import BadRequestError
from localserve.runner.protocol import MAX_TOP_LOGPROBS
from localserve.service.choices import choice_requests, collect_all, merged, validate_n
from localserve.service.inference import (
    Answer,
    EmbeddingRequest,
    Finished,
    GenerationEvent,
    GenerationRequest,
    Logprob,
    Thinking,
    Token,
    ToolCalls,
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


def _usage(finished: Finished, *others: Finished) -> dict[str, Any]:
    """OpenAI's usage: `prompt_tokens` counts the whole prompt; the part read from the
    prompt cache is in `prompt_tokens_details.cached_tokens`. With several choices (`n`)
    the completion tokens are summed and the prompt counted once (the first choice's)."""
    prompt = max(finished.prompt_tokens, finished.prompt_eval_count)
    completion = finished.eval_count + sum(other.eval_count for other in others)
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
    """OpenAI's answer objects for one request: chat (`chat.completion[.chunk]`,
    `delta`/`message`) or legacy completions (`text_completion`, `text`), with one choice
    per generation (`n`), and token logprobs when asked (`logprobs`: alternatives per
    token; `text_offset`: where a legacy completion's text starts, the prompt's length)."""

    def __init__(
        self, model: str, chat: bool, *, logprobs: int | None = None, text_offset: int = 0
    ) -> None:
        self.chat = chat
        self.logprobs = logprobs
        self.text_offset = text_offset
        self.base = {
            "id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24],
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_localserve",
        }

    def _logprobs(self, entries: Sequence[Logprob], offset: int) -> dict[str, Any] | None:
        """A choice's `logprobs` for these tokens (None when not asked): chat's
        `{content: [...]}`, or the legacy `{tokens, token_logprobs, top_logprobs,
        text_offset}` with offsets from `offset` on."""
        if self.logprobs is None:
            return None
        if self.chat:
            return {"content": [_chat_logprob(entry) for entry in entries], "refusal": None}
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry["token"])
        return {
            "tokens": [entry["token"] for entry in entries],
            "token_logprobs": [entry["logprob"] for entry in entries],
            "top_logprobs": [
                {
                    **{alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]},
                    entry["token"]: entry["logprob"],
                }
                for entry in entries
            ],
            "text_offset": offsets,
        }

    def _chunk_choice(
        self,
        index: int,
        text: str | None,
        finish: str | None,
        first: bool,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self.chat:
            delta: dict[str, Any] = {"role": "assistant", "content": text} if first else {}
            if not first and text is not None:
                delta = {"content": text}
            return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
        return {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}

    async def chunks(
        self, events: AsyncIterator[tuple[int, GenerationEvent]], n: int, include_usage: bool
    ) -> AsyncIterator[dict[str, Any]]:
        """Chunks of `n` choices as their events come (each chunk names its choice)."""
        first = [True] * n
        calls: list[list[ToolCall]] = [[] for _ in range(n)]
        offsets = [self.text_offset] * n
        finals: dict[int, Finished] = {}
        async for index, event in events:
            if isinstance(event, Token):
                logprobs = self._logprobs(event.logprobs, offsets[index])
                offsets[index] += sum(len(entry["token"]) for entry in event.logprobs)
                choice = self._chunk_choice(index, event.text, None, first[index], logprobs)
                yield {**self.base, "choices": [choice]}
                first[index] = False
                continue
            if isinstance(event, Thinking | ToolCalls):
                if isinstance(event, Thinking):
                    delta: dict[str, Any] = {"reasoning_content": event.text}
                else:
                    calls[index].extend(event.calls)
                    delta = {"tool_calls": [c.to_openai(i) for i, c in enumerate(event.calls)]}
                if first[index]:
                    delta = {"role": "assistant", "content": None, **delta}
                    first[index] = False
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                yield {**self.base, "choices": [choice]}
                continue
            finals[index] = event
            finish = _finish_reason(event, calls[index])
            closing = self._chunk_choice(index, None if self.chat else "", finish, False)
            yield {**self.base, "choices": [closing], **_served_by(event)}
        if include_usage and finals:
            yield {**self.base, "choices": [], "usage": _usage(*finals.values())}

    def _whole_choice(self, index: int, answer: Answer) -> dict[str, Any]:
        text, finished, calls = answer.text, answer.finished, answer.calls
        finish = _finish_reason(finished, calls)
        logprobs = self._logprobs(answer.logprobs, self.text_offset)
        if not self.chat:
            return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish}
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            message["tool_calls"] = [call.to_openai() for call in calls]
        else:
            message["content"] = text
        if answer.thinking:
            message["reasoning_content"] = answer.thinking
        return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}

    def whole(self, answers: list[Answer]) -> dict[str, Any]:
        return {
            **self.base,
            "object": "chat.completion" if self.chat else "text_completion",
            "choices": [self._whole_choice(i, answer) for i, answer in enumerate(answers)],
            "usage": _usage(*(answer.finished for answer in answers)),
            **(_served_by(answers[0].finished) if answers else {}),
        }


def _served_by(finished: Finished) -> dict[str, Any]:
    """A route answered: the version that served, beside `model` (issue 14)."""
    return {"served_by": finished.served_by} if finished.served_by else {}


def _chat_logprob(entry: Logprob) -> dict[str, Any]:
    """OpenAI chat's entry: {token, logprob, bytes, top_logprobs: [{token, logprob,
    bytes}]} (the runner's entry, in OpenAI's key order)."""
    return {
        "token": entry["token"],
        "logprob": entry["logprob"],
        "bytes": entry["bytes"],
        "top_logprobs": [
            {"token": alt["token"], "logprob": alt["logprob"], "bytes": alt["bytes"]}
            for alt in entry["top_logprobs"]
        ],
    }


async def _answer(
    request: web.Request,
    body: dict[str, Any],
    generation_request: GenerationRequest,
    *,
    chat: bool,
    text_offset: int = 0,
) -> web.StreamResponse:
    """Start the request's `n` generations (one per choice) and answer them as one."""
    n = validate_n(body.get("n"))
    inference = inference_of(request)
    generations = [await inference.start(r) for r in choice_requests(generation_request, n)]
    completion = _Completion(
        generations[0].model_name,
        chat,
        logprobs=generation_request.logprobs,
        text_offset=text_offset,
    )
    streams = [generation.events() for generation in generations]
    if get_bool(body, "stream", False):
        chunks = completion.chunks(merged(streams), n, _include_usage(body))
        return await stream(request, chunks, OPENAI_SSE)
    return web.json_response(completion.whole(await collect_all(streams)))


def _generation_request(body: dict[str, Any], endpoint: str, **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        model=get_str(body, "model", required=True) or "",
        endpoint=endpoint,
        options=_options(body),
        format=_response_format(body),
        keep_alive_s=parse_keep_alive(body.get("keep_alive")),
        think=_reasoning_effort(body),
        session=get_str(body, "user"),  # a route keeps one user on one version (issue 14)
        **fields,
    )


# Fields OpenAI clients send that localserve does not act on yet: refused by name.
UNSUPPORTED = {
    "logit_bias": "logit biases are not implemented",
    "audio": "this model does not support audio",
    "prediction": "predicted outputs are not implemented",
}


def _refuse(body: dict[str, Any]) -> None:
    refuse_unsupported(body, UNSUPPORTED)
    validate_n(body.get("n"))


def _top_logprobs(raw: Any, field: str) -> int:
    """A count of alternatives per token: an integer from 0 to MAX_TOP_LOGPROBS."""
    if type(raw) is not int or not 0 <= raw <= MAX_TOP_LOGPROBS:
        raise BadRequestError(f"field '{field}' must be an integer from 0 to {MAX_TOP_LOGPROBS}")
    return raw


def _chat_logprobs(body: dict[str, Any]) -> int | None:
    """Chat's `logprobs: true` (+ `top_logprobs: N`): alternatives per token, or None."""
    wanted = get_bool(body, "logprobs", False)
    raw_top = body.get("top_logprobs")
    top = 0 if raw_top is None else _top_logprobs(raw_top, "top_logprobs")
    if top and not wanted:
        raise BadRequestError("field 'top_logprobs' needs 'logprobs': true")
    return top if wanted else None


def _legacy_logprobs(body: dict[str, Any]) -> int | None:
    """Legacy completions' `logprobs: N`: the chosen token's logprob and N alternatives."""
    raw = body.get("logprobs")
    return None if raw is None else _top_logprobs(raw, "logprobs")


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
        logprobs=_chat_logprobs(body),
    )
    return await _answer(request, body, generation_request, chat=True)


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
    generation_request = _generation_request(
        body, "v1/completions", prompt=prompt, raw=True, logprobs=_legacy_logprobs(body)
    )
    return await _answer(request, body, generation_request, chat=False, text_offset=len(prompt))


def _model_object(name: str, created: float) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created), "owned_by": "localserve"}


async def models(request: web.Request) -> web.Response:
    stored = await models_of(request).list()
    data = [_model_object(m.name.display(), m.modified_at.timestamp()) for m in stored]
    data += routing_api.model_objects(request)  # routes list as models (issue 14)
    return web.json_response({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    route = routing_api.model_object(request, request.match_info["model"])
    if route is not None:
        return web.json_response(route)
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
