"""Validation of request bodies: field types, Ollama `options`, `format`, `keep_alive`."""

from __future__ import annotations

from typing import Any, cast

from localserve.config import parse_duration
from localserve.errors import BadRequestError, ConfigError

# Ollama option name -> accepted Python types. Load-time: num_ctx, num_gpu, num_parallel;
# min_replicas and max_replicas (localserve's) are read from the model's parameters only
# (Modelfile PARAMETER).
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    "temperature": (int, float),
    "top_p": (int, float),
    "top_k": (int,),
    "min_p": (int, float),
    "typical_p": (int, float),
    "seed": (int,),
    "num_predict": (int,),
    "num_ctx": (int,),
    "num_gpu": (int,),
    "num_parallel": (int,),
    "max_replicas": (int,),
    "min_replicas": (int,),
    "repeat_penalty": (int, float),
    "presence_penalty": (int, float),
    "frequency_penalty": (int, float),
    "mirostat": (int,),
    "mirostat_tau": (int, float),
    "mirostat_eta": (int, float),
    "stop": (list, str),
}
# Accepted for compatibility with Ollama clients, without effect here.
IGNORED_OPTIONS = frozenset(
    {
        "num_keep",
        "repeat_last_n",
        "penalize_newline",
        "numa",
        "num_batch",
        "main_gpu",
        "use_mmap",
        "use_mlock",
        "num_thread",
        "low_vram",
        "vocab_only",
        "tfs_z",
        "f16_kv",
    }
)


def require_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequestError("request body must be a JSON object")
    return body


def get_str(body: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = body.get(key)
    if value is None:
        if required:
            raise BadRequestError(f"missing field {key!r}")
        return None
    if not isinstance(value, str):
        raise BadRequestError(f"field {key!r} must be a string")
    return value


def refuse_unsupported(body: dict[str, Any], refused: dict[str, str]) -> None:
    """A field the server does not act on is a 400 naming it, never silently ignored.
    `refused` maps a field to why; a field counts as sent when it is present with a value
    that asks for something (not null, false, 0, "" or an empty list)."""
    for key, why in refused.items():
        value = body.get(key)
        if value not in (None, False, 0, "", [], {}):
            raise BadRequestError(f"field '{key}' is not supported: {why}")


def get_int(body: dict[str, Any], key: str) -> int | None:
    """An optional integer field (a bool is not an integer)."""
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"field '{key}' must be an integer")
    return value


def get_bool(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequestError(f"field {key!r} must be true or false")
    return value


def parse_options(raw: Any, defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Checked options: the model's stored parameters overlaid by the request's."""
    options: dict[str, Any] = dict(defaults or {})
    if raw is None:
        return options
    if not isinstance(raw, dict):
        raise BadRequestError("options must be an object")
    for key, value in raw.items():
        if key in IGNORED_OPTIONS or value is None:
            continue
        types = OPTION_TYPES.get(key)
        if types is None:
            continue  # unknown options are ignored, as Ollama does
        if isinstance(value, bool) or not isinstance(value, types):
            raise BadRequestError(f"option {key!r} has the wrong type")
        if key == "stop":
            stops: list[Any] = [value] if isinstance(value, str) else cast(list[Any], value)
            if not all(isinstance(s, str) for s in stops):
                raise BadRequestError("option 'stop' must be a string or a list of strings")
            value = [s for s in stops if s]
        if key == "num_parallel" and not 1 <= value <= 64:
            raise BadRequestError("option 'num_parallel' must be between 1 and 64")
        if key in ("max_replicas", "min_replicas") and not 1 <= value <= 64:
            raise BadRequestError(f"option {key!r} must be between 1 and 64")
        if key == "num_ctx" and not 1 <= value <= 1_048_576:
            raise BadRequestError("option 'num_ctx' must be between 1 and 1048576")
        options[key] = value
    return options


def parse_format(raw: Any) -> str | dict[str, Any] | None:
    if raw in (None, ""):
        return None
    if raw == "json" or isinstance(raw, dict):
        return raw  # type: ignore[no-any-return]
    raise BadRequestError('format must be "json" or a JSON schema object')


MAX_KEEP_ALIVE_S = 100 * 365 * 24 * 3600.0


def parse_keep_alive(raw: Any) -> float | None:
    """keep_alive in seconds (negative = forever), or None for the model's default."""
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float | str):
        raise BadRequestError("keep_alive must be a number of seconds or a duration string")
    try:
        seconds = parse_duration(raw, 0.0)
    except (ConfigError, OverflowError, ValueError) as exc:
        message = exc.message if isinstance(exc, ConfigError) else str(exc)
        raise BadRequestError(f"invalid keep_alive: {message}") from exc
    return -1.0 if seconds > MAX_KEEP_ALIVE_S else seconds  # past a century: forever
