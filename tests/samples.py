"""Sample daemon answers shared by the display and CLI rendering tests."""

from __future__ import annotations

from typing import Any

SHOW: dict[str, Any] = {
    "details": {"family": "llama", "parameter_size": "135M", "quantization_level": "Q4_1"},
    "model_info": {
        "general.architecture": "llama",
        "general.parameter_count": 134_515_008,
        "llama.context_length": 8192,
        "llama.embedding_length": 576,
    },
    "parameters": 'stop                 "<|im_end|>"\ntemperature          0.2',
    "template": "{{ prompt }}",
    "system": "You are terse.",
    "license": "apache-2.0",
    "capabilities": ["completion"],
    "source": {"type": "upload", "file": "tiny.gguf", "revision": None},
}
