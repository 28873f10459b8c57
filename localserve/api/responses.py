"""OpenAI's Responses API, stateless: `POST /v1/responses`.

A translator onto the one inference path (localserve.service.inference), like the other
dialects: `instructions` and `input` (a string, or items: messages with `input_text`
parts, `function_call` and `function_call_output` items, `reasoning` items) become chat
messages; `tools` (the flat function shape), `tool_choice` ("required" and a named
function forced by a grammar), `max_output_tokens`, `temperature`, `top_p`, `text.format`
(json_object, json_schema) and `reasoning.effort` (as `think`) become the request; the
service's events become output items (reasoning, message, function_call) or the typed SSE
events of `client.responses.stream(...)` / `responses.create(stream=True)`:
`response.created`, `response.in_progress`, `response.output_item.added`,
`response.content_part.added`, `response.output_text.delta|done`,
`response.reasoning_text.delta|done`, `response.function_call_arguments.delta|done`,
`response.content_part.done`, `response.output_item.done`, and `response.completed`
(`response.incomplete` when `max_output_tokens` cut the answer), each with its
`sequence_number`.

Where localserve differs from OpenAI, and why:
- Stateless: nothing is stored, so `previous_response_id`, `conversation`,
  `item_reference` input items, `background` and `store: true` are a 400 (send the whole
  conversation as input items instead; the runner's prompt cache makes a resent prefix
  cheap). Answers say `store: false`.
- Only function tools (no hosted tools: web search, file search, computer use, ...);
  text input only (images, files and audio are a 400); an unknown field is a 400 naming
  it, as OpenAI answers.
- Reasoning comes back as a `reasoning` item with `reasoning_text` content (as open
  models' servers return it), never as an encrypted or summarised one; `reasoning.summary`
  is accepted without effect. `usage.output_tokens_details.reasoning_tokens` is 0: thinking
  tokens are counted in `output_tokens`, not apart.
- `usage.input_tokens` counts the whole prompt, `input_tokens_details.cached_tokens` the
  part read from the runner's prompt cache.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

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
from localserve.service.thinking import THINK_LEVELS
from localserve.service.tools import (
    ToolCall,
    validate_parallel_tool_calls,
    validate_tool_choice,
    validate_tools,
)

FIELDS = frozenset(
    {
        "model",
        "input",
        "instructions",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "max_output_tokens",
        "temperature",
        "top_p",
        "text",
        "reasoning",
        "stream",
        "stream_options",
        "store",
        "metadata",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "truncation",
        "include",
        "keep_alive",
    }
)
STATELESS = "localserve keeps no responses (stateless); send the whole conversation as input"
UNSUPPORTED = {
    "previous_response_id": STATELESS,
    "conversation": STATELESS,
    "store": STATELESS,
    "background": "background responses need stored responses; " + STATELESS,
    "prompt": "stored prompt templates are not supported; send instructions and input",
    "top_logprobs": "token log probabilities are not implemented on /v1/responses yet",
    "max_tool_calls": "a limit on tool calls is not supported",
    "service_tier": "there is one service tier",
    "include": "no extra output can be included (nothing is stored or encrypted)",
}


def _refuse_fields(body: dict[str, Any]) -> None:
    refuse_unsupported(body, UNSUPPORTED)
    for key, value in body.items():
        if key not in FIELDS and value is not None:
            raise BadRequestError(f"field '{key}' is not supported: unknown field")
    truncation = body.get("truncation")
    if truncation not in (None, "disabled"):
        raise BadRequestError(
            "field 'truncation' must be 'disabled': a prompt longer than the context is a 400"
        )


# ---- input -------------------------------------------------------------------------------

PART_REFUSALS = {
    "input_image": "this model does not support images",
    "input_file": "this model does not support files",
    "input_audio": "this model does not support audio",
}


def _content_text(content: Any, where: str) -> str:
    """A message's content: a string, or text parts (input_text, output_text, refusal)."""
    if content is None or isinstance(content, str):
        return content or ""
    if not isinstance(content, list):
        raise BadRequestError(f"{where}.content must be a string or an array of content parts")
    texts: list[str] = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise BadRequestError(f"{at} must be an object")
        kind = part.get("type")
        if kind in PART_REFUSALS:
            raise BadRequestError(f"{at}: {PART_REFUSALS[kind]}")
        key = "refusal" if kind == "refusal" else "text"
        if kind not in ("input_text", "output_text", "text", "refusal"):
            raise BadRequestError(f"{at}: content parts of type {kind!r} are not supported")
        text = part.get(key)
        if not isinstance(text, str):
            raise BadRequestError(f"{at}.{key} must be a string")
        texts.append(text)
    return "".join(texts)


def _reasoning_text(item: dict[str, Any], where: str) -> str:
    """A reasoning item's text: its reasoning_text content, else its summary."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if parts is None:
            continue
        if not isinstance(parts, list):
            raise BadRequestError(f"{where}.{key} must be an array")
        texts = [p.get("text") for p in parts if isinstance(p, dict)]
        if texts and all(isinstance(t, str) for t in texts):
            return "".join(str(t) for t in texts)
    return ""


def _call_id(item: dict[str, Any], where: str) -> str:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequestError(f"{where}.call_id must be a non-empty string")
    return call_id


def _messages(raw: Any, instructions: str | None) -> list[dict[str, Any]]:
    """`instructions` and `input` as the chat messages templates read."""
    out: list[dict[str, Any]] = (
        [{"role": "system", "content": instructions}] if instructions else []
    )
    if isinstance(raw, str):
        return [*out, {"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise BadRequestError("input must be a string or a non-empty array of items")
    names: dict[str, str] = {}  # call_id -> function name, for the outputs
    reasoning: list[str] = []  # reasoning items, for the next assistant turn
    assistant_open = False  # the last message is an assistant turn further calls join
    for i, item in enumerate(raw):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise BadRequestError(f"{where} must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            role = "system" if role == "developer" else role
            if role not in ("user", "assistant", "system"):
                raise BadRequestError(f"{where}.role must be user, assistant, system or developer")
            message: dict[str, Any] = {
                "role": role,
                "content": _content_text(item.get("content"), where),
            }
            if role == "assistant" and reasoning:
                message["reasoning_content"] = "\n".join(reasoning)
                reasoning.clear()
            out.append(message)
            assistant_open = role == "assistant"
        elif kind == "function_call":
            call_id = _call_id(item, where)
            name, arguments = item.get("name"), item.get("arguments", "")
            if not isinstance(name, str) or not name:
                raise BadRequestError(f"{where}.name must be a non-empty string")
            if not isinstance(arguments, str):
                raise BadRequestError(f"{where}.arguments must be a JSON string")
            try:
                parsed = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise BadRequestError(f"{where}.arguments is not valid JSON") from exc
            if not isinstance(parsed, dict):
                raise BadRequestError(f"{where}.arguments must be a JSON object")
            names[call_id] = name
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": parsed},
            }
            if not assistant_open:
                out.append({"role": "assistant", "content": ""})
                if reasoning:
                    out[-1]["reasoning_content"] = "\n".join(reasoning)
                    reasoning.clear()
                assistant_open = True
            out[-1].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            call_id = _call_id(item, where)
            output = item.get("output")
            text = output if isinstance(output, str) else _content_text(output, where + ".output")
            result: dict[str, Any] = {"role": "tool", "content": text, "tool_call_id": call_id}
            if call_id in names:
                result["name"] = result["tool_name"] = names[call_id]
            out.append(result)
            assistant_open = False
        elif kind == "reasoning":
            reasoning.append(_reasoning_text(item, where))
        elif kind == "item_reference":
            raise BadRequestError(f"{where}: item references need stored items; {STATELESS}")
        else:
            raise BadRequestError(
                f"{where}.type {kind!r} is not supported (messages, function_call,"
                " function_call_output and reasoning items are)"
            )
    if not any(m["role"] != "system" for m in out):
        raise BadRequestError("input must hold at least one message or function call output")
    return out


def _text_format(raw: Any) -> str | dict[str, Any] | None:
    """`text.format`: text, json_object ("json") or json_schema (its schema)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequestError("text must be an object")
    for key in raw:
        if key != "format" and raw[key] is not None:
            raise BadRequestError(f"field 'text.{key}' is not supported")
    fmt = raw.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise BadRequestError("text.format must be an object")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise BadRequestError("text.format.schema must be an object")
        return schema
    raise BadRequestError("text.format.type must be text, json_object or json_schema")


def _think(raw: Any) -> bool | str | None:
    """`reasoning.effort` as a thinking level: none turns it off, minimal counts as low."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequestError("reasoning must be an object")
    effort = raw.get("effort")
    if effort is None:
        return None
    if effort == "none":
        return False
    if effort == "minimal":
        return "low"
    if effort not in THINK_LEVELS:
        raise BadRequestError("reasoning.effort must be none, minimal, low, medium or high")
    return str(effort)


def _generation_request(body: dict[str, Any]) -> GenerationRequest:
    _refuse_fields(body)
    instructions = get_str(body, "instructions")
    messages = _messages(body.get("input"), instructions)
    tools = validate_tools(body.get("tools")) if body.get("tools") else []
    max_output_tokens = get_int(body, "max_output_tokens")
    if max_output_tokens is not None and max_output_tokens < 1:
        raise BadRequestError("max_output_tokens must be at least 1")
    raw_options: dict[str, Any] = {
        key: body[key] for key in ("temperature", "top_p") if body.get(key) is not None
    }
    if max_output_tokens is not None:
        raw_options["num_predict"] = max_output_tokens
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise BadRequestError("metadata must be an object")
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise BadRequestError("stream_options must be an object")
    for key, value in (stream_options or {}).items():
        if key != "include_obfuscation" or value:  # no obfuscation padding is sent
            raise BadRequestError(f"field 'stream_options.{key}' is not supported")
    return GenerationRequest(
        model=get_str(body, "model", required=True) or "",
        endpoint="v1/responses",
        messages=messages,
        options=parse_options(raw_options),
        format=_text_format(body.get("text")),
        keep_alive_s=parse_keep_alive(body.get("keep_alive")),
        think=_think(body.get("reasoning")),
        tools=tools or None,
        tool_choice=validate_tool_choice(body.get("tool_choice"), tools),
        parallel_tool_calls=validate_parallel_tool_calls(body.get("parallel_tool_calls")),
        # a route keeps one user (or cache key) on one version, with its prompt cache
        session=(
            get_str(body, "prompt_cache_key")
            or get_str(body, "safety_identifier")
            or get_str(body, "user")
        ),
    )


# ---- output ------------------------------------------------------------------------------


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _usage(finished: Finished) -> dict[str, Any]:
    prompt = max(finished.prompt_tokens, finished.prompt_eval_count)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": finished.cached_tokens},
        "output_tokens": finished.eval_count,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + finished.eval_count,
    }


def _text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _reasoning_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    content = [{"type": "reasoning_text", "text": text}] if text else []
    return {"id": item_id, "type": "reasoning", "summary": [], "content": content, "status": status}


def _message_item(item_id: str, text: str | None, status: str) -> dict[str, Any]:
    content = [_text_part(text)] if text is not None else []
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content,
    }


def _call_item(call: ToolCall, arguments: str, status: str) -> dict[str, Any]:
    return {
        "id": "fc_" + call.id.removeprefix("call_"),
        "type": "function_call",
        "call_id": call.id,
        "name": call.name,
        "arguments": arguments,
        "status": status,
    }


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


class _Response:
    """One response object: the request's settings echoed, its status, output and usage;
    and the sequence numbers of its stream's events."""

    def __init__(self, body: dict[str, Any], request: GenerationRequest, model: str) -> None:
        reasoning = _object(body.get("reasoning"))
        text = _object(body.get("text"))
        self.base: dict[str, Any] = {
            "id": _id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "model": model,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") or {},
            "parallel_tool_calls": request.parallel_tool_calls,
            "previous_response_id": None,
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "store": False,
            "temperature": body.get("temperature", 1.0),
            "text": {"format": text.get("format") or {"type": "text"}},
            "tool_choice": body.get("tool_choice") or ("auto" if request.tools else "none"),
            "tools": body.get("tools") or [],
            "top_p": body.get("top_p", 1.0),
            "truncation": "disabled",
            "user": body.get("user"),
        }
        self.sequence = 0

    def snapshot(
        self, status: str, output: list[dict[str, Any]], finished: Finished | None = None
    ) -> dict[str, Any]:
        out = {**self.base, "status": status, "output": output, "usage": None}
        if status == "incomplete":
            out["incomplete_details"] = {"reason": "max_output_tokens"}
        if finished is not None:
            out["usage"] = _usage(finished)
        return out

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        self.sequence += 1
        return {"type": kind, "sequence_number": self.sequence - 1, **fields}

    def error_event(self, status: int, message: str, code: str) -> dict[str, Any]:
        """A stream's error: OpenAI's `error` event (the client surfaces it as such)."""
        return self.event("error", code=code, message=message, param=None)

    def whole(self, answer: Answer) -> dict[str, Any]:
        status = _status(answer.finished, answer.calls)
        item_status = "incomplete" if status == "incomplete" else "completed"
        output: list[dict[str, Any]] = []
        if answer.thinking:
            output.append(_reasoning_item(_id("rs"), answer.thinking, item_status))
        if answer.text or not answer.calls:
            output.append(_message_item(_id("msg"), answer.text, item_status))
        output.extend(_call_item(c, c.arguments_json(), "completed") for c in answer.calls)
        return self.snapshot(status, output, answer.finished)


def _status(finished: Finished, calls: list[ToolCall]) -> str:
    return "incomplete" if finished.done_reason == "length" and not calls else "completed"


async def _stream_events(generation: Generation, response: _Response) -> AsyncIterator[Any]:
    """The typed events of one streamed response. The first generation event is awaited
    before `response.created`, so an error while the model loads keeps its HTTP status."""
    events = generation.events()
    event = response.event
    try:
        first = await anext(events, None)
        yield event("response.created", response=response.snapshot("in_progress", []))
        yield event("response.in_progress", response=response.snapshot("in_progress", []))
        output: list[dict[str, Any]] = []
        open_item: dict[str, Any] | None = None  # the reasoning or message item being written
        parts: list[str] = []

        def close(status: str) -> list[dict[str, Any]]:
            """The events that finish the open item (none when no item is open)."""
            nonlocal open_item
            item, open_item = open_item, None
            if item is None:
                return []
            text, index = "".join(parts), len(output)
            parts.clear()
            where = {"item_id": item["id"], "output_index": index, "content_index": 0}
            if item["type"] == "reasoning":
                done = _reasoning_item(item["id"], text, status)
                closing = [event("response.reasoning_text.done", **where, text=text)]
            else:
                done = _message_item(item["id"], text, status)
                closing = [
                    event("response.output_text.done", **where, text=text, logprobs=[]),
                    event("response.content_part.done", **where, part=_text_part(text)),
                ]
            output.append(done)
            return [*closing, event("response.output_item.done", output_index=index, item=done)]

        async for generated in with_first(first, events):
            if isinstance(generated, Thinking | Token):
                if not generated.text:
                    continue
                kind = "reasoning" if isinstance(generated, Thinking) else "message"
                index = len(output)
                if open_item is None or open_item["type"] != kind:
                    for closing in close("completed"):
                        yield closing
                    index = len(output)
                    if kind == "reasoning":
                        open_item = _reasoning_item(_id("rs"), "", "in_progress")
                        yield event(
                            "response.output_item.added", output_index=index, item=open_item
                        )
                    else:
                        open_item = _message_item(_id("msg"), None, "in_progress")
                        yield event(
                            "response.output_item.added", output_index=index, item=open_item
                        )
                        yield event(
                            "response.content_part.added",
                            item_id=open_item["id"],
                            output_index=index,
                            content_index=0,
                            part=_text_part(""),
                        )
                parts.append(generated.text)
                where = {"item_id": open_item["id"], "output_index": index, "content_index": 0}
                if kind == "reasoning":
                    yield event("response.reasoning_text.delta", **where, delta=generated.text)
                else:
                    yield event(
                        "response.output_text.delta", **where, delta=generated.text, logprobs=[]
                    )
            elif isinstance(generated, ToolCalls):
                for closing in close("completed"):
                    yield closing
                for call in generated.calls:
                    index, arguments = len(output), call.arguments_json()
                    added = _call_item(call, "", "in_progress")
                    where = {"item_id": added["id"], "output_index": index}
                    yield event("response.output_item.added", output_index=index, item=added)
                    yield event("response.function_call_arguments.delta", **where, delta=arguments)
                    yield event(
                        "response.function_call_arguments.done",
                        **where,
                        name=call.name,
                        arguments=arguments,
                    )
                    done = _call_item(call, arguments, "completed")
                    output.append(done)
                    yield event("response.output_item.done", output_index=index, item=done)
            else:
                called = any(item["type"] == "function_call" for item in output)
                status = (
                    "incomplete"
                    if generated.done_reason == "length" and not called
                    else ("completed")
                )
                for closing in close(status):
                    yield closing
                final = response.snapshot(status, output, generated)
                yield event(f"response.{status}", response=final)
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def create(request: web.Request) -> web.StreamResponse:
    body = await read_json(request)
    generation_request = _generation_request(body)
    streaming = get_bool(body, "stream", False)
    generation = await inference_of(request).start(generation_request)
    response = _Response(body, generation_request, generation.model_name)
    if streaming:
        encoder = TypedSseEncoder(response.error_event)
        return await stream(request, _stream_events(generation, response), encoder)
    return web.json_response(response.whole(await collect(generation.events())))


__all__ = ["create"]
