"""One documented error tree for the core.

Every error carries an HTTP status so the server can map it without guessing:

    LocalserveError (500)
    ├── ConfigError (500)        bad settings; raised at start-up
    ├── BadRequestError (400)    malformed input: names, digests, options, bodies
    │   └── InvalidModelFileError (400)  not a GGUF, truncated or corrupt
    ├── UnauthorizedError (401)
    ├── ForbiddenError (403)
    ├── NotFoundError (404)      unknown model or blob
    ├── ConflictError (409)
    ├── TooLargeError (413)
    ├── BusyError (503)          queue full or nothing can be evicted; carries retry_after
    ├── ModelTooLargeError (507) a model that cannot fit in the memory budget
    └── RunnerError (500)        the runner process failed (crash, load failure)
"""

from __future__ import annotations


class LocalserveError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(LocalserveError):
    pass


class BadRequestError(LocalserveError):
    status = 400


class InvalidModelFileError(BadRequestError):
    pass


class UnauthorizedError(LocalserveError):
    status = 401


class ForbiddenError(LocalserveError):
    status = 403


class NotFoundError(LocalserveError):
    status = 404


class ModelNotFoundError(NotFoundError):
    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found, try pulling it first")
        self.name = name


class ConflictError(LocalserveError):
    status = 409


class TooLargeError(LocalserveError):
    status = 413


class BusyError(LocalserveError):
    status = 503

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ModelTooLargeError(LocalserveError):
    status = 507


class RunnerError(LocalserveError):
    status = 500
