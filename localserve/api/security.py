"""The security middleware: the DNS-rebinding guard (Host), CORS, the API key (who is
asking, what their key's scopes and limits allow: localserve.access), and the body limit
taken from the declared Content-Length.

Errors are raised as LocalserveErrors, so the error middleware writes them in the shape
of the app that routed the request (Ollama's or OpenAI's).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from localserve.access.service import PRINCIPAL_KEY
from localserve.api.access import access_of
from localserve.api.errors import Handler
from localserve.api.hosts import host_allowed
from localserve.api.requests import settings_of
from localserve.config import LOOPBACK_NAMES, Settings
from localserve.errors import ForbiddenError, TooLargeError

ALLOWED_METHODS = "GET, POST, DELETE, HEAD, OPTIONS"
DEFAULT_ALLOWED_HEADERS = "Authorization, Content-Type, x-api-key"
EXPOSED_HEADERS = (
    "Retry-After, x-ratelimit-limit-requests, x-ratelimit-remaining-requests,"
    " x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens,"
    " x-ratelimit-reset-tokens, X-Localserve-Queue-Position, X-Localserve-Queue-Wait"
)


def _host_header(request: web.Request) -> str | None:
    """The request's one Host header; None when it is missing or repeated."""
    values = request.headers.getall("Host", [])
    return values[0] if len(values) == 1 else None


def is_loopback_origin(origin: str) -> bool:
    """`http(s)://localhost:*`, `http(s)://127.x.x.x:*`, `http(s)://[::1]:*`: a page
    served from this machine, which is local code (as Ollama allows by default)."""
    try:
        parts = urlsplit(origin)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host or parts.path or parts.query:
        return False
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def origin_allowed(origin: str, settings: Settings) -> bool:
    return "*" in settings.origins or origin in settings.origins or is_loopback_origin(origin)


@web.middleware
async def security_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = settings_of(request)
    host = _host_header(request)
    bind_host = None if settings.is_loopback else settings.host
    if not host_allowed(host, allowed_hosts=settings.allowed_hosts, bind_host=bind_host):
        raise ForbiddenError(f"host {host!r} is not allowed")
    origin = request.headers.get("Origin")
    if origin is not None and not origin_allowed(origin, settings):
        raise ForbiddenError(f"origin {origin!r} is not allowed")
    if origin is not None and request.method == "OPTIONS":
        response: web.StreamResponse = web.Response(status=204)
        asked = request.headers.get("Access-Control-Request-Headers")
        response.headers["Access-Control-Allow-Headers"] = asked or DEFAULT_ALLOWED_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    else:
        access = access_of(request)
        principal = None if access.is_public(request) else access.authenticate(request)
        limit = settings.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit and not request.path.startswith("/api/blobs/"):
            # Refused from the header alone: a huge declared body is never waited for.
            raise TooLargeError(f"request body too large (limit {limit})")
        if principal is None:
            response = await handler(request)
        else:
            request[PRINCIPAL_KEY] = principal
            response = await access.guard(request, principal, handler)
    if origin is not None:
        response.headers.setdefault("Access-Control-Allow-Headers", DEFAULT_ALLOWED_HEADERS)
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        response.headers["Vary"] = "Origin"
    return response
