"""The content-addressed store: create, list, get, copy, delete, GC, atomicity, failures."""

from __future__ import annotations

import errno
import hashlib
import io
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from localserve.errors import (
    BadRequestError,
    InvalidModelFileError,
    LocalserveError,
    ModelNotFoundError,
    NotFoundError,
)
from localserve.names import ModelName
from localserve.store.store import GC_GRACE_S, DiskFullError, Store

TinyModelFactory = Callable[..., Path]


def name(text: str) -> ModelName:
    return ModelName.parse(text)


def chunks_of(path: Path, size: int = 64 * 1024) -> Iterator[bytes]:
    data = path.read_bytes()
    for start in range(0, len(data), size):
        yield data[start : start + size]


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def add_model(store: Store, model: Path, text: str, **kwargs: Any) -> str:
    digest = store.write_blob(chunks_of(model))
    store.create_model(name(text), digest, **kwargs)
    return digest


def blob_files(store: Store) -> set[str]:
    return {p.name for p in store.blobs_dir.iterdir()}


def manifest_files(store: Store) -> list[Path]:
    return [p for p in store.manifests_dir.rglob("*") if p.is_file()]


def temp_files(store: Store) -> list[Path]:
    return list(store.tmp_dir.iterdir())


def age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


# ---- create, get, list ---------------------------------------------------------------------


def test_write_blob_stores_bytes_under_their_sha256(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    model = tiny_model("a")
    digest = store.write_blob(chunks_of(model))
    assert digest == sha256(model)
    assert store.has_blob(digest)
    assert store.blob_path(digest).read_bytes() == model.read_bytes()
    assert store.blob_path(digest).name == digest.replace(":", "-")
    assert temp_files(store) == []


def test_writing_the_same_bytes_twice_keeps_one_blob(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    model = tiny_model("a")
    first = store.write_blob(chunks_of(model))
    second = store.write_blob(chunks_of(model, size=1000))
    assert first == second
    assert len(blob_files(store)) == 1
    assert temp_files(store) == []


def test_write_blob_accepts_the_right_expected_digest_in_either_form(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    model = tiny_model("a")
    digest = sha256(model)
    assert store.write_blob(chunks_of(model), expected_digest=digest) == digest
    dashed = digest.replace(":", "-")
    assert store.write_blob(chunks_of(model), expected_digest=dashed) == digest


def test_create_model_from_blob_records_facts_and_options(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    model = tiny_model("a", chat_template="{{ prompt }}")
    digest = store.write_blob(chunks_of(model))
    manifest = store.create_model(
        name("tiny"),
        digest,
        system="be brief",
        parameters={"temperature": 0.1},
        source={"kind": "upload"},
    )
    assert manifest.model_digest == digest
    assert manifest.model_size == model.stat().st_size
    assert manifest.facts.architecture == "llama"
    assert manifest.facts.chat_template == "{{ prompt }}"

    stored = store.get(name("tiny:latest"))
    assert stored.name == name("tiny")
    assert stored.manifest == manifest
    assert stored.manifest.system == "be brief"
    assert stored.manifest.parameters == {"temperature": 0.1}
    assert stored.digest.startswith("sha256:")
    assert store.model_file(name("tiny")) == store.blob_path(digest)


def test_manifest_lives_at_host_namespace_name_tag(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    add_model(store, tiny_model("a"), "tiny:v1")
    add_model(store, tiny_model("a"), "localhost:5000/team/tiny:v2")
    paths = {p.relative_to(store.manifests_dir).as_posix() for p in manifest_files(store)}
    assert paths == {"registry.localserve/library/tiny/v1", "localhost_5000/team/tiny/v2"}


def test_list_returns_every_model_newest_first(store: Store, tiny_model: TinyModelFactory) -> None:
    add_model(store, tiny_model("a"), "alpha")
    add_model(store, tiny_model("b"), "team/beta:v1")
    add_model(store, tiny_model("c"), "localhost:5000/x/gamma:q4")
    past = time.time() - 100
    os.utime(store._manifest_path(name("alpha")), (past, past))
    listed = [m.name.display() for m in store.list()]
    assert set(listed) == {"alpha:latest", "team/beta:v1", "localhost:5000/x/gamma:q4"}
    assert listed[-1] == "alpha:latest"


def test_list_of_an_empty_store_is_empty(store: Store) -> None:
    assert store.list() == []


def test_list_skips_corrupt_and_stray_manifest_files(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    add_model(store, tiny_model("a"), "good")
    bad = store.manifests_dir / "registry.localserve" / "library" / "bad" / "latest"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    stray = store.manifests_dir / "registry.localserve" / "library" / "good" / "bad..tag"
    stray.write_text("{}")
    assert [m.name.display() for m in store.list()] == ["good:latest"]
    with pytest.raises(LocalserveError, match="corrupt"):
        store.get(name("bad"))


def test_get_of_an_unknown_model_is_model_not_found(store: Store) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        store.get(name("nope"))
    assert info.value.status == 404


def test_create_model_needs_the_blob_in_the_store(store: Store) -> None:
    with pytest.raises(NotFoundError):
        store.create_model(name("tiny"), "sha256:" + "0" * 64)
    assert manifest_files(store) == []


def test_create_model_refuses_a_malformed_digest(store: Store) -> None:
    with pytest.raises(BadRequestError):
        store.create_model(name("tiny"), "sha256:../../etc/passwd")


def test_import_file_copies_a_local_model_in(store: Store, tiny_model: TinyModelFactory) -> None:
    model = tiny_model("z")
    digest = store.import_file(model)
    assert digest == sha256(model)
    assert store.has_blob(digest)


# ---- copy and delete -----------------------------------------------------------------------


def test_copy_makes_a_second_name_for_the_same_blob(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    digest = add_model(store, tiny_model("a"), "tiny", system="hi")
    store.copy(name("tiny"), name("team/copy:v1"))
    copied = store.get(name("team/copy:v1"))
    assert copied.manifest.model_digest == digest
    assert copied.manifest.system == "hi"
    assert store.get(name("tiny")).manifest.model_digest == digest
    assert len(blob_files(store)) == 1


def test_copy_of_an_unknown_model_is_model_not_found(store: Store) -> None:
    with pytest.raises(ModelNotFoundError):
        store.copy(name("nope"), name("other"))
    assert manifest_files(store) == []


def test_delete_keeps_a_blob_another_name_still_uses(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    digest = add_model(store, tiny_model("a"), "one")
    store.create_model(name("two"), digest)

    assert store.delete(name("one")) == []
    assert store.has_blob(digest)
    assert store.get(name("two")).manifest.model_digest == digest
    with pytest.raises(ModelNotFoundError):
        store.get(name("one"))

    assert store.delete(name("two")) == [digest]
    assert not store.has_blob(digest)
    assert store.list() == []


def test_delete_removes_empty_manifest_directories(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    add_model(store, tiny_model("a"), "localhost:5000/team/tiny:v1")
    store.delete(name("localhost:5000/team/tiny:v1"))
    assert list(store.manifests_dir.iterdir()) == []


def test_delete_of_an_unknown_model_is_model_not_found(store: Store) -> None:
    with pytest.raises(ModelNotFoundError):
        store.delete(name("nope"))


def test_delete_spares_a_blob_uploaded_again_for_a_pending_create(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    """Someone re-uploads the same bytes (POST /api/blobs) while the only model using them
    is deleted: the upload must survive until its /api/create."""
    model = tiny_model("a")
    digest = add_model(store, model, "old")
    age(store._manifest_path(name("old")), 60)
    age(store.blob_path(digest), 60)
    store.write_blob(chunks_of(model))  # the new upload refreshes the blob
    store.delete(name("old"))
    assert store.has_blob(digest)
    store.create_model(name("new"), digest)
    assert store.get(name("new")).manifest.model_digest == digest


# ---- refusing bad input --------------------------------------------------------------------


def test_wrong_expected_digest_registers_nothing_and_leaves_no_temp_file(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    with pytest.raises(BadRequestError, match="digest mismatch"):
        store.write_blob(chunks_of(tiny_model("a")), expected_digest="sha256:" + "f" * 64)
    assert blob_files(store) == set()
    assert temp_files(store) == []


def _broken_variants(good: bytes) -> dict[str, bytes]:
    return {
        "not_gguf": b"<html>this is a web page, not a model</html>\n" * 20,
        "cut_tensor_data": good[: len(good) - 4096],
        "corrupt_header": good[:8] + (2**40).to_bytes(8, "little") + good[16:],
        "garbage_after_magic": b"GGUF" + bytes(range(256)) * 8,
    }


@pytest.mark.parametrize(
    "variant", ["not_gguf", "cut_tensor_data", "corrupt_header", "garbage_after_magic"]
)
def test_invalid_model_file_leaves_no_blob_and_no_manifest(
    store: Store, tiny_model: TinyModelFactory, variant: str
) -> None:
    data = _broken_variants(tiny_model("a").read_bytes())[variant]
    digest = store.write_blob([data])
    with pytest.raises(InvalidModelFileError) as info:
        store.create_model(name("broken"), digest)
    assert info.value.status == 400
    assert not store.has_blob(digest)
    assert blob_files(store) == set()
    assert manifest_files(store) == []
    assert temp_files(store) == []


def test_invalid_model_file_does_not_disturb_existing_models(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    good = add_model(store, tiny_model("a"), "good")
    bad = store.write_blob([b"GGUF" + b"\xff" * 100])
    with pytest.raises(InvalidModelFileError):
        store.create_model(name("good"), bad)  # same name: must not replace it
    assert store.get(name("good")).manifest.model_digest == good
    assert blob_files(store) == {good.replace(":", "-")}


# ---- atomicity and disk full ---------------------------------------------------------------


def test_failed_rename_leaves_no_half_manifest(
    store: Store, tiny_model: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = store.write_blob(chunks_of(tiny_model("a")))

    def crash(src: Any, dst: Any) -> None:
        raise OSError(errno.EIO, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        store.create_model(name("tiny"), digest)
    monkeypatch.undo()
    assert manifest_files(store) == []
    assert temp_files(store) == []
    assert store.list() == []


def test_failed_rename_keeps_the_previous_manifest_whole(
    store: Store, tiny_model: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = add_model(store, tiny_model("a"), "tiny")
    second = store.write_blob(chunks_of(tiny_model("b")))
    before = store._manifest_path(name("tiny")).read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError(errno.EIO, "simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.create_model(name("tiny"), second)
    monkeypatch.undo()
    assert store._manifest_path(name("tiny")).read_bytes() == before
    assert store.get(name("tiny")).manifest.model_digest == first
    assert temp_files(store) == []


CRASH_SCRIPT = """
import os, sys
from pathlib import Path
from localserve.names import ModelName
from localserve.store.store import Store

store = Store(Path(sys.argv[1]))
digest = store.import_file(Path(sys.argv[2]))
os.replace = lambda src, dst: os._exit(3)   # the process dies between write and rename
store.create_model(ModelName.parse("crashed"), digest)
"""


def test_process_killed_between_write_and_rename_leaves_a_consistent_store(
    store: Store, tiny_model: TinyModelFactory, subprocess_env: dict[str, str]
) -> None:
    add_model(store, tiny_model("a"), "survivor")
    result = subprocess.run(
        [sys.executable, "-c", CRASH_SCRIPT, str(store.root), str(tiny_model("b"))],
        env=subprocess_env,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr.decode()
    assert [m.name.display() for m in store.list()] == ["survivor:latest"]
    with pytest.raises(ModelNotFoundError):
        store.get(name("crashed"))
    # The dead process's temp file is only collected once it is clearly stale.
    leftovers = temp_files(store)
    assert len(leftovers) == 1
    store.collect_garbage()
    assert temp_files(store) == leftovers
    age(leftovers[0], 2 * 3600)
    store.collect_garbage()
    assert temp_files(store) == []


class _FullDiskFile(io.RawIOBase):
    """A file object whose writes fail as on a full disk."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def fileno(self) -> int:
        return int(self.real.fileno())

    def close(self) -> None:
        self.real.close()
        super().close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to make every file opened with os.fdopen fail its writes with ENOSPC."""
    real_fdopen = os.fdopen

    def arm() -> None:
        monkeypatch.setattr(
            os, "fdopen", lambda fd, *a, **k: _FullDiskFile(real_fdopen(fd, *a, **k))
        )

    return arm


def test_disk_full_while_writing_a_blob_is_disk_full_error_and_changes_nothing(
    store: Store, tiny_model: TinyModelFactory, full_disk: Callable[[], None]
) -> None:
    existing = add_model(store, tiny_model("a"), "existing")
    full_disk()
    with pytest.raises(DiskFullError) as info:
        store.write_blob(chunks_of(tiny_model("b")))
    assert info.value.status == 507
    assert blob_files(store) == {existing.replace(":", "-")}
    assert temp_files(store) == []
    assert [m.name.display() for m in store.list()] == ["existing:latest"]


def test_disk_full_while_writing_a_manifest_is_disk_full_error_and_changes_nothing(
    store: Store, tiny_model: TinyModelFactory, full_disk: Callable[[], None]
) -> None:
    add_model(store, tiny_model("a"), "existing")
    before = store._manifest_path(name("existing")).read_bytes()
    digest = store.write_blob(chunks_of(tiny_model("b")))
    full_disk()
    with pytest.raises(DiskFullError):
        store.create_model(name("new"), digest)
    with pytest.raises(DiskFullError):
        store.create_model(name("existing"), digest)
    with pytest.raises(DiskFullError):
        store.copy(name("existing"), name("copy"))
    assert store._manifest_path(name("existing")).read_bytes() == before
    assert [m.name.display() for m in store.list()] == ["existing:latest"]
    assert temp_files(store) == []


def test_disk_full_reported_by_fsync_is_disk_full_error(
    store: Store, tiny_model: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError):
        store.write_blob(chunks_of(tiny_model("a")))
    monkeypatch.undo()
    assert blob_files(store) == set()
    assert temp_files(store) == []


# ---- garbage collection --------------------------------------------------------------------


def test_gc_spares_a_fresh_unreferenced_blob_within_the_grace_period(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    digest = store.write_blob(chunks_of(tiny_model("a")))
    assert store.collect_garbage() == []
    assert store.has_blob(digest)


def test_gc_removes_an_unreferenced_blob_past_the_grace_period(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    digest = store.write_blob(chunks_of(tiny_model("a")))
    age(store.blob_path(digest), GC_GRACE_S + 5)
    assert store.collect_garbage() == [digest]
    assert not store.has_blob(digest)


def test_gc_grace_can_be_set_per_call(store: Store, tiny_model: TinyModelFactory) -> None:
    digest = store.write_blob(chunks_of(tiny_model("a")))
    age(store.blob_path(digest), 30)
    assert store.collect_garbage(grace_s=60) == []
    assert store.collect_garbage(grace_s=10) == [digest]


def test_gc_never_removes_a_referenced_blob(store: Store, tiny_model: TinyModelFactory) -> None:
    digest = add_model(store, tiny_model("a"), "kept")
    age(store.blob_path(digest), 10 * GC_GRACE_S)
    assert store.collect_garbage(grace_s=0) == []
    assert store.model_file(name("kept")).is_file()


def test_reuploading_a_blob_restarts_its_grace_period(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    model = tiny_model("a")
    digest = store.write_blob(chunks_of(model))
    age(store.blob_path(digest), GC_GRACE_S + 5)
    store.write_blob(chunks_of(model))
    assert store.collect_garbage() == []
    assert store.has_blob(digest)


# ---- concurrent writers --------------------------------------------------------------------


def _assert_consistent(store: Store) -> None:
    """Every manifest parses and points at a blob; nothing is left half-written."""
    for path in manifest_files(store):
        host, namespace, model, tag = path.relative_to(store.manifests_dir).parts
        stored = store.get(name(f"{host.replace('_', ':')}/{namespace}/{model}:{tag}"))
        assert store.has_blob(stored.manifest.model_digest), path
    assert temp_files(store) == []
    assert not list(store.blobs_dir.glob("*.part"))


def test_concurrent_threads_creating_and_deleting_keep_the_store_consistent(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    models = [tiny_model(c) for c in "abcd"]
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker(index: int) -> None:
        try:
            barrier.wait()
            model = models[index % len(models)]  # pairs of threads share one blob
            for round_ in range(3):
                own = Store(store.root)  # as separate requests would
                add_model(own, model, f"t{index}:r{round_}")
                own.copy(name(f"t{index}:r{round_}"), name(f"shared:{index % 2}"))
                if round_:
                    own.delete(name(f"t{index}:r{round_ - 1}"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    names = {m.name.display() for m in store.list()}
    assert names == {f"t{i}:r2" for i in range(8)} | {"shared:0", "shared:1"}
    _assert_consistent(store)
    assert len(blob_files(store)) == 4


def _process_writer(root: str, model: str, prefix: str, count: int) -> None:
    store = Store(Path(root))
    digest = store.import_file(Path(model))
    for index in range(count):
        store.create_model(ModelName.parse(f"{prefix}{index}"), digest)
        store.copy(ModelName.parse(f"{prefix}{index}"), ModelName.parse("contested"))
        if index % 2:
            store.delete(ModelName.parse(f"{prefix}{index}"))


def test_two_processes_writing_at_once_keep_the_store_consistent(
    store: Store, tiny_model: TinyModelFactory
) -> None:
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_process_writer, args=(str(store.root), str(model), prefix, 6))
        for model, prefix in ((tiny_model("a"), "p"), (tiny_model("b"), "q"))
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(60)
    assert [p.exitcode for p in processes] == [0, 0]
    names = {m.name.display() for m in store.list()}
    assert names == {f"{p}{i}:latest" for p in "pq" for i in (0, 2, 4)} | {"contested:latest"}
    _assert_consistent(store)
    assert len(blob_files(store)) == 2


def test_collect_garbage_drops_week_old_pull_partials_and_keeps_recent_ones(
    tmp_path: Path,
) -> None:
    from localserve.store.store import PARTIAL_MAX_AGE_S, Store

    store = Store(tmp_path / "store")
    partial_dir = store.tmp_dir / "partial"
    partial_dir.mkdir()
    old = partial_dir / ("sha256-" + "1" * 64 + ".partial")
    fresh = partial_dir / ("sha256-" + "2" * 64 + ".partial")
    for path in (old, fresh):
        path.write_bytes(b"x" * 10)
    stale = time.time() - PARTIAL_MAX_AGE_S - 60
    os.utime(old, (stale, stale))
    store.collect_garbage()
    assert not old.exists() and fresh.exists()
