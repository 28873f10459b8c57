"""Prompt rendering with the model's chat template (Jinja, as stored in the GGUF).

The daemon renders prompts itself (the runner only sees text), in a sandboxed Jinja
environment. A model without a template gets a plain ChatML-style fallback.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from jinja2 import DictLoader, TemplateError
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localserve.errors import BadRequestError

FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VALID_ROLES = frozenset({"system", "user", "assistant", "tool"})


# Limits on what a chat template (code shipped inside a model file) may build.
MAX_TEMPLATE_OUTPUT = 4 * 1024 * 1024  # characters (or items) one `*` may produce
MAX_POWER_EXPONENT = 64


def _raise_exception(message: str) -> None:
    raise BadRequestError(f"chat template refused the messages: {message}")


class _TemplateEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox plus a loader that knows no templates (`{% include %}` and
    `{% import %}` fail as "not found", reading nothing) and bounded `*` and `**`, so a
    template cannot build a huge string or number."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_POWER_EXPONENT:
            raise SecurityError(f"exponent {right} is larger than {MAX_POWER_EXPONENT}")
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(count, int)
                    and len(sequence) * count > MAX_TEMPLATE_OUTPUT
                ):
                    raise SecurityError("the template repeats a sequence beyond the size limit")
        return super().call_binop(context, operator, left, right)


@lru_cache(maxsize=64)
def _compile(source: str) -> Any:
    env = _TemplateEnvironment(trim_blocks=True, lstrip_blocks=True, loader=DictLoader({}))
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


def check_template(template: str) -> None:
    """Refuse a template that does not compile (at create time, 400)."""
    try:
        _compile(template)
    except TemplateError as exc:
        raise BadRequestError(f"invalid template: {exc}") from exc


def render_chat(
    template: str | None,
    messages: list[dict[str, Any]],
    *,
    bos_token: str | None = None,
    eos_token: str | None = None,
    add_generation_prompt: bool = True,
    tools: list[dict[str, Any]] | None = None,
    variables: dict[str, Any] | None = None,
) -> str:
    """Render the prompt; any failure of the template (which is code from a model file)
    is a 400 naming it, never a 500. `tools` are passed as the `tools` variable, in the
    OpenAI shape the Jinja templates of real models expect."""
    try:
        compiled = _compile(template or FALLBACK_TEMPLATE)
        extra: dict[str, Any] = {**(variables or {}), **({"tools": tools} if tools else {})}
        return str(
            compiled.render(
                messages=messages,
                bos_token=bos_token or "",
                eos_token=eos_token or "",
                add_generation_prompt=add_generation_prompt,
                **extra,
            )
        )
    except BadRequestError:
        raise
    except (TemplateError, ArithmeticError, RecursionError, MemoryError) as exc:
        raise BadRequestError(f"cannot render the chat template: {exc}") from exc
    except (TypeError, ValueError, LookupError, AttributeError) as exc:
        raise BadRequestError(
            f"cannot render the chat template: {type(exc).__name__}: {exc}"
        ) from exc


def validate_messages(raw: object) -> list[dict[str, Any]]:
    """Check an Ollama/OpenAI `messages` list; returns role/content dicts."""
    if not isinstance(raw, list):
        raise BadRequestError("messages must be a list")
    messages: list[dict[str, Any]] = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise BadRequestError(f"messages[{index}] must be an object")
        role = item.get("role")
        if role not in VALID_ROLES:
            raise BadRequestError(
                f"messages[{index}].role must be one of {', '.join(sorted(VALID_ROLES))}"
            )
        if item.get("images"):
            raise BadRequestError(f"messages[{index}].images: this model does not support images")
        content = item.get("content", "")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: text only
            texts = []
            for part_index, part in enumerate(content):
                kind = part.get("type", "text") if isinstance(part, dict) else None
                if kind != "text":
                    raise BadRequestError(
                        f"messages[{index}].content[{part_index}]: content parts of type "
                        f"{kind!r} are not supported (this model does not support images "
                        "or audio)"
                    )
                texts.append(str(part.get("text", "")))
            content = "".join(texts)
        if not isinstance(content, str):
            raise BadRequestError(f"messages[{index}].content must be a string")
        message: dict[str, Any] = {"role": role, "content": content}
        if item.get("tool_calls"):
            message["tool_calls"] = _history_tool_calls(item["tool_calls"], index)
        if role == "tool":
            # OpenAI names the call answered (tool_call_id), Ollama the tool (tool_name).
            for key in ("tool_call_id", "tool_name", "name"):
                if isinstance(item.get(key), str):
                    message[key] = item[key]
            if "name" not in message and "tool_name" in message:
                message["name"] = message["tool_name"]
        messages.append(message)
    return messages


def _history_tool_calls(raw: Any, index: int) -> list[dict[str, Any]]:
    """An assistant message's earlier tool calls, as templates expect them: OpenAI's
    shape with `function.arguments` as an object (both dialects' forms accepted)."""
    where = f"messages[{index}].tool_calls"
    if not isinstance(raw, list):
        raise BadRequestError(f"{where} must be a list")
    calls = []
    for number, call in enumerate(raw):
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise BadRequestError(f"{where}[{number}].function.name must be a string")
        arguments = function.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as exc:
                raise BadRequestError(
                    f"{where}[{number}].function.arguments is not valid JSON"
                ) from exc
        if not isinstance(arguments, dict):
            raise BadRequestError(f"{where}[{number}].function.arguments must be an object")
        entry: dict[str, Any] = {
            "type": "function",
            "function": {"name": function["name"], "arguments": arguments},
        }
        if isinstance(call.get("id"), str):
            entry["id"] = call["id"]
        calls.append(entry)
    return calls
