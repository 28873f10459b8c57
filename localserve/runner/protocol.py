"""The framed protocol between the daemon and a runner process.

Each frame is a 4-byte big-endian length followed by that many bytes of UTF-8 JSON (one
object). Both directions use the same framing over a Unix socket pair. Every frame has a
TypedDict below; `Frame` is the untyped view the daemon's callers get.

Daemon -> runner (`op`):
    load      {op, path, num_ctx, num_gpu, num_threads, num_parallel, num_batch?,
               tensor_split?, adapt_threads?, batch_invariant?, flash_attn?, cpus?}
              num_ctx is per slot; adapt_threads: fewer threads while that decodes faster
              (localserve.runner.threads); batch_invariant: a request's tokens do not
              depend on what else runs beside it (slower; see localserve.runner.engine);
              flash_attn: flash attention on CPU too (default on, as llama-server's
              "auto"; a cached prompt may then answer differently from a fresh read); cpus: pin
              the runner to these CPUs (a replica's own set)
    generate  {op, id, prompt, options, format?, logprobs?, prefix?, return_tokens?}
              format: "json" or a schema; requests beyond the runner's num_parallel
              slots wait in the runner; logprobs: N (0..MAX_TOP_LOGPROBS) asks for the
              log-probability of every generated token and its N most likely
              alternatives; prefix: token ids read before the prompt's own (Ollama's
              `context`; the prompt is then tokenized without a BOS); return_tokens:
              the `done` frame carries `tokens`
    embed     {op, id, inputs, truncate?, normalize?}
    cancel    {op, id}
    stats     {op}
    shutdown  {op}

Runner -> daemon (`event`):
    ready     {event, pid}                       the process is up, llama_cpp imported
    load_progress {event, progress}              0..1 while llama.cpp loads (throttled)
    loaded    {event, load_duration, rss, n_ctx, slots, n_gpu_layers, threads,
               batch_invariant, embed_batch}     n_ctx per slot; embed_batch: the tokens
                                                 one embedding decode reads at most
    tokens    {event, texts: {id: text, ...}, logprobs?: {id: [TokenLogprobs, ...]}}
                                                 one decode step: the new text of every
                                                 request that produced some (one frame per
                                                 step for all sequences, not one per token);
                                                 `logprobs` only for requests that asked
                                                 (their ids are then in `texts` too, maybe
                                                 with "" while text is held back)
    done      {event, id, done_reason, prompt_tokens, prompt_eval_count,
               prompt_eval_duration, eval_count, eval_duration}  durations in nanoseconds;
                                                 prompt_tokens counts the whole prompt,
                                                 prompt_eval_count only the tokens
                                                 evaluated (a reused or copied prefix is
                                                 not; 0 when the whole prompt was cached
                                                 with its logits); `tokens` (prompt and
                                                 generated ids, no end-of-generation token)
                                                 when the request asked for them;
                                                 `stop_sequence`: the stop string that
                                                 ended the answer, when one did
    embeddings{event, id, embeddings, prompt_eval_count, prompt_eval_duration}
    error     {event, id?, kind, message}        id absent for load errors
    stats     {event, rss, slots, slots_busy, threads, others_load?}

Within one write, a request's `tokens` text always comes before its `done`. The daemon's
handle (localserve.runner.handle) turns each `tokens` frame into one `token` frame
({event: "token", id, text, logprobs?}) per request for its callers, so they see per-request frames:
`token`s, then `done` (or `embeddings`), or an `error`.

Every request carries an `id`, so one runner can hold several requests at once.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict

HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024

Frame = dict[str, Any]
"""Any frame, untyped (what the daemon's callers receive)."""

ErrorKind = Literal["bad_request", "internal", "load_failed", "context_failed", "crashed"]
"""`load_failed`: llama.cpp refused the model file; `context_failed`: the model loaded but
llama.cpp could not make a context for it (too little memory for num_ctx x slots, ...);
`crashed`: the runner process died (made up by the daemon's handle, never sent)."""

DoneReason = Literal["stop", "length", "cancel"]

MAX_TOP_LOGPROBS = 20  # alternatives per token at most (OpenAI's limit)


# ---- daemon -> runner ----------------------------------------------------------------------


class LoadOp(TypedDict):
    op: Literal["load"]
    path: str
    num_ctx: int
    num_gpu: NotRequired[int]
    num_threads: NotRequired[int]
    num_parallel: NotRequired[int]
    num_batch: NotRequired[int]
    tensor_split: NotRequired[list[float] | None]
    adapt_threads: NotRequired[bool]
    batch_invariant: NotRequired[bool]
    flash_attn: NotRequired[bool]
    cpus: NotRequired[list[int]]  # pin the runner to these CPUs (a replica's CPU set)


class GenerateOp(TypedDict):
    op: Literal["generate"]
    id: str
    prompt: str
    options: dict[str, Any]
    format: NotRequired[Any]
    logprobs: NotRequired[int]
    prefix: NotRequired[list[int]]
    return_tokens: NotRequired[bool]


class EmbedOp(TypedDict):
    op: Literal["embed"]
    id: str
    inputs: list[str]
    truncate: NotRequired[bool]
    normalize: NotRequired[bool]


class CancelOp(TypedDict):
    op: Literal["cancel"]
    id: str


class StatsOp(TypedDict):
    op: Literal["stats"]


class ShutdownOp(TypedDict):
    op: Literal["shutdown"]


Op = LoadOp | GenerateOp | EmbedOp | CancelOp | StatsOp | ShutdownOp


# ---- runner -> daemon ----------------------------------------------------------------------


class ReadyFrame(TypedDict):
    event: Literal["ready"]
    pid: int


class LoadProgressFrame(TypedDict):
    event: Literal["load_progress"]
    progress: float


class LoadedFrame(TypedDict):
    event: Literal["loaded"]
    load_duration: int
    rss: int
    n_ctx: int
    slots: int
    n_gpu_layers: int
    threads: int
    batch_invariant: bool
    embed_batch: int


class TokenLogprob(TypedDict):
    """A token and its log-probability: the log-softmax of the model's logits (before
    temperature, penalties, top-k/p or a grammar); `bytes` are the token's exact bytes
    (`token` is their UTF-8 text, with U+FFFD for a piece of a character)."""

    token: str
    bytes: list[int]
    logprob: float


class TokenLogprobs(TokenLogprob):
    """A generated token with its most likely alternatives, most likely first."""

    top_logprobs: list[TokenLogprob]


class TokensFrame(TypedDict):
    event: Literal["tokens"]
    texts: dict[str, str]
    logprobs: NotRequired[dict[str, list[TokenLogprobs]]]


class TokenFrame(TypedDict):
    """One request's text from one step: what the handle gives its callers (not sent)."""

    event: Literal["token"]
    id: str
    text: str
    logprobs: NotRequired[list[TokenLogprobs]]


class DoneFrame(TypedDict):
    event: Literal["done"]
    id: str
    done_reason: DoneReason
    prompt_tokens: int
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    tokens: NotRequired[list[int]]
    stop_sequence: NotRequired[str]


class EmbeddingsFrame(TypedDict):
    event: Literal["embeddings"]
    id: str
    embeddings: list[list[float]]
    prompt_eval_count: int
    prompt_eval_duration: int


class ErrorFrame(TypedDict):
    event: Literal["error"]
    id: NotRequired[str]
    kind: ErrorKind
    message: str


class StatsFrame(TypedDict):
    event: Literal["stats"]
    rss: int
    slots: int
    slots_busy: int
    threads: int
    # Cores' worth other processes used on this runner's CPUs lately (with adapt_threads,
    # which measures it).
    others_load: NotRequired[float]


RunnerFrame = (
    ReadyFrame
    | LoadProgressFrame
    | LoadedFrame
    | TokensFrame
    | DoneFrame
    | EmbeddingsFrame
    | ErrorFrame
    | StatsFrame
)


def error_frame(request_id: str | None, kind: ErrorKind, message: str) -> ErrorFrame:
    frame: ErrorFrame = {"event": "error", "kind": kind, "message": message}
    if request_id is not None:
        frame["id"] = request_id
    return frame


# ---- framing -------------------------------------------------------------------------------


class ProtocolError(Exception):
    pass


_encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_frame(message: Mapping[str, Any]) -> bytes:
    body = _encoder.encode(message).encode()
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
