"""Model facts read from a GGUF header (type tables from the `gguf` package), without
loading the model."""

from __future__ import annotations

import mmap
import re
import struct
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


# GGUF value type -> struct format (gguf.constants.GGUFValueType numbering).
_SCALARS: dict[int, str] = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}


class _Header:
    """A GGUF header parsed without reading the bulky arrays.

    gguf's GGUFReader turns every vocabulary entry into numpy parts, which takes seconds
    on a real tokenizer (about 2 s for SmolLM2's 49k tokens). Here large arrays are
    skipped by their lengths; only the token texts needed (BOS/EOS) are read. Type sizes
    come from gguf's GGML_QUANT_SIZES.
    """

    SMALL_ARRAY = 4096  # numeric arrays up to this size are kept (e.g. per-layer heads)

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        self.pos = 4
        self.fields: dict[str, Any] = {}
        self.token_offsets: list[int] | None = None
        self.tensors: list[tuple[str, int, int, int]] = []  # name, type, elements, offset
        self.data_start = 0

    def _take(self, fmt: str) -> Any:
        value = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return value[0]

    def _string(self) -> str:
        length = self._take("Q")
        if length > len(self.data) - self.pos:
            raise ValueError("string runs past the end of the file")
        raw = bytes(self.data[self.pos : self.pos + length])
        self.pos += length
        return raw.decode("utf-8", errors="replace")

    def _value(self, kind: int, key: str) -> Any:
        if kind in _SCALARS:
            return self._take(_SCALARS[kind])
        if kind == 8:
            return self._string()
        if kind != 9:
            raise ValueError(f"unknown value type {kind} for {key}")
        item_kind = self._take("I")
        count = self._take("Q")
        if item_kind == 8:
            offsets = []
            for _ in range(count):
                offsets.append(self.pos)
                length = self._take("Q")
                if length > len(self.data) - self.pos:
                    raise ValueError(f"array {key} runs past the end of the file")
                self.pos += length
            if key == "tokenizer.ggml.tokens":
                self.token_offsets = offsets
            return None
        if item_kind not in _SCALARS:
            raise ValueError(f"unsupported array type {item_kind} for {key}")
        fmt = _SCALARS[item_kind]
        width = struct.calcsize("<" + fmt)
        if count * width > len(self.data) - self.pos:
            raise ValueError(f"array {key} runs past the end of the file")
        if count > self.SMALL_ARRAY:
            self.pos += count * width
            return None
        values = list(struct.unpack_from(f"<{count}{fmt}", self.data, self.pos))
        self.pos += count * width
        return values

    def parse(self) -> None:
        version = self._take("I")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version}")
        tensor_count = self._take("Q")
        kv_count = self._take("Q")
        if tensor_count > 10_000_000 or kv_count > 10_000_000:
            raise ValueError("implausible tensor or key count")
        for _ in range(kv_count):
            key = self._string()
            self.fields[key] = self._value(self._take("I"), key)
        for _ in range(tensor_count):
            name = self._string()
            dims = self._take("I")
            if dims > 8:
                raise ValueError(f"tensor {name} has {dims} dimensions")
            elements = 1
            for _ in range(dims):
                elements *= self._take("Q")
            kind = self._take("I")
            offset = self._take("Q")
            self.tensors.append((name, kind, elements, offset))
        alignment = self.fields.get("general.alignment")
        alignment = alignment if isinstance(alignment, int) and alignment > 0 else 32
        self.data_start = -(-self.pos // alignment) * alignment

    def token_text(self, id_key: str) -> str | None:
        """The text of a special token (e.g. BOS), for chat templates."""
        token_id = self.fields.get(id_key)
        offsets = self.token_offsets
        if not isinstance(token_id, int) or offsets is None or not 0 <= token_id < len(offsets):
            return None
        saved, self.pos = self.pos, offsets[token_id]
        try:
            return self._string()
        finally:
            self.pos = saved

    def int_field(self, key: str, default: int = 0) -> int:
        value = self.fields.get(key)
        if isinstance(value, list):  # per-layer arrays (e.g. head_count_kv) -> the max
            value = max(value) if value else None
        return int(value) if isinstance(value, int | float) else default


def _tensor_bytes(kind: int, elements: int) -> int:
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        block, size = GGML_QUANT_SIZES[GGMLQuantizationType(kind)]
    except (ValueError, KeyError) as exc:
        raise InvalidModelFileError(f"unknown tensor type {kind}") from exc
    if elements % block:
        raise InvalidModelFileError("tensor size is not a whole number of blocks")
    return elements // block * size


_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")


def read_model_facts(path: Path) -> ModelFacts:
    """Parse and check a GGUF file; raise InvalidModelFileError saying what is wrong."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            magic = handle.read(4)
            if magic != GGUF_MAGIC:
                raise InvalidModelFileError("not a GGUF file (bad magic bytes)")
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                header = _Header(data)
                try:
                    header.parse()
                except (struct.error, ValueError, OverflowError, MemoryError) as exc:
                    raise InvalidModelFileError(f"corrupt or truncated GGUF header: {exc}") from exc
                bos = header.token_text("tokenizer.ggml.bos_token_id")
                eos = header.token_text("tokenizer.ggml.eos_token_id")
    except OSError as exc:
        raise InvalidModelFileError(f"cannot read model file: {exc.strerror or exc}") from exc
    fields = header.fields
    arch = fields.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFileError("GGUF has no general.architecture")
    if not header.tensors:
        raise InvalidModelFileError("GGUF has no tensors")
    tensor_bytes = 0
    param_count = 0
    block_count = header.int_field(f"{arch}.block_count")
    if not 0 <= block_count <= 100_000:
        raise InvalidModelFileError(f"implausible block count {block_count}")
    layer_bytes = [0] * block_count
    output_bytes = 0
    for name, kind, elements, offset in header.tensors:
        n_bytes = _tensor_bytes(kind, elements)
        end = header.data_start + offset + n_bytes
        if end > size:
            raise InvalidModelFileError(
                f"truncated GGUF: tensor {name} ends at byte {end} but file has {size}"
            )
        tensor_bytes += n_bytes
        param_count += elements
        match = _LAYER_TENSOR.match(name)
        if match and int(match.group(1)) < block_count:
            layer_bytes[int(match.group(1))] += n_bytes
        else:
            output_bytes += n_bytes

    file_type = fields.get("general.file_type")
    quant = _file_type_name(int(file_type)) if isinstance(file_type, int) else "unknown"
    template = fields.get("tokenizer.chat_template")
    metadata = {
        key: value
        for key, value in fields.items()
        if _SCALAR_KEYS.match(key) and isinstance(value, str | int | float | bool)
    }
    head_count = header.int_field(f"{arch}.attention.head_count")
    return ModelFacts(
        bos_token=bos,
        eos_token=eos,
        architecture=arch,
        parameter_count=param_count,
        quantization=quant,
        context_length=header.int_field(f"{arch}.context_length", 2048),
        block_count=block_count,
        embedding_length=header.int_field(f"{arch}.embedding_length"),
        head_count=head_count,
        head_count_kv=header.int_field(f"{arch}.attention.head_count_kv", head_count),
        chat_template=template if isinstance(template, str) else None,
        file_size=size,
        tensor_bytes=tensor_bytes,
        layer_bytes=layer_bytes,
        output_bytes=output_bytes,
        pooling=header.int_field(f"{arch}.pooling_type", 0) > 0,
        metadata=metadata,
    )


def estimate_kv_cache_bytes(facts: ModelFacts, num_ctx: int, bytes_per_value: int = 2) -> int:
    """KV cache size for `num_ctx` tokens: K and V, per layer, f16 by default."""
    if facts.head_count <= 0 or facts.embedding_length <= 0:
        return 0
    head_dim = facts.embedding_length // facts.head_count
    per_token_per_layer = 2 * facts.head_count_kv * head_dim * bytes_per_value
    return per_token_per_layer * facts.block_count * num_ctx
