"""Anthropic's Messages API: `POST /v1/messages` and `POST /v1/messages/count_tokens`.

A translator onto the one inference path (localserve.service.inference), like the other
dialects: the body becomes a `GenerationRequest` (system, content blocks, tools as
functions, `tool_choice` any/tool forced by the same grammar as OpenAI's "required" and
named function, `thinking` as `think`), and the service's events become Anthropic's
content blocks (thinking, text, tool_use) or its typed SSE events (`message_start`,
`content_block_start|delta|stop`, `message_delta`, `message_stop`, and a `ping`).

These routes live on their own sub-app mounted at `/v1/messages` (localserve.api.app), so
every error on them, including those raised before a handler runs (security middleware,
unknown path, 405), is written in Anthropic's shape by that app's error middleware:
`{"type": "error", "error": {"type": "not_found_error", "message": ...}}`.

Where localserve differs from Anthropic, and why:
- Unknown request fields are a 400 naming them (as Anthropic's "Extra inputs are not
  permitted"); server tools, MCP servers, containers, images and documents are refused
  with a 400 saying so (a local model has none of them). An assistant message last in
  `messages` (prefill) is refused: chat templates always open a new assistant turn.
- `thinking.budget_tokens` is checked as Anthropic does (>= 1024, < max_tokens) and picks
  the reasoning effort a template reads (below 4096 low, below 16384 medium, else high);
  it is not a separate limit: thinking counts against `max_tokens`. Thinking blocks carry
  an empty `signature` (nothing is signed); thinking blocks sent back in the history are
  given to the template as the message's `reasoning_content`, and `redacted_thinking`
  blocks are dropped (a local model cannot read them). Without `thinking`, a model whose
  template thinks by default still returns its reasoning, as thinking blocks.
- `usage.input_tokens` counts the prompt tokens evaluated for this request and
  `cache_read_input_tokens` those read from the runner's prompt cache (automatic, so
  `cache_control` is accepted and needs no effect); their sum is what count_tokens says.
  In a stream, `message_start` carries zeros and `message_delta` the real totals (Anthropic
  defines those as cumulative; the `anthropic` client applies them).
- `metadata.user_id` keeps a conversation on one version of a route (sticky);
  `keep_alive` is a localserve extension.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from localserve.api.errors import anthropic_error
from localserve.api.requests import inference_of, read_json
from localserve.api.streaming import TypedSseEncoder, stream, with_first
from localserve.errors import BadRequestError
from localserve.service.inference import (
    Answer,
    Finished,
    Generation,
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
from localserve.service.tools import ToolCall, ToolChoice, validate_tool_choice, validate_tools

ANTHROPIC_SSE = TypedSseEncoder(anthropic_error)

MESSAGE_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "system",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "tools",
        "tool_choice",
        "thinking",
        "metadata",
        "keep_alive",
    }
)
COUNT_FIELDS = frozenset({"model", "messages", "system", "tools", "tool_choice", "thinking"})
UNSUPPORTED = {
    "mcp_servers": "MCP servers are not supported; send their tools as custom tools",
    "container": "code execution containers are not supported",
    "context_management": "context management is not supported",
    "service_tier": "there is one service tier",
    "output_format": "structured outputs are not supported on /v1/messages yet",
}
THINKING_LEVELS = ((4096, "low"), (16384, "medium"))  # budget below -> level; else "high"


@dataclass(frozen=True)
class _Parsed:
    request: GenerationRequest
    stop_sequences: tuple[str, ...]


def _refuse_fields(body: dict[str, Any], accepted: frozenset[str]) -> None:
    refuse_unsupported(body, UNSUPPORTED)
    for key, value in body.items():
        if key not in accepted and value is not None:
            raise BadRequestError(f"field '{key}' is not supported: unknown field")


def _block_text(block: Any, where: str) -> str:
    """The text of a `{"type": "text", "text": ...}` block."""
    if not isinstance(block, dict):
        raise BadRequestError(f"{where} must be a content block object")
    kind = block.get("type")
    if kind != "text":
        raise BadRequestError(f"{where}: {_refusal(kind)}")
    text = block.get("text")
    if not isinstance(text, str):
        raise BadRequestError(f"{where}.text must be a string")
    return text


def _refusal(kind: Any) -> str:
    if kind == "image":
        return "this model does not support images"
    if kind == "document":
        return "this model does not support documents"
    return f"content blocks of type {kind!r} are not supported here"


def _system(raw: Any) -> str | None:
    """`system`: a string or a list of text blocks (joined with blank lines)."""
    if raw is None or isinstance(raw, str):
        return raw or None
    if not isinstance(raw, list):
        raise BadRequestError("system must be a string or an array of text blocks")
    texts = [_block_text(block, f"system[{i}]") for i, block in enumerate(raw)]
    return "\n\n".join(t for t in texts if t) or None


def _blocks(message: dict[str, Any], where: str) -> list[Any]:
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return content
    raise BadRequestError(f"{where}.content must be a string or an array of content blocks")


def _assistant(blocks: list[Any], where: str, names: dict[str, str]) -> dict[str, Any]:
    """An assistant turn: text, earlier tool calls (`tool_use`) and reasoning (`thinking`)."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not call_id:
                raise BadRequestError(f"{at}.id must be a non-empty string")
            if not isinstance(name, str) or not name:
                raise BadRequestError(f"{at}.name must be a non-empty string")
            if not isinstance(arguments, dict):
                raise BadRequestError(f"{at}.input must be an object")
            names[call_id] = name
            function = {"name": name, "arguments": arguments}
            calls.append({"id": call_id, "type": "function", "function": function})
        elif kind == "thinking":
            thinking = block.get("thinking")
            if not isinstance(thinking, str):
                raise BadRequestError(f"{at}.thinking must be a string")
            thoughts.append(thinking)
        elif kind == "redacted_thinking":
            continue  # opaque to a local model
        else:
            texts.append(_block_text(block, at))
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    if calls:
        message["tool_calls"] = calls
    if thoughts:
        message["reasoning_content"] = "\n".join(thoughts)
    return message


def _tool_result_text(block: dict[str, Any], at: str) -> str:
    content = block.get("content", "")
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        text = "".join(_block_text(part, f"{at}.content[{k}]") for k, part in enumerate(content))
    else:
        raise BadRequestError(f"{at}.content must be a string or an array of text blocks")
    if block.get("is_error") is True:
        return f"Error: {text}"
    return text


def _user(blocks: list[Any], where: str, names: dict[str, str]) -> list[dict[str, Any]]:
    """A user turn: its `tool_result` blocks as tool messages (in order), its text as a user
    message."""
    out: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush_text() -> None:
        if texts:
            out.append({"role": "user", "content": "".join(texts)})
            texts.clear()

    for j, block in enumerate(blocks):
        at = f"{where}.content[{j}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str) or not call_id:
                raise BadRequestError(f"{at}.tool_use_id must be a non-empty string")
            flush_text()
            message = {"role": "tool", "content": _tool_result_text(block, at)}
            message["tool_call_id"] = call_id
            if call_id in names:
                message["name"] = message["tool_name"] = names[call_id]
            out.append(message)
        else:
            texts.append(_block_text(block, at))
    flush_text()
    if not out:  # an empty user turn is still a turn
        out.append({"role": "user", "content": ""})
    return out


def _messages(raw: Any, system: str | None) -> list[dict[str, Any]]:
    """Anthropic's `messages` as the chat messages templates read."""
    if not isinstance(raw, list) or not raw:
        raise BadRequestError("messages must be a non-empty array")
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    names: dict[str, str] = {}  # tool_use id -> tool name, for the results
    for i, message in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequestError(f"{where} must be an object")
        role = message.get("role")
        if role == "assistant":
            out.append(_assistant(_blocks(message, where), where, names))
        elif role == "user":
            out.extend(_user(_blocks(message, where), where, names))
        else:
            raise BadRequestError(f"{where}.role must be 'user' or 'assistant'")
    if raw[-1].get("role") == "assistant":
        raise BadRequestError(
            f"messages[{len(raw) - 1}]: a last assistant message (prefill) is not supported;"
            " end with a user message"
        )
    return out


def _tools(raw: Any) -> list[dict[str, Any]]:
    """Anthropic's custom tools (`name`, `description`, `input_schema`) as functions."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequestError("tools must be an array")
    functions: list[dict[str, Any]] = []
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequestError(f"{where} must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise BadRequestError(
                f"{where}.type {kind!r} is not supported: only custom tools (name,"
                " description, input_schema); server tools run on Anthropic's side"
            )
        if not isinstance(tool.get("input_schema"), dict):
            raise BadRequestError(f"{where}.input_schema must be a JSON Schema object")
        function = {
            "type": "function",
            "name": tool.get("name"),
            "parameters": tool["input_schema"],
        }
        if tool.get("description") is not None:
            function["description"] = tool["description"]
        functions.append(function)
    try:
        return validate_tools(functions)
    except BadRequestError as exc:  # name Anthropic's field, not the function's
        raise BadRequestError(exc.message.replace(".parameters", ".input_schema")) from exc


def _tool_choice(raw: Any, tools: list[dict[str, Any]]) -> tuple[ToolChoice, bool]:
    """(choice, parallel calls allowed): auto, any (a call is forced), tool (that one is
    forced), none."""
    if raw is None:
        return validate_tool_choice(None, tools), True
    if not isinstance(raw, dict):
        raise BadRequestError("tool_choice must be an object with type auto, any, tool or none")
    parallel = not get_bool(raw, "disable_parallel_tool_use", False)
    kind = raw.get("type")
    if kind == "auto":
        return validate_tool_choice("auto", tools), parallel
    if kind == "none":
        return ToolChoice("none"), parallel
    if kind == "any":
        if not tools:
            raise BadRequestError("tool_choice 'any' needs at least one tool in tools")
        return ToolChoice("required"), parallel
    if kind == "tool":
        return validate_tool_choice({"type": "function", "name": raw.get("name")}, tools), parallel
    raise BadRequestError(f"tool_choice.type must be auto, any, tool or none, got {kind!r}")


def _think(raw: Any, max_tokens: int | None) -> bool | str | None:
    """`thinking`: enabled (a budget, as a reasoning effort) or disabled."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequestError("thinking must be an object")
    kind = raw.get("type")
    if kind == "disabled":
        return False
    if kind != "enabled":
        raise BadRequestError(f"thinking.type must be 'enabled' or 'disabled', got {kind!r}")
    budget = get_int(raw, "budget_tokens")
    if budget is None:
        raise BadRequestError("thinking.budget_tokens is required when thinking is enabled")
    if budget < 1024:
        raise BadRequestError("thinking.budget_tokens must be at least 1024")
    if max_tokens is not None and budget >= max_tokens:
        raise BadRequestError("thinking.budget_tokens must be less than max_tokens")
    return next((level for limit, level in THINKING_LEVELS if budget < limit), "high")


def _stop_sequences(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise BadRequestError("stop_sequences must be an array of strings")
    return tuple(s for s in raw if s)


def _parse(body: dict[str, Any], *, endpoint: str, counting: bool = False) -> _Parsed:
    _refuse_fields(body, COUNT_FIELDS if counting else MESSAGE_FIELDS)
    model = get_str(body, "model", required=True) or ""
    max_tokens = None
    if not counting:
        max_tokens = get_int(body, "max_tokens")
        if max_tokens is None:
            raise BadRequestError("missing field 'max_tokens' (Anthropic requires it)")
        if max_tokens < 1:
            raise BadRequestError("max_tokens must be at least 1")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequestError("metadata must be an object")
    session = (metadata or {}).get("user_id")
    if session is not None and not isinstance(session, str):
        raise BadRequestError("metadata.user_id must be a string")
    messages = _messages(body.get("messages"), _system(body.get("system")))
    tools = _tools(body.get("tools"))
    choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    stops = _stop_sequences(body.get("stop_sequences"))
    raw_options: dict[str, Any] = {
        key: body[key] for key in ("temperature", "top_p", "top_k") if body.get(key) is not None
    }
    if max_tokens is not None:
        raw_options["num_predict"] = max_tokens
    if stops:
        raw_options["stop"] = list(stops)
    request = GenerationRequest(
        model=model,
        endpoint=endpoint,
        messages=messages,
        options=parse_options(raw_options),
        keep_alive_s=parse_keep_alive(body.get("keep_alive")),
        think=_think(body.get("thinking"), max_tokens),
        tools=tools or None,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        session=session,  # a route keeps one user on one version
    )
    return _Parsed(request, stops)


# ---- answers ---------------------------------------------------------------------------


def _tool_use_id(call: ToolCall) -> str:
    return "toolu_" + call.id.removeprefix("call_")


def _stop_reason(
    finished: Finished, calls: list[ToolCall], stops: tuple[str, ...]
) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence)."""
    if calls:
        return "tool_use", None
    if finished.done_reason == "length":
        return "max_tokens", None
    if finished.stop_sequence is not None and finished.stop_sequence in stops:
        return "stop_sequence", finished.stop_sequence
    return "end_turn", None


def _usage(finished: Finished) -> dict[str, int]:
    """Anthropic's usage: input_tokens excludes the part read from the prompt cache."""
    return {
        "input_tokens": finished.prompt_eval_count,
        "cache_read_input_tokens": finished.cached_tokens,
        "output_tokens": finished.eval_count,
    }


def _message_base(model: str) -> dict[str, Any]:
    return {
        "id": "msg_" + uuid.uuid4().hex[:24],
        "type": "message",
        "role": "assistant",
        "model": model,
    }


def _message(model: str, answer: Answer, stops: tuple[str, ...]) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer.thinking:
        content.append({"type": "thinking", "thinking": answer.thinking, "signature": ""})
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    for call in answer.calls:
        content.append(
            {
                "type": "tool_use",
                "id": _tool_use_id(call),
                "name": call.name,
                "input": call.arguments,
            }
        )
    stop_reason, stop_sequence = _stop_reason(answer.finished, answer.calls, stops)
    return {
        **_message_base(model),
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": stop_sequence,
        "usage": _usage(answer.finished),
    }


async def _stream_events(
    generation: Generation, stops: tuple[str, ...]
) -> AsyncIterator[dict[str, Any]]:
    """Anthropic's stream events for one generation. The first generation event is awaited
    before `message_start`, so an error while the model loads keeps its HTTP status."""
    events = generation.events()
    try:
        first = await anext(events, None)
        start = {
            **_message_base(generation.model_name),
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        }
        yield {"type": "message_start", "message": start}
        yield {"type": "ping"}
        index = -1
        open_kind: str | None = None
        calls: list[ToolCall] = []

        def close() -> dict[str, Any] | None:
            nonlocal open_kind
            if open_kind is None:
                return None
            open_kind = None
            return {"type": "content_block_stop", "index": index}

        async for event in with_first(first, events):
            if isinstance(event, Thinking | Token):
                if not event.text:
                    continue
                kind = "thinking" if isinstance(event, Thinking) else "text"
                if open_kind != kind:
                    if (stop := close()) is not None:
                        yield stop
                    index, open_kind = index + 1, kind
                    block = {"type": kind, kind: ""}
                    if kind == "thinking":
                        block["signature"] = ""
                    yield {"type": "content_block_start", "index": index, "content_block": block}
                delta = {"type": f"{kind}_delta", kind: event.text}
                yield {"type": "content_block_delta", "index": index, "delta": delta}
            elif isinstance(event, ToolCalls):
                if (stop := close()) is not None:
                    yield stop
                for call in event.calls:
                    index += 1
                    block = {"type": "tool_use", "id": _tool_use_id(call), "name": call.name}
                    yield {
                        "type": "content_block_start",
                        "index": index,
                        "content_block": {**block, "input": {}},
                    }
                    delta = {"type": "input_json_delta", "partial_json": call.arguments_json()}
                    yield {"type": "content_block_delta", "index": index, "delta": delta}
                    yield {"type": "content_block_stop", "index": index}
                calls.extend(event.calls)
            else:
                if (stop := close()) is not None:
                    yield stop
                stop_reason, stop_sequence = _stop_reason(event, calls, stops)
                yield {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                    "usage": _usage(event),
                }
                yield {"type": "message_stop"}
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


# ---- handlers --------------------------------------------------------------------------


async def messages(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    parsed = _parse(body, endpoint="v1/messages")
    streaming = get_bool(body, "stream", False)
    generation = await inference_of(request).start(parsed.request)
    if streaming:
        return await stream(
            request, _stream_events(generation, parsed.stop_sequences), ANTHROPIC_SSE
        )
    answer = await collect(generation.events())
    return web.json_response(_message(generation.model_name, answer, parsed.stop_sequences))


async def count_tokens(request: web.Request) -> web.Response:
    """The token count of the prompt the model would see for this request."""
    body = await read_json(request)
    parsed = _parse(body, endpoint="v1/messages/count_tokens", counting=True)
    count = await inference_of(request).count_tokens(parsed.request)
    return web.json_response({"input_tokens": count})


__all__ = ["ANTHROPIC_SSE", "count_tokens", "messages"]
