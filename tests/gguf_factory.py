"""Write tiny, valid llama-architecture GGUF models for fast tests.

Each model has 2 layers, width 64 and a 259-token SPM vocabulary (3 specials + 256 byte
tokens). The weights are built so that the model always answers with one chosen
character, whatever the prompt: every token embeds to the same positive vector, the
attention and FFN outputs are zero, and only the chosen byte's output row is non-zero.
So a test can tell which model answered. `padding_ffn` grows the file (zero FFN weights)
to make models of different sizes.

`read_gguf_parts` takes a GGUF apart into editable `GGUFParts` (metadata pairs, tensor
entries, data), from which tests write malformed variants byte by byte.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

WIDTH = 64
LAYERS = 2
HEADS = 4
SPECIALS = ["<unk>", "<s>", "</s>"]
VOCAB = len(SPECIALS) + 256


def byte_token_id(char: str) -> int:
    return len(SPECIALS) + ord(char)


def write_tiny_gguf(
    path: Path,
    answer_char: str = "a",
    *,
    padding_ffn: int = 128,
    context_length: int = 512,
    chat_template: str | None = None,
    name: str = "tiny",
    control_tokens: tuple[str, ...] = (),
    answer_token: str | None = None,
) -> Path:
    """`control_tokens` are added after the byte tokens as CONTROL tokens (as real models'
    `[TOOL_CALLS]` or `<|python_tag|>` are); `answer_token`, one of them, is what the model
    then always answers instead of `answer_char`."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(context_length)
    writer.add_embedding_length(WIDTH)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(padding_ffn)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(HEADS)
    writer.add_rope_dimension_count(WIDTH // HEADS)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("llama")
    tokens = [t.encode() for t in SPECIALS] + [f"<0x{i:02X}>".encode() for i in range(256)]
    tokens += [t.encode() for t in control_tokens]
    vocab = len(tokens)
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * vocab)
    token_types = (
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        + [gguf.TokenType.BYTE] * 256
        + [gguf.TokenType.CONTROL] * len(control_tokens)
    )
    writer.add_token_types([int(t) for t in token_types])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    f32 = np.float32
    writer.add_tensor("token_embd.weight", np.ones((vocab, WIDTH), dtype=f32))
    writer.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=f32))
    output = np.zeros((vocab, WIDTH), dtype=f32)
    if answer_token is not None:
        output[VOCAB + control_tokens.index(answer_token)] = 1.0
    else:
        output[byte_token_id(answer_char)] = 1.0
    writer.add_tensor("output.weight", output)
    for layer in range(LAYERS):
        prefix = f"blk.{layer}."
        writer.add_tensor(prefix + "attn_norm.weight", np.ones(WIDTH, dtype=f32))
        for proj in ("attn_q", "attn_k", "attn_v"):
            writer.add_tensor(prefix + proj + ".weight", np.zeros((WIDTH, WIDTH), dtype=f32))
        writer.add_tensor(prefix + "attn_output.weight", np.zeros((WIDTH, WIDTH), dtype=f32))
        writer.add_tensor(prefix + "ffn_norm.weight", np.ones(WIDTH, dtype=f32))
        writer.add_tensor(prefix + "ffn_gate.weight", np.zeros((padding_ffn, WIDTH), dtype=f32))
        writer.add_tensor(prefix + "ffn_up.weight", np.zeros((padding_ffn, WIDTH), dtype=f32))
        writer.add_tensor(prefix + "ffn_down.weight", np.zeros((WIDTH, padding_ffn), dtype=f32))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ---- a GGUF taken apart, to write malformed variants ----------------------------------------

# GGUF value types (gguf.constants.GGUFValueType numbering) and their struct formats.
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
SCALAR_FORMATS = {
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


@dataclass
class KeyValue:
    """One metadata pair; `raw` (the encoded value after the type) overrides `value`."""

    key: bytes
    kind: int
    value: Any = None
    item_kind: int | None = None  # for arrays
    raw: bytes | None = None

    def encode(self) -> bytes:
        body = self.raw if self.raw is not None else _encode_value(self.kind, self.value, self)
        return _string(self.key) + struct.pack("<I", self.kind) + body


@dataclass
class TensorInfo:
    """A tensor's header entry (`kind` written as a signed int32) and its bytes."""

    name: bytes
    dims: list[int]
    kind: int
    offset: int
    data: bytes

    def encode(self) -> bytes:
        dims = b"".join(struct.pack("<Q", d & (2**64 - 1)) for d in self.dims)
        n_dims = struct.pack("<I", len(self.dims))
        kind = struct.pack("<I", self.kind & (2**32 - 1))
        return _string(self.name) + n_dims + dims + kind + struct.pack("<Q", self.offset)


def _string(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def _encode_scalar(kind: int, value: Any) -> bytes:
    if kind == STRING:
        return _string(value if isinstance(value, bytes) else str(value).encode())
    return struct.pack("<" + SCALAR_FORMATS[kind], value)


def _encode_value(kind: int, value: Any, pair: KeyValue) -> bytes:
    if kind != ARRAY:
        return _encode_scalar(kind, value)
    assert pair.item_kind is not None
    items = b"".join(_encode_scalar(pair.item_kind, v) for v in value)
    return struct.pack("<IQ", pair.item_kind, len(value)) + items


@dataclass
class GGUFParts:
    """A GGUF file as editable parts. `to_bytes` writes the header (with `tensor_count` and
    `kv_count` when set instead of the real counts), pads it to `pad_to`, then the data
    section laid out by `layout` and `trailing` bytes. Header fields can be edited after
    `layout` without moving the data, which is how broken offsets are made."""

    version: int
    kvs: list[KeyValue]
    tensors: list[TensorInfo]
    pad_to: int = 32
    data_section: bytes = b""
    tensor_count: int | None = None
    kv_count: int | None = None
    trailing: bytes = b""

    def kv(self, key: str) -> KeyValue:
        return next(p for p in self.kvs if p.key == key.encode())

    def set_kv(self, key: str, kind: int, value: Any, item_kind: int | None = None) -> None:
        """Replace (or add) a pair, keeping its place among the others."""
        pair = KeyValue(key.encode(), kind, value, item_kind)
        for index, existing in enumerate(self.kvs):
            if existing.key == pair.key:
                self.kvs[index] = pair
                return
        self.kvs.append(pair)

    def tensor(self, name: str) -> TensorInfo:
        return next(t for t in self.tensors if t.name == name.encode())

    def layout(self, alignment: int = 32) -> GGUFParts:
        """Place the tensors' bytes one after the other, each padded to `alignment`, and
        set the offsets to match (a valid layout)."""
        chunks = []
        offset = 0
        for tensor in self.tensors:
            tensor.offset = offset
            padded = -(-len(tensor.data) // alignment) * alignment
            chunks.append(tensor.data + b"\0" * (padded - len(tensor.data)))
            offset += padded
        self.data_section = b"".join(chunks)
        self.pad_to = alignment
        return self

    def header(self) -> bytes:
        tensor_count = len(self.tensors) if self.tensor_count is None else self.tensor_count
        kv_count = len(self.kvs) if self.kv_count is None else self.kv_count
        parts = [b"GGUF", struct.pack("<IQQ", self.version, tensor_count, kv_count)]
        parts += [pair.encode() for pair in self.kvs]
        parts += [tensor.encode() for tensor in self.tensors]
        return b"".join(parts)

    def to_bytes(self) -> bytes:
        header = self.header()
        padding = -len(header) % self.pad_to if self.pad_to > 0 else 0
        return header + b"\0" * padding + self.data_section + self.trailing

    def write(self, path: Path) -> Path:
        path.write_bytes(self.to_bytes())
        return path


def read_gguf_parts(path: Path) -> GGUFParts:
    """Take a well-formed GGUF apart (gguf's reader gives the values, tensor shapes and
    data), so a test can edit it and write it back."""
    import gguf

    reader = gguf.GGUFReader(path, "r")
    kvs = []
    for field_ in reader.fields.values():
        if field_.name.startswith("GGUF."):
            continue
        kind = int(field_.types[0])
        item_kind = int(field_.types[1]) if kind == ARRAY else None
        value: Any
        if kind == ARRAY:
            value = [
                bytes(field_.parts[i]) if item_kind == STRING else field_.parts[i].tolist()[0]
                for i in field_.data
            ]
        elif kind == STRING:
            value = bytes(field_.parts[field_.data[0]])
        else:
            value = field_.parts[field_.data[0]].tolist()[0]
        kvs.append(KeyValue(field_.name.encode(), kind, value, item_kind))
    alignment_field = reader.fields.get("general.alignment")
    alignment = int(alignment_field.contents()) if alignment_field is not None else 32
    tensors = [
        TensorInfo(
            name=t.name.encode(),
            dims=[int(d) for d in t.shape],
            kind=int(t.tensor_type),
            offset=int(t.data_offset) - reader.data_offset,
            data=bytes(reader.data[t.data_offset : t.data_offset + int(t.n_bytes)]),
        )
        for t in reader.tensors
    ]
    version = int(reader.fields["GGUF.version"].contents())
    parts = GGUFParts(version=version, kvs=kvs, tensors=tensors)
    parts.layout(alignment)
    parts.trailing = bytes(reader.data[reader.data_offset + len(parts.data_section) :])
    return parts
