"""Model facts come from the GGUF header, and broken files are refused with a clear error."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from gguf_factory import (
    ARRAY,
    F32,
    HEADS,
    I32,
    LAYERS,
    VOCAB,
    WIDTH,
    read_gguf_parts,
    write_tiny_gguf,
)

from localserve.errors import InvalidModelFileError
from localserve.store.gguf_facts import ModelFacts, estimate_kv_cache_bytes, read_model_facts

TinyModelFactory = Callable[..., Path]

TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


@pytest.fixture(scope="session")
def smollm2_facts(smollm2_path: Path) -> ModelFacts:
    return read_model_facts(smollm2_path)  # ~40 ms (49k-token vocabulary): read once


# ---- a tiny model --------------------------------------------------------------------------


def test_tiny_model_facts_come_from_the_header(tiny_model: TinyModelFactory) -> None:
    path = tiny_model("a", context_length=1024, chat_template=TEMPLATE, name="tiny-x")
    facts = read_model_facts(path)
    assert facts.architecture == "llama"
    assert facts.block_count == LAYERS == 2
    assert facts.embedding_length == WIDTH
    assert facts.head_count == HEADS
    assert facts.head_count_kv == HEADS
    assert facts.context_length == 1024
    assert facts.quantization == "F32"
    assert facts.chat_template == TEMPLATE
    assert facts.bos_token == "<s>"
    assert facts.eos_token == "</s>"
    assert facts.file_size == path.stat().st_size
    assert facts.metadata["general.name"] == "tiny-x"
    assert not facts.pooling


def test_tiny_model_without_template_has_none(tiny_model: TinyModelFactory) -> None:
    assert read_model_facts(tiny_model("a")).chat_template is None


def test_layer_and_output_bytes_add_up_to_all_tensor_bytes(tiny_model: TinyModelFactory) -> None:
    facts = read_model_facts(tiny_model("a"))
    assert len(facts.layer_bytes) == facts.block_count
    assert all(size > 0 for size in facts.layer_bytes)
    assert len(set(facts.layer_bytes)) == 1  # identical layers
    assert sum(facts.layer_bytes) + facts.output_bytes == facts.tensor_bytes
    assert facts.tensor_bytes <= facts.file_size


def test_parameter_count_matches_the_tensors_written(tiny_model: TinyModelFactory) -> None:
    ffn = 128
    facts = read_model_facts(tiny_model("a", padding_ffn=ffn))
    per_layer = 2 * WIDTH + 4 * WIDTH * WIDTH + 3 * ffn * WIDTH  # 2 norms, q/k/v/o, ffn
    outside = 2 * VOCAB * WIDTH + WIDTH  # token_embd, output, output_norm
    assert facts.parameter_count == LAYERS * per_layer + outside
    assert facts.tensor_bytes == facts.parameter_count * 4  # F32
    # 115392 parameters -> "115K"
    assert facts.parameter_size == "115K"


def test_bigger_ffn_padding_grows_the_layers_not_the_output(tiny_model: TinyModelFactory) -> None:
    small = read_model_facts(tiny_model("a", padding_ffn=64))
    big = read_model_facts(tiny_model("a", padding_ffn=512))
    assert big.layer_bytes[0] > small.layer_bytes[0]
    assert big.output_bytes == small.output_bytes


def test_facts_survive_a_dict_round_trip(tiny_model: TinyModelFactory) -> None:
    facts = read_model_facts(tiny_model("a", chat_template=TEMPLATE))
    assert ModelFacts.from_dict(facts.to_dict()) == facts
    # Unknown keys from a newer manifest are ignored, not an error.
    assert ModelFacts.from_dict({**facts.to_dict(), "future_field": 1}) == facts


@pytest.mark.parametrize(
    ("count", "text"),
    [(7_200_000_000, "7.2B"), (134_515_008, "135M"), (1_500, "2K"), (999, "999")],
)
def test_parameter_size_is_humanised_like_ollama(
    tiny_model: TinyModelFactory, count: int, text: str
) -> None:
    facts = read_model_facts(tiny_model("a"))
    data = facts.to_dict() | {"parameter_count": count}
    assert ModelFacts.from_dict(data).parameter_size == text


# ---- refusals ------------------------------------------------------------------------------


def _corrupt_variants(good: bytes) -> dict[str, bytes]:
    return {
        "empty": b"",
        "text": b"this is not a model, just some text\n" * 10,
        "magic_only": b"GGUF",
        "magic_then_garbage": b"GGUF" + os.urandom(4096),
        "bad_version": good[:4] + struct.pack("<I", 99) + good[8:],
        "absurd_tensor_count": good[:8] + struct.pack("<Q", 2**40) + good[16:],
        "absurd_kv_count": good[:16] + struct.pack("<Q", 2**40) + good[24:],
        "cut_in_header": good[:2000],
        "cut_in_tensor_data": good[: len(good) - 1000],
        "cut_last_byte": good[:-1],
    }


@pytest.mark.parametrize(
    "variant",
    [
        "empty",
        "text",
        "magic_only",
        "magic_then_garbage",
        "bad_version",
        "absurd_tensor_count",
        "absurd_kv_count",
        "cut_in_header",
        "cut_in_tensor_data",
        "cut_last_byte",
    ],
)
def test_broken_files_raise_invalid_model_file(
    tiny_model: TinyModelFactory, tmp_path: Path, variant: str
) -> None:
    broken = tmp_path / f"{variant}.gguf"
    broken.write_bytes(_corrupt_variants(tiny_model("a").read_bytes())[variant])
    with pytest.raises(InvalidModelFileError) as info:
        read_model_facts(broken)
    assert info.value.status == 400


def test_non_gguf_file_error_says_so(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"PK\x03\x04 a zip file")
    with pytest.raises(InvalidModelFileError, match="not a GGUF"):
        read_model_facts(path)


def test_missing_file_is_an_invalid_model_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelFileError, match="cannot read"):
        read_model_facts(tmp_path / "nope.gguf")


def test_gguf_without_tensors_is_refused(tmp_path: Path) -> None:
    import gguf

    path = tmp_path / "empty-model.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(InvalidModelFileError, match="no tensors"):
        read_model_facts(path)


def test_per_layer_head_counts_give_the_largest_and_may_skip_layers(
    tiny_model: TinyModelFactory, tmp_path: Path
) -> None:
    parts = read_gguf_parts(tiny_model("a"))
    # A hybrid model's attention-free layers have no KV heads.
    parts.set_kv("llama.attention.head_count_kv", ARRAY, [0, 2], I32)
    facts = read_model_facts(parts.write(tmp_path / "hybrid.gguf"))
    assert (facts.head_count, facts.head_count_kv) == (HEADS, 2)


def test_a_kv_head_count_that_does_not_divide_a_layers_heads_is_refused(
    tiny_model: TinyModelFactory, tmp_path: Path
) -> None:
    parts = read_gguf_parts(tiny_model("a"))
    parts.set_kv("llama.attention.head_count_kv", ARRAY, [4, 3], I32)
    with pytest.raises(InvalidModelFileError, match=r"head_count_kv 3 does not divide .* layer 1"):
        read_model_facts(parts.write(tmp_path / "bad-kv.gguf"))


def test_non_finite_floats_stay_out_of_the_metadata(
    tiny_model: TinyModelFactory, tmp_path: Path
) -> None:
    parts = read_gguf_parts(tiny_model("a"))
    parts.set_kv("general.quantization_version", F32, float("nan"))
    parts.set_kv("general.file_type", F32, float("inf"))
    facts = read_model_facts(parts.write(tmp_path / "nan.gguf"))
    assert "general.quantization_version" not in facts.metadata
    assert "general.file_type" not in facts.metadata
    assert facts.quantization == "unknown"


# ---- the real SmolLM2 file -----------------------------------------------------------------


def test_smollm2_facts(smollm2_facts: ModelFacts) -> None:
    facts = smollm2_facts
    assert facts.architecture == "llama"
    assert facts.quantization == "Q4_1"
    assert facts.block_count == 30
    assert len(facts.layer_bytes) == 30
    assert 130_000_000 <= facts.parameter_count <= 140_000_000
    assert facts.parameter_size == "135M"
    assert facts.embedding_length == 576
    assert facts.head_count == 9
    assert facts.head_count_kv == 3
    assert facts.context_length >= 2048
    assert facts.chat_template and "im_start" in facts.chat_template
    assert sum(facts.layer_bytes) + facts.output_bytes == facts.tensor_bytes
    assert facts.tensor_bytes < facts.file_size


# ---- KV cache estimate ---------------------------------------------------------------------


def test_kv_cache_of_tiny_model_is_k_plus_v_per_layer_per_token(
    tiny_model: TinyModelFactory,
) -> None:
    facts = read_model_facts(tiny_model("a"))
    head_dim = WIDTH // HEADS
    expected = 2 * HEADS * head_dim * 2 * LAYERS * 512  # K+V, f16, layers, tokens
    assert estimate_kv_cache_bytes(facts, 512) == expected


def test_kv_cache_grows_linearly_with_context_and_value_size(
    tiny_model: TinyModelFactory,
) -> None:
    facts = read_model_facts(tiny_model("a"))
    one = estimate_kv_cache_bytes(facts, 1024)
    assert one > 0
    assert estimate_kv_cache_bytes(facts, 2048) == 2 * one
    assert estimate_kv_cache_bytes(facts, 1024, bytes_per_value=4) == 2 * one
    assert estimate_kv_cache_bytes(facts, 0) == 0


def test_kv_cache_shrinks_with_grouped_query_attention(tiny_model: TinyModelFactory) -> None:
    facts = read_model_facts(tiny_model("a"))
    gqa = ModelFacts.from_dict(facts.to_dict() | {"head_count_kv": 1})
    assert estimate_kv_cache_bytes(gqa, 512) * HEADS == estimate_kv_cache_bytes(facts, 512)


def test_kv_cache_is_zero_when_the_header_lacks_shapes(tiny_model: TinyModelFactory) -> None:
    facts = read_model_facts(tiny_model("a"))
    blank = ModelFacts.from_dict(facts.to_dict() | {"head_count": 0})
    assert estimate_kv_cache_bytes(blank, 4096) == 0


def test_smollm2_kv_cache_is_plausible(smollm2_facts: ModelFacts) -> None:
    # 30 layers x 3 KV heads x 64 dims x K,V x f16 = 23040 bytes per token.
    assert estimate_kv_cache_bytes(smollm2_facts, 1) == 23_040
    size = estimate_kv_cache_bytes(smollm2_facts, 8192)
    assert 150 * 1024**2 < size < 250 * 1024**2


def test_header_parser_agrees_with_ggufs_own_reader(tmp_path: Path) -> None:
    """Our lean header reader must give the tensor sizes and fields gguf's reader gives."""
    from gguf import GGUFReader

    path = write_tiny_gguf(tmp_path / "x.gguf", "x", chat_template="{{ messages }}")
    facts = read_model_facts(path)
    reader = GGUFReader(path, "r")
    assert facts.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert facts.parameter_count == sum(int(t.n_elements) for t in reader.tensors)
    assert facts.chat_template == reader.get_field("tokenizer.chat_template").contents()
    bos_id = reader.get_field("tokenizer.ggml.bos_token_id").contents()
    assert facts.bos_token == reader.get_field("tokenizer.ggml.tokens").contents(bos_id)
