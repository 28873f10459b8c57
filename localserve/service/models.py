"""Model management behind every API: list, show, copy, delete, create, pull, blobs and
what is loaded. The routes call these; none of them touches the store, the scheduler or
the puller itself.
"""

from __future__ import annotations

import asyncio
import builtins  # `Models.list` shadows `list` in later annotations
import contextlib
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import IO, Any

from localserve.errors import LocalserveError, TooLargeError
from localserve.names import ModelName, parse_digest
from localserve.scheduling.scheduler import ModelSnapshot, Scheduler
from localserve.service.prompts import check_template
from localserve.store.gguf_tokenizer import read_tokenizer_arrays
from localserve.store.store import Store, StoredModel
from localserve.telemetry.events import EventBus

Progress = dict[str, Any]


@dataclass(frozen=True)
class CreateRequest:
    """A model to create: from an uploaded GGUF blob (`file_digest`) or from an installed
    model (`from_model`); template, system and parameters override the base's."""

    name: str
    file_digest: str | None = None
    file_name: str = "model.gguf"
    from_model: str | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    extra_source: dict[str, Any] = field(default_factory=dict)
    template_source: str | None = None  # the Go template `template` was translated from
    messages: list[dict[str, str]] | None = None
    license: list[str] | None = None


class Models:
    def __init__(self, store: Store, scheduler: Scheduler, events: EventBus, max_blob_bytes: int):
        self.store = store
        self.scheduler = scheduler
        self.events = events
        self.max_blob_bytes = max_blob_bytes
        self._puller: Any = None

    async def list(self) -> list[StoredModel]:
        return await asyncio.to_thread(self.store.list)

    async def get(self, raw_name: str) -> StoredModel:
        return await asyncio.to_thread(self.store.get, ModelName.parse(raw_name))

    async def tokenizer_arrays(self, stored: StoredModel) -> dict[str, builtins.list[Any]]:
        """The model's tokenizer arrays from its GGUF header (`/api/show` verbose)."""
        path = self.store.blob_path(stored.manifest.model_digest)
        return await asyncio.to_thread(read_tokenizer_arrays, path)

    async def copy(self, source: str, destination: str) -> None:
        await asyncio.to_thread(
            self.store.copy, ModelName.parse(source), ModelName.parse(destination)
        )

    async def delete(self, raw_name: str) -> None:
        name = ModelName.parse(raw_name)
        await asyncio.to_thread(self.store.get, name)  # 404 before touching anything
        await self.scheduler.unload(name)
        await asyncio.to_thread(self.store.delete, name)

    def running(self) -> builtins.list[ModelSnapshot]:
        """The scheduler's rows of loaded models (a read-only snapshot)."""
        return list(self.scheduler.snapshot())

    async def manifest_digests(self, names: builtins.list[str]) -> dict[str, str]:
        """Each installed model's manifest digest (the ID /api/tags shows), by name."""

        def lookup() -> dict[str, str]:
            found = {}
            for name in names:
                with contextlib.suppress(LocalserveError):
                    found[name] = self.store.get(ModelName.parse(name)).digest
            return found

        return await asyncio.to_thread(lookup)

    # ---- blobs ---------------------------------------------------------------------------

    async def has_blob(self, raw_digest: str) -> bool:
        return await asyncio.to_thread(self.store.has_blob, parse_digest(raw_digest))

    async def upload_blob(
        self, raw_digest: str, chunks: AsyncIterator[bytes], declared_size: int | None
    ) -> bool:
        """Stream a blob into the store, verified against its digest; False when the store
        already had it (the body is then not read)."""
        expected = parse_digest(raw_digest)
        if await asyncio.to_thread(self.store.has_blob, expected):
            return False
        limit = self.max_blob_bytes
        if declared_size is not None and declared_size > limit:
            raise TooLargeError(f"blob larger than the limit of {limit} bytes")
        hasher = hashlib.sha256()
        size = 0
        with self.store.temp_file() as (path, handle):
            async for chunk in chunks:
                size += len(chunk)
                if size > limit:
                    raise TooLargeError(f"blob larger than the limit of {limit} bytes")
                hasher.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_flush_and_sync, handle)
            await asyncio.to_thread(
                self.store.register_blob, path, f"sha256:{hasher.hexdigest()}", expected
            )
        return True

    # ---- create and pull -----------------------------------------------------------------

    async def create(self, request: CreateRequest) -> AsyncIterator[Progress]:
        """Progress lines of a create. Everything is checked before the first line (the
        name, the template, the GGUF), so a bad request gets its real status."""
        name = ModelName.parse(request.name)
        if request.template is not None:
            check_template(request.template)
        store = self.store
        if request.file_digest is not None:
            digest = parse_digest(request.file_digest)
            await asyncio.to_thread(
                store.create_model,
                name,
                digest,
                template=request.template,
                system=request.system,
                parameters=request.parameters,
                source={"type": "upload", "file": request.file_name, **request.extra_source},
                template_source=request.template_source,
                messages=request.messages,
                license=request.license,
            )
            yield {"status": "parsing GGUF"}
        else:
            base = await asyncio.to_thread(store.get, ModelName.parse(request.from_model or ""))
            manifest = base.manifest
            own_template = request.template is not None
            await asyncio.to_thread(
                store.create_model,
                name,
                manifest.model_digest,
                template=request.template if own_template else manifest.template,
                system=request.system if request.system is not None else manifest.system,
                parameters={**manifest.parameters, **(request.parameters or {})},
                source={**manifest.source, "from": base.name.display(), **request.extra_source},
                template_source=request.template_source
                if own_template
                else manifest.template_source,
                messages=request.messages if request.messages is not None else manifest.messages,
                license=request.license if request.license is not None else manifest.license,
            )
        yield {"status": "writing manifest"}
        yield {"status": "success"}

    def pull(self, raw_name: str) -> AsyncIterator[Progress]:
        """Progress lines of a pull (see localserve.store.pull)."""
        if self._puller is None:
            from localserve.store.pull import Puller

            self._puller = Puller(self.store, events=self.events)
        items: AsyncIterator[Progress] = self._puller.pull(ModelName.parse(raw_name), raw_name)
        return items


def _flush_and_sync(handle: IO[bytes]) -> None:
    handle.flush()
    os.fsync(handle.fileno())
