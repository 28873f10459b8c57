"""The content-addressed model store.

Layout under the store root (`LOCALSERVE_MODELS`):

    blobs/sha256-<hex>                         the bytes, verified before registration
    manifests/<host>/<namespace>/<name>/<tag>  JSON naming the blobs and the model's config
    tmp/                                       uploads and downloads in progress
    .lock                                      serialises writers across processes

Every write goes to a temp file, is fsynced, then renamed into place. All methods are
blocking; the daemon calls them through `asyncio.to_thread`.

Names match case-insensitively (`localserve.names`) and keep the case they were created in:
the manifest's path is the name as typed, and a lookup that misses the exact path scans
each level (host, namespace, name, tag) for a case-insensitive match, preferring the exact
spelling. Writing a name removes its other case variants, so one model has one manifest.
The manifest bytes do not hold the name (a copy keeps its ID, the manifest digest). Stores
written before this (lower-case namespace and name, the tag as typed, `:q4_k_m` and
`:Q4_K_M` as two manifests) need no migration: every such path is still found, and a
duplicate pair lists once and is deleted together.
"""

from __future__ import annotations

import builtins  # `Store.list` shadows `list` in annotations of later methods
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from filelock import FileLock

from localserve.errors import (
    BadRequestError,
    InvalidModelFileError,
    LocalserveError,
    ModelNotFoundError,
    NotFoundError,
)
from localserve.names import ModelName, digest_filename, parse_digest
from localserve.store.gguf_facts import ModelFacts, read_model_facts

log = logging.getLogger("localserve.store.store")

MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
MANIFEST_MEDIA_TYPE = "application/vnd.localserve.manifest.v1+json"
CHUNK = 1024 * 1024
# Unreferenced blobs younger than this survive collection (an upload awaiting /api/create).
GC_GRACE_S = 600.0
PARTIAL_MAX_AGE_S = 7 * 24 * 3600.0
TEMP_MAX_AGE_S = 3600.0


class DiskFullError(LocalserveError):
    status = 507
    code = "disk_full"

    def __init__(self, detail: str = "") -> None:
        message = "disk full: not enough space in the model store"
        super().__init__(f"{message} ({detail})" if detail else message)


@dataclass
class Manifest:
    """A model: its GGUF blob, the facts read from it, and the user's overrides."""

    model_digest: str
    model_size: int
    facts: ModelFacts
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    template_source: str | None = None  # a Go template as written (`template` is its Jinja)
    messages: list[dict[str, str]] = field(default_factory=list)  # Modelfile MESSAGEs
    license: list[str] = field(default_factory=list)

    def to_json(self) -> bytes:
        data = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_MEDIA_TYPE,
            "layers": [
                {
                    "mediaType": MODEL_MEDIA_TYPE,
                    "digest": self.model_digest,
                    "size": self.model_size,
                }
            ],
            "config": {
                "facts": self.facts.to_dict(),
                "template": self.template,
                "system": self.system,
                "parameters": self.parameters,
                "source": self.source,
                "created_at": self.created_at,
                **({"template_source": self.template_source} if self.template_source else {}),
                **({"messages": self.messages} if self.messages else {}),
                **({"license": self.license} if self.license else {}),
            },
        }
        return json.dumps(data, indent=2, sort_keys=True).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        data = json.loads(raw)
        layer = next(x for x in data["layers"] if x["mediaType"] == MODEL_MEDIA_TYPE)
        config = data["config"]
        return cls(
            model_digest=parse_digest(layer["digest"]),
            model_size=int(layer["size"]),
            facts=ModelFacts.from_dict(config["facts"]),
            template=config.get("template"),
            system=config.get("system"),
            parameters=dict(config.get("parameters") or {}),
            source=dict(config.get("source") or {}),
            created_at=str(config.get("created_at", "")),
            template_source=config.get("template_source"),
            messages=list(config.get("messages") or []),
            license=list(config.get("license") or []),
        )


@dataclass(frozen=True)
class StoredModel:
    name: ModelName
    manifest: Manifest
    digest: str  # sha256 of the manifest bytes, as Ollama reports in /api/tags
    modified_at: datetime


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _same_file(a: Path, b: Path) -> bool:
    """One file under two spellings (a case-insensitive file system)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _raise_disk_error(exc: OSError) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise DiskFullError() from exc


def atomic_write_bytes(path: Path, data: bytes, tmp_dir: Path) -> None:
    """Write `data` at `path` so that a reader (or a restart after a kill at any moment)
    sees the old bytes or the new ones, never a mix: temp file, fsync, rename, fsync dir."""
    fd, tmp = tempfile.mkstemp(dir=tmp_dir, suffix=f".{path.name}")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        _raise_disk_error(exc)
        raise


def _unowned(path: Path, now: float) -> bool:
    """A temp file no live writer holds: an upload's `.part` that nobody flock()s (its
    writer died with a killed daemon), or any other temp file older than an hour."""
    if path.suffix != ".part":
        return now - path.stat().st_mtime >= TEMP_MAX_AGE_S
    with path.open("rb") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class Store:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs_dir = root / "blobs"
        self.manifests_dir = root / "manifests"
        self.tmp_dir = root / "tmp"
        for directory in (self.blobs_dir, self.manifests_dir, self.tmp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(root / ".lock"), timeout=60)

    # ---- blobs -------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / digest_filename(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    @contextlib.contextmanager
    def temp_file(self, suffix: str = ".part") -> Iterator[tuple[Path, IO[bytes]]]:
        """A temp file inside the store, removed on exit unless it was moved away.

        The file is flock()ed while it is written: garbage collection (in this process or
        another daemon on the same store) removes only temp files no live writer holds.
        """
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as handle:
                yield path, handle
        except OSError as exc:
            _raise_disk_error(exc)
            raise
        finally:
            path.unlink(missing_ok=True)

    def write_blob(self, chunks: Iterable[bytes], expected_digest: str | None = None) -> str:
        """Stream bytes into the store; verify against `expected_digest` when given."""
        hasher = hashlib.sha256()
        with self.temp_file() as (path, handle):
            try:
                for chunk in chunks:
                    hasher.update(chunk)
                    handle.write(chunk)
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as exc:
                _raise_disk_error(exc)
                raise
            return self.register_blob(path, f"sha256:{hasher.hexdigest()}", expected_digest)

    def register_blob(self, path: Path, actual_digest: str, expected_digest: str | None) -> str:
        """Move a fully written temp file into blobs/ once its digest is checked."""
        if expected_digest is not None and parse_digest(expected_digest) != actual_digest:
            raise BadRequestError(
                f"digest mismatch: expected {expected_digest}, got {actual_digest}"
            )
        target = self.blob_path(actual_digest)
        with self._lock:
            if target.exists():
                path.unlink(missing_ok=True)
            else:
                os.replace(path, target)
                _fsync_dir(self.blobs_dir)
            os.utime(target)  # refresh the GC grace period
        return actual_digest

    def import_file(self, source: Path) -> str:
        """Copy a local file into the store (used for the embedded default model)."""
        with source.open("rb") as handle:
            return self.write_blob(iter(lambda: handle.read(CHUNK), b""))

    # ---- manifests ---------------------------------------------------------------------

    def _manifest_path(self, name: ModelName) -> Path:
        """Where the name's manifest is written: the name as typed."""
        return self.manifests_dir.joinpath(*name.path_parts())

    def _variants(self, name: ModelName) -> builtins.list[Path]:
        """The name's manifest files in any case, the exact spelling first."""
        wanted = [part.lower() for part in name.path_parts()]
        level = [self.manifests_dir]
        for depth, part in enumerate(wanted):
            found: builtins.list[Path] = []
            for directory in level:
                with contextlib.suppress(OSError):
                    found.extend(p for p in directory.iterdir() if p.name.lower() == part)
            level = sorted(found) if depth < 3 else sorted(p for p in found if p.is_file())
        exact = self._manifest_path(name)
        return sorted(level, key=lambda p: (p != exact, str(p)))

    def _find_manifest(self, name: ModelName) -> Path | None:
        """The name's manifest: the exact path, else another spelling of it."""
        path = self._manifest_path(name)
        if path.is_file():
            return path
        variants = self._variants(name)
        return variants[0] if variants else None

    def _name_from_path(self, path: Path) -> ModelName:
        host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
        return ModelName.parse(f"{host.replace('_', ':')}/{namespace}/{model}:{tag}")

    def _remove_empty_dirs(self, path: Path) -> None:
        for parent in (path.parent, path.parent.parent, path.parent.parent.parent):
            with contextlib.suppress(OSError):
                parent.rmdir()

    def _write_manifest(self, name: ModelName, manifest: Manifest) -> None:
        """Write the manifest at the name as typed and remove the name's other case
        variants. The caller holds the lock."""
        path = self._manifest_path(name)
        others = [p for p in self._variants(name) if p != path]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir, suffix=".manifest")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(manifest.to_json())
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
            for other in others:
                if not _same_file(other, path):  # a case-insensitive file system
                    other.unlink(missing_ok=True)
                    self._remove_empty_dirs(other)
            _fsync_dir(path.parent)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            _raise_disk_error(exc)
            raise

    def create_model(
        self,
        name: ModelName,
        model_digest: str,
        *,
        template: str | None = None,
        system: str | None = None,
        parameters: dict[str, Any] | None = None,
        source: dict[str, Any] | None = None,
        template_source: str | None = None,
        messages: list[dict[str, str]] | None = None,
        license: list[str] | None = None,
    ) -> Manifest:
        """Register a model from a blob already in the store; the GGUF is checked first."""
        digest = parse_digest(model_digest)
        blob = self.blob_path(digest)
        if not blob.is_file():
            raise NotFoundError(f"blob {digest} not found; upload it with POST /api/blobs first")
        try:
            facts = read_model_facts(blob)
        except Exception as exc:
            # A file that is not a usable model does not stay in the store, whatever failed.
            self._remove_blob_if_unreferenced(digest)
            if isinstance(exc, InvalidModelFileError):
                raise
            log.exception("reading the GGUF header of blob %s failed", digest)
            raise InvalidModelFileError(
                f"cannot read the GGUF header ({type(exc).__name__})"
            ) from exc
        manifest = Manifest(
            model_digest=digest,
            model_size=blob.stat().st_size,
            facts=facts,
            template=template,
            system=system,
            parameters=dict(parameters or {}),
            source=dict(source or {}),
            template_source=template_source,
            messages=list(messages or []),
            license=list(license or []),
        )
        with self._lock:
            if not blob.is_file():  # collected between the check and the lock
                raise NotFoundError(f"blob {digest} not found")
            self._write_manifest(name, manifest)
        return manifest

    def get(self, name: ModelName) -> StoredModel:
        """The model of that name in any case; its `name` is spelt as it was created."""
        path = self._find_manifest(name)
        if path is None:
            raise ModelNotFoundError(name.display())
        return self._load(path, name)

    def _load(self, path: Path, name: ModelName) -> StoredModel:
        try:
            raw = path.read_bytes()
            stat = path.stat()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError) as exc:
            raise ModelNotFoundError(name.display()) from exc
        try:
            manifest = Manifest.from_json(raw)
        except (ValueError, KeyError, StopIteration, TypeError) as exc:
            raise LocalserveError(f"manifest for {name.display()} is corrupt: {exc}") from exc
        stored_name = name
        with contextlib.suppress(LocalserveError, ValueError):
            stored_name = self._name_from_path(path)
        return StoredModel(
            name=stored_name,
            manifest=manifest,
            digest="sha256:" + hashlib.sha256(raw).hexdigest(),
            modified_at=datetime.fromtimestamp(stat.st_mtime, UTC),
        )

    def model_file(self, name: ModelName) -> Path:
        """The GGUF path of a model, checked to exist."""
        stored = self.get(name)
        path = self.blob_path(stored.manifest.model_digest)
        if not path.is_file():
            raise NotFoundError(f"blob for {name.display()} is missing from the store")
        return path

    def _manifest_files(self) -> builtins.list[Path]:
        return [p for p in sorted(self.manifests_dir.glob("*/*/*/*")) if p.is_file()]

    def list(self) -> list[StoredModel]:
        models: list[StoredModel] = []
        seen: set[ModelName] = set()
        for path in self._manifest_files():
            try:
                name = self._name_from_path(path)
                if name in seen:  # another spelling of a listed model (an older store's)
                    continue
                seen.add(name)
                models.append(self._load(path, name))
            except LocalserveError:
                continue  # a stray or corrupt file is not a model; `list` must not fail
        models.sort(key=lambda m: m.modified_at, reverse=True)
        return models

    def copy(self, source: ModelName, destination: ModelName) -> None:
        with self._lock:  # read under the lock: a concurrent delete may collect the blob
            stored = self.get(source)
            if not self.has_blob(stored.manifest.model_digest):
                raise NotFoundError(f"blob for {source.display()} is missing from the store")
            self._write_manifest(destination, stored.manifest)

    def delete(self, name: ModelName) -> builtins.list[str]:
        """Remove a model's manifest (every case variant of its name), then collect blobs
        nothing references any more."""
        with self._lock:
            self.get(name)  # 404 when there is none
            removed: dict[str, float] = {}  # digest -> newest mtime of a removed manifest
            for variant in self._variants(name):
                with contextlib.suppress(LocalserveError, OSError):
                    digest = self._load(variant, name).manifest.model_digest
                    removed[digest] = max(removed.get(digest, 0.0), variant.stat().st_mtime)
                variant.unlink(missing_ok=True)
                self._remove_empty_dirs(variant)
            freed = []
            referenced = self._referenced_digests()
            for model_digest, manifest_mtime in removed.items():
                if model_digest in referenced:
                    continue
                with contextlib.suppress(OSError):
                    # A blob registered again after this manifest was written belongs to
                    # an upload awaiting /api/create: leave it to the grace period.
                    blob = self.blob_path(model_digest)
                    if blob.stat().st_mtime <= manifest_mtime:
                        blob.unlink()
                        freed.append(model_digest)
        return freed + self.collect_garbage()

    # ---- garbage collection ------------------------------------------------------------

    def _referenced_digests(self) -> set[str]:
        """The blobs any manifest file names (also case variants `list` does not show)."""
        digests: set[str] = set()
        for path in self._manifest_files():
            unreadable = (OSError, ValueError, KeyError, StopIteration, TypeError, LocalserveError)
            with contextlib.suppress(*unreadable):
                digests.add(Manifest.from_json(path.read_bytes()).model_digest)
        return digests

    def _remove_blob_if_unreferenced(self, digest: str) -> None:
        with self._lock:
            if digest not in self._referenced_digests():
                self.blob_path(digest).unlink(missing_ok=True)

    def collect_garbage(self, grace_s: float = GC_GRACE_S) -> builtins.list[str]:
        """Delete unreferenced blobs older than `grace_s` and stale temp files."""
        removed: builtins.list[str] = []
        removed_temp = 0
        now = time.time()
        with self._lock:
            referenced = self._referenced_digests()
            for blob in self.blobs_dir.iterdir():
                digest = blob.name.replace("-", ":", 1)
                if digest in referenced:
                    continue
                with contextlib.suppress(OSError):
                    if now - blob.stat().st_mtime >= grace_s:
                        blob.unlink()
                        removed.append(digest)
            for tmp in self.tmp_dir.iterdir():
                with contextlib.suppress(OSError):
                    if tmp.is_file() and _unowned(tmp, now):
                        tmp.unlink()
                        removed_temp += 1
            # Resumable pull downloads: kept a week after they were last written to.
            partial_dir = self.tmp_dir / "partial"
            if partial_dir.is_dir():
                for partial in partial_dir.glob("*.partial"):
                    with contextlib.suppress(OSError):
                        if now - partial.stat().st_mtime >= PARTIAL_MAX_AGE_S:
                            partial.unlink()
        if removed_temp:
            log.info("removed %d unfinished upload file(s) from %s", removed_temp, self.tmp_dir)
        return removed

    def disk_free(self) -> int:
        return shutil.disk_usage(self.root).free
