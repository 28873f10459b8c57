"""The Hugging Face Hub behind a small interface.

`HubClient` is what the puller needs from a model hub: the GGUF files of a repo (size, LFS
sha256, the revision commit) and a ranged, resumable download of one file. `HuggingFaceHub`
is the real one: the listing and the file metadata come from `huggingface_hub` (which
honours proxies, `HF_HUB_OFFLINE` and its own error codes); the bytes are streamed with
aiohttp so that the event loop never blocks and a partial file resumes with a `Range`
request. Tests use the same class against a local HF-compatible server (`HF_ENDPOINT`).

Hub failures become errors of the localserve tree: repo or file not found -> NotFoundError
(404), gated or private without a token -> UnauthorizedError (401), token without access ->
ForbiddenError (403), hub unreachable or the connection lost -> NetworkError (502, the partial
file is kept so that the same pull resumes), wrong bytes -> DigestMismatchError (502).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import hashlib
import importlib
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import urlsplit

import aiohttp
import huggingface_hub
from huggingface_hub import HfApi, get_hf_file_metadata, get_token, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory lock on partial files
    fcntl = None  # type: ignore[assignment]

from localserve.errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    LocalserveError,
    NotFoundError,
    UnauthorizedError,
)

DEFAULT_ENDPOINT = "https://huggingface.co"


def _transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP library's connection errors: huggingface-hub moved from httpx2 to httpx
    (1.x), so whichever of them is installed."""
    found: list[type[Exception]] = []
    for module in ("httpx", "httpx2"):
        with contextlib.suppress(ImportError):
            found.append(importlib.import_module(module).TransportError)
    return tuple(found)


_HTTP_TRANSPORT_ERRORS = _transport_errors()
READ_CHUNK = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")

# Called on the event loop with the number of bytes of the file now on disk.
ProgressCallback = Callable[[int], None]


class UpstreamError(LocalserveError):
    """The hub answered something unusable (502 Bad Gateway)."""

    status = 502
    code = "upstream_error"


class NetworkError(UpstreamError):
    """The hub could not be reached or the connection was lost; a rerun resumes."""

    code = "network_error"


class DigestMismatchError(UpstreamError):
    """The downloaded bytes do not match the sha256 the hub published."""

    code = "digest_mismatch"


@dataclass(frozen=True)
class HubFile:
    path: str  # path inside the repo, e.g. "SmolLM2-135M-Instruct-Q4_K_M.gguf"
    size: int
    sha256: str | None  # lowercase hex from the LFS pointer; None when the hub gives none


@dataclass(frozen=True)
class RepoListing:
    repo_id: str
    revision: str  # the commit the listing (and every download from it) is pinned to
    files: tuple[HubFile, ...]  # the repo's `.gguf` files only


class HubClient(Protocol):
    endpoint: str

    async def list_gguf_files(self, repo_id: str) -> RepoListing:
        """The GGUF files of `repo_id` at its current head commit."""
        ...

    async def download(
        self,
        repo_id: str,
        file: HubFile,
        revision: str,
        partial: Path,
        progress: ProgressCallback,
    ) -> str:
        """Complete `partial` (resuming from its current size) and return its `sha256:<hex>`.

        The digest covers the whole file, the resumed prefix included. Raises NetworkError
        (partial kept) or OSError from writing the partial (the caller decides what to keep).
        """
        ...


class PartialWriter:
    """Appends to a partial download while hashing it, off the event loop.

    Each chunk goes to two single-thread queues, one writing it and one hashing it (both
    release the GIL), so the network read on the event loop, the disk write and the sha256
    overlap. At most `max_pending` chunks wait. Every `flush_every` bytes a background
    fdatasync starts, so the final fsync has little left to do. After a failed write the
    writer refuses further chunks, so the file never has a gap.
    """

    def __init__(
        self, path: Path, max_pending: int = 16, flush_every: int = 64 * 1024 * 1024
    ) -> None:
        self.path = path
        self.size = 0  # bytes accepted so far, the resumed prefix included
        self._max_pending = max_pending
        self._flush_every = flush_every
        self._unflushed = 0
        self._disk = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localserve-write")
        self._hash = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localserve-hash")
        self._sync = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localserve-sync")
        self._flushing: concurrent.futures.Future[None] | None = None
        self._pending: collections.deque[asyncio.Future[None]] = collections.deque()
        self._handle: IO[bytes] | None = None
        self._hasher = hashlib.sha256()
        self._failed: BaseException | None = None

    async def _on_disk_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._disk, func, *args)

    async def open(self) -> int:
        """Open (or create) the partial, hash what it holds; return the resume offset."""
        offset: int = await self._on_disk_thread(self._open_sync)
        self.size = offset
        return offset

    def _open_sync(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("ab+")
        if fcntl is not None:  # another process resuming the same partial would interleave
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                handle.close()
                raise ConflictError(
                    f"{self.path.name} is being downloaded by another localserve process"
                ) from exc
        self._handle = handle
        handle.seek(0)
        for block in iter(lambda: handle.read(READ_CHUNK), b""):
            self._hasher.update(block)
        return handle.tell()

    async def restart(self) -> None:
        """Drop what the partial holds (the server ignored our Range, or it was too long)."""
        await self._drain()
        await self._on_disk_thread(self._truncate_sync)
        self.size = 0

    def _truncate_sync(self) -> None:
        assert self._handle is not None
        self._handle.truncate(0)
        self._handle.seek(0)
        self._hasher = hashlib.sha256()

    async def write(self, chunk: bytes) -> None:
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()
        while len(self._pending) >= 2 * self._max_pending:
            await self._pending.popleft()
        loop = asyncio.get_running_loop()
        self._pending.append(loop.run_in_executor(self._disk, self._write, chunk))
        self._pending.append(loop.run_in_executor(self._hash, self._hasher.update, chunk))
        self.size += len(chunk)

    def _write(self, chunk: bytes) -> None:
        if self._failed is not None:
            raise self._failed
        assert self._handle is not None
        try:
            self._handle.write(chunk)
        except BaseException as exc:
            self._failed = exc
            raise
        self._unflushed += len(chunk)
        if self._unflushed >= self._flush_every and (
            self._flushing is None or self._flushing.done()
        ):
            self._unflushed = 0
            self._flushing = self._sync.submit(os.fdatasync, self._handle.fileno())

    async def _drain(self) -> None:
        while self._pending:
            await self._pending.popleft()

    async def finish(self) -> str:
        """Wait for every write, fsync, and return the digest of the whole file."""
        await self._drain()
        await self._on_disk_thread(self._finish_sync)
        return "sha256:" + self._hasher.hexdigest()

    def _finish_sync(self) -> None:
        assert self._handle is not None
        self._handle.flush()
        if self._flushing is not None:
            self._flushing.result()
        os.fsync(self._handle.fileno())

    async def close(self) -> None:
        """Close the file once queued work is done; survives being cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        closed = loop.run_in_executor(self._disk, self._close_sync)
        for executor in (self._disk, self._hash, self._sync):
            executor.shutdown(wait=False)
        for pending in self._pending:  # after a failure: their errors are already reported
            pending.add_done_callback(_ignore_result)
        self._pending.clear()
        cancelled = False
        while not closed.done():
            try:
                await asyncio.shield(closed)
            except asyncio.CancelledError:
                cancelled = True
        if cancelled:
            raise asyncio.CancelledError

    def _close_sync(self) -> None:
        if self._flushing is not None:
            with contextlib.suppress(OSError):
                self._flushing.result()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _ignore_result(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class HuggingFaceHub:
    """The real hub client. `endpoint` defaults to `HF_ENDPOINT`, `token` to `HF_TOKEN`
    (or the token saved by `hf auth login`); both are read when the client is made.
    `token=""` sends no token at all."""

    def __init__(
        self,
        endpoint: str | None = None,
        token: str | None = None,
        *,
        timeout: float = 30.0,
        read_bufsize: int = 4 * 1024 * 1024,
    ) -> None:
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
        if token is None:
            try:
                token = os.environ.get("HF_TOKEN") or get_token()
            except Exception:  # a broken token file or OIDC setup must not stop public pulls
                token = None
        self.token = token or None
        self.timeout = timeout
        self._read_bufsize = read_bufsize
        self._api = HfApi(endpoint=self.endpoint, token=self.token or False)

    # ---- listing -----------------------------------------------------------------------

    async def list_gguf_files(self, repo_id: str) -> RepoListing:
        try:
            info = await asyncio.to_thread(
                self._api.model_info, repo_id, files_metadata=True, timeout=self.timeout
            )
        except Exception as exc:
            raise self._map_error(exc, repo_id) from exc
        if not info.sha:
            raise UpstreamError(f"{self.endpoint} gave no revision for {repo_id}")
        files = []
        for sibling in info.siblings or []:
            if not sibling.rfilename.lower().endswith(".gguf"):
                continue
            sha = sibling.lfs.sha256 if sibling.lfs is not None else None
            size = sibling.lfs.size if sibling.lfs is not None else sibling.size
            files.append(
                HubFile(
                    path=sibling.rfilename,
                    size=int(size or 0),
                    sha256=sha.lower() if sha and _SHA256.match(sha.lower()) else None,
                )
            )
        # The hub's own spelling of the id: it matches repo ids case-insensitively.
        canonical = info.id if isinstance(info.id, str) and info.id else repo_id
        return RepoListing(repo_id=canonical, revision=info.sha, files=tuple(files))

    # ---- download ----------------------------------------------------------------------

    def _headers(self, url: str) -> dict[str, str]:
        """Hub headers; the token only goes to the hub's own origin, never to a CDN."""
        headers = {
            "User-Agent": f"localserve; huggingface_hub/{huggingface_hub.__version__}",
            "Accept-Encoding": "identity",
        }
        if self.token and _origin(url) == _origin(self.endpoint):
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    async def _resolve(self, repo_id: str, file: HubFile, revision: str) -> tuple[str, int]:
        """HEAD the file: where to GET it (the hub or a CDN) and its size."""
        url = hf_hub_url(repo_id, file.path, revision=revision, endpoint=self.endpoint)
        try:
            meta = await asyncio.to_thread(
                get_hf_file_metadata,
                url,
                token=self.token or False,
                timeout=self.timeout,
                endpoint=self.endpoint,
            )
        except Exception as exc:
            raise self._map_error(exc, repo_id, file.path) from exc
        return meta.location, meta.size if meta.size is not None else file.size

    async def download(
        self,
        repo_id: str,
        file: HubFile,
        revision: str,
        partial: Path,
        progress: ProgressCallback,
    ) -> str:
        location, size = await self._resolve(repo_id, file, revision)
        writer = PartialWriter(partial)
        try:
            offset = await writer.open()
            if offset > size:
                await writer.restart()
                offset = 0
            progress(offset)
            if offset < size:
                await self._fetch(location, size, writer, progress)
            if writer.size != size:
                raise NetworkError(
                    f"download of {file.path} ended early ({writer.size} of {size} bytes); "
                    "pull again to resume"
                )
            return await writer.finish()
        finally:
            await writer.close()

    async def _fetch(
        self, url: str, size: int, writer: PartialWriter, progress: ProgressCallback
    ) -> None:
        headers = self._headers(url)
        if writer.size:
            headers["Range"] = f"bytes={writer.size}-"
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeout, sock_read=self.timeout
        )
        try:
            async with (
                aiohttp.ClientSession(
                    timeout=timeout,
                    trust_env=True,
                    read_bufsize=self._read_bufsize,
                    auto_decompress=False,
                ) as session,
                session.get(url, headers=headers) as response,
            ):
                await self._check_response(response, writer)
                stream = response.content
                while True:
                    chunk = await stream.read(READ_CHUNK)
                    if not chunk:
                        break
                    if writer.size + len(chunk) > size:
                        raise UpstreamError(f"{url} sent more than the expected {size} bytes")
                    await writer.write(chunk)
                    progress(writer.size)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # ClientOSError is an OSError too: it must be caught here, before any caller
            # mistakes a lost connection for a failed disk write.
            raise NetworkError(
                f"lost the connection to {urlsplit(url).netloc} ({exc or type(exc).__name__}); "
                "the partial download is kept, pull again to resume"
            ) from exc

    async def _check_response(
        self, response: aiohttp.ClientResponse, writer: PartialWriter
    ) -> None:
        status = response.status
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match.group(1)) != writer.size:
                raise UpstreamError(f"unexpected Content-Range from {response.url}")
            return
        if status == 200:
            if writer.size:
                await writer.restart()  # the server ignored the Range: start over
            return
        if status == 416:
            await writer.restart()
            raise NetworkError("the hub refused to resume the partial file; pull again")
        message = response.headers.get("X-Error-Message") or response.reason or ""
        if status == 401:
            raise UnauthorizedError(self._auth_hint(f"the hub refused the download: {message}"))
        if status == 403:
            raise ForbiddenError(f"access denied by the hub: {message}; check HF_TOKEN")
        if status == 404:
            raise NotFoundError(f"file not found on the hub: {response.url}")
        raise NetworkError(f"the hub answered {status} {message} for {response.url}")

    # ---- errors ------------------------------------------------------------------------

    def _auth_hint(self, message: str) -> str:
        if self.token:
            return message + " (the HF_TOKEN in use was not accepted)"
        return message + " (set HF_TOKEN to a Hugging Face access token)"

    def _map_error(self, exc: Exception, repo_id: str, path: str | None = None) -> LocalserveError:
        where = f"{repo_id}/{path}" if path else repo_id
        if isinstance(exc, LocalserveError):
            return exc
        if isinstance(exc, GatedRepoError):
            if self.token:
                return ForbiddenError(
                    f"{repo_id} is gated and this HF_TOKEN has no access: accept its terms at "
                    f"{self.endpoint}/{repo_id}"
                )
            return UnauthorizedError(
                f"{repo_id} is gated: accept its terms at {self.endpoint}/{repo_id} and set "
                "HF_TOKEN to an access token"
            )
        if isinstance(exc, RevisionNotFoundError):
            return NotFoundError(f"revision not found on the hub for {where}")
        if isinstance(exc, RemoteEntryNotFoundError):
            return NotFoundError(f"file not found on the hub: {where}")
        if isinstance(exc, RepositoryNotFoundError):
            hint = (
                "set HF_TOKEN if it is private" if not self.token else "or HF_TOKEN cannot see it"
            )
            return NotFoundError(f"repository {repo_id} not found on {self.endpoint} ({hint})")
        if isinstance(exc, HfHubHTTPError):
            status = exc.response.status_code if exc.response is not None else 0
            if status == 401:
                return UnauthorizedError(self._auth_hint(f"the hub refused {where}"))
            if status == 403:
                return ForbiddenError(f"access to {where} denied by the hub; check HF_TOKEN")
            if status == 404:
                return NotFoundError(f"not found on the hub: {where}")
            return NetworkError(f"the hub failed for {where}: {status} {exc.server_message or ''}")
        if isinstance(exc, HFValidationError):
            return BadRequestError(f"invalid Hugging Face repo id {repo_id!r}: {exc}")
        if isinstance(exc, OfflineModeIsEnabled):
            return NetworkError("HF_HUB_OFFLINE is set: cannot reach the hub")
        if isinstance(exc, (*_HTTP_TRANSPORT_ERRORS, aiohttp.ClientError, TimeoutError)):
            return NetworkError(f"cannot reach {self.endpoint}: {exc or type(exc).__name__}")
        return UpstreamError(f"unexpected answer from {self.endpoint} for {where}: {exc}")
