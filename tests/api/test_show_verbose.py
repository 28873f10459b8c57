"""`/api/show` with `verbose: true` (issue 13): `model_info` gains the tokenizer arrays of
the GGUF header, read with the `gguf` package; without it they are absent."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest
from daemon_harness import DaemonThread, running_daemon
from gguf_factory import SPECIALS, VOCAB, write_tiny_gguf
from test_server_api import request

from localserve.store.gguf_tokenizer import TOKENIZER_ARRAYS, read_tokenizer_arrays

KEY = "show-test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path, api_key=KEY) as running:
        running.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        yield running


def show(daemon: DaemonThread, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, data = request(daemon.base_url, "POST", "/api/show", body, headers=AUTH)
    return status, json.loads(data)


def test_verbose_show_lists_the_tokenizer_arrays(daemon: DaemonThread) -> None:
    status, answer = show(daemon, {"model": "tiny", "verbose": True})
    assert status == 200
    info = answer["model_info"]
    tokens = info["tokenizer.ggml.tokens"]
    assert len(tokens) == VOCAB
    assert tokens[: len(SPECIALS)] == SPECIALS and tokens[len(SPECIALS)] == "<0x00>"
    types = info["tokenizer.ggml.token_type"]
    assert types[:3] == [
        int(gguf.TokenType.UNKNOWN),
        int(gguf.TokenType.CONTROL),
        int(gguf.TokenType.CONTROL),
    ]
    assert set(types[3:]) == {int(gguf.TokenType.BYTE)}
    assert "tokenizer.ggml.merges" not in info  # an SPM vocabulary has no merges
    assert info["general.architecture"] == "llama"  # the scalars are still there


def test_show_without_verbose_has_no_tokenizer_arrays(daemon: DaemonThread) -> None:
    for body in ({"model": "tiny"}, {"model": "tiny", "verbose": False}):
        status, answer = show(daemon, body)
        assert status == 200
        assert not set(TOKENIZER_ARRAYS) & set(answer["model_info"])


def test_verbose_must_be_a_boolean(daemon: DaemonThread) -> None:
    status, answer = show(daemon, {"model": "tiny", "verbose": "yes"})
    assert status == 400 and "verbose" in answer["error"]


def test_merges_are_read_where_the_vocabulary_has_them(tmp_path: Path) -> None:
    """A BPE vocabulary: tokens and merges as the file has them."""
    path = tmp_path / "bpe.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_types([1, 1, 1])
    writer.add_token_merges(["a b"])
    writer.add_tensor("x", np.zeros(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    arrays = read_tokenizer_arrays(path)
    assert arrays == {
        "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.token_type": [1, 1, 1],
        "tokenizer.ggml.merges": ["a b"],
    }
