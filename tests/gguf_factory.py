"""Write tiny, valid llama-architecture GGUF models for fast tests.

Each model has 2 layers, width 64 and a 259-token SPM vocabulary (3 specials + 256 byte
tokens). The weights are built so that the model always answers with one chosen
character, whatever the prompt: every token embeds to the same positive vector, the
attention and FFN outputs are zero, and only the chosen byte's output row is non-zero.
So a test can tell which model answered. `padding_ffn` grows the file (zero FFN weights)
to make models of different sizes.
"""

from __future__ import annotations

from pathlib import Path

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
) -> Path:
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
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * VOCAB)
    token_types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ] + [gguf.TokenType.BYTE] * 256
    writer.add_token_types([int(t) for t in token_types])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    if chat_template is not None:
        writer.add_chat_template(chat_template)

    f32 = np.float32
    writer.add_tensor("token_embd.weight", np.ones((VOCAB, WIDTH), dtype=f32))
    writer.add_tensor("output_norm.weight", np.ones(WIDTH, dtype=f32))
    output = np.zeros((VOCAB, WIDTH), dtype=f32)
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
