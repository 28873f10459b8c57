"""Prompt rendering with the model's chat template (Jinja, as stored in the GGUF).

The daemon renders prompts itself (the runner only sees text), in a sandboxed Jinja
environment. A model without a template gets a plain ChatML-style fallback.
"""

from __future__ import annotations

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
) -> str:
    """Render the prompt; any failure of the template (which is code from a model file)
    is a 400 naming it, never a 500."""
    try:
        compiled = _compile(template or FALLBACK_TEMPLATE)
        return str(
            compiled.render(
                messages=messages,
                bos_token=bos_token or "",
                eos_token=eos_token or "",
                add_generation_prompt=add_generation_prompt,
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
        content = item.get("content", "")
        if content is None:
            content = ""
        if isinstance(content, list):  # OpenAI content parts: keep the text ones
            texts = [p.get("text", "") for p in content if isinstance(p, dict)]
            content = "".join(str(t) for t in texts)
        if not isinstance(content, str):
            raise BadRequestError(f"messages[{index}].content must be a string")
        messages.append({"role": role, "content": content})
    return messages
