"""Error mapping in one place: the status lives on the error classes
(localserve.errors); each dialect's app has one error middleware, made here, that writes
it in the dialect's shape, and turns an unexpected exception into a logged JSON 500
instead of aiohttp's text/plain page.

    Ollama  {"error": "...", "code": "model_not_found"}
    OpenAI  {"error": {"message": "...", "type": "not_found_error", "param": null, "code": "..."}}
    Anthropic {"type": "error", "error": {"type": "not_found_error", "message": "...", "code": ...}}

The shape comes from the app that routed the request (the /v1/messages sub-app, the /v1
sub-app or the main app), never from sniffing the path, so an error raised before the
handler (the security middleware, an unknown path) is written in the right shape too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Middleware

from localserve.errors import BusyError, LocalserveError, RateLimitedError

log = logging.getLogger("localserve.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    429: "rate_limit_exceeded",
    500: "internal_error",
}


class ErrorShape(Protocol):
    def __call__(self, status: int, message: str, code: str) -> dict[str, Any]: ...


def ollama_error(status: int, message: str, code: str) -> dict[str, Any]:
    return {"error": message, "code": code}


OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_busy",
    507: "insufficient_storage",
}


def openai_error(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "message": message,
            "type": OPENAI_TYPES.get(status, "api_error"),
            "param": None,
            "code": code,
        }
    }


ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


def anthropic_error(status: int, message: str, code: str | None = None) -> dict[str, Any]:
    """Anthropic's shape; localserve's machine-readable `code` rides along in the error."""
    error: dict[str, Any] = {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}
    if code:
        error["code"] = code
    return {"type": "error", "error": error}


ERROR_SHAPE_KEY: web.AppKey[ErrorShape] = web.AppKey("error_shape", ErrorShape)


def describe(exc: BaseException) -> tuple[int, str, str]:
    """(status, message, code) of any exception, for a response or a stream's last line."""
    if isinstance(exc, LocalserveError):
        return exc.status, exc.message, exc.code
    log.error("unexpected error", exc_info=exc)
    return 500, "internal error (logged by the daemon)", "internal_error"


def shape_of(request: web.Request) -> ErrorShape:
    """The error shape of the app that routed `request` (innermost first)."""
    for app in reversed(request.match_info.apps):
        shape = app.get(ERROR_SHAPE_KEY)
        if shape is not None:
            return shape
    return ollama_error


def error_response(
    request: web.Request, status: int, message: str, code: str | None = None
) -> web.Response:
    shape = shape_of(request)
    body = shape(status, message, code or STATUS_CODES.get(status, "error"))
    return web.json_response(body, status=status)


def error_middleware() -> Middleware:
    """The middleware that writes every error of its app in the app's shape."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except LocalserveError as exc:
            response = error_response(request, exc.status, exc.message, exc.code)
            if isinstance(exc, BusyError):
                response.headers["Retry-After"] = str(exc.retry_after)
            if isinstance(exc, RateLimitedError):  # Retry-After and x-ratelimit-*
                response.headers.update(exc.headers)
            if exc.status == 413:
                response.force_close()  # the unread body is not drained
            return response
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            message = exc.text if exc.text else exc.reason
            response = error_response(request, exc.status, str(message))
            if exc.status == 405:
                response.headers["Allow"] = exc.headers.get("Allow", "")
            return response
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            return error_response(
                request, 500, "internal error (logged by the daemon)", "internal_error"
            )

    return middleware
