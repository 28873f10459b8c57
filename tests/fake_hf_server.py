"""A small Hugging Face Hub look-alike on 127.0.0.1, for the pull tests and the benchmark.

It serves what `huggingface_hub` and `localserve.store.hub.HuggingFaceHub` use:

    GET  /api/models/<org>/<repo>[/revision/<rev>]   model_info (siblings with LFS sha256)
    HEAD /<org>/<repo>/resolve/<rev>/<file>          302 to the "CDN" with X-Repo-Commit,
                                                     X-Linked-Etag, X-Linked-Size (as the
                                                     real hub does for LFS files)
    GET  /<org>/<repo>/resolve/<rev>/<file>          the same redirect
    HEAD/GET /cdn/<sha256>                           the bytes, with Range support

The CDN is addressed as `localhost` while the hub is `127.0.0.1`, so the redirect leaves
the hub's origin, as on huggingface.co (the token must not follow it). With
`cdn_redirect=False` the resolve URL serves the bytes itself.

Knobs for failure tests: `cut_at`/`cut_times` (close the connection after that file
offset, for the next N downloads), `corrupt` (flip a byte: sha256 mismatch),
`ignore_range` (answer 200 with the whole file), `hold` (an event that downloads wait
for), `chunk_delay` (slow streaming), gated repos (401 without the token, 403 with another
one), unknown repos (404). `requests` logs every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

TOKEN = "hf_fake_test_token"


@dataclass
class FakeFile:
    path: str
    local: Path
    size: int
    sha256: str


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, FakeFile]
    commit: str
    gated: bool = False


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    range: str | None
    authorization: str | None


def sha256_file(path: Path) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(block)
    return hasher.hexdigest()


@dataclass
class FakeHub:
    token: str = TOKEN
    cdn_redirect: bool = True
    repos: dict[str, FakeRepo] = field(default_factory=dict)
    requests: list[LoggedRequest] = field(default_factory=list)
    # failure knobs
    cut_at: int | None = None
    cut_times: int = 0
    corrupt: bool = False
    ignore_range: bool = False
    hold: asyncio.Event | None = None
    chunk_delay: float = 0.0
    chunk_size: int = 64 * 1024
    _runner: web.AppRunner | None = None
    port: int = 0

    # ---- setup ---------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: Mapping[str, Path], *, gated: bool = False) -> FakeRepo:
        repo = FakeRepo(repo_id, {}, secrets.token_hex(20), gated)
        for path, local in files.items():
            repo.files[path] = FakeFile(path, local, local.stat().st_size, sha256_file(local))
        self.repos[repo_id] = repo
        return repo

    def new_commit(self, repo_id: str) -> str:
        self.repos[repo_id].commit = secrets.token_hex(20)
        return self.repos[repo_id].commit

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_url(self) -> str:
        return f"http://localhost:{self.port}"

    def downloads(self, path_part: str = "") -> list[LoggedRequest]:
        """Logged GETs that fetch file bytes (whose path contains `path_part`)."""
        return [
            r
            for r in self.requests
            if r.method == "GET"
            and (r.path.startswith("/cdn/") or ("/resolve/" in r.path and not self.cdn_redirect))
            and path_part in r.path
        ]

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/api/models/{org}/{repo}", self._model_info)
        app.router.add_get("/api/models/{org}/{repo}/revision/{revision}", self._model_info)
        app.router.add_get("/{org}/{repo}/resolve/{revision}/{filename:.+}", self._resolve)
        app.router.add_get("/cdn/{sha256}", self._cdn)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- handlers ------------------------------------------------------------------------

    def _log(self, request: web.Request) -> None:
        self.requests.append(
            LoggedRequest(
                request.method,
                request.path,
                request.headers.get("Range"),
                request.headers.get("Authorization"),
            )
        )

    @staticmethod
    def _error(status: int, code: str, message: str) -> web.Response:
        return web.json_response(
            {"error": message},
            status=status,
            headers={"X-Error-Code": code, "X-Error-Message": message},
        )

    def _repo(self, request: web.Request) -> FakeRepo | None:
        return self.repos.get(f"{request.match_info['org']}/{request.match_info['repo']}")

    async def _model_info(self, request: web.Request) -> web.StreamResponse:
        self._log(request)
        repo = self._repo(request)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        revision = request.match_info.get("revision", "main")
        if revision not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        siblings: list[dict[str, Any]] = [
            {"rfilename": "README.md", "size": 12, "blobId": "0" * 40}
        ]
        for file in repo.files.values():
            siblings.append(
                {
                    "rfilename": file.path,
                    "size": file.size,
                    "blobId": file.sha256[:40],
                    "lfs": {"sha256": file.sha256, "size": file.size, "pointerSize": 134},
                }
            )
        return web.json_response(
            {
                "_id": repo.commit[:24],
                "id": repo.repo_id,
                "modelId": repo.repo_id,
                "sha": repo.commit,
                "private": False,
                "gated": "manual" if repo.gated else False,
                "disabled": False,
                "tags": ["gguf"],
                "siblings": siblings,
            }
        )

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._log(request)
        repo = self._repo(request)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if repo.gated:
            auth = request.headers.get("Authorization")
            if auth is None:
                return self._error(
                    401, "GatedRepo", f"Access to model {repo.repo_id} is restricted."
                )
            if auth != f"Bearer {self.token}":
                return self._error(
                    403, "GatedRepo", f"Access to model {repo.repo_id} is restricted."
                )
        if request.match_info["revision"] not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", "Invalid rev id")
        file = repo.files.get(request.match_info["filename"])
        if file is None:
            return self._error(404, "EntryNotFound", "Entry not found")
        headers = {
            "X-Repo-Commit": repo.commit,
            "X-Linked-Etag": f'"{file.sha256}"',
            "X-Linked-Size": str(file.size),
            "ETag": f'"{file.sha256[:40]}"',
        }
        if self.cdn_redirect:
            location = f"{self.cdn_url}/cdn/{file.sha256}"
            return web.Response(status=302, headers={**headers, "Location": location})
        return await self._serve(request, file, headers)

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        self._log(request)
        sha = request.match_info["sha256"]
        for repo in self.repos.values():
            for file in repo.files.values():
                if file.sha256 == sha:
                    return await self._serve(request, file, {"ETag": f'"{sha}"'})
        return web.Response(status=404)

    async def _serve(
        self, request: web.Request, file: FakeFile, headers: dict[str, str]
    ) -> web.StreamResponse:
        if request.method == "HEAD":
            return web.Response(
                headers={**headers, "Content-Length": str(file.size), "Accept-Ranges": "bytes"}
            )
        if self.hold is not None:
            await self.hold.wait()
        cut = self.cut_at if self.cut_times > 0 else None
        if cut is None and not (self.corrupt or self.chunk_delay or self.ignore_range):
            response = web.FileResponse(file.local, chunk_size=1 << 20, headers=headers)
            return response
        if cut is not None:
            self.cut_times -= 1
        return await self._stream(request, file, headers, cut)

    async def _stream(
        self, request: web.Request, file: FakeFile, headers: dict[str, str], cut: int | None
    ) -> web.StreamResponse:
        """Serve bytes by hand, for the knobs: a Range, a cut, a flipped byte, a delay."""
        start, status = 0, 200
        spec = request.http_range
        if spec.start is not None and not self.ignore_range:
            start, status = spec.start, 206
        data = bytearray(file.local.read_bytes())
        if self.corrupt:
            data[len(data) // 2] ^= 0xFF
        body = memoryview(data)[start:]
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(body)
        response.headers["Accept-Ranges"] = "bytes"
        if status == 206:
            response.headers["Content-Range"] = f"bytes {start}-{file.size - 1}/{file.size}"
        await response.prepare(request)
        offset = start
        for index in range(0, len(body), self.chunk_size):
            chunk = body[index : index + self.chunk_size]
            if cut is not None and offset + len(chunk) >= cut:
                await response.write(bytes(chunk[: max(cut - offset, 0)]))
                await response.drain()
                assert request.transport is not None
                request.transport.close()  # the client sees a short body
                return response
            await response.write(bytes(chunk))
            offset += len(chunk)
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
        with contextlib.suppress(ConnectionError):
            await response.write_eof()
        return response
