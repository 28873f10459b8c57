"""One documented error tree for the core.

Every error carries an HTTP status and a machine-readable `code`, so the server can map
it without guessing and a client can tell two errors with one status apart (507:
`model_too_large` vs `disk_full`). The Ollama dialect answers `{"error": message,
"code": code}`; the OpenAI dialect puts the code in `error.code`.

    LocalserveError (500, internal_error)
    ├── ConfigError (500, config_error)         bad settings; raised at start-up
    ├── BadRequestError (400, bad_request)      malformed input: names, digests, options, bodies
    │   └── InvalidModelFileError (400, invalid_model_file)  not a GGUF, truncated or corrupt
    ├── UnauthorizedError (401, unauthorized)
    ├── ForbiddenError (403, forbidden)
    ├── NotFoundError (404, not_found)          unknown model or blob
    ├── RateLimitedError (429, rate_limit_exceeded) a key over its limits; headers, retry_after
    ├── ConflictError (409, conflict)
    ├── TooLargeError (413, body_too_large)
    ├── ModelLoadError (422, model_load_failed) llama.cpp refused the model file
    ├── BusyError (503, busy)                   queue full or nothing can be evicted; retry_after
    ├── ModelTooLargeError (507, model_too_large) a model that cannot fit in the memory budget
    └── RunnerError (500, runner_failed)        the runner process failed (crash)

`DiskFullError` (507, `disk_full`) lives in `store.py`.
"""

from __future__ import annotations


class LocalserveError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(LocalserveError):
    code = "config_error"


class BadRequestError(LocalserveError):
    status = 400
    code = "bad_request"


class InvalidModelFileError(BadRequestError):
    code = "invalid_model_file"


class UnauthorizedError(LocalserveError):
    status = 401
    code = "unauthorized"


class ForbiddenError(LocalserveError):
    status = 403
    code = "forbidden"


class NotFoundError(LocalserveError):
    status = 404
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found, try pulling it first")
        self.name = name


class ConflictError(LocalserveError):
    status = 409
    code = "conflict"


class TooLargeError(LocalserveError):
    status = 413
    code = "body_too_large"


class ModelLoadError(LocalserveError):
    """The model file passed create's checks but llama.cpp refused to load it."""

    status = 422
    code = "model_load_failed"


class RateLimitedError(LocalserveError):
    """An API key over one of its limits (localserve.access.limits). `headers` are the
    response's `Retry-After` and `x-ratelimit-*` headers."""

    status = 429
    code = "rate_limit_exceeded"

    def __init__(
        self, message: str, retry_after: int = 1, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.headers = {**(headers or {}), "Retry-After": str(retry_after)}


class BusyError(LocalserveError):
    status = 503
    code = "busy"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelTooLargeError(LocalserveError):
    status = 507
    code = "model_too_large"


class RunnerError(LocalserveError):
    status = 500
    code = "runner_failed"
