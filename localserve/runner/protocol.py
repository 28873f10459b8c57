"""The framed protocol between the daemon and a runner process.

Each frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON
(one object). Both directions use the same framing over a Unix socket pair.

Daemon -> runner (`op`):
    load      {op, path, num_ctx, num_gpu, num_threads, num_parallel, tensor_split?,
               adapt_threads?}   num_ctx is per slot; adapt_threads: fewer threads
              while other processes keep cores busy (localserve.runner.threads)
    generate  {op, id, prompt, options, format?}   format: "json" or a schema; requests
              beyond the runner's num_parallel slots wait in the runner
    embed     {op, id, inputs, truncate, normalize}
    cancel    {op, id}
    stats     {op}
    shutdown  {op}

Runner -> daemon (`event`):
    ready     {event, pid}                       the process is up, llama_cpp imported
    load_progress {event, progress}              0..1 while llama.cpp loads (throttled)
    loaded    {event, load_duration, rss, n_ctx, slots, n_gpu_layers, threads}  n_ctx per slot
    token     {event, id, text}                  one decoded piece of a generation
    done      {event, id, done_reason, prompt_tokens, prompt_eval_count,
               prompt_eval_duration, eval_count, eval_duration}  durations in nanoseconds;
                                                 prompt_tokens counts the whole prompt,
                                                 prompt_eval_count only the tokens
                                                 evaluated (a reused prefix is not)
    embeddings{event, id, embeddings, prompt_eval_count}
    error     {event, id?, kind, message}        id absent for load errors
    stats     {event, rss, slots, slots_busy, threads}

Every request carries an `id`, so one runner can hold several requests at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024

Frame = dict[str, Any]


class ProtocolError(Exception):
    pass


def encode_frame(message: Frame) -> bytes:
    body = json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    return HEADER.pack(len(body)) + body


def _decode_body(body: bytes) -> Frame:
    message = json.loads(body)
    if not isinstance(message, dict):
        raise ProtocolError("frame is not a JSON object")
    return message


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """Read one frame; None at a clean end of stream."""
    try:
        header = await reader.readexactly(HEADER.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise ProtocolError("stream ended inside a frame header") from exc
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame too large: {length}")
    try:
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise ProtocolError("stream ended inside a frame") from exc
    return _decode_body(body)


def _recv_exactly(sock: socket.socket, count: int) -> bytes | None:
    chunks: list[bytes] = []
    remaining = count
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            if remaining == count:
                return None
            raise ProtocolError("stream ended inside a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> Frame | None:
    """Blocking read of one frame (runner side); None at end of stream."""
    header = _recv_exactly(sock, HEADER.size)
    if header is None:
        return None
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame too large: {length}")
    body = _recv_exactly(sock, length)
    if body is None:
        raise ProtocolError("stream ended inside a frame")
    return _decode_body(body)
