"""The tokenizer arrays of a GGUF header (`/api/show` with `verbose: true`, as Ollama's).

Read with the `gguf` package's reader. Model facts (localserve.store.gguf_facts) keep only
scalars; these arrays are large (SmolLM2: 49,152 tokens and 48,900 merges, about 1.5 MB of
JSON), so they are read on request, and the last few answers are kept by blob path (blobs
are content-addressed: a path's bytes never change).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from localserve.errors import InvalidModelFileError

TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def read_tokenizer_arrays(path: Path) -> dict[str, list[Any]]:
    """The tokenizer arrays the GGUF at `path` has (tokens, token types, BPE merges)."""
    return dict(_read(str(path)))


@functools.lru_cache(maxsize=4)
def _read(path: str) -> tuple[tuple[str, list[Any]], ...]:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (OSError, ValueError) as exc:
        raise InvalidModelFileError(f"cannot read the model's GGUF header: {exc}") from exc
    found = []
    for key in TOKENIZER_ARRAYS:
        field = reader.fields.get(key)
        if field is not None:
            values = field.contents()
            if isinstance(values, list):
                found.append((key, values))
    return tuple(found)


__all__ = ["TOKENIZER_ARRAYS", "read_tokenizer_arrays"]
