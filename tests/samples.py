"""Sample daemon answers shared by the display and CLI rendering tests, and the tool
definitions the tool-calling tests of every dialect use."""

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


# Two tools, as JSON schemas of their arguments; each dialect's tests wrap them in its shape.
WEATHER_ARGUMENTS: dict[str, Any] = {
    "type": "object",
    "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["location", "unit"],
}
SEARCH_ARGUMENTS: dict[str, Any] = {
    "type": "object",
    "properties": {"query": {"type": "string"}},
    "required": ["query"],
}
