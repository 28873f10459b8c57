"""The OpenAPI 3.1 document served at `GET /openapi.json`.

`server.py` keeps the route table; each `Route` carries a `Spec` from here saying what
the route takes (a JSON Schema per request body, in `SCHEMAS`) and every status it can
answer, with the content types of its successes and the dialect's error shape:

    Ollama routes   {"error": "...", "code": "model_not_found"}
    /v1/ routes     {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}

Request schemas never set `additionalProperties: false`: unknown fields are ignored, as
Ollama does. Option types come from `localserve.service.options.OPTION_TYPES`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from localserve.service.options import IGNORED_OPTIONS, OPTION_TYPES
from localserve.service.prompts import VALID_ROLES

JsonSchema = dict[str, Any]

JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
TEXT = "text/plain"

STATUS_DESCRIPTIONS: dict[int, str] = {
    200: "OK",
    201: "Created: the blob was stored",
    400: "Bad input (malformed JSON, a field of the wrong type, an invalid name or digest)",
    401: "Missing or invalid API key (only when LOCALSERVE_API_KEY is set)",
    403: "Host or Origin not allowed (DNS-rebinding and CORS guard), or refused by the hub",
    404: "Unknown model or blob",
    409: "The same file is being downloaded by another localserve process",
    413: "Request body larger than LOCALSERVE_MAX_BODY (blobs: the blob size limit)",
    422: "llama.cpp refused to load the model file (code model_load_failed)",
    500: "The runner failed (crash, load timeout) or the store holds a corrupt manifest",
    502: "The model hub failed, sent bad data or could not be reached",
    503: "Busy (queue full, or memory cannot be freed in time): retry after Retry-After",
    507: "The model cannot fit in the memory budget (model_too_large), or the disk is full"
    " (disk_full)",
}

# Every route: the API key (not on GET|HEAD /), the Host/Origin guard, and a declared
# Content-Length over the body limit (refused from the header, whatever the route).
COMMON_ERRORS = (401, 403, 413)
MODEL_ERRORS = (*COMMON_ERRORS, 400, 404, 500)  # routes that read a model's manifest
GENERATION_ERRORS = (*MODEL_ERRORS, 422, 503, 507)  # routes that load a model and run it


@dataclass(frozen=True)
class Spec:
    """What the document says about one route besides its summary."""

    body: str | None = None  # a key of SCHEMAS: the JSON request body
    raw_body: bool = False  # the body is raw bytes (application/octet-stream)
    # status -> success media types (none: an empty body)
    success: Mapping[int, tuple[str, ...]] = field(
        default_factory=lambda: {200: (JSON,)}, hash=False
    )
    errors: tuple[int, ...] = COMMON_ERRORS
    query: tuple[JsonSchema, ...] = field(default=(), hash=False)  # query parameters


class RouteInfo(Protocol):
    """The parts of `server.Route` the document needs."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...
    @property
    def summary(self) -> str: ...
    @property
    def spec(self) -> Spec: ...


# ---- request body schemas ------------------------------------------------------------------


def _ref(name: str) -> JsonSchema:
    return {"$ref": f"#/components/schemas/{name}"}


def _string(description: str = "") -> JsonSchema:
    return {"type": "string", **({"description": description} if description else {})}


def _bool(description: str = "") -> JsonSchema:
    return {"type": "boolean", **({"description": description} if description else {})}


_STRINGS = {"type": "array", "items": {"type": "string"}}
_STRING_OR_STRINGS = {"anyOf": [{"type": "string"}, _STRINGS]}


def _options_schema() -> JsonSchema:
    """Ollama `options`, typed as `localserve.service.options.parse_options` checks them."""
    properties: dict[str, JsonSchema] = {}
    for name, types in OPTION_TYPES.items():
        if name == "stop":
            properties[name] = {**_STRING_OR_STRINGS, "description": "stop strings"}
        elif float in types:
            properties[name] = {"type": "number"}
        else:
            properties[name] = {"type": "integer"}
    properties["num_parallel"].update(minimum=1, maximum=64)
    properties["num_ctx"].update(minimum=1, maximum=1_048_576)
    properties["num_predict"]["description"] = "tokens to generate (-1: until the context is full)"
    for name in sorted(IGNORED_OPTIONS):
        properties[name] = {"description": "accepted for compatibility, without effect"}
    return {
        "type": "object",
        "description": "sampling and load options; unknown ones are ignored, as Ollama does",
        "properties": properties,
    }


_MODEL = _string("model name, e.g. smollm2:135m or hf.co/<org>/<repo>:<quant>")
_NAME = _string("deprecated alias of model, used when model is absent")
_STREAM = _bool("stream the answer (default true)")
_OLLAMA_COMMON: dict[str, JsonSchema] = {
    "model": _MODEL,
    "name": _NAME,
    "options": _ref("Options"),
    "keep_alive": _ref("KeepAlive"),
}
_OPENAI_SAMPLING: dict[str, JsonSchema] = {
    "model": _MODEL,
    "stream": _bool("server-sent events ending with `data: [DONE]` (default false)"),
    "stream_options": {
        "type": "object",
        "properties": {"include_usage": _bool("a last chunk with usage")},
    },
    "max_tokens": {"type": "integer"},
    "max_completion_tokens": {"type": "integer", "description": "wins over max_tokens"},
    "temperature": {"type": "number"},
    "top_p": {"type": "number"},
    "seed": {"type": "integer"},
    "presence_penalty": {"type": "number"},
    "frequency_penalty": {"type": "number"},
    "stop": _STRING_OR_STRINGS,
    "response_format": _ref("ResponseFormat"),
    "keep_alive": _ref("KeepAlive"),
}

SCHEMAS: dict[str, JsonSchema] = {
    "Options": _options_schema(),
    "KeepAlive": {
        "type": ["string", "number"],
        "description": 'seconds or a duration ("5m", "1h"); 0 unloads after the request,'
        " negative keeps the model loaded",
    },
    "Format": {
        "anyOf": [
            {"type": "string", "enum": ["", "json"]},
            {"type": "object", "description": "a JSON schema the answer must follow"},
        ],
        "description": 'constrain the answer: "json", or a JSON schema',
    },
    "Message": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": sorted(VALID_ROLES)},
            "content": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "null"},
                    {
                        "type": "array",
                        "description": "OpenAI content parts; the text ones are joined",
                        "items": {
                            "type": "object",
                            "properties": {"type": {"type": "string"}, "text": {"type": "string"}},
                        },
                    },
                ]
            },
            "tool_calls": {
                "type": "array",
                "description": "an assistant message's earlier calls (arguments: object or"
                " JSON string)",
                "items": {"type": "object", "required": ["function"]},
            },
            "tool_call_id": _string("role tool: the call this answers (OpenAI)"),
            "tool_name": _string("role tool: the tool that answered (Ollama)"),
        },
    },
    "Tool": {
        "type": "object",
        "required": ["function"],
        "properties": {
            "type": {"type": "string", "enum": ["function"]},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "parameters": {"type": "object", "description": "a JSON schema"},
                },
            },
        },
    },
    "ResponseFormat": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["text", "json_object", "json_schema"]},
            "json_schema": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "schema": {"type": "object", "description": "required for json_schema"},
                    "strict": {"type": "boolean"},
                },
            },
        },
    },
    "GenerateRequest": {
        "type": "object",
        "required": ["model"],
        "properties": {
            **_OLLAMA_COMMON,
            "prompt": _string("an empty or missing prompt only loads (or unloads) the model"),
            "system": _string("replaces the model's system prompt"),
            "raw": _bool("send the prompt as is, without the chat template"),
            "suffix": _string(
                "fill in the middle between prompt and suffix (400 for a model without FIM tokens)"
            ),
            "template": _string("a chat template for this request instead of the model's"),
            "format": _ref("Format"),
            "stream": _STREAM,
            "images": {**_STRINGS, "description": "refused (400) when not empty"},
        },
    },
    "ChatRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_OLLAMA_COMMON,
            "messages": {
                "type": "array",
                "items": _ref("Message"),
                "description": "an empty list only loads (or unloads) the model",
            },
            "tools": {
                "type": "array",
                "items": _ref("Tool"),
                "description": "400 when the model's template has no tool support",
            },
            "format": _ref("Format"),
            "stream": _STREAM,
        },
    },
    "EmbedRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            **_OLLAMA_COMMON,
            "input": _STRING_OR_STRINGS,
            "truncate": _bool("cut inputs to the context (default true); else 400"),
            "dimensions": {
                "type": "integer",
                "minimum": 1,
                "description": "keep the first N values, renormalised",
            },
        },
    },
    "EmbeddingsRequest": {
        "type": "object",
        "required": ["model"],
        "properties": {**_OLLAMA_COMMON, "prompt": _string("an empty prompt gives []")},
    },
    "ModelRequest": {
        "type": "object",
        "required": ["model"],
        "properties": {"model": _MODEL, "name": _NAME},
    },
    "CreateRequest": {
        "type": "object",
        "required": ["model"],
        "anyOf": [{"required": ["files"]}, {"required": ["from"]}, {"required": ["modelfile"]}],
        "properties": {
            "model": _MODEL,
            "name": _NAME,
            "files": {
                "type": "object",
                "description": "exactly one entry: file name ending in .gguf -> its digest"
                " (uploaded with POST /api/blobs/{digest})",
                "additionalProperties": {"type": "string"},
            },
            "from": _string("an installed model to derive from"),
            "template": _string(
                "chat template override: Jinja, or Ollama's Go syntax (translated; an"
                " unsupported construct is a 400 naming it)"
            ),
            "system": _string("system prompt override"),
            "parameters": _ref("Options"),
            "messages": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": {"type": "string", "enum": ["system", "user", "assistant"]},
                        "content": {"type": "string"},
                    },
                },
            },
            "license": _STRING_OR_STRINGS,
            "stream": _STREAM,
            "quantize": {"description": "refused (400): create from a quantized GGUF"},
            "adapters": {"description": "refused (400)"},
            "modelfile": _string(
                "a Modelfile's text (FROM an installed model or sha256:<digest>); fields sent"
                " beside it win"
            ),
        },
    },
    "CopyRequest": {
        "type": "object",
        "required": ["source", "destination"],
        "properties": {"source": _MODEL, "destination": _MODEL},
    },
    "PullRequest": {
        "type": "object",
        "required": ["model"],
        "properties": {"model": _MODEL, "name": _NAME, "stream": _STREAM},
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "properties": {
            **_OPENAI_SAMPLING,
            "messages": {"type": "array", "items": _ref("Message"), "minItems": 1},
            "tools": {"type": "array", "items": _ref("Tool")},
            "tool_choice": {
                "anyOf": [
                    {"type": "string", "enum": ["none", "auto", "required"]},
                    {
                        "type": "object",
                        "required": ["type", "function"],
                        "properties": {
                            "type": {"type": "string", "enum": ["function"]},
                            "function": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {"name": {"type": "string"}},
                            },
                        },
                    },
                ],
                "description": "required and a named function are enforced by a grammar",
            },
            "parallel_tool_calls": _bool("several calls in one answer (default true)"),
        },
    },
    "CompletionRequest": {
        "type": "object",
        "required": ["model", "prompt"],
        "properties": {
            **_OPENAI_SAMPLING,
            "prompt": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1},
                ],
                "description": "one prompt (token arrays and batches are refused)",
            },
            "suffix": _string("refused (400) when not empty"),
        },
    },
    "EmbeddingRequest": {
        "type": "object",
        "required": ["model", "input"],
        "properties": {
            "model": _MODEL,
            "input": _STRING_OR_STRINGS,
            "encoding_format": {"type": "string", "enum": ["float", "base64"]},
            "dimensions": {"type": "integer", "minimum": 1},
        },
    },
    "OllamaError": {
        "type": "object",
        "required": ["error", "code"],
        "properties": {
            "error": {"type": "string"},
            "code": {"type": "string", "description": "e.g. model_not_found, busy, disk_full"},
        },
    },
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
}

# ---- the specs the route table uses --------------------------------------------------------

INFO = Spec()
HEALTH = Spec(success={200: (TEXT,)}, errors=(403, 413))
HEALTH_HEAD = Spec(success={200: ()}, errors=(403, 413))
GENERATE = Spec(body="GenerateRequest", success={200: (JSON, NDJSON)}, errors=GENERATION_ERRORS)
CHAT = Spec(body="ChatRequest", success={200: (JSON, NDJSON)}, errors=GENERATION_ERRORS)
EMBED = Spec(body="EmbedRequest", errors=GENERATION_ERRORS)
EMBEDDINGS = Spec(body="EmbeddingsRequest", errors=GENERATION_ERRORS)
SHOW = Spec(body="ModelRequest", errors=MODEL_ERRORS)
CREATE = Spec(body="CreateRequest", success={200: (JSON, NDJSON)}, errors=(*MODEL_ERRORS, 507))
BLOB_HEAD = Spec(success={200: ()}, errors=(*COMMON_ERRORS, 400, 404))
BLOB_UPLOAD = Spec(raw_body=True, success={200: (), 201: ()}, errors=(*COMMON_ERRORS, 400, 507))
COPY = Spec(body="CopyRequest", success={200: ()}, errors=(*MODEL_ERRORS, 507))
DELETE = Spec(body="ModelRequest", success={200: ()}, errors=MODEL_ERRORS)
PULL = Spec(
    body="PullRequest", success={200: (JSON, NDJSON)}, errors=(*MODEL_ERRORS, 409, 502, 507)
)
CHAT_COMPLETIONS = Spec(
    body="ChatCompletionRequest", success={200: (JSON, SSE)}, errors=GENERATION_ERRORS
)
COMPLETIONS = Spec(body="CompletionRequest", success={200: (JSON, SSE)}, errors=GENERATION_ERRORS)
MODEL = Spec(errors=(*COMMON_ERRORS, 400, 404, 500))
EMBEDDINGS_V1 = Spec(body="EmbeddingRequest", errors=GENERATION_ERRORS)
EVENTS = Spec(
    success={200: (SSE,)},
    query=(
        {
            "name": "types",
            "in": "query",
            "required": False,
            "description": "comma-separated event types to keep (e.g. loaded,unloaded)",
            "schema": {"type": "string"},
        },
    ),
)
METRICS = Spec(success={200: (TEXT,)})


PATH_PARAMETERS: dict[str, JsonSchema] = {
    "digest": {"type": "string", "pattern": "^sha256[:-][0-9a-f]{64}$"},
    "model": {"type": "string", "description": "model name"},
}

# ---- the document ---------------------------------------------------------------------------


def _content(media_types: tuple[str, ...]) -> dict[str, Any]:
    """Success bodies: a JSON object, text; streams (NDJSON lines, SSE events) untyped."""
    schemas: dict[str, JsonSchema] = {JSON: {"type": "object"}, TEXT: {"type": "string"}}
    return {media: {"schema": schemas[media]} if media in schemas else {} for media in media_types}


def _responses(path: str, spec: Spec) -> dict[str, Any]:
    error = _ref("OpenAIError" if path.startswith("/v1/") else "OllamaError")
    responses: dict[str, Any] = {}
    for status in sorted({*spec.success, *spec.errors}):
        response: dict[str, Any] = {"description": STATUS_DESCRIPTIONS[status]}
        if status in spec.success:
            if spec.success[status]:
                response["content"] = _content(spec.success[status])
        else:
            response["content"] = {JSON: {"schema": error}}
        if status == 503:
            response["headers"] = {
                "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
            }
        responses[str(status)] = response
    return responses


def _operation(route: RouteInfo) -> dict[str, Any]:
    spec = route.spec
    operation_id = re.sub(r"[^a-z0-9]+", "_", f"{route.method} {route.path}".lower())
    operation: dict[str, Any] = {
        "summary": route.summary,
        "operationId": operation_id.strip("_"),
        "responses": _responses(route.path, spec),
    }
    parameters: list[JsonSchema] = [
        {
            "name": part[1:-1],
            "in": "path",
            "required": True,
            "schema": PATH_PARAMETERS.get(part[1:-1], {"type": "string"}),
        }
        for part in route.path.split("/")
        if part.startswith("{") and part.endswith("}")
    ]
    parameters.extend(spec.query)
    if parameters:
        operation["parameters"] = parameters
    if spec.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": _ref(spec.body)}},
        }
    elif spec.raw_body:
        operation["requestBody"] = {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    return operation


def openapi_document(routes: Iterable[RouteInfo], version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document for `routes`."""
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        if route.spec.body is not None and route.spec.body not in SCHEMAS:
            raise KeyError(f"{route.method} {route.path}: no schema named {route.spec.body!r}")
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "localserve",
            "version": version,
            "description": "Ollama- and OpenAI-compatible local model daemon. A method a path"
            " does not list is answered 405 with an Allow header; errors after a stream has"
            " started arrive as a final NDJSON line or SSE event.",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
