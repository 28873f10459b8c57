"""Model facts read from a GGUF header, without loading the model, and the checks that
refuse a file llama.cpp would refuse or crash on.

The header rules are llama.cpp's own (ggml/src/gguf.cpp, llama-model-loader.cpp and
llama-vocab.cpp of the llama.cpp that llama-cpp-python 0.3.36 ships): version, counts
that fit the file, known value types, string and array limits, unique keys and tensor
names, `general.alignment` a u32 power of two, shapes, known tensor types, tensor data
contiguous and aligned inside the file. On top of those come the hyper-parameters
llama.cpp needs (context, layers, width, heads) and the few values it asserts on rather
than refusing cleanly (layer and expert counts, duplicate tokens, SPM byte tokens), so a
file that passes here does not take a runner down.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from localserve.errors import InvalidModelFileError

GGUF_MAGIC = b"GGUF"

# gguf.cpp's limits.
MAX_STRING_LENGTH = 1 << 30
MAX_ARRAY_ELEMENTS = 1 << 30
MAX_NAME = 64  # GGML_MAX_NAME: a tensor name must be shorter
MAX_DIMS = 4
DEFAULT_ALIGNMENT = 32
# ggml's CPU buffer alignment: llama.cpp maps tensors in place, so their file offsets must
# be multiples of it (else an assertion aborts the runner).
TENSOR_ALIGNMENT = 32
# Our own bounds on work per file: far above real models (hundreds of keys, thousands of
# tensors, vocabularies and merge lists of under a million strings), so a crafted header
# cannot keep the parser looping for minutes.
MAX_KEYS = 1_000_000
MAX_TENSORS = 1_000_000
MAX_STRING_ITEMS = 1 << 24
MAX_LAYERS = 512  # LLAMA_MAX_LAYERS
MAX_EXPERTS = 1024  # LLAMA_MAX_EXPERTS
INT64_MAX = (1 << 63) - 1
SIZE_MAX = (1 << 64) - 1

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
    vocab_size: int = 0  # tokens in the vocabulary (0: unknown, e.g. facts stored before)
    bos_token: str | None = None
    eos_token: str | None = None
    # Fill-in-the-middle: the texts of the prefix, suffix and middle tokens, when the
    # model has all three (Ollama's `suffix`).
    fim_tokens: list[str] | None = None
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

# GGUF value types (gguf.constants.GGUFValueType numbering) -> struct format, and names.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALARS: dict[int, str] = {
    U8: "B",
    I8: "b",
    U16: "H",
    I16: "h",
    U32: "I",
    I32: "i",
    F32: "f",
    BOOL: "?",
    U64: "Q",
    I64: "q",
    F64: "d",
}
_TYPE_NAMES = (
    "u8",
    "i8",
    "u16",
    "i16",
    "u32",
    "i32",
    "f32",
    "bool",
    "str",
    "arr",
    "u64",
    "i64",
    "f64",
)

# ggml tensor types: id -> (name, elements per block, bytes per block), as ggml.c's
# type_traits (removed types 4, 5, 31-33, 36-38 are refused, as gguf.cpp does).
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4),
    1: ("F16", 1, 2),
    2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22),
    7: ("Q5_1", 32, 24),
    8: ("Q8_0", 32, 34),
    9: ("Q8_1", 32, 36),
    10: ("Q2_K", 256, 84),
    11: ("Q3_K", 256, 110),
    12: ("Q4_K", 256, 144),
    13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
    15: ("Q8_K", 256, 292),
    16: ("IQ2_XXS", 256, 66),
    17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98),
    19: ("IQ1_S", 256, 50),
    20: ("IQ4_NL", 32, 18),
    21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82),
    23: ("IQ4_XS", 256, 136),
    24: ("I8", 1, 1),
    25: ("I16", 1, 2),
    26: ("I32", 1, 4),
    27: ("I64", 1, 8),
    28: ("F64", 1, 8),
    29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2),
    34: ("TQ1_0", 256, 54),
    35: ("TQ2_0", 256, 66),
    39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36),
    41: ("Q1_0", 128, 18),
    42: ("Q2_0", 64, 18),
}

# Types that are no weight format (integers, F64, the Q8_1/Q8_K dot-product scratch types):
# ggml has no CPU kernels to compute with them, and the runner would crash mid-generation.
_NOT_COMPUTABLE = frozenset({9, 15, 24, 25, 26, 27, 28})

# Smallest encodings, to refuse absurd counts before looping over them.
_MIN_KV_BYTES = 8 + 1 + 4 + 1  # key length, a 1-byte key, type, a 1-byte value
_MIN_TENSOR_BYTES = 8 + 4 + 4 + 8  # name length, n_dims, type, offset

_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")


def _show(text: str) -> str:
    """A name from the file, safe to put in a message (escaped, at most 80 chars)."""
    shown = text if text.isprintable() else ascii(text)[1:-1]
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _pad(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


@dataclass(frozen=True)
class _Tensor:
    name: str
    kind: int
    dims: tuple[int, ...]
    elements: int
    n_bytes: int
    offset: int


class _Header:
    """A GGUF header parsed and checked without reading the bulky arrays.

    gguf's GGUFReader turns every vocabulary entry into numpy parts, which takes seconds
    on a real tokenizer (about 2 s for SmolLM2's 49k tokens). Here large numeric arrays
    are skipped by their lengths; of the string arrays only the token texts are read (for
    BOS/EOS and the duplicate check). Raises ValueError saying what breaks gguf.cpp's rules.
    """

    SMALL_ARRAY = 4096  # numeric arrays up to this size are kept (e.g. per-layer heads)

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self.data = data
        self.size = len(data)
        self.pos = 4
        self.fields: dict[str, Any] = {}
        self.types: dict[str, tuple[int, int | None]] = {}  # key -> (type, array item type)
        self.tokens: list[bytes] | None = None
        self.tensors: list[_Tensor] = []
        self.alignment = DEFAULT_ALIGNMENT
        self.data_start = 0

    # ---- primitives --------------------------------------------------------------------

    def _need(self, count: int, what: str) -> None:
        if count > self.size - self.pos:
            raise ValueError(f"{what} runs past the end of the file")

    def _u32(self, what: str) -> int:
        self._need(4, what)
        (value,) = _U32.unpack_from(self.data, self.pos)
        self.pos += 4
        return int(value)

    def _u64(self, what: str) -> int:
        self._need(8, what)
        (value,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return int(value)

    def _raw_string(self, what: str) -> bytes:
        length = self._u64(what)
        if length > MAX_STRING_LENGTH:
            raise ValueError(f"{what} has length {length}, over the limit of {MAX_STRING_LENGTH}")
        self._need(length, what)
        raw = bytes(self.data[self.pos : self.pos + length])
        self.pos += length
        return raw

    def _string(self, what: str) -> str:
        return self._raw_string(what).decode("utf-8", errors="replace")

    # ---- values ------------------------------------------------------------------------

    def _scalar(self, kind: int, what: str) -> Any:
        fmt = "<" + _SCALARS[kind]
        width = struct.calcsize(fmt)
        self._need(width, what)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += width
        return value

    def _strings(self, count: int, key: str) -> list[bytes] | None:
        """Walk an array of strings; keep the items only for the token list."""
        what = f"key '{_show(key)}'"
        if count > MAX_STRING_ITEMS:
            raise ValueError(f"{what}: array of {count} strings is implausibly large")
        if count * 8 > self.size - self.pos:
            raise ValueError(f"{what}: array of {count} strings runs past the end of the file")
        keep = key == "tokenizer.ggml.tokens"
        items: list[bytes] = []
        data, pos, size = self.data, self.pos, self.size
        unpack = _U64.unpack_from
        for index in range(count):
            if pos + 8 > size:
                raise ValueError(f"{what}: item {index} runs past the end of the file")
            (length,) = unpack(data, pos)
            pos += 8
            if length > MAX_STRING_LENGTH or length > size - pos:
                raise ValueError(f"{what}: item {index} has length {length}, past the end")
            if keep:
                items.append(bytes(data[pos : pos + length]))
            pos += length
        self.pos = pos
        return items if keep else None

    def _value(self, kind: int, key: str) -> Any:
        what = f"key '{_show(key)}'"
        if kind in _SCALARS:
            self.types[key] = (kind, None)
            return self._scalar(kind, what)
        if kind == STRING:
            self.types[key] = (kind, None)
            return self._string(what)
        if kind != ARRAY:
            raise ValueError(f"{what} has an invalid value type {kind}")
        item_kind = self._u32(what)
        count = self._u64(what)
        if item_kind not in _SCALARS and item_kind != STRING:
            raise ValueError(f"{what} is an array of invalid type {item_kind}")
        if count > MAX_ARRAY_ELEMENTS:
            raise ValueError(f"{what}: array of {count} items is over the limit")
        self.types[key] = (ARRAY, item_kind)
        if item_kind == STRING:
            items = self._strings(count, key)
            if items is not None:
                self.tokens = items
            return None
        fmt = _SCALARS[item_kind]
        width = struct.calcsize("<" + fmt)
        if count * width > self.size - self.pos:
            raise ValueError(f"{what}: array of {count} items runs past the end of the file")
        values = None
        if count <= self.SMALL_ARRAY:
            values = list(struct.unpack_from(f"<{count}{fmt}", self.data, self.pos))
        self.pos += count * width
        return values

    # ---- the header --------------------------------------------------------------------

    def parse(self) -> None:
        version = self._u32("the version")
        if version not in (2, 3):
            raise ValueError(f"unsupported GGUF version {version} (llama.cpp reads 2 and 3)")
        tensor_count = self._u64("the tensor count")
        kv_count = self._u64("the key count")
        room = self.size - self.pos
        if kv_count > MAX_KEYS or tensor_count > MAX_TENSORS:
            raise ValueError(f"implausible header: {kv_count} keys, {tensor_count} tensors")
        if kv_count > room // _MIN_KV_BYTES:
            raise ValueError(
                f"header claims {kv_count} keys, more than a {self.size}-byte file holds"
            )
        if tensor_count > room // _MIN_TENSOR_BYTES:
            raise ValueError(
                f"header claims {tensor_count} tensors, more than a {self.size}-byte file holds"
            )
        seen: set[bytes] = set()
        for index in range(kv_count):
            raw = self._raw_string(f"key {index}")
            if not raw:
                raise ValueError(f"key {index} is empty")
            key = raw.decode("utf-8", errors="replace")
            if raw in seen or key in self.fields:
                raise ValueError(f"duplicate key '{_show(key)}'")
            seen.add(raw)
            self.fields[key] = self._value(self._u32(f"key '{_show(key)}'"), key)
        self._read_alignment()
        names: set[bytes] = set()
        for index in range(tensor_count):
            self.tensors.append(self._tensor_info(index, names))
        self.data_start = _pad(self.pos, self.alignment)
        if self.data_start > self.size:
            raise ValueError("the tensor data section starts past the end of the file")
        self._check_offsets()

    def _read_alignment(self) -> None:
        key = "general.alignment"
        if key not in self.types:
            return
        kind, item = self.types[key]
        if kind != U32:
            shown = f"an array of {_TYPE_NAMES[item]}" if item is not None else _TYPE_NAMES[kind]
            raise ValueError(f"{key} must be a u32, not {shown}")
        value = int(self.fields[key])
        if value == 0 or value & (value - 1):
            raise ValueError(f"{key} {value} is not a power of two")
        self.alignment = value

    def _tensor_info(self, index: int, names: set[bytes]) -> _Tensor:
        raw = self._raw_string(f"the name of tensor {index}")
        name = raw.decode("utf-8", errors="replace")
        label = f"tensor '{_show(name)}'"
        if len(raw) >= MAX_NAME:
            raise ValueError(
                f"{label}: name of {len(raw)} bytes is too long (at most {MAX_NAME - 1})"
            )
        if raw in names:
            raise ValueError(f"duplicate tensor name '{_show(name)}'")
        names.add(raw)
        n_dims = self._u32(label)
        if n_dims > MAX_DIMS:
            raise ValueError(f"{label} has {n_dims} dimensions (at most {MAX_DIMS})")
        self._need(8 * n_dims + 12, label)
        dims = struct.unpack_from(f"<{n_dims}q", self.data, self.pos)
        self.pos += 8 * n_dims
        elements = 1
        for axis, extent in enumerate(dims):
            if extent <= 0:
                raise ValueError(f"{label}: dimension {axis} is {extent}, must be positive")
            elements *= extent
            if elements > INT64_MAX:
                raise ValueError(f"{label}: shape {list(dims)} overflows 64-bit element counts")
        (kind,) = _I32.unpack_from(self.data, self.pos)
        self.pos += 4
        known = GGML_TYPES.get(kind)
        if known is None:
            raise ValueError(f"{label} has unknown ggml type {kind}")
        type_name, block, block_bytes = known
        if kind in _NOT_COMPUTABLE:
            raise ValueError(f"{label} has type {type_name}, which llama.cpp cannot compute with")
        row = dims[0] if dims else 1
        if row % block:
            raise ValueError(
                f"{label} of type {type_name} has {row} elements per row, "
                f"not a multiple of its block size {block}"
            )
        n_bytes = elements // block * block_bytes
        if n_bytes > SIZE_MAX - self.alignment:
            raise ValueError(f"{label} is too large")
        (offset,) = _U64.unpack_from(self.data, self.pos)
        self.pos += 8
        return _Tensor(name, kind, tuple(dims), elements, n_bytes, int(offset))

    def _check_offsets(self) -> None:
        """Each tensor where gguf.cpp expects it: in header order, padded, inside the file,
        and at a file offset llama.cpp can map in place."""
        alignment = self.alignment
        expected = 0
        previous: _Tensor | None = None
        for tensor in self.tensors:
            label = f"tensor '{_show(tensor.name)}'"
            if tensor.offset % alignment:
                raise ValueError(f"{label}: offset {tensor.offset} is not aligned to {alignment}")
            if tensor.offset != expected:
                after = "the data section's start"
                if previous is not None:
                    shape = "x".join(map(str, previous.dims))
                    kind = GGML_TYPES[previous.kind][0]
                    after = f"'{_show(previous.name)}' ({kind} {shape}, {previous.n_bytes} bytes)"
                raise ValueError(
                    f"{label}: offset {tensor.offset}, expected {expected} (right after {after})"
                )
            previous = tensor
            start = self.data_start + tensor.offset
            end = start + tensor.n_bytes
            if end > self.size:
                raise ValueError(
                    f"{label} ends at byte {end} but the file has {self.size} (truncated?)"
                )
            if start % TENSOR_ALIGNMENT:
                raise ValueError(
                    f"{label}: data at file offset {start} is not {TENSOR_ALIGNMENT}-byte "
                    f"aligned (general.alignment {alignment} is too small for llama.cpp)"
                )
            expected += _pad(tensor.n_bytes, alignment)

    def token_text(self, id_key: str) -> str | None:
        """The text of a special token (e.g. BOS), for chat templates."""
        token_id = self.fields.get(id_key)
        tokens = self.tokens
        if type(token_id) is not int or tokens is None or not 0 <= token_id < len(tokens):
            return None
        return tokens[token_id].decode("utf-8", errors="replace")


# ---- the model: what llama.cpp needs beyond a well-formed file -------------------------

# Architectures without attention heads (recurrent): head counts are optional there.
_ATTENTION_FREE = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
# Keys llama.cpp reads with one exact type when present ("<arch>." prefixed).
_TYPED_KEYS: dict[str, int] = {
    "embedding_length_out": U32,
    "pooling_type": U32,
    "expert_count": U32,
    "expert_group_count": U32,
    "expert_group_used_count": U32,
    "nextn_predict_layers": U32,
    "attention.causal": BOOL,
    "attention.key_length": U32,
    "attention.value_length": U32,
    "attention.layer_norm_rms_epsilon": F32,
    "attention.layer_norm_epsilon": F32,
    "rope.dimension_count": U32,
    "rope.freq_base": F32,
    "rope.scaling.type": STRING,
    "rope.scaling.factor": F32,
    "rope.scaling.finetuned": BOOL,
    "rope.scaling.original_context_length": U32,
}
# Item types llama.cpp takes for a per-layer array (get_key_or_arr).
_PER_LAYER_ITEMS = frozenset({U32, I32, BOOL})
_ROPE_SCALING = frozenset({"none", "linear", "yarn", "longrope"})
_LAYER_TENSOR = re.compile(r"^blk\.(\d+)\.")
_ARCH_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


class _Model:
    """The hyper-parameter checks, over a parsed header."""

    def __init__(self, header: _Header, arch: str) -> None:
        self.header = header
        self.arch = arch

    def _describe(self, key: str) -> str:
        kind, item = self.header.types[key]
        if item is not None:
            return f"an array of {_TYPE_NAMES[item]}"
        value = self.header.fields[key]
        shown = repr(value) if kind != STRING else repr(_show(str(value)))
        return f"a {_TYPE_NAMES[kind]} ({shown})"

    def typed(self, key: str, kind: int) -> Any:
        """The value of `key` when present, checked to have llama.cpp's type."""
        if key not in self.header.types:
            return None
        if self.header.types[key] != (kind, None):
            raise InvalidModelFileError(
                f"{key} must be a {_TYPE_NAMES[kind]}, but it is {self._describe(key)}"
            )
        return self.header.fields[key]

    def count(self, suffix: str) -> int | None:
        """A u32 hyper-parameter `<arch>.<suffix>`, when present."""
        value = self.typed(f"{self.arch}.{suffix}", U32)
        return None if value is None else int(value)

    def required(self, suffix: str, minimum: int = 1) -> int:
        """A u32 hyper-parameter llama.cpp cannot do without."""
        key = f"{self.arch}.{suffix}"
        value = self.count(suffix)
        if value is None:
            raise InvalidModelFileError(f"GGUF lacks {key}, which llama.cpp needs")
        if value < minimum:
            raise InvalidModelFileError(f"{key} is {value}, must be at least {minimum}")
        return value

    def per_layer(self, suffix: str, layers: int) -> list[int] | None:
        """A u32, or an array of one integer per layer (llama.cpp's get_key_or_arr)."""
        key = f"{self.arch}.{suffix}"
        kinds = self.header.types.get(key)
        if kinds is None:
            return None
        kind, item = kinds
        if kind != ARRAY:
            value = self.count(suffix)
            return None if value is None else [value] * layers
        values = self.header.fields[key]
        if item in _PER_LAYER_ITEMS and values is None:  # too long to have been kept
            raise InvalidModelFileError(f"{key} has more values than block_count {layers}")
        if item not in _PER_LAYER_ITEMS or values is None:
            raise InvalidModelFileError(
                f"{key} must be a u32 or u32 array, not {self._describe(key)}"
            )
        if len(values) != layers:
            raise InvalidModelFileError(
                f"{key} has {len(values)} values but block_count is {layers}"
            )
        if any(v < 0 for v in values):
            raise InvalidModelFileError(f"{key} has a negative value")
        return [int(v) for v in values]

    def check(self) -> tuple[int, int, int, int, int, int]:
        """Context, layers, width, heads, KV heads, pooling; raise on what llama.cpp refuses."""
        for suffix, kind in _TYPED_KEYS.items():
            self.typed(f"{self.arch}.{suffix}", kind)
        context = self.required("context_length")
        width = self.required("embedding_length")
        layers = self.required("block_count")
        if layers > MAX_LAYERS:
            raise InvalidModelFileError(
                f"{self.arch}.block_count is {layers}, llama.cpp allows at most {MAX_LAYERS}"
            )
        self.per_layer("feed_forward_length", layers)
        heads, kv_heads = self._heads(layers)
        self._experts(layers)
        nextn = self.count("nextn_predict_layers") or 0
        if nextn > layers:
            raise InvalidModelFileError(
                f"{self.arch}.nextn_predict_layers is {nextn}, more than block_count {layers}"
            )
        scaling = self.header.fields.get(f"{self.arch}.rope.scaling.type")
        if scaling is not None and scaling not in _ROPE_SCALING:
            raise InvalidModelFileError(
                f"{self.arch}.rope.scaling.type '{_show(scaling)}' is unknown"
                f" (one of {', '.join(sorted(_ROPE_SCALING))})"
            )
        self._layer_tensors(layers)
        self._tokens()
        pooling = self.count("pooling_type") or 0
        return context, layers, width, heads, kv_heads, pooling

    def _heads(self, layers: int) -> tuple[int, int]:
        prefix = f"{self.arch}.attention"
        heads = self.per_layer("attention.head_count", layers)
        if heads is None or not any(heads):
            if self.arch in _ATTENTION_FREE:
                return 0, 0
            if heads is None:
                raise InvalidModelFileError(
                    f"GGUF lacks {prefix}.head_count, which llama.cpp needs"
                )
            raise InvalidModelFileError(f"{prefix}.head_count is 0, must be at least 1")
        kv = self.per_layer("attention.head_count_kv", layers)
        scalar_kv = self.header.types.get(f"{prefix}.head_count_kv", (U32, None))[0] != ARRAY
        if kv is None:
            kv = heads
        elif scalar_kv and kv[0] < 1:
            raise InvalidModelFileError(f"{prefix}.head_count_kv is 0, must be at least 1")
        for layer, (h, k) in enumerate(zip(heads, kv, strict=True)):
            if k and (h % k or k > h):
                where = "" if scalar_kv else f" in layer {layer}"
                raise InvalidModelFileError(
                    f"{prefix}.head_count_kv {k} does not divide head_count {h}{where}"
                )
        return max(heads), max(kv)

    def _experts(self, layers: int) -> None:
        """llama.cpp asserts (aborts) on inconsistent expert counts: refuse them here."""
        prefix = self.arch
        experts = self.count("expert_count") or 0
        used = max(self.per_layer("expert_used_count", layers) or [0])
        groups = self.count("expert_group_count") or 0
        group_used = self.count("expert_group_used_count") or 0
        if prefix in ("hunyuan-dense", "hunyuan_vl") and experts <= 1:
            return
        problem = None
        if experts > MAX_EXPERTS:
            problem = f"expert_count {experts} is over llama.cpp's {MAX_EXPERTS}"
        elif used > experts:
            problem = f"expert_used_count {used} is more than expert_count {experts}"
        elif experts and not used:
            problem = "expert_used_count must be at least 1 with experts"
        elif experts and groups >= experts:
            problem = f"expert_group_count {groups} must be less than expert_count {experts}"
        elif experts and groups > 1 and (experts % groups or not 0 < group_used < groups):
            problem = f"expert groups ({groups}, {group_used} used) do not fit {experts} experts"
        elif not experts and groups:
            problem = "expert_group_count is set without experts"
        if problem:
            raise InvalidModelFileError(f"{prefix}: {problem}")

    def _layer_tensors(self, layers: int) -> None:
        seen = set()
        for tensor in self.header.tensors:
            match = _LAYER_TENSOR.match(tensor.name)
            if match is None:
                continue
            layer = int(match.group(1))
            if layer >= layers:
                raise InvalidModelFileError(
                    f"tensor '{_show(tensor.name)}' is for layer {layer} but "
                    f"{self.arch}.block_count is {layers}"
                )
            seen.add(layer)
        if seen and len(seen) != layers:
            missing = min(set(range(layers)) - seen)
            raise InvalidModelFileError(
                f"{self.arch}.block_count is {layers} but no tensor is for layer {missing}"
            )

    def _tokens(self) -> None:
        """Token lists llama.cpp would abort on: duplicates (an assertion at load) and an SPM
        vocabulary missing a byte token (out_of_range when a prompt needs that byte)."""
        header = self.header
        key = "tokenizer.ggml.tokens"
        if key in header.types and header.types[key] != (ARRAY, STRING):
            raise InvalidModelFileError(f"{key} must be an array of str, not {self._describe(key)}")
        tokens = header.tokens
        if tokens is None:
            return
        # llama.cpp reads each token as a C string and renames empty ones.
        words = [
            (w.split(b"\0", 1)[0] if b"\0" in w else w) or b"[EMPTY_%d]" % i
            for i, w in enumerate(tokens)
        ]
        if len(set(words)) != len(words):
            first: dict[bytes, int] = {}
            for index, word in enumerate(words):
                if word in first:
                    text = _show(word.decode("utf-8", errors="replace"))
                    raise InvalidModelFileError(
                        f"{key}: token {index} ('{text}') duplicates token {first[word]}"
                    )
                first[word] = index
        if header.fields.get("tokenizer.ggml.model") == "llama":  # SPM
            vocabulary = set(words)
            for byte in range(256):
                if b"<0x%02X>" % byte not in vocabulary and bytes([byte]) not in vocabulary:
                    raise InvalidModelFileError(
                        f"{key}: the SPM vocabulary lacks the byte token <0x{byte:02X}>"
                    )


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
                except (struct.error, ValueError, OverflowError, MemoryError, IndexError) as exc:
                    raise InvalidModelFileError(f"corrupt GGUF file: {exc}") from exc
    except OSError as exc:
        raise InvalidModelFileError(f"cannot read model file: {exc.strerror or exc}") from exc
    fields = header.fields
    arch = fields.get("general.architecture")
    if header.types.get("general.architecture") != (STRING, None) or not arch:
        raise InvalidModelFileError("GGUF has no general.architecture")
    if not _ARCH_NAME.fullmatch(arch):  # llama.cpp knows only names like "llama", "gpt-oss"
        raise InvalidModelFileError(
            f"general.architecture '{_show(arch)}' is not an architecture name"
        )
    if not header.tensors:
        raise InvalidModelFileError("GGUF has no tensors")
    context, block_count, width, heads, kv_heads, pooling = _Model(header, arch).check()

    tensor_bytes = 0
    param_count = 0
    layer_bytes = [0] * block_count
    output_bytes = 0
    for tensor in header.tensors:
        tensor_bytes += tensor.n_bytes
        param_count += tensor.elements
        match = _LAYER_TENSOR.match(tensor.name)
        if match:
            layer_bytes[int(match.group(1))] += tensor.n_bytes
        else:
            output_bytes += tensor.n_bytes

    file_type = fields.get("general.file_type")
    quant = _file_type_name(file_type) if type(file_type) is int else "unknown"
    template = fields.get("tokenizer.chat_template")
    metadata = {
        key: value
        for key, value in fields.items()
        if _SCALAR_KEYS.match(key)
        and isinstance(value, str | int | float | bool)
        and not (isinstance(value, float) and not math.isfinite(value))
    }
    fim = [
        header.token_text(f"tokenizer.ggml.fim_{part}_token_id")
        or header.token_text(f"tokenizer.ggml.{old}_token_id")
        for part, old in (("pre", "prefix"), ("suf", "suffix"), ("mid", "middle"))
    ]
    return ModelFacts(
        fim_tokens=[t for t in fim if t] if all(fim) else None,
        bos_token=header.token_text("tokenizer.ggml.bos_token_id"),
        eos_token=header.token_text("tokenizer.ggml.eos_token_id"),
        architecture=arch,
        parameter_count=param_count,
        quantization=quant,
        context_length=context,
        block_count=block_count,
        embedding_length=width,
        head_count=heads,
        head_count_kv=kv_heads,
        chat_template=template if isinstance(template, str) else None,
        file_size=size,
        tensor_bytes=tensor_bytes,
        layer_bytes=layer_bytes,
        output_bytes=output_bytes,
        pooling=pooling > 0,
        vocab_size=len(header.tokens or ()),
        metadata=metadata,
    )


# Encoder architectures: attention is not causal, an input is read in one micro-batch.
NON_CAUSAL_ARCHITECTURES = frozenset(
    {"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "modern-bert", "t5encoder"}
)


# What an embedding context takes beyond its KV cache and buffers: compute-graph buffers
# and allocator slack (measured with SmolLM2: a constant ~40 MB over num_ctx 512..8192).
EMBEDDING_CONTEXT_OVERHEAD_BYTES = 40 * 1000**2


def estimate_embedding_context_bytes(facts: ModelFacts, num_ctx: int, batch: int) -> int:
    """RAM an embedding context adds to a loaded model (localserve.runner.embed): its
    KV cache (F16), output buffers for `batch` tokens (logits for every token where the
    model has an LM head), attention scores for a micro-batch, a few activations and a
    constant overhead. Measured with SmolLM2 the runner grew by 69, 81, 105, 153 and
    249 MB at num_ctx 512..8192; this gives 15-20% more. A non-causal model reads an
    input in one micro-batch of the whole context."""
    if facts.head_count <= 0 or facts.embedding_length <= 0:
        return 0
    causal = facts.architecture not in NON_CAUSAL_ARCHITECTURES
    batch = min(batch, num_ctx) if causal else num_ctx
    width, heads = facts.embedding_length, facts.head_count
    kv = estimate_kv_cache_bytes(facts, num_ctx)
    outputs = batch * ((facts.vocab_size if causal else 0) + width) * 4
    scores = batch * num_ctx * heads * 4
    activations = batch * width * 4 * 8
    return kv + outputs + scores + activations + EMBEDDING_CONTEXT_OVERHEAD_BYTES


def estimate_kv_cache_bytes(facts: ModelFacts, num_ctx: int, bytes_per_value: int = 2) -> int:
    """KV cache size for `num_ctx` tokens: K and V, per layer, f16 by default."""
    if facts.head_count <= 0 or facts.embedding_length <= 0:
        return 0
    head_dim = facts.embedding_length // facts.head_count
    per_token_per_layer = 2 * facts.head_count_kv * head_dim * bytes_per_value
    return per_token_per_layer * facts.block_count * num_ctx
