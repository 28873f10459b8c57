"""Model facts read from a GGUF header with the `gguf` package, without loading the model."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localserve.errors import InvalidModelFileError

GGUF_MAGIC = b"GGUF"

# gguf's LlamaFileType names without the MOSTLY_ prefix, e.g. 15 -> "Q4_K_M".
_FILE_TYPE_NAMES: dict[int, str] = {}


def _file_type_name(value: int) -> str:
    if not _FILE_TYPE_NAMES:
        from gguf.constants import LlamaFileType

        for member in LlamaFileType:
            _FILE_TYPE_NAMES[int(member)] = member.name.removeprefix("MOSTLY_").replace("ALL_", "")
    return _FILE_TYPE_NAMES.get(value, f"unknown({value})")


@dataclass(frozen=True)
class ModelFacts:
    """What the daemon needs to know about a GGUF before it loads it."""

    architecture: str
    parameter_count: int
    quantization: str
    context_length: int
    block_count: int
    embedding_length: int
    head_count: int
    head_count_kv: int
    chat_template: str | None
    file_size: int
    tensor_bytes: int
    # Bytes of tensors per repeating layer (index = layer), and outside the layers.
    layer_bytes: list[int] = field(default_factory=list)
    output_bytes: int = 0
    pooling: bool = False
    bos_token: str | None = None
    eos_token: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFacts:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})

    @property
    def parameter_size(self) -> str:
        """Human parameter size as Ollama shows it, e.g. "135M", "7.2B"."""
        count = self.parameter_count
        if count >= 1_000_000_000:
            return f"{count / 1e9:.1f}B"
        if count >= 1_000_000:
            return f"{round(count / 1e6)}M"
        if count >= 1_000:
            return f"{round(count / 1e3)}K"
        return str(count)


_SCALAR_KEYS = re.compile(
    r"^(general\.(name|architecture|file_type|basename|size_label|license|quantization_version)"
    r"|[a-z0-9_]+\.(context_length|block_count|embedding_length|feed_forward_length"
    r"|attention\.head_count|attention\.head_count_kv|rope\.dimension_count"
    r"|vocab_size|pooling_type)"
    r"|tokenizer\.ggml\.(model|bos_token_id|eos_token_id|pre))$"
)


def _field_value(reader: Any, key: str) -> Any:
    fld = reader.get_field(key)
    if fld is None:
        return None
    try:
        return fld.contents()
    except Exception:
        return None


def _int_field(reader: Any, key: str, default: int = 0) -> int:
    value = _field_value(reader, key)
    if isinstance(value, list):  # per-layer arrays (e.g. head_count_kv) -> the max
        value = max(value) if value else None
    try:
        return int(value) if value is not None else default
    except (TypeError, ValueError):
        return default


def _token_text(reader: Any, id_key: str) -> str | None:
    """The text of a special token (e.g. BOS) from the vocabulary, for chat templates."""
    token_id = _field_value(reader, id_key)
    tokens = reader.get_field("tokenizer.ggml.tokens")
    if not isinstance(token_id, int) or tokens is None or token_id >= len(tokens.data):
        return None
    try:
        value = tokens.contents(token_id)
    except Exception:
        return None
    return value if isinstance(value, str) else None


_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")


def read_model_facts(path: Path) -> ModelFacts:
    """Parse and check a GGUF file; raise InvalidModelFileError saying what is wrong."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise InvalidModelFileError(f"cannot read model file: {exc.strerror}") from exc
    if magic != GGUF_MAGIC:
        raise InvalidModelFileError("not a GGUF file (bad magic bytes)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(path, "r")
    except Exception as exc:
        raise InvalidModelFileError(f"corrupt or truncated GGUF header: {exc}") from exc

    arch = _field_value(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFileError("GGUF has no general.architecture")
    if not reader.tensors:
        raise InvalidModelFileError("GGUF has no tensors")
    tensor_bytes = 0
    param_count = 0
    block_count = _int_field(reader, f"{arch}.block_count")
    layer_bytes = [0] * block_count
    output_bytes = 0
    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if end > size:
            raise InvalidModelFileError(
                f"truncated GGUF: tensor {tensor.name} ends at byte {end} but file has {size}"
            )
        tensor_bytes += int(tensor.n_bytes)
        param_count += int(tensor.n_elements)
        match = _LAYER_TENSOR.match(tensor.name)
        if match and int(match.group(1)) < block_count:
            layer_bytes[int(match.group(1))] += int(tensor.n_bytes)
        else:
            output_bytes += int(tensor.n_bytes)

    file_type = _field_value(reader, "general.file_type")
    quant = _file_type_name(int(file_type)) if isinstance(file_type, int) else "unknown"
    template = _field_value(reader, "tokenizer.chat_template")
    metadata: dict[str, Any] = {}
    for key in reader.fields:
        if _SCALAR_KEYS.match(key):
            value = _field_value(reader, key)
            if isinstance(value, str | int | float | bool):
                metadata[key] = value
    return ModelFacts(
        bos_token=_token_text(reader, "tokenizer.ggml.bos_token_id"),
        eos_token=_token_text(reader, "tokenizer.ggml.eos_token_id"),
        architecture=arch,
        parameter_count=param_count,
        quantization=quant,
        context_length=_int_field(reader, f"{arch}.context_length", 2048),
        block_count=block_count,
        embedding_length=_int_field(reader, f"{arch}.embedding_length"),
        head_count=_int_field(reader, f"{arch}.attention.head_count"),
        head_count_kv=_int_field(
            reader,
            f"{arch}.attention.head_count_kv",
            _int_field(reader, f"{arch}.attention.head_count"),
        ),
        chat_template=template if isinstance(template, str) else None,
        file_size=size,
        tensor_bytes=tensor_bytes,
        layer_bytes=layer_bytes,
        output_bytes=output_bytes,
        pooling=_int_field(reader, f"{arch}.pooling_type", 0) > 0,
        metadata=metadata,
    )


def estimate_kv_cache_bytes(facts: ModelFacts, num_ctx: int, bytes_per_value: int = 2) -> int:
    """KV cache size for `num_ctx` tokens: K and V, per layer, f16 by default."""
    if facts.head_count <= 0 or facts.embedding_length <= 0:
        return 0
    head_dim = facts.embedding_length // facts.head_count
    per_token_per_layer = 2 * facts.head_count_kv * head_dim * bytes_per_value
    return per_token_per_layer * facts.block_count * num_ctx
