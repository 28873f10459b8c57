"""Embeddings: an embedding-mode llama.cpp context over the loaded model's weights (no second
copy of the model), read in bounded chunks that the runner interleaves with generation.

Each input is mean-pooled (as llama-cpp-python's `Llama.embed` with LLAMA_POOLING_TYPE_MEAN
did before) and L2-normalised on request. A decode reads at most EMBED_BATCH tokens
(`n_batch = n_ubatch`: llama.cpp pools per micro-batch, so one decode must be one
micro-batch), packed from several inputs at once (one sequence each, up to EMBED_SEQS, in a
unified KV cache of `num_ctx` cells). With a causal model a longer input is read in chunks,
its earlier chunks kept in the KV cache, and the per-chunk means are combined weighted by
their token counts: so a 4,000-token input costs a 4,096-cell KV cache and buffers for 128
tokens, not buffers for 4,000 (llama.cpp's logits for every token alone were 800 MB for
SmolLM2, the attention scores n_ctx² floats per head): measured with SmolLM2 at num_ctx
4096, the runner grew by about 200 MB where it grew by 2.2 GB.
A non-causal model (BERT-like) must see an input in one micro-batch: its batch is then the
whole context, as before.

Memory beyond the generation context, in bytes (the scheduler's estimate:
`localserve.store.gguf_facts.estimate_embedding_context_bytes`):
KV cache `num_ctx * n_layer * (n_embd_k_gqa + n_embd_v_gqa) * 2` (F16), output buffers
`EMBED_BATCH * (n_vocab + n_embd) * 4` (llama.cpp computes logits for every output token),
and a compute buffer of about `EMBED_BATCH * num_ctx * n_head * 4` (attention scores), a
few activations and ~40 MB of graph buffers and allocator slack (measured). The context
is made on the first embed request and kept.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localserve.runner.errors import RequestError, llama
from localserve.runner.protocol import EmbeddingsFrame, ErrorFrame, error_frame

# Tokens one embedding decode reads at most. On CPU a prompt read is compute-bound from a
# few dozen tokens on (measured here: 64, 256 and 512 read at the same speed, and the
# buffers grew from 120 to 304 MB); a GPU wants larger batches.
EMBED_BATCH = 128
EMBED_BATCH_GPU = 512
EMBED_SEQS = 16  # inputs one decode may hold
# While sequences generate, an embedding chunk takes about this long (measured as it goes).
BUSY_CHUNK_TARGET_S = 0.1
BUSY_CHUNK_MIN = 16


def embed_batch(num_gpu: int) -> int:
    """The tokens one embedding decode reads at most, with or without GPU layers."""
    return EMBED_BATCH_GPU if num_gpu else EMBED_BATCH


@dataclass
class _Job:
    id: str
    normalize: bool
    vectors: list[list[float] | None]
    left: int  # inputs not finished yet
    tokens: int = 0  # tokens evaluated
    started_ns: int = 0


@dataclass
class _Input:
    job: _Job
    index: int
    tokens: list[int]
    fed: int = 0
    seq: int = -1
    sums: Any = None  # numpy float64 vector: the sum over chunks of mean * count


class Embedder:
    """Embedding requests over `model` (a llama_model pointer); `step` reads one chunk."""

    def __init__(
        self,
        model: Any,
        emit: Callable[[EmbeddingsFrame | ErrorFrame], None],
        *,
        num_ctx: int,
        num_threads: int,
        num_gpu: int = 0,
    ) -> None:
        lib = llama()
        self._emit = emit
        self._model = model
        n_ctx_train = int(lib.llama_model_n_ctx_train(model))
        self.n_ctx = max(1, min(num_ctx, n_ctx_train) if n_ctx_train > 0 else num_ctx)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = self.n_ctx
        cparams.n_seq_max = EMBED_SEQS
        cparams.kv_unified = True
        cparams.embeddings = True
        cparams.pooling_type = lib.LLAMA_POOLING_TYPE_MEAN
        cparams.n_threads = num_threads
        cparams.n_threads_batch = num_threads
        cparams.flash_attn_type = -1 if num_gpu else 0
        cparams.no_perf = True
        # Probe for causal attention first (a context of its own costs little at this size).
        cparams.n_batch = cparams.n_ubatch = min(embed_batch(num_gpu), self.n_ctx)
        ctx = lib.llama_init_from_model(model, cparams)
        if ctx and not lib.llama_get_causal_attn(ctx):
            lib.llama_free(ctx)
            cparams.n_batch = cparams.n_ubatch = self.n_ctx  # an input must fit one pass
            ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            raise RequestError("internal", "llama.cpp could not create an embedding context")
        self._ctx = ctx
        self.causal = bool(lib.llama_get_causal_attn(ctx))
        self.n_batch = int(cparams.n_batch)
        self._memory = lib.llama_get_memory(ctx)
        self._vocab = lib.llama_model_get_vocab(model)
        self._n_embd = int(lib.llama_model_n_embd(model))
        self._batch = lib.llama_batch_init(self.n_batch, 0, 1)
        self._queue: deque[_Input] = deque()
        self._reading: list[_Input] = []  # inputs with a sequence (and KV cells) of their own
        self._free_seqs = list(range(EMBED_SEQS))
        self._s_per_token = 0.0

    @property
    def has_work(self) -> bool:
        return bool(self._queue or self._reading)

    def set_threads(self, threads: int) -> None:
        llama().llama_set_n_threads(self._ctx, threads, threads)

    def close(self) -> None:
        lib = llama()
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None

    def _tokenize(self, text: str) -> list[int]:
        """As llama-cpp-python's `Llama.tokenize` (BOS added, special tokens as text)."""
        lib = llama()
        data = text.encode()
        capacity = len(data) + 8
        buf = (lib.llama_token * capacity)()
        count = int(lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, True, False))
        if count < 0:
            capacity = -count
            buf = (lib.llama_token * capacity)()
            count = int(
                lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, True, False)
            )
        return list(buf[:count])

    def submit(
        self, request_id: str, inputs: list[str], *, truncate: bool, normalize: bool
    ) -> None:
        """Queue one request's inputs; RequestError for an input that cannot be embedded."""
        tokenized = [self._tokenize(text) for text in inputs]
        if not truncate and any(len(tokens) > self.n_ctx for tokens in tokenized):
            raise RequestError("bad_request", "input length exceeds the context length")
        if any(not tokens for tokens in tokenized):
            raise RequestError("bad_request", "an input has no tokens")
        job = _Job(request_id, normalize, [None] * len(inputs), len(inputs))
        if not inputs:
            self._finish(job)
            return
        limit = min(self.n_ctx, self.n_batch) if not self.causal else self.n_ctx
        for index, tokens in enumerate(tokenized):
            self._queue.append(_Input(job, index, tokens[:limit]))

    def cancel(self, request_id: str) -> bool:
        """Drop a request's inputs (no frame is sent); whether it was here."""
        found = False
        for item in [i for i in self._queue if i.job.id == request_id]:
            self._queue.remove(item)
            found = True
        for item in [i for i in self._reading if i.job.id == request_id]:
            self._release(item)
            found = True
        return found

    def busy_chunk(self) -> int:
        """Tokens per step while sequences generate (about BUSY_CHUNK_TARGET_S)."""
        if not self._s_per_token:
            return BUSY_CHUNK_MIN * 4
        return max(BUSY_CHUNK_MIN, min(int(BUSY_CHUNK_TARGET_S / self._s_per_token), self.n_batch))

    def step(self, budget: int) -> int:
        """Read up to `budget` tokens (at least one input's chunk) in one decode; send the
        embeddings of every request that is complete. Returns the tokens read."""
        budget = max(1, min(budget, self.n_batch))
        parts: list[tuple[_Input, int]] = []
        used = 0
        for item in self._reading:
            count = min(budget - used, len(item.tokens) - item.fed)
            if count <= 0:
                break
            parts.append((item, count))
            used += count
        cells = sum(item.fed for item in self._reading) + used
        while self._queue and self._free_seqs and used < budget:
            item = self._queue[0]
            size = len(item.tokens)
            if cells + size > self.n_ctx and (parts or self._reading):
                break  # the KV cache holds it only once the inputs before it are done
            if not self.causal and used + size > budget and parts:
                break  # a non-causal input goes whole into one pass
            count = size if not self.causal else min(budget - used, size)
            self._queue.popleft()
            item.seq = self._free_seqs.pop(0)
            if not item.job.started_ns:
                item.job.started_ns = time.perf_counter_ns()
            self._reading.append(item)
            parts.append((item, count))
            used += count
            cells += size
        if not parts:
            return 0
        if not self._decode(parts):
            return 0
        for item, count in parts:
            item.fed += count
            item.job.tokens += count
            if item.fed >= len(item.tokens):
                self._complete(item)
        return used

    def _decode(self, parts: list[tuple[_Input, int]]) -> bool:
        lib = llama()
        batch = self._batch
        n = 0
        for item, count in parts:
            for offset in range(count):
                position = item.fed + offset
                batch.token[n] = item.tokens[position]
                batch.pos[n] = position
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = item.seq
                batch.logits[n] = True
                n += 1
        batch.n_tokens = n
        started = time.perf_counter()
        status = int(lib.llama_decode(self._ctx, batch))
        elapsed = time.perf_counter() - started
        if status != 0:
            for job in {id(item.job): item.job for item, _ in parts}.values():
                self._fail(job, f"llama_decode failed ({status})")
            return False
        per_token = elapsed / n
        self._s_per_token = (
            per_token if not self._s_per_token else 0.7 * self._s_per_token + 0.3 * per_token
        )
        import numpy as np

        for item, count in parts:
            pointer = lib.llama_get_embeddings_seq(self._ctx, item.seq)
            if not pointer:
                self._fail(item.job, "llama.cpp returned no embedding")
                return False
            mean = np.ctypeslib.as_array(pointer, (self._n_embd,)).astype(np.float64)
            item.sums = mean * count if item.sums is None else item.sums + mean * count
        return True

    def _complete(self, item: _Input) -> None:
        import numpy as np

        mean = item.sums / len(item.tokens)
        if item.job.normalize:
            norm = float(np.linalg.norm(mean))
            if norm > 0.0:
                mean = mean / norm
        job = item.job
        job.vectors[item.index] = [float(v) for v in mean.astype(np.float32)]
        job.left -= 1
        self._release(item)
        if job.left == 0:
            self._finish(job)

    def _release(self, item: _Input) -> None:
        if item in self._reading:
            self._reading.remove(item)
        if item.seq >= 0:
            if self._memory:
                llama().llama_memory_seq_rm(self._memory, item.seq, -1, -1)
            self._free_seqs.append(item.seq)
            self._free_seqs.sort()
            item.seq = -1
        if not self._reading and self._memory:
            llama().llama_memory_clear(self._memory, True)

    def _finish(self, job: _Job) -> None:
        vectors = [v for v in job.vectors if v is not None]
        started = job.started_ns or time.perf_counter_ns()
        self._emit(
            {
                "event": "embeddings",
                "id": job.id,
                "embeddings": vectors,
                "prompt_eval_count": job.tokens,
                "prompt_eval_duration": time.perf_counter_ns() - started,
            }
        )

    def _fail(self, job: _Job, message: str) -> None:
        self.cancel(job.id)
        self._emit(error_frame(job.id, "internal", message))


__all__ = ["EMBED_BATCH", "EMBED_BATCH_GPU", "Embedder", "embed_batch"]
