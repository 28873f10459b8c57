"""The runner's one exception: a request (or a load) it refuses or cannot finish."""

from __future__ import annotations

from typing import Any

from localserve.runner.protocol import ErrorKind


class RequestError(Exception):
    """`kind` is the protocol's error kind (localserve.runner.protocol.ErrorKind); the
    message never names a file path."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: ErrorKind = kind


def llama() -> Any:
    """The llama_cpp module (imported lazily; typed as Any, it is a ctypes binding)."""
    import llama_cpp

    return llama_cpp


__all__ = ["RequestError", "llama"]
