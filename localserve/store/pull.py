"""Pull models into the store, from Hugging Face or from the built-in catalog.

`Puller.pull` is an async generator of Ollama's `/api/pull` NDJSON progress objects:

    {"status": "pulling manifest"}
    {"status": "pulling <12 hex>", "digest": "sha256:...", "total": N, "completed": M}  (repeated)
    {"status": "verifying sha256 digest"}
    {"status": "writing manifest"}
    {"status": "success"}

or `pulling manifest`, `up to date`, `success` when the model is already current. Failures
are raised as errors of the localserve tree (the API turns them into `{"error": ...}`).

Decisions (the README repeats them):

- Quant selection. `hf.co/<org>/<repo>:<quant>`: the tag is matched, case-insensitively,
  against the quant name found in each GGUF file name (`...-Q4_K_M.gguf`, `....q8_0.gguf`).
  No tag (`latest`) picks Q4_K_M, else the first available in `QUANT_PREFERENCE`: about
  4 bits first (the usual size/quality trade), then larger quants by rising size, then
  smaller ones by falling quality, unquantized last; quants not in the list come after it.
  A repo with one GGUF gives that file. A tag that matches nothing is a 400 error listing
  the quants the repo has. `mmproj` files (vision projectors) are never picked.
- Split GGUFs (`-00001-of-0000N.gguf`) are refused with a clear error: a model is one
  blob in the store, and llama.cpp finds the other parts of a split model by their file
  names, which content-addressed blobs do not keep. Merge the parts with
  `llama-gguf-split --merge` and use `localserve create`, or pick a single-file quant.
- Downloads go to `<store>/tmp/partial/sha256-<hex>.partial`, named by the expected
  digest so that any rerun resumes with a `Range` request. A lost connection is retried
  (`retries`, with backoff), each time resuming; when the retries run out the partial is
  kept and the error says to pull again. Ctrl-C (the pull cancelled) keeps it too. The
  sha256 is computed while writing and checked against the hub's LFS sha256 before the
  blob is registered; on a mismatch the partial is deleted (and when the download had
  resumed an older partial, which a crash may have left torn, it starts over once).
  Disk full: checked before starting (nothing is written, the partial stays), and on
  ENOSPC while writing the partial is deleted to give the space back; the store is
  unchanged either way.
- Blobs already in the store are not downloaded. Concurrent pulls of the same blob share
  one download and all see its progress; it stops when its last puller goes away.
- The manifest records the source (`repo`, `revision` commit, `files`, `quant`). Pulling
  again is "up to date" when the repo, revision and file are unchanged and the blob is
  present; a new revision with the same file bytes only rewrites the manifest.
- Catalog names (`smollm2:135m`) come from the package that ships the file when it is
  installed (offline, no hub access at all), else from the entry's Hugging Face repo.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from localserve.errors import BadRequestError, LocalserveError, NotFoundError
from localserve.names import ModelName
from localserve.store import catalog
from localserve.store.hub import (
    DigestMismatchError,
    HubClient,
    HubFile,
    HuggingFaceHub,
    NetworkError,
    RepoListing,
    UpstreamError,
)
from localserve.store.store import CHUNK, DiskFullError, Store
from localserve.telemetry.events import EventBus

Progress = dict[str, Any]

DEFAULT_QUANT = "Q4_K_M"
QUANT_PREFERENCE: tuple[str, ...] = (
    "Q4_K_M", "Q4_K_S", "IQ4_XS", "IQ4_NL", "Q4_0", "Q4_1",
    "Q5_K_M", "Q5_K_S", "Q5_0", "Q5_1", "Q6_K", "Q8_0",
    "Q3_K_L", "Q3_K_M", "IQ3_M", "Q3_K_S", "IQ3_S", "IQ3_XS", "IQ3_XXS",
    "Q2_K", "IQ2_M", "IQ2_S", "IQ2_XS", "IQ2_XXS", "IQ1_M", "IQ1_S",
    "BF16", "F16", "F32",
)  # fmt: skip

_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})$", re.IGNORECASE)
_QUANT = re.compile(
    r"(?<![A-Za-z0-9])((?:UD-)?(?:[IT]?Q\d(?:_[A-Z0-9]+)*|BF16|F16|F32|MXFP4(?:_MOE)?))"
    r"(?![A-Za-z0-9])",
    re.IGNORECASE,
)


# ---- quant selection ---------------------------------------------------------------------


@dataclass
class QuantGroup:
    """The files of one quant: a single GGUF, or the parts of a split one."""

    quant: str
    single: HubFile | None = None
    parts: list[HubFile] = field(default_factory=list)


def quant_of(path: str) -> tuple[str, bool]:
    """The quant name in a GGUF file name (upper case; the stem if none) and whether the
    file is one part of a split GGUF."""
    stem = path.rsplit("/", 1)[-1]
    stem = stem[: -len(".gguf")] if stem.lower().endswith(".gguf") else stem
    split = _SPLIT.search(stem)
    if split:
        stem = stem[: split.start()]
    found = _QUANT.findall(stem)
    return (found[-1] if found else stem).upper(), split is not None


def quant_groups(files: tuple[HubFile, ...] | list[HubFile]) -> dict[str, QuantGroup]:
    groups: dict[str, QuantGroup] = {}
    for file in files:
        if "mmproj" in file.path.lower():
            continue
        quant, is_part = quant_of(file.path)
        group = groups.setdefault(quant, QuantGroup(quant))
        if is_part:
            group.parts.append(file)
        elif group.single is None or len(file.path) < len(group.single.path):
            group.single = file  # two files of one quant: prefer the top-level one
    return groups


def _rank(quant: str) -> tuple[int, str]:
    bare = quant.removeprefix("UD-")
    if bare in QUANT_PREFERENCE:
        return QUANT_PREFERENCE.index(bare), quant
    return len(QUANT_PREFERENCE), quant


def available_quants(listing: RepoListing) -> list[str]:
    """The repo's quants, best first by `QUANT_PREFERENCE`."""
    return sorted(quant_groups(listing.files), key=_rank)


def _split_error(repo_id: str, group: QuantGroup, singles: list[str]) -> BadRequestError:
    hint = f"; single-file quants: {', '.join(singles)}" if singles else ""
    return BadRequestError(
        f"{repo_id}:{group.quant} is a split GGUF ({len(group.parts)} parts), which localserve "
        "does not pull: merge the parts with `llama-gguf-split --merge` and use "
        f"`localserve create`, or pick a single-file quant{hint}"
    )


def select_file(listing: RepoListing, tag: str) -> tuple[str, HubFile]:
    """The quant and the GGUF file a tag names in a repo (see the module docstring)."""
    groups = quant_groups(listing.files)
    if not groups:
        raise NotFoundError(f"{listing.repo_id} has no GGUF files")
    singles = sorted((q for q, g in groups.items() if g.single is not None), key=_rank)
    if tag.lower() == "latest":
        if singles:
            quant = DEFAULT_QUANT if DEFAULT_QUANT in singles else singles[0]
            single = groups[quant].single
            assert single is not None
            return quant, single
        best = min(groups, key=_rank)
        raise _split_error(listing.repo_id, groups[best], singles)
    group = groups.get(tag.upper())
    if group is None:
        raise BadRequestError(
            f"{listing.repo_id} has no GGUF for quant {tag!r}; available quants: "
            f"{', '.join(sorted(groups, key=_rank))}"
        )
    if group.single is None:
        raise _split_error(listing.repo_id, group, singles)
    return group.quant, group.single


def hf_repo_id(name: ModelName, raw_name: str) -> str:
    """`org/repo` with the case the user typed (the parsed name is lower case)."""
    text = raw_name.strip()
    try:
        same = ModelName.parse(text) == name
    except LocalserveError:
        same = False
    if same:
        colon, slash = text.rfind(":"), text.rfind("/")
        parts = (text[:colon] if colon > slash else text).split("/")
        if len(parts) == 3:
            return f"{parts[1]}/{parts[2]}"
    return f"{name.namespace}/{name.name}"


# ---- shared transfers --------------------------------------------------------------------


@dataclass(eq=False)
class _Transfer:
    """One blob download (or local import), shared by every pull that needs it."""

    key: str
    total: int
    digest: str | None  # known up front for hub files, after hashing for local files
    completed: int = 0
    users: int = 0
    stop: threading.Event = field(default_factory=threading.Event)
    task: asyncio.Task[str] | None = None


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _is_disk_full(exc: OSError) -> bool:
    return exc.errno in (errno.ENOSPC, errno.EDQUOT)


class Puller:
    """Pulls models into a store; one instance per daemon so that pulls share downloads."""

    def __init__(
        self,
        store: Store,
        hub: HubClient | None = None,
        events: EventBus | None = None,
        *,
        retries: int = 3,
        retry_delay: float = 0.5,
        progress_interval: float = 0.1,
    ) -> None:
        self.store = store
        self.events = events
        self.retries = retries
        self.retry_delay = retry_delay
        self.progress_interval = progress_interval
        self.partial_dir = store.tmp_dir / "partial"
        self._hub = hub
        self._transfers: dict[str, _Transfer] = {}

    @property
    def hub(self) -> HubClient:
        """The hub client; the default one reads HF_ENDPOINT/HF_TOKEN on first use."""
        if self._hub is None:
            self._hub = HuggingFaceHub()
        return self._hub

    def partial_path(self, digest: str) -> Path:
        return self.partial_dir / (self.store.blob_path(digest).name + ".partial")

    async def pull(self, name: ModelName, raw_name: str) -> AsyncGenerator[Progress, None]:
        """Pull `name` (`raw_name` is the text the user typed, for the hub repo's case)."""
        model = name.display()
        try:
            async for update in self._pull(name, raw_name):
                self._publish(model, update)
                yield update
        except LocalserveError as exc:
            self._publish(model, {"status": "error", "error": exc.message})
            raise

    def _publish(self, model: str, update: Progress) -> None:
        if self.events is not None:
            self.events.publish(
                "pull",
                model=model,
                status=update["status"],
                digest=update.get("digest"),
                completed=update.get("completed"),
                total=update.get("total"),
                **({"error": update["error"]} if "error" in update else {}),
            )

    async def _pull(self, name: ModelName, raw_name: str) -> AsyncIterator[Progress]:
        entry = catalog.lookup(name)
        if entry is not None:
            local = catalog.local_file(entry)
            if local is not None:
                async for update in self._pull_local(name, entry, local):
                    yield update
                return
            repo_id, tag = entry.repo, entry.quant
        elif name.is_huggingface:
            repo_id, tag = hf_repo_id(name, raw_name), name.tag
        else:
            raise catalog.unknown_name_error(name)
        async for update in self._pull_hub(name, repo_id, tag, entry):
            yield update

    # ---- from the hub ------------------------------------------------------------------

    async def _pull_hub(
        self, name: ModelName, repo_id: str, tag: str, entry: catalog.CatalogEntry | None
    ) -> AsyncIterator[Progress]:
        yield {"status": "pulling manifest"}
        hub = self.hub
        listing = await hub.list_gguf_files(repo_id)
        quant, file = select_file(listing, tag)
        if file.sha256 is None:
            raise UpstreamError(
                f"{listing.repo_id} publishes no sha256 for {file.path}; cannot verify it"
            )
        digest = "sha256:" + file.sha256
        source: dict[str, Any] = {
            "repo": listing.repo_id,
            "revision": listing.revision,
            "files": [file.path],
            "quant": quant,
            "endpoint": hub.endpoint,
        }
        if entry is not None:
            source["catalog"] = entry.name
        if await asyncio.to_thread(self._is_current, name, digest, source, ("repo", "revision")):
            yield {"status": "up to date"}
            yield {"status": "success"}
            return

        if await asyncio.to_thread(self.store.has_blob, digest):
            yield self._progress(digest, file.size, file.size)
        else:

            def start(transfer: _Transfer) -> Awaitable[str]:
                return self._download(transfer, hub, listing, file)

            transfer = self._join(digest, file.size, digest, start)
            async for update in self._follow(transfer):
                yield update
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        await asyncio.to_thread(self.store.create_model, name, digest, source=source)
        yield {"status": "success"}

    def _is_current(
        self, name: ModelName, digest: str | None, source: dict[str, Any], keys: tuple[str, ...]
    ) -> bool:
        try:
            manifest = self.store.get(name).manifest
        except LocalserveError:
            return False
        old = manifest.source
        same = all(str(old.get(k, "")).lower() == str(source.get(k, "")).lower() for k in keys)
        return (
            same
            and old.get("files") == source["files"]
            and (digest is None or manifest.model_digest == digest)
            and self.store.has_blob(manifest.model_digest)
        )

    async def _download(
        self, transfer: _Transfer, hub: HubClient, listing: RepoListing, file: HubFile
    ) -> str:
        digest = transfer.digest
        assert digest is not None
        if await asyncio.to_thread(self.store.has_blob, digest):
            transfer.completed = transfer.total
            return digest
        partial = self.partial_path(digest)
        have = await asyncio.to_thread(_file_size, partial)
        free = await asyncio.to_thread(self.store.disk_free)
        if free < file.size - have:
            # nothing written: the partial (if any) stays resumable
            raise DiskFullError(
                f"{file.path} needs {(file.size - have) / 2**20:.0f} MiB more, "
                f"{free / 2**20:.0f} MiB free"
            )

        def progress(done: int) -> None:
            transfer.completed = done

        resumed = have > 0
        attempt = 0
        while True:
            try:
                actual = await hub.download(
                    listing.repo_id, file, listing.revision, partial, progress
                )
            except NetworkError:
                attempt += 1
                if attempt > self.retries:
                    raise
                await asyncio.sleep(self.retry_delay * 2 ** (attempt - 1))
                continue
            except OSError as exc:  # writing the partial failed: do not resume from it
                partial.unlink(missing_ok=True)
                if _is_disk_full(exc):
                    raise DiskFullError() from exc
                raise
            if actual == digest:
                break
            partial.unlink(missing_ok=True)
            if resumed:  # a stale or torn partial (say, after a crash): start over once
                resumed = False
                continue
            raise DigestMismatchError(
                f"{file.path} from {listing.repo_id}: expected {digest}, got {actual}; "
                "the download was deleted, pull again"
            )
        await asyncio.to_thread(self.store.register_blob, partial, actual, digest)
        transfer.completed = transfer.total
        return digest

    # ---- from a local package ----------------------------------------------------------

    async def _pull_local(
        self, name: ModelName, entry: catalog.CatalogEntry, path: Path
    ) -> AsyncIterator[Progress]:
        yield {"status": "pulling manifest"}
        size = (await asyncio.to_thread(path.stat)).st_size
        source: dict[str, Any] = {
            "repo": entry.repo,
            "revision": None,
            "files": [entry.filename],
            "quant": entry.quant,
            "catalog": entry.name,
            "package": catalog.local_version(entry),
            "size": size,
        }
        keys = ("catalog", "package", "size")
        if await asyncio.to_thread(self._is_current, name, None, source, keys):
            yield {"status": "up to date"}
            yield {"status": "success"}
            return

        def start(transfer: _Transfer) -> Awaitable[str]:
            return asyncio.to_thread(self._import_file, transfer, path)

        transfer = self._join(f"file:{path}", size, None, start)
        async for update in self._follow(transfer):
            yield update
        assert transfer.digest is not None
        yield {"status": "verifying sha256 digest"}
        yield {"status": "writing manifest"}
        await asyncio.to_thread(self.store.create_model, name, transfer.digest, source=source)
        yield {"status": "success"}

    def _import_file(self, transfer: _Transfer, path: Path) -> str:
        """Copy a local GGUF into the store (on a worker thread): hash it first, so the
        progress carries its digest and a blob already present is not copied again."""
        hasher = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                if transfer.stop.is_set():
                    raise asyncio.CancelledError
                hasher.update(block)
        digest = "sha256:" + hasher.hexdigest()
        transfer.digest = digest
        if self.store.has_blob(digest):
            transfer.completed = transfer.total
            return digest
        copied = hashlib.sha256()
        with self.store.temp_file() as (tmp, out), path.open("rb") as handle:
            for block in iter(lambda: handle.read(CHUNK), b""):
                if transfer.stop.is_set():
                    raise asyncio.CancelledError
                out.write(block)
                copied.update(block)
                transfer.completed += len(block)
            out.flush()
            os.fsync(out.fileno())
            actual = "sha256:" + copied.hexdigest()
            if actual != digest:
                raise LocalserveError(f"{path} changed while it was being copied; pull again")
            self.store.register_blob(tmp, actual, digest)
        return digest

    # ---- sharing -----------------------------------------------------------------------

    def _join(
        self,
        key: str,
        total: int,
        digest: str | None,
        start: Callable[[_Transfer], Awaitable[str]],
    ) -> _Transfer:
        """The running transfer for `key`, or a new one (after a cancelled one has cleaned up)."""
        current = self._transfers.get(key)
        if (
            current is not None
            and current.task is not None
            and not current.task.done()
            and not current.task.cancelling()
        ):
            current.users += 1
            return current
        previous = current.task if current is not None else None
        transfer = _Transfer(key=key, total=total, digest=digest, users=1)

        async def run() -> str:
            if previous is not None:
                await asyncio.wait({previous})
            return await start(transfer)

        task = asyncio.create_task(run(), name=f"localserve-pull {key}")
        transfer.task = task

        def finished(done: asyncio.Task[str]) -> None:
            if self._transfers.get(key) is transfer:
                del self._transfers[key]
            if not done.cancelled():
                done.exception()  # retrieved here so that an unwatched failure is not logged

        task.add_done_callback(finished)
        self._transfers[key] = transfer
        return transfer

    @staticmethod
    def _progress(digest: str, total: int, completed: int) -> Progress:
        return {
            "status": f"pulling {digest.removeprefix('sha256:')[:12]}",
            "digest": digest,
            "total": total,
            "completed": completed,
        }

    async def _follow(self, transfer: _Transfer) -> AsyncIterator[Progress]:
        """Progress of a shared transfer, at most every `progress_interval`, plus the last.
        The caller holds one of `transfer.users`; leaving lets go of it."""
        task = transfer.task
        assert task is not None
        try:
            last = -1
            while True:
                done = task.done()
                if done and (task.cancelled() or task.exception() is not None):
                    break
                digest = transfer.digest
                if digest is not None and (transfer.completed != last or done):
                    last = transfer.completed
                    yield self._progress(digest, transfer.total, last)
                if done:
                    break
                await asyncio.wait({task}, timeout=self.progress_interval)
            if task.cancelled():
                raise NetworkError("the download was cancelled; pull again to resume")
            task.result()
        finally:
            transfer.users -= 1
            if transfer.users == 0 and not task.done():
                transfer.stop.set()
                task.cancel()


async def collect(puller: Puller, name: ModelName, raw_name: str) -> list[Progress]:
    """Run a pull to the end and return its progress objects (for `stream: false`)."""
    updates: list[Progress] = []
    async with contextlib.aclosing(puller.pull(name, raw_name)) as stream:
        async for update in stream:
            updates.append(update)
    return updates
