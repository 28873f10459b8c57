"""Typed shapes of the Ollama wire payloads that the daemon writes and the CLI and TUI read:
`/api/tags` entries, `/api/ps` rows, `/api/show` answers, and `/api/pull` / `/api/create`
progress lines.

These are TypedDicts: what travels is plain JSON, and a decoded body is used as is (the
typed client in `localserve.client.http` returns these types). Field names are Ollama's;
localserve's additions are marked. This module imports nothing but `typing`: the client
side imports it without the server.
"""

# No `from __future__ import annotations` here: TypedDict reads `NotRequired` at runtime
# only from evaluated annotations (`ProgressLine.__optional_keys__`).
from typing import Any, Literal, NotRequired, TypedDict

# A loaded model's state in /api/ps (localserve's addition).
PsState = Literal["loading", "ready", "stopping"]


class ModelDetails(TypedDict):
    """`details` of a /api/tags entry, a /api/ps row and a /api/show answer."""

    parent_model: str
    format: str  # "gguf"
    family: str
    families: list[str]
    parameter_size: str  # "135M", "7.6B", ...
    quantization_level: str  # "Q4_K_M", ...


class TagsModel(TypedDict):
    """One installed model in /api/tags."""

    name: str
    model: str
    modified_at: str  # RFC 3339, UTC ("...Z")
    size: int  # bytes of the model file
    digest: str  # the manifest's sha256, hex without "sha256:"
    details: ModelDetails


class TagsResponse(TypedDict):
    models: list[TagsModel]


class PsReplica(TypedDict):
    """One runner of a loaded model: replica 0 is the first, the autoscaler adds more."""

    replica: int
    state: PsState
    pid: int | None
    in_flight: int
    slots_busy: int
    threads: int
    cpus: list[int]  # its CPU set (LOCALSERVE_CPU_REPLICAS), else []


class PsModel(TypedDict):
    """One loaded model in /api/ps: Ollama's fields, then localserve's."""

    name: str
    model: str
    size: int  # RAM + VRAM bytes
    digest: str  # as in /api/tags
    details: ModelDetails
    expires_at: str  # RFC 3339; year 9999 when pinned ("Forever"), now when stopping
    size_vram: int  # the part of `size` on GPUs
    # localserve's additions:
    gpu_layers: int
    context_length: int
    state: PsState
    load_progress: float  # 0..1, llama.cpp's; 1.0 once loaded
    in_flight: int  # requests running
    slots: int
    slots_busy: int
    queue_depth: int  # requests waiting
    pid: int | None  # the runner's; None while loading
    threads: int  # llama.cpp threads decoding now
    queued_by_key: NotRequired[dict[str, int]]  # waiting requests per API key
    routes: NotRequired[dict[str, float]]  # localserve's: route -> this version's share now
    replicas: NotRequired[list[PsReplica]]  # every runner of the model (replicas)


class PsResponse(TypedDict):
    models: list[PsModel]


class ShowResponse(TypedDict):
    """The /api/show answer."""

    license: str
    modelfile: str
    parameters: str  # one "name value" per line
    template: str
    system: str
    details: ModelDetails
    model_info: dict[str, Any]  # GGUF metadata ("general.architecture", ...)
    capabilities: list[str]  # "completion", "embedding", "tools", "insert"
    modified_at: str
    source: dict[str, Any]  # localserve's: where a pull came from (repo, revision, file)
    messages: NotRequired[list[dict[str, str]]]  # the Modelfile's MESSAGEs


class ProgressLine(TypedDict):
    """One NDJSON line of /api/pull and /api/create: a status, and for a download the
    digest and bytes done of its total."""

    status: str  # "pulling manifest", "pulling <12 hex>", ..., "success"
    digest: NotRequired[str]
    total: NotRequired[int]
    completed: NotRequired[int]
