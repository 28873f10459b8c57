"""The one typed HTTP client of the localserve daemon, used by the CLI and the TUI.

All methods are async (aiohttp). Streaming endpoints are async iterators of the decoded
NDJSON objects. Answers come typed as the wire shapes of `localserve.api.payloads`
(`TagsModel`, `PsModel`, `ShowResponse`, `ProgressLine`). Errors:

    ClientError
    ├── DaemonUnreachableError   nothing answers at the base URL
    └── APIError                 the daemon answered with {"error": ...}; `.status` is HTTP
        ├── BadRequestAPIError   400
        ├── ModelNotFoundAPIError 404
        ├── BusyAPIError         503 (`.retry_after` seconds)
        └── StreamAPIError       an error line inside a stream that had started
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from localserve.api.payloads import (
    ProgressLine,
    PsModel,
    PsResponse,
    ShowResponse,
    TagsModel,
    TagsResponse,
)
from localserve.config import load_settings

JSON = dict[str, Any]
REQUEST_TAG_HEADER = "X-Localserve-Request-Tag"  # echoed in the request's queue events
UPLOAD_CHUNK = 1024 * 1024


class ClientError(Exception):
    pass


class DaemonUnreachableError(ClientError):
    def __init__(self, base_url: str, reason: str) -> None:
        super().__init__(f"localserve daemon not reachable at {base_url}: {reason}")
        self.base_url = base_url


class APIError(ClientError):
    """`code` is the daemon's machine-readable error type (e.g. "model_too_large" or
    "disk_full" for a 507), None when the answer carried none."""

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


class BadRequestAPIError(APIError):
    pass


class ModelNotFoundAPIError(APIError):
    pass


class BusyAPIError(APIError):
    def __init__(
        self,
        status: int,
        message: str,
        retry_after: float | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(status, message, code)
        self.retry_after = retry_after


class StreamAPIError(APIError):
    pass


def _error_for(status: int, message: str, headers: Any = None, code: str | None = None) -> APIError:
    if status == 400:
        return BadRequestAPIError(status, message, code)
    if status == 404:
        return ModelNotFoundAPIError(status, message, code)
    if status == 503:
        retry = headers.get("Retry-After") if headers is not None else None
        return BusyAPIError(status, message, float(retry) if retry else None, code)
    return APIError(status, message, code)


def default_base_url() -> str:
    return load_settings().base_url


def file_digest(path: Path, progress: Callable[[int], None] | None = None) -> str:
    hasher = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(UPLOAD_CHUNK):
            hasher.update(chunk)
            if progress:
                progress(len(chunk))
    return f"sha256:{hasher.hexdigest()}"


class LocalserveClient:
    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.base_url = (base_url or default_base_url()).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("LOCALSERVE_API_KEY")
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=5)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> LocalserveClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=headers)
        return self._session

    # ---- transport ---------------------------------------------------------------------

    async def _raise_for_status(self, response: aiohttp.ClientResponse) -> None:
        if response.status < 400:
            return
        text = await response.text()
        code: str | None = None
        try:
            body = json.loads(text)
            error = body.get("error", text)
            if isinstance(error, dict):  # OpenAI's shape
                message = str(error.get("message", error))
                code = error.get("code")
            else:
                message = str(error)
                code = body.get("code")
        except (ValueError, AttributeError):
            message = text or response.reason or "error"
        raise _error_for(
            response.status, message, response.headers, code if isinstance(code, str) else None
        )

    async def _request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
        try:
            async with self._get_session().request(
                method, self.base_url + path, json=body, **kwargs
            ) as response:
                await self._raise_for_status(response)
                if method == "HEAD":
                    return None
                text = await response.text()
                return json.loads(text) if text.strip().startswith(("{", "[")) else text
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise DaemonUnreachableError(self.base_url, str(exc) or type(exc).__name__) from exc

    async def _stream(
        self, path: str, body: JSON, headers: dict[str, str] | None = None
    ) -> AsyncIterator[Any]:
        """POST and yield each NDJSON object; an {"error"} line raises StreamAPIError."""
        try:
            async with self._get_session().post(
                self.base_url + path, json=body, headers=headers
            ) as response:
                await self._raise_for_status(response)
                async for raw in response.content:
                    line = raw.strip()
                    if not line:
                        continue
                    item = json.loads(line)
                    if isinstance(item, dict) and "error" in item:
                        code = item.get("code")
                        raise StreamAPIError(
                            500, str(item["error"]), code if isinstance(code, str) else None
                        )
                    yield item
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise DaemonUnreachableError(self.base_url, str(exc) or type(exc).__name__) from exc

    # ---- API ---------------------------------------------------------------------------

    async def version(self) -> str:
        data = await self._request("GET", "/api/version")
        return str(data["version"])

    async def is_running(self) -> bool:
        try:
            await self.version()
        except DaemonUnreachableError:
            return False
        return True

    async def list_models(self) -> list[TagsModel]:
        """The installed models (/api/tags)."""
        data: TagsResponse = await self._request("GET", "/api/tags")
        return data["models"]

    async def ps(self) -> list[PsModel]:
        """The loaded models (/api/ps)."""
        data: PsResponse = await self._request("GET", "/api/ps")
        return data["models"]

    async def show(self, model: str, *, verbose: bool = False) -> ShowResponse:
        """A model's details; `verbose`: with the tokenizer arrays in `model_info`."""
        body: dict[str, Any] = {"model": model, **({"verbose": True} if verbose else {})}
        data: ShowResponse = await self._request("POST", "/api/show", body)
        return data

    def generate(
        self,
        model: str,
        prompt: str,
        *,
        system: str | None = None,
        options: JSON | None = None,
        format: str | JSON | None = None,
        keep_alive: str | float | None = None,
        raw: bool = False,
    ) -> AsyncIterator[JSON]:
        body: JSON = {"model": model, "prompt": prompt, "stream": True, "raw": raw}
        _put_optional(body, system=system, options=options, format=format, keep_alive=keep_alive)
        return self._stream("/api/generate", body)

    def chat(
        self,
        model: str,
        messages: list[JSON],
        *,
        options: JSON | None = None,
        format: str | JSON | None = None,
        keep_alive: str | float | None = None,
        think: bool | str | None = None,
        request_tag: str | None = None,
    ) -> AsyncIterator[JSON]:
        """`request_tag`: an id the daemon echoes in this request's `request_queued`
        events (its place in the queue while it waits)."""
        body: JSON = {"model": model, "messages": messages, "stream": True}
        _put_optional(body, options=options, format=format, keep_alive=keep_alive, think=think)
        headers = {REQUEST_TAG_HEADER: request_tag} if request_tag else None
        return self._stream("/api/chat", body, headers)

    async def embed(self, model: str, inputs: str | list[str]) -> JSON:
        data = await self._request("POST", "/api/embed", {"model": model, "input": inputs})
        return dict(data)

    async def load(self, model: str, keep_alive: str | float | None = None) -> JSON:
        body: JSON = {"model": model, "prompt": "", "stream": False}
        _put_optional(body, keep_alive=keep_alive)
        return dict(await self._request("POST", "/api/generate", body))

    async def unload(self, model: str) -> JSON:
        body = {"model": model, "prompt": "", "stream": False, "keep_alive": 0}
        return dict(await self._request("POST", "/api/generate", body))

    async def has_blob(self, digest: str) -> bool:
        try:
            await self._request("HEAD", f"/api/blobs/{digest}")
        except ModelNotFoundAPIError:
            return False
        return True

    async def push_blob(
        self, path: Path, digest: str, progress: Callable[[int], None] | None = None
    ) -> None:
        """Upload a file as a blob (the daemon verifies it against `digest`)."""

        async def chunks() -> AsyncIterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(UPLOAD_CHUNK):
                    if progress:
                        progress(len(chunk))
                    yield chunk

        await self._request("POST", f"/api/blobs/{digest}", data=chunks())

    def create(
        self,
        model: str,
        *,
        files: dict[str, str] | None = None,
        from_: str | None = None,
        template: str | None = None,
        system: str | None = None,
        parameters: JSON | None = None,
    ) -> AsyncIterator[ProgressLine]:
        body: JSON = {"model": model, "stream": True}
        _put_optional(body, files=files, template=template, system=system, parameters=parameters)
        if from_ is not None:
            body["from"] = from_
        return self._stream("/api/create", body)

    def pull(self, model: str) -> AsyncIterator[ProgressLine]:
        return self._stream("/api/pull", {"model": model, "stream": True})

    async def copy(self, source: str, destination: str) -> None:
        await self._request("POST", "/api/copy", {"source": source, "destination": destination})

    async def delete(self, model: str, *, force: bool = False) -> Any:
        """Delete a model; a route using it is a 409 unless `force` (the answer then says
        what each of its routes points at now)."""
        body: JSON = {"model": model, **({"force": True} if force else {})}
        return await self._request("DELETE", "/api/delete", body)

    async def events(
        self, types: Sequence[str] | None = None, subscribed: asyncio.Event | None = None
    ) -> AsyncIterator[JSON]:
        """The daemon's server-sent event stream (`/api/events`), decoded; `types` keeps
        only those event types (e.g. `["system", "request_progress"]`). `subscribed` is
        set once the daemon has subscribed this stream (every later event reaches it)."""
        params = {"types": ",".join(types)} if types else None
        try:
            async with self._get_session().get(
                self.base_url + "/api/events",
                params=params,
                timeout=aiohttp.ClientTimeout(sock_connect=5),
            ) as response:
                await self._raise_for_status(response)
                async for raw in response.content:
                    line = raw.decode().strip()
                    if not line.startswith("data:"):
                        continue
                    event = json.loads(line[5:].strip())
                    if event.get("type") == "subscribed":  # the handshake
                        if subscribed is not None:
                            subscribed.set()
                        continue
                    yield event
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise DaemonUnreachableError(self.base_url, str(exc) or type(exc).__name__) from exc

    # ---- fleet (issue 15): liveness, readiness, drain, what a node serves ---------------

    async def health(self) -> JSON:
        """`/health`: {"status": "ok", "state": "serving" | "draining" | "drained", ...}."""
        data: JSON = await self._request("GET", "/health")
        return data

    async def ready(self) -> JSON:
        """`/ready`'s answer, a 503 included (then `ready` is false and `error` says why):
        {"ready", "state", "in_flight", "models": [{model, in_flight, queue_depth, ...}]}."""
        try:
            async with self._get_session().get(self.base_url + "/ready") as response:
                if response.status != 503:
                    await self._raise_for_status(response)
                    data: JSON = await response.json()
                    return data
                text = await response.text()
                try:
                    body = json.loads(text)
                except ValueError:
                    body = None
                if isinstance(body, dict) and "ready" in body:
                    return body
                raise _error_for(503, text or "not ready", response.headers)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            raise DaemonUnreachableError(self.base_url, str(exc) or type(exc).__name__) from exc

    async def drain(self, timeout_s: float | None = None) -> JSON:
        """Start draining (`POST /api/drain`): {"state", "in_flight", "timeout_s"}."""
        body: JSON = {} if timeout_s is None else {"timeout": timeout_s}
        data: JSON = await self._request("POST", "/api/drain", body)
        return data

    async def route_names(self) -> list[str] | None:
        """The names of the node's routes (`GET /api/routes`), None when the daemon has no
        such endpoint (an older node). Accepts {"routes": [{"name": ...}]} or a list."""
        try:
            data = await self._request("GET", "/api/routes")
        except APIError as exc:
            if exc.status in (404, 405):
                return None
            raise
        rows = data.get("routes", []) if isinstance(data, dict) else data
        if not isinstance(rows, list):
            return []
        names = [row.get("name") if isinstance(row, dict) else row for row in rows]
        return [name for name in names if isinstance(name, str) and name]

    # ---- routes (issue 14): served names, rollbacks and rollouts --------------------------

    async def routes(self) -> list[JSON]:
        """Every route (`GET /api/routes`): targets, serving, live per-version figures."""
        data = await self._request("GET", "/api/routes")
        return list(data["routes"])

    async def route(self, name: str) -> JSON:
        return dict(await self._request("GET", f"/api/routes/{quote(name, safe=':')}"))

    async def set_route(
        self,
        name: str,
        targets: list[tuple[str, float]],
        *,
        reason: str | None = None,
        expected_revision: int | None = None,
        who: str = "cli",
    ) -> JSON:
        """Point `name` at weighted installed models (creating the route)."""
        body: JSON = {"targets": [{"model": m, "weight": w} for m, w in targets], "who": who}
        _put_optional(body, reason=reason, expected_revision=expected_revision)
        return dict(await self._request("POST", f"/api/routes/{quote(name, safe=':')}", body))

    async def delete_route(self, name: str) -> JSON:
        return dict(await self._request("DELETE", f"/api/routes/{quote(name, safe=':')}"))

    async def rollback_route(
        self, name: str, to: int | None = None, *, reason: str | None = None, who: str = "cli"
    ) -> JSON:
        body: JSON = {"who": who}
        _put_optional(body, to=to, reason=reason)
        path = f"/api/routes/{quote(name, safe=':')}/rollback"
        return dict(await self._request("POST", path, body))

    async def route_history(self, name: str) -> JSON:
        return dict(await self._request("GET", f"/api/routes/{quote(name, safe=':')}/history"))

    async def start_rollout(self, name: str, to: str, **settings: Any) -> JSON:
        """Start a canary rollout; `settings`: steps, every, max_error_rate, max_ttft_p95,
        min_tokens_per_second, max_poor_rate, min_requests (None ones are left out)."""
        body: JSON = {"to": to}
        _put_optional(body, **settings)
        path = f"/api/routes/{quote(name, safe=':')}/rollout"
        return dict(await self._request("POST", path, body))

    async def rollout(
        self, name: str, action: str | None = None, reason: str | None = None
    ) -> JSON:
        """The route's rollout status, or `action` ("pause", "resume", "abort") on it."""
        path = f"/api/routes/{quote(name, safe=':')}/rollout"
        if action is None:
            return dict(await self._request("GET", path))
        body: JSON = {}
        _put_optional(body, reason=reason)
        return dict(await self._request("POST", f"{path}/{action}", body))

    # ---- keys and usage (issue 16) --------------------------------------------------------

    async def list_keys(self) -> list[JSON]:
        """The daemon's API keys (admin): name, hint, scopes, limits; never secrets."""
        data = await self._request("GET", "/api/keys")
        return list(data["keys"])

    async def add_key(self, name: str, **fields: Any) -> JSON:
        """Add a key (`scopes`, `rpm`, `tpm`, `concurrent`, `priority`, `weight`);
        the answer's `secret` is the only time the secret is shown."""
        body: JSON = {"name": name}
        _put_optional(body, **fields)
        return dict(await self._request("POST", "/api/keys", body))

    async def revoke_key(self, name: str) -> JSON:
        return dict(await self._request("DELETE", f"/api/keys/{name}"))

    async def usage(self, since: str | None = None, key: str | None = None) -> JSON:
        """Usage per key and model (`/api/usage`): requests, errors, tokens, busy seconds."""
        params = {k: v for k, v in (("since", since), ("key", key)) if v}
        return dict(await self._request("GET", "/api/usage", params=params))


def _put_optional(body: JSON, **values: Any) -> None:
    for key, value in values.items():
        if value is not None:
            body[key] = value
