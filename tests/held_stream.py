"""A streaming request that stays in flight until the test lets it finish.

The tiny test models decode tens of thousands of tokens a second, so "a long generation"
is over before a test can act on it. `HeldStream` reads the first line of a streamed
answer and then nothing: its socket has a tiny receive buffer, so once the daemon's
small send buffer is full its writes wait (aiohttp's back-pressure) and the request stays
in flight, however fast or slow the machine is, until `finish()` reads the rest (or
`close()` disconnects). Ask for more tokens than fit in the buffers: 8 000 tokens of
NDJSON are about 800 KB, and with an 8 KB receive buffer the socket and aiohttp buffers
held about 200 KB when measured (2 000 tokens went through, 4 000 were held). Reading
the rest through the small window takes a few seconds.
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any
from urllib.parse import urlsplit

RECEIVE_BUFFER = 8192
READ_BUFFER = 4 * 1024 * 1024  # once released: a tiny window would make reading crawl
HELD_TOKENS = 8_000


class _SmallWindowConnection(http.client.HTTPConnection):
    def connect(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        sock.settimeout(self.timeout)
        sock.connect((self.host, self.port))
        self.sock = sock


class HeldStream:
    def __init__(
        self, base_url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        parts = urlsplit(base_url)
        self.conn = _SmallWindowConnection(parts.hostname or "127.0.0.1", parts.port, timeout=120)
        self.conn.request(
            "POST", path, json.dumps(body), {"Content-Type": "application/json", **(headers or {})}
        )
        self.response = self.conn.getresponse()
        self.status = self.response.status

    def first_line(self) -> dict[str, Any]:
        line: bytes = self.response.readline()
        return dict(json.loads(line))

    def finish(self) -> list[dict[str, Any]]:
        """Read the rest of the NDJSON answer and close."""
        if self.conn.sock is not None:
            self.conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, READ_BUFFER)
        try:
            rest = self.response.read()
        finally:
            self.close()
        return [json.loads(line) for line in rest.splitlines() if line.strip()]

    def close(self) -> None:
        self.conn.close()


def held_generate(base_url: str, model: str, tokens: int = HELD_TOKENS) -> HeldStream:
    """An Ollama /api/generate stream of `tokens` tokens, held after its first line."""
    body = {"model": model, "prompt": "x", "stream": True, "options": {"num_predict": tokens}}
    stream = HeldStream(base_url, "/api/generate", body)
    if stream.status != 200:
        raise AssertionError(f"generate answered {stream.status}: {stream.response.read()!r}")
    return stream
