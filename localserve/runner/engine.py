"""Continuous batching on llama.cpp's low-level API: the engine inside a runner process.

One llama.cpp context holds `num_parallel` sequences ("slots"), each with its own window of
`num_ctx` tokens (`n_ctx = num_ctx * num_parallel`, KV cache split per sequence: a sequence
attends only its own stream). Every `Engine.step()` admits waiting requests into free
slots, then decodes, for every sequence that is generating, the token it sampled last
step, and reads prompt tokens of the sequences still reading their prompts; it samples
each sequence with its own sampler chain (localserve.runner.sampling) and sends the text.

Two modes:

- throughput (the default): everything of a step goes into one `llama_decode`, as
  llama-server does: the generating sequences' tokens and the prompt chunks of all newly
  admitted sequences, within a per-step budget in tokens (`n_batch`; `n_ubatch` is the
  same). Requests that arrive together are read together and see their first tokens after
  about one read of their prompts. While others generate, a step reads only as many
  prompt tokens as take about BUSY_STEP_TARGET_S (measured as it goes), so their streams
  slow down but never stall; requests that arrived before any of them had a first token
  (together with them) read COMPANION_STEP_TARGET_S worth a step. The batch is laid out
  by sequence id: llama.cpp splits a batch over split KV streams into micro-batches of
  equal tokens per sequence over runs of consecutive ids (`split_equal`), so the
  generating tokens and the first token of each prompt chunk share one pass and the rest
  of the chunks take another. A request's tokens then depend, in their last bits, on what
  else was in its batches; alone, it gives the same tokens run after run for a seed.
- batch-invariant (`batch_invariant=True`; LOCALSERVE_BATCH_INVARIANT=1): a request gives
  the same tokens whether it runs alone or beside others (for a given seed). That needs
  decode results that do not depend on how a prompt is cut into chunks or on what else is
  in the batch. With the KV cache split per sequence and flash attention off, llama.cpp's
  CPU path gives bit-identical logits for any chunking, except that a sequence's chunk of
  exactly one token takes a different path; and llama.cpp would cut a prompt chunk that
  shares a batch with other sequences into pieces to match theirs, one token first. So the
  generating tokens go in one decode, and each prompt chunk in one of its own. With GPU
  layers flash attention is left on "auto" and equality is best effort.

In both modes a prompt is never cut so as to leave a one-token chunk, and at least two
prompt tokens are evaluated even when the whole prompt is cached, unless a slot kept the
logits after exactly this prompt (every prompt read keeps them): the same prompt again is
then sampled from those, with no decode before its first token. So the same request again
gives the same tokens, and with flash attention off (and in the batch-invariant mode) a
request whose prompt is cached, in part or whole, gives the same tokens as the same request
read afresh (alone; in the batch-invariant mode, always). One limit: reused KV of tokens
that were generated (a continued chat) was computed one token at a time, so it can differ
in the last bits from evaluating the same text as a prompt.

On CPU the KV cache is split per sequence (measured here with SmolLM2, 1 and 4 sequences at
100 to 1,500 tokens: a unified cache, where every sequence attends over all cells, decoded
up to 1.5x slower). Flash attention is on by default in the throughput mode, as
llama-server's "auto" has it; measured here with SmolLM2 and 2 threads (decode steps only,
prompt reads apart), on against off: 1.23x (one sequence) and 1.26x (four) at 100 tokens
of context, 1.09x and 0.94x at 700, 1.01x and 0.88x at 1,500; prompt reads 1.0-1.3x, but
slower for four sequences at 1,500 (0.84x). With one thread a single sequence decodes
10-17% slower with it. `flash_attn=False` (LOCALSERVE_FLASH_ATTN=0) turns it off. With it,
llama.cpp's CPU kernel takes another path from FA_TILE_ROWS query rows of a sequence on,
so the two rows re-read of a cached prompt can differ in their last bits from a fresh read
of it; and a one-sequence decode over 512 cells or more splits the KV over the threads, so
a change of thread count during a request (the thread policy) can change its last bits.
The batch-invariant mode keeps it off.

Prompt-prefix reuse: a slot keeps the tokens whose KV it still holds after its request ends.
A new request goes to the free slot that shares the longest prefix with its prompt (a
continued chat finds its earlier turns there); only the diverging KV suffix is removed and
only the new tokens are evaluated, and `prompt_eval_count` reports just those. A match is
taken when it covers half the prompt, or at least MIN_REUSE tokens and half of that slot's
cache (so a shared system prompt does not wipe out another conversation). Without one, the
slot that keeps the busy sequence ids in one consecutive run is chosen (llama.cpp decodes
each run of ids with a KV stream of its own as a separate pass over the weights), then an
empty slot, then the least recently used one. When another slot, busy or not, holds a
longer prefix of the prompt (a shared system prompt, the same prompt sent four times), its
KV is copied over (`llama_memory_seq_cp`: the whole stream, then trimmed) instead of being
read again, if reading those tokens would take at least twice as long as the copy; a
prompt that another slot is still reading waits for that read ("follows" it) and copies it
then, so N identical prompts arriving together cost one read and all see their first
tokens after it. A copy is bit-identical, so this holds in both modes.

Events go out through the `emit` callback, once per step: one `tokens` frame with every
request's new text, then `done`/`error` frames (localserve.runner.protocol). Text is decoded
incrementally (localserve.runner.text.TextStream). A request that asks for logprobs gets,
in the same frame, each generated token's log-softmax of the logits it was sampled from
(the model's distribution before temperature, penalties, filters and grammar, as OpenAI
and llama.cpp's server report it) and its N most likely alternatives; the end-of-
generation token and the token that completes a stop string have none. Requests that do
not ask cost nothing: no logits are read for them.

The engine is single-threaded: only the runner's main thread calls into it.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localserve.runner.errors import RequestError, llama
from localserve.runner.protocol import (
    MAX_TOP_LOGPROBS,
    DoneFrame,
    DoneReason,
    ErrorFrame,
    RunnerFrame,
    TokenLogprob,
    TokenLogprobs,
    TokensFrame,
    error_frame,
)
from localserve.runner.sampling import SamplerChain, SamplingOptions, grammar_for
from localserve.runner.slots import Active, Part, Request, Slot, common_prefix, prompt_chunk
from localserve.runner.text import MARKER_TOKENS, TextStream

Emit = Callable[[RunnerFrame], None]

# While other sequences are generating, a step reads only as many prompt tokens as fit in
# this much time (measured as it goes), so their streams slow down but never stall.
BUSY_STEP_TARGET_S = 0.1
# Requests that arrived together with the generating ones read about this much a step.
COMPANION_STEP_TARGET_S = 0.4
BUSY_PREFILL_MIN = 16
BUSY_PREFILL_FIRST = 64  # before anything has been measured
MIN_REUSE = 32  # a shorter shared prefix does not justify discarding another slot's cache
# Copying another slot's KV (a whole stream) must save reading at least twice as long as the
# copy takes (bytes at these rates); before any prompt was timed, at least MIN_SHARE tokens.
COPY_BYTES_PER_S_CPU = 4e9
COPY_BYTES_PER_S_GPU = 1e11
MIN_SHARE = 8
FA_TILE_ROWS = 64  # ggml-cpu's GGML_FA_TILE_Q


# ---- the engine --------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadInfo:
    n_ctx: int  # usable tokens per slot
    slots: int
    n_ctx_total: int  # the llama.cpp context, all slots together
    batch_invariant: bool


@dataclass
class StepStats:
    """What one step decoded, for the thread policy (localserve.runner.threads)."""

    tokens: int = 0  # all tokens decoded
    prompt_tokens: int = 0  # of which prompt tokens
    sequences: int = 0  # sequences that took part
    decode_s: float = 0.0  # wall time spent in llama_decode
    decodes: int = 0  # llama_decode calls


class Engine:
    """Continuous batching over `slots` sequences of one llama.cpp context."""

    def __init__(self, emit: Emit, flush: Callable[[], None] | None = None) -> None:
        """`emit` takes every frame; `flush`, when given, is called when frames must go out
        before the step ends (a first token sampled before the step's decode)."""
        self._emit = emit
        self._flush = flush
        self._tensor_split: Any = None  # ctypes array llama.cpp points at while loaded
        self._model: Any = None
        self._ctx: Any = None
        self._vocab: Any = None
        self._memory: Any = None
        self._batch: Any = None
        self._n_batch = 0
        self._n_vocab = 0
        self._bos = -1
        self.n_ctx = 0
        self.batch_invariant = False
        self.slots: list[Slot] = []
        self._waiting: deque[Request] = deque()
        self._s_per_token = 0.0  # measured seconds per prompt token (moving average)
        self._copy_s = 0.0  # estimated seconds to copy one sequence's KV stream
        self._piece = ctypes.create_string_buffer(256)
        # Frames of the step under way, sent together at its end (texts first).
        self._stepping = False
        self._texts: dict[str, str] = {}
        self._logprobs: dict[str, list[TokenLogprobs]] = {}  # only requests that asked
        self._frames: list[RunnerFrame] = []

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._ctx is not None

    @property
    def model(self) -> Any:
        """The llama_model pointer (for an embedding context over the same weights)."""
        return self._model

    @property
    def busy_slots(self) -> int:
        return sum(1 for slot in self.slots if slot.active is not None)

    @property
    def generating(self) -> int:
        """Sequences generating now (not reading or waiting for a prompt)."""
        return sum(1 for s in self.slots if s.active is not None and not s.active.prefilling)

    @property
    def has_work(self) -> bool:
        return bool(self._waiting) or any(slot.active is not None for slot in self.slots)

    def load(
        self,
        path: str,
        *,
        num_ctx: int,
        num_parallel: int = 1,
        num_gpu: int = 0,
        num_threads: int = 1,
        num_batch: int = 512,
        tensor_split: list[float] | None = None,
        on_progress: Callable[[float], None] | None = None,
        batch_invariant: bool = False,
        flash_attn: bool = True,
    ) -> LoadInfo:
        """Load the model and make the context; `on_progress` hears llama.cpp's load
        progress (0..1) from inside the load. RequestError `load_failed` when llama.cpp
        refuses the file, `context_failed` when it loads but no context can be made."""
        lib = llama()
        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        lib.llama_backend_init()
        slots = max(1, num_parallel)
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = 0x7FFFFFFF if num_gpu < 0 else num_gpu
        if tensor_split:
            # The scheduler's per-GPU placement; kept alive as long as the model.
            devices = int(getattr(lib, "LLAMA_MAX_DEVICES", 16))
            values = [*tensor_split[:devices], *[0.0] * (devices - len(tensor_split[:devices]))]
            self._tensor_split = (ctypes.c_float * devices)(*values)
            mparams.tensor_split = self._tensor_split
        progress_callback = None
        if on_progress is not None:

            def report(progress: float, _user_data: Any) -> bool:
                on_progress(float(progress))
                return True  # go on loading

            progress_callback = lib.llama_progress_callback(report)
            mparams.progress_callback = progress_callback
        model = lib.llama_model_load_from_file(path.encode(), mparams)
        del progress_callback  # llama.cpp keeps no reference after the load
        if not model:
            raise RequestError("load_failed", "llama.cpp could not load the model file")
        self._model = model
        n_batch = max(num_batch, slots + BUSY_PREFILL_MIN)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = max(num_ctx, 1) * slots
        flash = bool(flash_attn and not batch_invariant and not num_gpu)
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = slots
        cparams.n_threads = num_threads
        cparams.n_threads_batch = num_threads
        cparams.kv_unified = False  # one KV stream per slot: a sequence attends only its own
        # Flash attention: see the module docstring ("auto" with GPU layers).
        cparams.flash_attn_type = -1 if num_gpu else int(flash)
        cparams.no_perf = True
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise RequestError(
                "context_failed",
                f"llama.cpp could not create a context of {max(num_ctx, 1)} tokens x {slots} slots",
            )
        self._ctx = ctx
        self.batch_invariant = batch_invariant
        self._vocab = lib.llama_model_get_vocab(model)
        self._memory = lib.llama_get_memory(ctx)
        self._n_vocab = int(lib.llama_vocab_n_tokens(self._vocab))
        self._bos = int(lib.llama_vocab_bos(self._vocab))
        self._n_batch = n_batch
        self._batch = lib.llama_batch_init(n_batch, 0, 1)
        # llama.cpp may round a small context up (its minimum is 256 tokens); the window a
        # request gets is what was asked for, never more than llama.cpp gives each sequence.
        per_seq = int(lib.llama_n_ctx_seq(ctx))
        self.n_ctx = min(num_ctx, per_seq) if num_ctx > 0 else per_seq
        self.slots = [Slot(seq_id) for seq_id in range(slots)]
        n_head = max(1, int(lib.llama_model_n_head(model)))
        kv_dims = 2 * int(lib.llama_model_n_embd(model)) // n_head
        kv_dims *= max(1, int(lib.llama_model_n_head_kv(model)))
        stream_bytes = per_seq * int(lib.llama_model_n_layer(model)) * kv_dims * 2  # F16
        rate = COPY_BYTES_PER_S_GPU if num_gpu else COPY_BYTES_PER_S_CPU
        self._copy_s = stream_bytes / rate
        return LoadInfo(
            n_ctx=self.n_ctx,
            slots=slots,
            n_ctx_total=int(lib.llama_n_ctx(ctx)),
            batch_invariant=batch_invariant,
        )

    def set_threads(self, threads: int) -> None:
        """Threads for the next decodes (single-token steps and prompt batches alike)."""
        if self._ctx is not None:
            llama().llama_set_n_threads(self._ctx, threads, threads)

    def close(self) -> None:
        """Free llama.cpp resources; pending requests are dropped without events."""
        lib = llama()
        for slot in self.slots:
            if slot.active is not None:
                slot.active.sampler.close()
                slot.active = None
        self._waiting.clear()
        if self._batch is not None:
            lib.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            lib.llama_free(self._ctx)
            self._ctx = None
        if self._model is not None:
            lib.llama_model_free(self._model)
            self._model = None

    # ---- tokens ------------------------------------------------------------------------

    def tokenize(self, text: str, *, special: bool = True, add_bos: bool = True) -> list[int]:
        """Tokens of an already templated prompt (BOS added when the model wants one and
        `add_bos`: not after a token prefix)."""
        lib = llama()
        data = text.encode()
        capacity = len(data) + 8
        buf = (lib.llama_token * capacity)()
        count = int(
            lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, special)
        )
        if count < 0:
            capacity = -count
            buf = (lib.llama_token * capacity)()
            count = int(
                lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, add_bos, special)
            )
        tokens = list(buf[:count])
        if len(tokens) >= 2 and tokens[0] == self._bos and tokens[1] == self._bos:
            tokens = tokens[1:]  # the template already wrote the BOS token
        return tokens

    def _piece_of(self, token: int) -> bytes:
        lib = llama()
        size = int(lib.llama_token_to_piece(self._vocab, token, self._piece, 256, 0, False))
        if size == 0:
            # A control token renders as nothing, except the markers of tool calls and
            # reasoning that the daemon parses (Mistral's [TOOL_CALLS], Llama's
            # <|python_tag|>, ...): those are kept as text.
            size = int(lib.llama_token_to_piece(self._vocab, token, self._piece, 256, 0, True))
            marker = self._piece.raw[: max(size, 0)]
            return marker if marker in MARKER_TOKENS else b""
        if size < 0:
            bigger = ctypes.create_string_buffer(-size)
            size = int(lib.llama_token_to_piece(self._vocab, token, bigger, -size, 0, False))
            return bigger.raw[:size]
        return self._piece.raw[:size]

    # ---- frames ------------------------------------------------------------------------

    def _send_text(self, request_id: str, text: str) -> None:
        texts = self._texts
        texts[request_id] = texts.get(request_id, "") + text

    def _send_logprob(self, request_id: str, entry: TokenLogprobs) -> None:
        """A generated token's log-probabilities, in the step's `tokens` frame (with the
        request's text, "" while its text is held back)."""
        self._texts.setdefault(request_id, "")
        self._logprobs.setdefault(request_id, []).append(entry)

    def _send(self, frame: DoneFrame | ErrorFrame) -> None:
        """A done or error frame: after the step's texts, or now between steps."""
        if self._stepping:
            self._frames.append(frame)
        else:
            self._flush_frames()
            self._emit(frame)

    def _flush_frames(self) -> None:
        if self._texts:
            tokens: TokensFrame = {"event": "tokens", "texts": self._texts}
            self._texts = {}
            if self._logprobs:
                tokens["logprobs"] = self._logprobs
                self._logprobs = {}
            self._emit(tokens)
        frames, self._frames = self._frames, []
        for frame in frames:
            self._emit(frame)

    # ---- requests ------------------------------------------------------------------------

    def submit(
        self,
        request_id: str,
        prompt: str,
        options: dict[str, Any],
        fmt: Any = None,
        *,
        logprobs: int | None = None,
        prefix: list[int] | None = None,
        return_tokens: bool = False,
        received_ns: int | None = None,
    ) -> None:
        """Queue a generation; raises RequestError for a request that cannot run.
        `logprobs`: report every generated token's log-probability and that many most
        likely alternatives; `prefix`: token ids read before the prompt (Ollama's
        `context`); `return_tokens`: the done frame carries the prompt's and the answer's
        token ids; `received_ns`: when the request arrived (perf_counter_ns; default now),
        which tells requests sent together with the first of a burst (read as its
        companions) from later ones."""
        if not self.loaded:
            raise RequestError("internal", "no model loaded")
        sampling = SamplingOptions.from_options(options)
        grammar = grammar_for(fmt)
        if logprobs is not None and not (
            type(logprobs) is int and 0 <= logprobs <= MAX_TOP_LOGPROBS
        ):
            raise RequestError(
                "bad_request", f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}"
            )
        head = self._checked_prefix(prefix) if prefix else []
        tokens = head + self.tokenize(prompt, add_bos=not head)
        if not tokens:
            tokens = [self._bos] if self._bos >= 0 else []
        if not tokens:
            raise RequestError("bad_request", "the prompt is empty")
        if len(tokens) >= self.n_ctx:
            raise RequestError(
                "bad_request",
                f"prompt is {len(tokens)} tokens, more than the context window "
                f"(num_ctx={self.n_ctx}); raise num_ctx or shorten the prompt",
            )
        stop = options.get("stop") or []
        stops = [stop] if isinstance(stop, str) else [str(s) for s in stop]
        try:
            num_predict = int(options.get("num_predict", -1))
        except (TypeError, ValueError) as exc:
            raise RequestError("bad_request", "option 'num_predict' is invalid") from exc
        if num_predict == 0:
            done = _done(request_id, "length", len(tokens), 0, 0, 0, len(tokens))
            if return_tokens:
                done["tokens"] = tokens
            self._send(done)
            return
        if grammar is not None:  # a grammar that does not parse is the client's mistake
            SamplerChain(self._vocab, self._n_vocab, sampling, grammar).close()
        self._waiting.append(
            Request(
                request_id,
                tokens,
                sampling,
                grammar,
                stops,
                num_predict,
                logprobs=logprobs,
                return_tokens=return_tokens,
                submitted_ns=received_ns or time.perf_counter_ns(),
            )
        )

    def _checked_prefix(self, prefix: list[int]) -> list[int]:
        """A token prefix (Ollama's `context`): ids of this model's vocabulary."""
        if not isinstance(prefix, list):
            raise RequestError("bad_request", "context must be a list of token ids")
        for token in prefix:
            if type(token) is not int or not 0 <= token < self._n_vocab:
                raise RequestError(
                    "bad_request",
                    f"context: {token!r} is not a token id of this model "
                    f"(0 to {self._n_vocab - 1})",
                )
        return list(prefix)

    def cancel(self, request_id: str) -> None:
        """End a request now (`done` with reason "cancel"); its slot and KV are freed."""
        for request in self._waiting:
            if request.id == request_id:
                self._waiting.remove(request)
                self._send(_done(request_id, "cancel", 0, 0, 0, 0))
                return
        for slot in self.slots:
            if slot.active is not None and slot.active.request.id == request_id:
                self._finish(slot, "cancel", forget=True)
                return

    # ---- scheduling ----------------------------------------------------------------------

    def _pick_slot(self, prompt: list[int]) -> tuple[Slot, int] | None:
        """The free slot for `prompt` and the length of the prefix it can reuse."""
        free = [slot for slot in self.slots if slot.active is None]
        if not free:
            return None
        best, best_len = None, 0
        for slot in free:
            shared = common_prefix(slot.cache, prompt)
            useful = shared * 2 >= len(prompt) or (
                shared >= MIN_REUSE and shared * 2 >= len(slot.cache)
            )
            if useful and shared > best_len:
                best, best_len = slot, shared
        if best is not None:
            return best, best_len
        # No cache worth taking over: keep the generating slots in one run of sequence ids
        # (llama.cpp decodes each run of consecutive ids as a batch of its own), then prefer
        # an empty slot, then the least recently used.
        active = {slot.seq_id for slot in self.slots if slot.active is not None}

        def cost(slot: Slot) -> tuple[int, bool, float]:
            ids = sorted(active | {slot.seq_id})
            runs = 1 + sum(1 for a, b in itertools.pairwise(ids) if b != a + 1)
            return runs, bool(slot.cache), slot.last_used

        chosen = min(free, key=cost)
        return chosen, common_prefix(chosen.cache, prompt)

    def _donor(self, prompt: list[int], slot: Slot, reuse: int) -> tuple[Slot, int, int] | None:
        """Another slot with a longer prefix of `prompt` than `reuse`: (that slot, the
        tokens of it cached now, the tokens it will have once it has read its prompt)."""
        best: tuple[Slot, int, int] | None = None
        for other in self.slots:
            if other is slot:
                continue
            now = later = self._reusable(other, prompt)
            active = other.active
            if active is not None and active.reading:
                planned = active.request.prompt
                if planned == prompt:  # it will keep the logits after exactly this prompt
                    later = len(prompt)
                else:
                    later = max(now, min(common_prefix(planned, prompt), len(prompt) - 2))
            if self._worth_copying(later - reuse) and (best is None or later > best[2]):
                best = (other, now, later)
        return best

    def _worth_copying(self, tokens: int) -> bool:
        """Whether reading `tokens` takes longer than twice copying a KV stream."""
        if tokens < 2:
            return False
        if not self._s_per_token:
            return tokens >= MIN_SHARE
        return tokens * self._s_per_token >= 2 * self._copy_s

    @staticmethod
    def _reusable(slot: Slot, prompt: list[int]) -> int:
        """Tokens of `prompt` a request can take from `slot`'s KV: all of them when the slot
        kept the logits after exactly this prompt (no decode is needed then), else all but
        the last two (evaluated afresh: see the module docstring)."""
        shared = common_prefix(slot.cache, prompt)
        if shared >= len(prompt) and slot.logits is not None and slot.logits_at == len(prompt):
            return len(prompt)
        return max(0, min(shared, len(prompt) - 2))

    def _admit(self) -> None:
        lib = llama()
        while self._waiting:
            picked = self._pick_slot(self._waiting[0].prompt)
            if picked is None:
                return
            request = self._waiting.popleft()
            slot, _ = picked
            reuse = self._reusable(slot, request.prompt)
            if reuse < len(slot.cache) and not lib.llama_memory_seq_rm(
                self._memory, slot.seq_id, reuse, -1
            ):
                lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                reuse = 0
            slot.trim(reuse)
            try:
                sampler = SamplerChain(self._vocab, self._n_vocab, request.options, request.grammar)
            except RequestError as exc:
                self._send(error_frame(request.id, exc.kind, str(exc)))
                continue
            active = Active(
                request=request,
                sampler=sampler,
                stream=TextStream(request.stops),
                fed=reuse,
                reused=reuse,
                started_ns=time.perf_counter_ns(),
            )
            slot.active = active
            if reuse == len(request.prompt):
                active.saved = slot.logits
                continue
            donor = self._donor(request.prompt, slot, reuse)
            if donor is not None:
                other, now, later = donor
                if now >= later:
                    self._copy(other, slot, now)
                else:
                    assert other.active is not None
                    active.follow = (other, other.active.request.id, later)

    def _copy(self, source: Slot, slot: Slot, count: int) -> None:
        """Give `slot` (whose request has not read anything yet) the first `count` tokens
        of `source`'s KV. The whole KV stream is copied (llama.cpp copies across streams
        only whole), at the start of the next decode, then trimmed."""
        lib = llama()
        memory, seq = self._memory, slot.seq_id
        lib.llama_memory_seq_cp(memory, source.seq_id, seq, -1, -1)
        if not lib.llama_memory_seq_rm(memory, seq, count, -1):
            lib.llama_memory_seq_rm(memory, seq, -1, -1)
            count = 0
        slot.cache[:] = source.cache[:count]
        slot.logits, slot.logits_at = None, 0
        if count and count == source.logits_at:
            slot.logits, slot.logits_at = source.logits, count
        active = slot.active
        assert active is not None
        active.fed = active.reused = count
        if count == len(active.request.prompt):
            active.saved = slot.logits

    def _settle_followers(self) -> None:
        """Followers whose source has read what they wait for (or stopped) copy it now."""
        for slot in self.slots:
            active = slot.active
            if active is None or active.follow is None:
                continue
            source, source_id, wanted = active.follow
            reading = source.active
            if (
                reading is not None
                and reading.request.id == source_id
                and reading.prefilling
                and reading.fed < wanted
            ):
                continue  # still reading the part this one waits for
            active.follow = None
            count = min(self._reusable(source, active.request.prompt), wanted)
            if count > active.fed:
                self._copy(source, slot, count)

    def _sample_saved(self) -> bool:
        """First tokens of requests whose whole prompt was cached, from the logits kept for
        it (no decode); whether there were any."""
        started = False
        for slot in self.slots:
            active = slot.active
            if active is not None and active.saved is not None:
                saved = active.saved
                token = active.sampler.sample_logits(saved)
                active.saved = None
                self._accept(slot, token, saved if active.request.logprobs is not None else None)
                started = True
        return started

    def step(self) -> StepStats:
        """Admit waiting requests, decode a token for every generating sequence and read
        prompt chunks (one batched llama_decode; in the batch-invariant mode one for the
        generating sequences and one per chunk), sample, and send the step's frames."""
        stats = StepStats()
        self._stepping = True
        try:
            self._admit()
            self._settle_followers()
            if self._sample_saved():
                self._flush_frames()  # those first tokens go out now, not after the decode
                if self._flush is not None:
                    self._flush()
            generating = [
                Part(slot, [active.next_token], sample=True, prompt=False)
                for slot in self.slots
                if (active := slot.active) is not None and active.next_token >= 0
            ]
            chunks = self._prompt_chunks(self._n_batch - len(generating))
            if self.batch_invariant:
                groups = [generating] if generating else []
                groups += [[chunk] for chunk in chunks]
            else:
                groups = [generating + chunks] if generating or chunks else []
            for group in groups:
                self._run(group, stats)
                self._settle_followers()  # followers of a prompt just read start at once
                self._sample_saved()
        finally:
            self._stepping = False
            self._flush_frames()
        return stats

    def _prompt_chunks(self, room: int) -> list[Part]:
        """The prompt chunks of this step, `room` tokens at most: reading sequences in the
        order they started. While others generate, a request that arrived after their
        first tokens reads only about BUSY_STEP_TARGET_S worth a step; one that arrived with
        them (before any of them had a first token) about COMPANION_STEP_TARGET_S: requests
        arriving together are read as if together, and the first of them to stream waits."""
        streaming = [
            a.first_token_ns
            for s in self.slots
            if (a := s.active) is not None and a.next_token >= 0
        ]
        since = min(streaming) if streaming else None
        busy = self._prefill_budget(BUSY_STEP_TARGET_S) if since is not None else room
        companion = self._prefill_budget(COMPANION_STEP_TARGET_S) if since is not None else room
        reading = [s for s in self.slots if s.active is not None and s.active.reading]
        reading.sort(key=lambda s: s.active.started_ns if s.active else 0)
        chunks = []
        for slot in reading:
            active = slot.active
            assert active is not None
            prompt = active.request.prompt
            together = since is None or active.request.submitted_ns < since
            budget = min(room, companion if together else busy)
            count = prompt_chunk(len(prompt) - active.fed, budget)
            if not count:
                continue
            end = active.fed + count
            chunks.append(Part(slot, prompt[active.fed : end], end == len(prompt), True))
            room -= count
            busy -= count
            companion -= count
        return chunks

    def _run(self, parts: list[Part], stats: StepStats) -> None:
        """One llama_decode of `parts` (laid out by sequence id), then their samples."""
        parts.sort(key=lambda p: p.slot.seq_id)
        batch = self._batch
        token, pos, n_seq, seq, logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        n = 0
        outputs = []
        prompt_tokens = 0
        for part in parts:
            seq_id = part.slot.seq_id
            start = len(part.slot.cache)
            for offset, tok in enumerate(part.tokens):
                token[n] = tok
                pos[n] = start + offset
                n_seq[n] = 1
                seq[n][0] = seq_id
                logits[n] = False
                n += 1
            if part.sample:
                logits[n - 1] = True
            outputs.append(n - 1)
            if part.prompt:
                prompt_tokens += len(part.tokens)
        batch.n_tokens = n
        started = time.perf_counter()
        status = int(llama().llama_decode(self._ctx, batch))
        elapsed = time.perf_counter() - started
        if status != 0:
            self._fail([p.slot for p in parts], f"llama_decode failed ({status})")
            return
        stats.tokens += n
        stats.prompt_tokens += prompt_tokens
        stats.sequences += len(parts)
        stats.decode_s += elapsed
        stats.decodes += 1
        if prompt_tokens >= BUSY_PREFILL_MIN:
            per_token = elapsed / n
            self._s_per_token = (
                per_token if not self._s_per_token else 0.7 * self._s_per_token + 0.3 * per_token
            )
        for part, index in zip(parts, outputs, strict=True):
            slot = part.slot
            active = slot.active
            if active is None:
                continue
            slot.cache.extend(part.tokens)
            if part.prompt:
                active.fed += len(part.tokens)
                if part.sample:  # the prompt is read: keep its logits for the same one again
                    slot.logits = self._logits(index).copy()
                    slot.logits_at = len(slot.cache)
            if part.sample:
                token = active.sampler.sample(self._ctx, index)
                wanted = active.request.logprobs is not None
                self._accept(slot, token, self._logits(index) if wanted else None)

    def _logits(self, index: int) -> Any:
        """The logits of batch position `index` of the last decode (a numpy view)."""
        import numpy as np

        pointer = llama().llama_get_logits_ith(self._ctx, index)
        return np.ctypeslib.as_array(pointer, (self._n_vocab,))

    def _prefill_budget(self, target_s: float) -> int:
        """Prompt tokens a step reads in about `target_s` (measured as it goes)."""
        if not self._s_per_token:
            return BUSY_PREFILL_FIRST
        fits = int(target_s / self._s_per_token)
        return max(BUSY_PREFILL_MIN, min(fits, self._n_batch))

    def _accept(self, slot: Slot, token: int, logits: Any = None) -> None:
        """The slot's next token (sampled and accepted by its chain): send its text (and,
        given the `logits` it was sampled from, its log-probabilities), and finish or feed
        it to the next step."""
        lib = llama()
        active = slot.active
        assert active is not None
        if not active.first_token_ns:
            active.first_token_ns = time.perf_counter_ns()
        if lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return
        active.generated += 1
        if active.request.return_tokens:
            active.output.append(token)
        piece = self._piece_of(token)
        text, stopped = active.stream.push(piece)
        if logits is not None and not stopped:
            top = active.request.logprobs or 0
            self._send_logprob(active.request.id, self._logprob_entry(token, piece, logits, top))
        if text:
            self._send_text(active.request.id, text)
        if stopped:
            self._finish(slot, "stop", flush=False)
        elif 0 < active.request.num_predict <= active.generated:
            self._finish(slot, "length")
        elif len(active.request.prompt) + active.generated >= self.n_ctx:
            self._finish(slot, "length")  # the slot's window is full
        else:
            active.next_token = token

    def _logprob_entry(self, token: int, piece: bytes, logits: Any, top: int) -> TokenLogprobs:
        """`token`'s log-probability under `logits` (a log-softmax of the model's raw
        logits: the distribution before temperature, penalties and filters, as OpenAI and
        llama.cpp's server report) and the `top` most likely tokens (ties: lower id first)."""
        import numpy as np

        values = np.asarray(logits)  # float32; the sum of exponentials in float64
        peak = float(values.max())
        log_total = peak + math.log(float(np.exp(values - peak).sum(dtype=np.float64)))
        entry: TokenLogprobs = {
            **_token_logprob(piece, float(values[token]) - log_total),
            "top_logprobs": [],
        }
        if top:  # about 0.6 ms for a 49k vocabulary (0.07 ms without alternatives)
            count = min(top, values.size)
            cut = values.size - count
            threshold = values[np.argpartition(values, cut)[cut]]
            above = np.flatnonzero(values > threshold)
            tied = np.flatnonzero(values == threshold)[: count - above.size]
            ids = np.concatenate([above, tied])
            ids = ids[np.lexsort((ids, -values[ids]))]
            entry["top_logprobs"] = [
                _token_logprob(self._piece_of(int(i)), float(values[i]) - log_total) for i in ids
            ]
        return entry

    def _finish(
        self, slot: Slot, reason: DoneReason, *, flush: bool = True, forget: bool = False
    ) -> None:
        active = slot.active
        assert active is not None
        slot.active = None
        slot.last_used = time.monotonic()
        active.sampler.close()
        if forget:
            llama().llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.trim(0)
        if flush and reason != "cancel":
            text, _ = active.stream.flush()
            if text:
                self._send_text(active.request.id, text)
        ended = time.perf_counter_ns()
        first = active.first_token_ns or ended
        done = _done(
            active.request.id,
            reason,
            active.prompt_eval_count,
            first - active.started_ns,
            active.generated,
            ended - first,
            len(active.request.prompt),
        )
        if active.request.return_tokens:
            done["tokens"] = [*active.request.prompt, *active.output]
        if active.stream.matched is not None:
            done["stop_sequence"] = active.stream.matched
        self._send(done)

    def _fail(self, slots: list[Slot], message: str) -> None:
        lib = llama()
        for slot in slots:
            active = slot.active
            if active is None:
                continue
            slot.active = None
            active.sampler.close()
            lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.trim(0)
            self._send(error_frame(active.request.id, "internal", message))


def _token_logprob(piece: bytes, logprob: float) -> TokenLogprob:
    return {"token": piece.decode("utf-8", "replace"), "bytes": list(piece), "logprob": logprob}


def _done(
    request_id: str,
    reason: DoneReason,
    prompt_eval_count: int,
    prompt_eval_ns: int,
    eval_count: int,
    eval_ns: int,
    prompt_tokens: int | None = None,
) -> DoneFrame:
    """`prompt_tokens`: the whole prompt; `prompt_eval_count`: the tokens evaluated (the
    rest came from a cache)."""
    return {
        "event": "done",
        "id": request_id,
        "done_reason": reason,
        "prompt_tokens": prompt_eval_count if prompt_tokens is None else prompt_tokens,
        "prompt_eval_count": prompt_eval_count,
        "prompt_eval_duration": max(prompt_eval_ns, 0),
        "eval_count": eval_count,
        "eval_duration": max(eval_ns, 0),
    }


__all__ = [
    "Engine",
    "LoadInfo",
    "RequestError",
    "StepStats",
    "common_prefix",
    "prompt_chunk",
]
