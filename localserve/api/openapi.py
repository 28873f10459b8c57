"""The OpenAPI 3.1 document served at `GET /openapi.json`.

`server.py` keeps the route table; each `Route` carries a `Spec` from here saying what
the route takes (a JSON Schema per request body, in `SCHEMAS`) and every status it can
answer, with the content types of its successes and the dialect's error shape:

    Ollama routes   {"error": "...", "code": "model_not_found"}
    /v1/ routes     {"error": {"message": "...", "type": "...", "param": null, "code": "..."}}
    /v1/messages    {"type": "error", "error": {"type": "...", "message": "...", "code": "..."}}

Request schemas of the Ollama and OpenAI chat routes never set `additionalProperties:
false`: unknown fields are ignored, as Ollama does. Those of Anthropic's Messages and
OpenAI's Responses API do: there an unknown field is a 400 naming it, as those APIs
answer. Option types come from `localserve.service.options.OPTION_TYPES`.
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
    202: "Accepted: the drain started",
    400: "Bad input (malformed JSON, a field of the wrong type, an invalid name or digest)",
    401: "Missing or invalid API key (where keys are required, or when one is sent)",
    403: "Host or Origin not allowed (DNS-rebinding and CORS guard), or refused by the hub",
    404: "Unknown model or blob",
    409: "Conflict: the same file is being downloaded by another localserve process; a"
    " route changed since it was read (expected_revision), has a rollout in progress, or"
    " uses the model being deleted",
    413: "Request body larger than LOCALSERVE_MAX_BODY (blobs: the blob size limit)",
    429: "The API key is over a limit (requests, tokens per minute, concurrent): retry after"
    " Retry-After; x-ratelimit-* headers say which",
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
GENERATION_ERRORS = (*MODEL_ERRORS, 422, 429, 503, 507)  # routes that load a model and run it


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
    "n": {
        "type": "integer",
        "minimum": 1,
        "maximum": 8,
        "description": "choices to generate (parallel sequences sharing one read of the"
        " prompt); with a seed, choice i samples with seed + i; usage sums the completion"
        " tokens and counts the prompt once",
    },
}
_OLLAMA_LOGPROBS: dict[str, JsonSchema] = {
    "logprobs": _bool(
        "each chunk's `logprobs`: its tokens' log-probabilities (the log-softmax of the"
        " model's logits, before temperature and sampling filters) and bytes"
    ),
    "top_logprobs": {
        "type": "integer",
        "minimum": 0,
        "maximum": 20,
        "description": "the N most likely alternatives of each token; needs logprobs",
    },
}

# Anthropic's Messages API routes answer errors in Anthropic's shape (their own sub-app).
ANTHROPIC_PREFIX = "/v1/messages"
_ANTHROPIC_PROMPT: dict[str, JsonSchema] = {
    "model": _MODEL,
    "messages": {"type": "array", "items": _ref("AnthropicMessage"), "minItems": 1},
    "system": {
        "anyOf": [{"type": "string"}, {"type": "array", "items": _ref("AnthropicContentBlock")}],
        "description": "a string or text blocks",
    },
    "tools": {"type": "array", "items": _ref("AnthropicTool")},
    "tool_choice": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["auto", "any", "tool", "none"]},
            "name": _string("type tool: the tool to call"),
            "disable_parallel_tool_use": {"type": "boolean"},
        },
        "description": "any and tool are enforced by a grammar",
    },
    "thinking": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"type": "string", "enum": ["enabled", "disabled"]},
            "budget_tokens": {"type": "integer", "minimum": 1024},
        },
    },
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
            "context": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0},
                "description": "the `context` a generate answer returned (token ids of its"
                " prompt and answer): read before this prompt, which then gets no BOS token;"
                " 400 for an id outside the model's vocabulary. The done chunk returns the"
                " context of this exchange",
            },
            **_OLLAMA_LOGPROBS,
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
            **_OLLAMA_LOGPROBS,
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
    "ShowRequest": {
        "type": "object",
        "required": ["model"],
        "properties": {
            "model": _MODEL,
            "name": _NAME,
            "verbose": _bool(
                "model_info also has the tokenizer arrays (tokenizer.ggml.tokens, token_type,"
                " merges) from the GGUF header; without it they are absent"
            ),
        },
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
            "logprobs": _bool(
                "choices[].logprobs.content: each content token's log-probability (the"
                " log-softmax of the model's logits, before temperature and sampling"
                " filters) and bytes; reasoning and tool-call tokens have none"
            ),
            "top_logprobs": {
                "type": "integer",
                "minimum": 0,
                "maximum": 20,
                "description": "the N most likely alternatives of each token; needs logprobs",
            },
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
            "logprobs": {
                "type": "integer",
                "minimum": 0,
                "maximum": 20,
                "description": "choices[].logprobs {tokens, token_logprobs, top_logprobs,"
                " text_offset}: each token's log-probability and its N most likely"
                " alternatives (text_offset counts from the prompt's start)",
            },
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
    "DrainRequest": {
        "type": "object",
        "properties": {
            "timeout": {
                "anyOf": [
                    {"type": "number", "minimum": 0, "maximum": 86400},
                    {"type": "string"},
                ],
                "description": "how long in-flight requests may take before the daemon exits"
                " anyway: seconds or a duration such as 90s or 5m (default 5m)",
            }
        },
    },
    # -- Anthropic's Messages API (localserve.api.anthropic)
    "AnthropicContentBlock": {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {
                "type": "string",
                "enum": [
                    "text",
                    "tool_use",
                    "tool_result",
                    "thinking",
                    "redacted_thinking",
                    "image",
                    "document",
                ],
                "description": "image and document blocks are refused (400)",
            },
            "text": _string("text blocks"),
            "id": _string("tool_use: the call's id"),
            "name": _string("tool_use: the tool called"),
            "input": {"type": "object", "description": "tool_use: the arguments"},
            "tool_use_id": _string("tool_result: the call this answers"),
            "content": {
                "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "object"}}],
                "description": "tool_result: the result, text or text blocks",
            },
            "is_error": _bool("tool_result: the tool failed"),
            "thinking": _string("thinking: earlier reasoning, given to the template"),
            "signature": _string("thinking: accepted, not checked"),
        },
    },
    "AnthropicMessage": {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {
                "anyOf": [
                    {"type": "string"},
                    {"type": "array", "items": _ref("AnthropicContentBlock")},
                ]
            },
        },
    },
    "AnthropicTool": {
        "type": "object",
        "required": ["name", "input_schema"],
        "properties": {
            "type": {"type": "string", "enum": ["custom"], "description": "server tools: 400"},
            "name": {"type": "string"},
            "description": {"type": "string"},
            "input_schema": {"type": "object", "description": "a JSON schema"},
        },
    },
    "MessagesRequest": {
        "type": "object",
        "required": ["model", "messages", "max_tokens"],
        "additionalProperties": False,
        "description": "an unknown field is a 400 naming it, as Anthropic answers",
        "properties": {
            **_ANTHROPIC_PROMPT,
            "max_tokens": {"type": "integer", "minimum": 1},
            "stop_sequences": _STRINGS,
            "stream": _bool("typed server-sent events (default false)"),
            "temperature": {"type": "number"},
            "top_p": {"type": "number"},
            "top_k": {"type": "integer"},
            "metadata": {"type": "object", "description": "accepted, not used"},
            "keep_alive": _ref("KeepAlive"),
        },
    },
    "CountTokensRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "additionalProperties": False,
        "properties": _ANTHROPIC_PROMPT,
    },
    "AnthropicError": {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"type": "string", "enum": ["error"]},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {
                        "type": "string",
                        "description": "invalid_request_error, authentication_error,"
                        " permission_error, not_found_error, request_too_large,"
                        " rate_limit_error, overloaded_error, api_error",
                    },
                    "message": {"type": "string"},
                    "code": _string("localserve's machine-readable code"),
                },
            },
        },
    },
    # -- OpenAI's Responses API (localserve.api.responses)
    "ResponsesRequest": {
        "type": "object",
        "required": ["model", "input"],
        "additionalProperties": False,
        "description": "stateless: previous_response_id, conversation and store=true are"
        " refused (400); an unknown field is a 400 naming it",
        "properties": {
            "model": _MODEL,
            "input": {
                "anyOf": [
                    {"type": "string"},
                    {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "messages (input_text parts), function_call and"
                        " function_call_output items, reasoning items",
                    },
                ]
            },
            "instructions": _string("a system message first"),
            "tools": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type", "name"],
                    "properties": {
                        "type": {"type": "string", "enum": ["function"]},
                        "name": {"type": "string"},
                        "description": {"type": "string"},
                        "parameters": {"type": "object", "description": "a JSON schema"},
                        "strict": {"type": "boolean"},
                    },
                },
            },
            "tool_choice": {
                "anyOf": [
                    {"type": "string", "enum": ["none", "auto", "required"]},
                    {
                        "type": "object",
                        "required": ["type", "name"],
                        "properties": {
                            "type": {"type": "string", "enum": ["function"]},
                            "name": {"type": "string"},
                        },
                    },
                ],
                "description": "required and a named function are enforced by a grammar",
            },
            "parallel_tool_calls": _bool("several calls in one answer (default true)"),
            "max_output_tokens": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number"},
            "top_p": {"type": "number"},
            "text": {
                "type": "object",
                "properties": {
                    "format": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {
                            "type": {
                                "type": "string",
                                "enum": ["text", "json_object", "json_schema"],
                            },
                            "name": {"type": "string"},
                            "schema": {"type": "object"},
                            "strict": {"type": "boolean"},
                        },
                    }
                },
            },
            "reasoning": {
                "type": "object",
                "properties": {
                    "effort": {
                        "type": "string",
                        "enum": ["none", "minimal", "low", "medium", "high"],
                    },
                    "summary": {"type": ["string", "null"]},
                },
            },
            "stream": _bool("typed server-sent events (default false)"),
            "store": _bool("true is refused (400): localserve keeps no responses"),
            "metadata": {"type": "object", "description": "echoed in the response"},
            "user": _string("accepted, not used"),
            "keep_alive": _ref("KeepAlive"),
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
SHOW = Spec(body="ShowRequest", errors=MODEL_ERRORS)
CREATE = Spec(body="CreateRequest", success={200: (JSON, NDJSON)}, errors=(*MODEL_ERRORS, 507))
BLOB_HEAD = Spec(success={200: ()}, errors=(*COMMON_ERRORS, 400, 404))
BLOB_UPLOAD = Spec(raw_body=True, success={200: (), 201: ()}, errors=(*COMMON_ERRORS, 400, 507))
COPY = Spec(body="CopyRequest", success={200: ()}, errors=(*MODEL_ERRORS, 507))
DELETE = Spec(body="DeleteRequest", success={200: ()}, errors=(*MODEL_ERRORS, 409))
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
MESSAGES = Spec(body="MessagesRequest", success={200: (JSON, SSE)}, errors=GENERATION_ERRORS)
COUNT_TOKENS = Spec(body="CountTokensRequest", errors=GENERATION_ERRORS)
RESPONSES = Spec(body="ResponsesRequest", success={200: (JSON, SSE)}, errors=GENERATION_ERRORS)
# -- fleet (issue 15): liveness, readiness (503 + Retry-After while draining or full), drain
LIVENESS = Spec()
READY = Spec(
    errors=(*COMMON_ERRORS, 400, 503),
    query=(
        {
            "name": "model",
            "in": "query",
            "required": False,
            "description": "only this loaded model's room counts",
            "schema": {"type": "string"},
        },
    ),
)
DRAIN = Spec(
    body="DrainRequest", success={200: (JSON,), 202: (JSON,)}, errors=(*COMMON_ERRORS, 400)
)
# -- keys and usage (issue 16; localserve.api.access)
KEYS_LIST = Spec()
KEY_CREATE = Spec(body="KeyCreateRequest", errors=(*COMMON_ERRORS, 400, 409))
KEY_REVOKE = Spec(errors=(*COMMON_ERRORS, 404))
USAGE = Spec(
    errors=(*COMMON_ERRORS, 400),
    query=(
        {
            "name": "since",
            "in": "query",
            "required": False,
            "description": "a duration back from now: 7d, 24h, 30m (default: everything)",
            "schema": {"type": "string"},
        },
        {
            "name": "key",
            "in": "query",
            "required": False,
            "description": "only this key (a non-admin key only ever sees its own)",
            "schema": {"type": "string"},
        },
    ),
)
_LIMIT = {"type": "integer", "minimum": 0, "description": "0: unlimited"}
SCHEMAS["KeyCreateRequest"] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
        "scopes": {
            "type": "array",
            "items": {"type": "string", "description": "read, admin or model:GLOB"},
        },
        "rpm": {**_LIMIT, "description": "requests per minute (0: unlimited)"},
        "tpm": {**_LIMIT, "description": "prompt + generated tokens per minute (0: unlimited)"},
        "concurrent": {**_LIMIT, "description": "requests at once (0: unlimited)"},
        "priority": {"type": "integer", "minimum": -100, "maximum": 100},
        "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 1000},
    },
}


PATH_PARAMETERS: dict[str, JsonSchema] = {
    "digest": {"type": "string", "pattern": "^sha256[:-][0-9a-f]{64}$"},
    "model": {"type": "string", "description": "model name"},
    "name": {"type": "string", "description": "API key name"},
}

# -- routes (issue 14): served names, rollbacks and rollouts (localserve.api.routing)
PATH_PARAMETERS["name"] = {"type": "string", "description": "route name, e.g. assistant"}
_WHO = {"type": "string", "enum": ["cli", "api", "tui"], "description": "recorded in history"}
_REASON = _string("why, recorded in the route's history")
_RATIO_OR_SECONDS = {
    "type": ["string", "number"],
    "description": '"1.5x" (of the stable version\'s) or seconds / a duration ("800ms")',
}
SCHEMAS.update(
    {
        "DeleteRequest": {
            "type": "object",
            "required": ["model"],
            "properties": {
                "model": _MODEL,
                "name": _NAME,
                "force": _bool(
                    "also when a route uses the model: it leaves the route (409 otherwise);"
                    " the answer then lists what each route points at"
                ),
            },
        },
        "RouteTarget": {
            "type": "object",
            "required": ["model"],
            "properties": {
                "model": _string("an installed model (not a route)"),
                "weight": {"type": "number", "minimum": 0, "description": "relative (default 1)"},
            },
        },
        "RouteSetRequest": {
            "type": "object",
            "required": ["targets"],
            "additionalProperties": False,
            "properties": {
                "targets": {"type": "array", "items": _ref("RouteTarget"), "minItems": 1},
                "reason": _REASON,
                "expected_revision": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "409 unless the route is at this revision (0: new)",
                },
                "who": _WHO,
            },
        },
        "RouteRollbackRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "to": {"type": "integer", "minimum": 0, "description": "a history revision"},
                "reason": _REASON,
                "who": _WHO,
            },
        },
        "RolloutRequest": {
            "type": "object",
            "required": ["to"],
            "additionalProperties": False,
            "properties": {
                "to": _string("the candidate: an installed model"),
                "steps": {
                    "anyOf": [{"type": "array", "items": {"type": "number"}}, {"type": "string"}],
                    "description": "increasing percentages ending at 100 (default 5,25,50,100)",
                },
                "every": {"type": ["string", "number"], "description": "a step's window (10m)"},
                "max_error_rate": {"type": ["string", "number"], "description": '"2%" or 0.02'},
                "max_ttft_p95": _RATIO_OR_SECONDS,
                "min_tokens_per_second": {
                    "type": ["string", "number"],
                    "description": '"0.8x": at least this share of the stable decode rate',
                },
                "max_poor_rate": {
                    "type": ["string", "number"],
                    "description": "empty or length-cut answers allowed over the stable"
                    " version's share, e.g. 10%",
                },
                "min_requests": {"type": "integer", "minimum": 1},
                "shadow": {
                    "type": ["string", "number"],
                    "description": "copy this share of the stable version's requests to the"
                    " candidate, compare, discard (10%)",
                },
            },
        },
        "RolloutAbortRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"reason": _REASON},
        },
    }
)
ROUTE_ERRORS = (*COMMON_ERRORS, 400, 404, 409)
ROUTE_LIST = Spec()
ROUTE_GET = Spec(errors=(*COMMON_ERRORS, 400, 404))
ROUTE_SET = Spec(body="RouteSetRequest", errors=ROUTE_ERRORS)
ROUTE_DELETE = Spec(
    errors=ROUTE_ERRORS,
    query=(
        {
            "name": "expected_revision",
            "in": "query",
            "required": False,
            "description": "409 unless the route is at this revision",
            "schema": {"type": "integer", "minimum": 0},
        },
    ),
)
ROUTE_ROLLBACK = Spec(body="RouteRollbackRequest", errors=ROUTE_ERRORS)
ROLLOUT_START = Spec(body="RolloutRequest", errors=ROUTE_ERRORS)
ROLLOUT_ACTION = Spec(errors=ROUTE_ERRORS)
ROLLOUT_ABORT = Spec(body="RolloutAbortRequest", errors=ROUTE_ERRORS)

# ---- the document ---------------------------------------------------------------------------


def _content(media_types: tuple[str, ...]) -> dict[str, Any]:
    """Success bodies: a JSON object, text; streams (NDJSON lines, SSE events) untyped."""
    schemas: dict[str, JsonSchema] = {JSON: {"type": "object"}, TEXT: {"type": "string"}}
    return {media: {"schema": schemas[media]} if media in schemas else {} for media in media_types}


def error_schema(path: str) -> str:
    """The error shape of the app that serves `path` (see localserve.api.app)."""
    if path == ANTHROPIC_PREFIX or path.startswith(ANTHROPIC_PREFIX + "/"):
        return "AnthropicError"
    return "OpenAIError" if path.startswith("/v1/") else "OllamaError"


def _responses(path: str, spec: Spec) -> dict[str, Any]:
    error = _ref(error_schema(path))
    responses: dict[str, Any] = {}
    for status in sorted({*spec.success, *spec.errors}):
        response: dict[str, Any] = {"description": STATUS_DESCRIPTIONS[status]}
        if status in spec.success:
            if spec.success[status]:
                response["content"] = _content(spec.success[status])
        else:
            response["content"] = {JSON: {"schema": error}}
        if status == 429:
            response["headers"] = {
                "Retry-After": {"description": "seconds", "schema": {"type": "integer"}},
                "x-ratelimit-remaining-requests": {"schema": {"type": "string"}},
                "x-ratelimit-remaining-tokens": {"schema": {"type": "string"}},
            }
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
            "description": "Ollama-, OpenAI- and Anthropic-compatible local model daemon. A"
            " method a path does not list is answered 405 with an Allow header; errors after"
            " a stream has started arrive as a final NDJSON line or SSE event.",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS},
    }
