"""Continuous batching on llama.cpp's low-level API: the engine inside a runner process.

One llama.cpp context holds `num_parallel` sequences ("slots"), each with its own window of
`num_ctx` tokens (`n_ctx = num_ctx * num_parallel`, KV cache split per sequence). Every
`Engine.step()`

- decodes one token for every sequence that is generating (the token it sampled last step)
  in one `llama_decode` over one batch, and samples each with that sequence's own sampler
  chain (temperature, top-k/p, min-p, typical, penalties, grammar, seed);
- then reads a chunk of prompt tokens for each sequence still reading its prompt (while
  other sequences are generating, only as many as take about BUSY_STEP_TARGET_S, so their
  streams slow down but do not stall), one `llama_decode` per chunk, and samples the first
  token of a prompt that is complete.

A request gives the same tokens whether it runs alone or beside others (for a given seed).
That equality needs decode results that do not depend on how a prompt is cut into chunks or
on what else is in the batch. With the KV cache split per sequence and flash attention off,
llama.cpp's CPU path gives bit-identical logits for any chunking, except that a sequence's
chunk of exactly one token takes a different path: so a prompt is never split so as to leave
a one-token chunk, and a prompt chunk is never put in the same batch as other sequences
(llama.cpp would cut it into pieces to match theirs, one token first). On CPU flash
attention is off (here it is no faster, and its F16 accumulation makes logits depend on
chunk sizes; the price is a larger attention buffer at long contexts); with GPU layers it
is left on "auto" and equality is best effort.
One limit: reused KV of tokens that were generated (a continued chat) was computed one token
at a time, so it can differ in the last bits from evaluating the same text as a prompt.

Prompt-prefix reuse: a slot keeps the tokens whose KV it still holds after its request ends.
A new request goes to the free slot that shares the longest prefix with its prompt (a
continued chat finds its earlier turns there); only the diverging KV suffix is removed and
only the new tokens are evaluated, and `prompt_eval_count` reports just those. A match is
taken when it covers half the prompt, or at least MIN_REUSE tokens and half of that slot's
cache (so a shared system prompt does not wipe out another conversation). Without one, the
slot that keeps the busy sequence ids in one consecutive run is chosen (llama.cpp decodes
each run of ids with a KV stream of its own as a separate batch: a gap costs a whole extra
pass over the weights), then an empty slot, then the least recently used one.

Events go out through the `emit` callback: `token {id, text}` and `done {...}` frames (see
localserve.runner.protocol). Text is decoded incrementally: an incomplete UTF-8 sequence is held
until its last byte arrives, and text that could be the start of a stop string is held until
the stop string is ruled out (it is then sent) or matched (generation ends, `stop`).

The engine is single-threaded: only the runner's main thread calls into it.
"""

from __future__ import annotations

import codecs
import ctypes
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

Frame = dict[str, Any]
Emit = Callable[[Frame], None]

DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp: pick a random seed
PENALTY_LAST_N = 64  # tokens that repeat/presence/frequency penalties look back on
# While other sequences are generating, a step reads only as many prompt tokens as fit in
# this much time (measured as it goes), so their streams slow down but never stall.
BUSY_STEP_TARGET_S = 0.1
BUSY_PREFILL_MIN = 16
BUSY_PREFILL_FIRST = 64  # before anything has been measured
MIN_REUSE = 32  # a shorter shared prefix does not justify discarding another slot's cache


class RequestError(Exception):
    """A request the runner refuses or cannot finish; `kind` is the protocol error kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _llama() -> Any:
    """The llama_cpp module (imported lazily; typed as Any, it is a ctypes binding)."""
    import llama_cpp

    return llama_cpp


# ---- sampling options ------------------------------------------------------------------------


@dataclass(frozen=True)
class SamplingOptions:
    """Per-request sampling settings (Ollama option names), with the runner's defaults."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.9
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int = DEFAULT_SEED
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> SamplingOptions:
        values: dict[str, Any] = {}
        for name, kind in (
            ("temperature", float),
            ("top_k", int),
            ("top_p", float),
            ("min_p", float),
            ("typical_p", float),
            ("repeat_penalty", float),
            ("presence_penalty", float),
            ("frequency_penalty", float),
            ("mirostat", int),
            ("mirostat_tau", float),
            ("mirostat_eta", float),
        ):
            if options.get(name) is not None:
                try:
                    values[name] = kind(options[name])
                except (TypeError, ValueError) as exc:
                    raise RequestError("bad_request", f"option {name!r} is invalid") from exc
        seed = options.get("seed")
        if seed is not None:
            try:
                seed = int(seed)
            except (TypeError, ValueError) as exc:
                raise RequestError("bad_request", "option 'seed' is invalid") from exc
            values["seed"] = DEFAULT_SEED if seed < 0 else seed & 0xFFFFFFFF
        return cls(**values)


def grammar_for(fmt: Any) -> str | None:
    """GBNF text for Ollama's `format`: "json", a JSON schema object, or nothing."""
    import json

    from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

    if fmt in (None, ""):
        return None
    if fmt == "json":
        return str(JSON_GBNF)
    if isinstance(fmt, dict):
        try:
            return str(json_schema_to_gbnf(json.dumps(fmt)))
        except Exception as exc:
            raise RequestError("bad_request", f"invalid format schema: {exc}") from exc
    raise RequestError("bad_request", 'format must be "json" or a JSON schema object')


class SamplerChain:
    """One request's llama.cpp sampler chain; `sample` also accepts the token it picks.

    Without a grammar, llama.cpp samples on its own (`llama_sampler_sample`). With one
    (JSON mode), applying the grammar to the whole vocabulary costs milliseconds per token,
    and every sequence in the batch would wait for it; so, as llama.cpp's own server does,
    the token is sampled without the grammar first and only checked against it, and only a
    rejected token makes the grammar filter the whole vocabulary for a second draw.
    """

    def __init__(self, vocab: Any, n_vocab: int, opts: SamplingOptions, grammar: str | None):
        lib = _llama()
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        self._n_vocab = n_vocab
        self._grammar: Any = None
        self._chain: Any = lib.llama_sampler_chain_init(params)
        if not self._chain:
            raise RequestError("internal", "llama.cpp could not create a sampler chain")
        try:
            if grammar is not None:
                self._grammar = lib.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
                if not self._grammar:
                    raise RequestError("bad_request", "invalid format: the grammar does not parse")
                self._setup_candidates(lib)
            self._build(lib, vocab, n_vocab, opts)
        except BaseException:
            self.close()
            raise

    def _setup_candidates(self, lib: Any) -> None:
        import numpy as np

        self._data: Any = (lib.llama_token_data * self._n_vocab)()
        self._view: Any = np.ctypeslib.as_array(self._data)
        self._ids: Any = np.arange(self._n_vocab, dtype=np.int32)
        self._candidates: Any = lib.llama_token_data_array()
        self._one: Any = (lib.llama_token_data * 1)()
        self._one_array: Any = lib.llama_token_data_array()

    def _add(self, sampler: Any) -> None:
        if not sampler:
            raise RequestError("internal", "llama.cpp could not create a sampler")
        _llama().llama_sampler_chain_add(self._chain, sampler)

    def _build(self, lib: Any, vocab: Any, n_vocab: int, opts: SamplingOptions) -> None:
        if opts.repeat_penalty != 1.0 or opts.presence_penalty or opts.frequency_penalty:
            self._add(
                lib.llama_sampler_init_penalties(
                    n_vocab,
                    PENALTY_LAST_N,
                    opts.repeat_penalty,
                    opts.frequency_penalty,
                    opts.presence_penalty,
                )
            )
        if opts.temperature <= 0:
            self._add(lib.llama_sampler_init_greedy())
            return
        if opts.mirostat in (1, 2):
            self._add(lib.llama_sampler_init_temp(opts.temperature))
            if opts.mirostat == 1:
                self._add(
                    lib.llama_sampler_init_mirostat(
                        n_vocab, opts.seed, opts.mirostat_tau, opts.mirostat_eta, 100
                    )
                )
            else:
                self._add(
                    lib.llama_sampler_init_mirostat_v2(
                        opts.seed, opts.mirostat_tau, opts.mirostat_eta
                    )
                )
            return
        if opts.top_k > 0:
            self._add(lib.llama_sampler_init_top_k(opts.top_k))
        if opts.typical_p < 1.0:
            self._add(lib.llama_sampler_init_typical(opts.typical_p, 1))
        if opts.top_p < 1.0:
            self._add(lib.llama_sampler_init_top_p(opts.top_p, 1))
        if opts.min_p > 0.0:
            self._add(lib.llama_sampler_init_min_p(opts.min_p, 1))
        self._add(lib.llama_sampler_init_temp(opts.temperature))
        self._add(lib.llama_sampler_init_dist(opts.seed))

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch position `index` (and accept the token)."""
        lib = _llama()
        if self._grammar is None:
            return int(lib.llama_sampler_sample(self._chain, ctx, index))
        token = self._draw(lib, ctx, index, constrained=False)
        if not self._allowed(lib, token):
            token = self._draw(lib, ctx, index, constrained=True)
        lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(self._chain, token)
        return token

    def _draw(self, lib: Any, ctx: Any, index: int, *, constrained: bool) -> int:
        import numpy as np

        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), (self._n_vocab,))
        self._view["id"] = self._ids
        self._view["logit"] = logits
        self._view["p"] = 0.0
        candidates = self._candidates
        candidates.data = self._data
        candidates.size = self._n_vocab
        candidates.selected = -1
        candidates.sorted = False
        if constrained:
            lib.llama_sampler_apply(self._grammar, ctypes.byref(candidates))
        lib.llama_sampler_apply(self._chain, ctypes.byref(candidates))
        if not 0 <= candidates.selected < candidates.size:
            raise RequestError("internal", "the sampler chain selected no token")
        return int(candidates.data[candidates.selected].id)

    def _allowed(self, lib: Any, token: int) -> bool:
        """Whether the grammar accepts `token` next (the grammar state is not changed)."""
        one = self._one
        one[0].id = token
        one[0].logit = 1.0
        one[0].p = 0.0
        array = self._one_array
        array.data = one
        array.size = 1
        array.selected = -1
        array.sorted = False
        lib.llama_sampler_apply(self._grammar, ctypes.byref(array))
        return bool(one[0].logit != float("-inf"))

    def close(self) -> None:
        lib = _llama()
        if self._chain:
            lib.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            lib.llama_sampler_free(self._grammar)
            self._grammar = None


# ---- text out ----------------------------------------------------------------------------------


class TextStream:
    """Token bytes in, text out: complete UTF-8 only, and nothing that may start a stop string.

    `push` returns (text to send now, whether a stop string was hit). After a hit, the text
    before the stop string has been returned and the rest is dropped.
    """

    def __init__(self, stops: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops or [] if s]
        self._held = ""

    def push(self, data: bytes) -> tuple[str, bool]:
        self._held += self._decoder.decode(data)
        return self._release(final=False)

    def flush(self) -> tuple[str, bool]:
        """At the end of generation: everything still held (a stop string is still cut)."""
        self._held += self._decoder.decode(b"", final=True)
        return self._release(final=True)

    def _release(self, *, final: bool) -> tuple[str, bool]:
        held = self._held
        if not self._stops:
            self._held = ""
            return held, False
        hits = [i for i in (held.find(stop) for stop in self._stops) if i >= 0]
        if hits:
            self._held = ""
            return held[: min(hits)], True
        keep = 0 if final else self._partial_stop_suffix(held)
        self._held = held[len(held) - keep :]
        return held[: len(held) - keep], False

    def _partial_stop_suffix(self, text: str) -> int:
        """Length of the longest end of `text` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:size]):
                    best = size
                    break
        return best


# ---- requests and slots --------------------------------------------------------------------


@dataclass
class _Request:
    id: str
    prompt: list[int]
    options: SamplingOptions
    grammar: str | None
    stops: list[str]
    num_predict: int
    submitted_ns: int = field(default_factory=time.perf_counter_ns)


@dataclass
class _Active:
    """A request running in a slot."""

    request: _Request
    sampler: SamplerChain
    stream: TextStream
    fed: int  # prompt tokens already in the KV cache (reused or evaluated)
    prompt_eval_count: int  # prompt tokens this request evaluates itself
    started_ns: int
    next_token: int = -1  # sampled, to be fed in the next step (-1: still reading the prompt)
    generated: int = 0
    first_token_ns: int = 0

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.request.prompt)


@dataclass
class _Slot:
    seq_id: int
    cache: list[int] = field(default_factory=list)  # tokens at KV positions 0..len-1
    active: _Active | None = None
    last_used: float = 0.0


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


# ---- the engine --------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadInfo:
    n_ctx: int  # usable tokens per slot
    slots: int
    n_ctx_total: int  # the llama.cpp context, all slots together


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
        self.slots: list[_Slot] = []
        self._waiting: deque[_Request] = deque()
        self._s_per_token = 0.0  # measured seconds per prompt token (moving average)
        self._piece = ctypes.create_string_buffer(256)

    # ---- lifecycle ---------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._ctx is not None

    @property
    def busy_slots(self) -> int:
        return sum(1 for slot in self.slots if slot.active is not None)

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
    ) -> LoadInfo:
        """Load the model and make the context; `on_progress` hears llama.cpp's load
        progress (0..1) from inside the load."""
        lib = _llama()
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
            raise RequestError("load_failed", f"llama.cpp could not load the model at {path}")
        self._model = model
        n_batch = max(num_batch, slots + BUSY_PREFILL_MIN)
        cparams = lib.llama_context_default_params()
        cparams.n_ctx = max(num_ctx, 1) * slots
        cparams.n_batch = n_batch
        cparams.n_ubatch = n_batch
        cparams.n_seq_max = slots
        cparams.n_threads = num_threads
        cparams.n_threads_batch = num_threads
        cparams.kv_unified = False  # one KV stream per slot: a sequence attends only its own
        cparams.flash_attn_type = -1 if num_gpu else 0  # see the module docstring
        cparams.no_perf = True
        ctx = lib.llama_init_from_model(model, cparams)
        if not ctx:
            self.close()
            raise RequestError("load_failed", "llama.cpp could not create a context")
        self._ctx = ctx
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
        self.slots = [_Slot(seq_id) for seq_id in range(slots)]
        return LoadInfo(n_ctx=self.n_ctx, slots=slots, n_ctx_total=int(lib.llama_n_ctx(ctx)))

    def set_threads(self, threads: int) -> None:
        """Threads for the next decodes (single-token steps and prompt batches alike)."""
        if self._ctx is not None:
            _llama().llama_set_n_threads(self._ctx, threads, threads)

    def close(self) -> None:
        """Free llama.cpp resources; pending requests are dropped without events."""
        lib = _llama()
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

    def tokenize(self, text: str) -> list[int]:
        """Tokens of an already templated prompt (BOS added when the model wants one)."""
        lib = _llama()
        data = text.encode()
        capacity = len(data) + 8
        buf = (lib.llama_token * capacity)()
        count = int(lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, True, True))
        if count < 0:
            capacity = -count
            buf = (lib.llama_token * capacity)()
            count = int(lib.llama_tokenize(self._vocab, data, len(data), buf, capacity, True, True))
        tokens = [int(t) for t in buf[:count]]
        if len(tokens) >= 2 and tokens[0] == self._bos and tokens[1] == self._bos:
            tokens = tokens[1:]  # the template already wrote the BOS token
        return tokens

    def _piece_of(self, token: int) -> bytes:
        lib = _llama()
        size = int(lib.llama_token_to_piece(self._vocab, token, self._piece, 256, 0, False))
        if size < 0:
            bigger = ctypes.create_string_buffer(-size)
            size = int(lib.llama_token_to_piece(self._vocab, token, bigger, -size, 0, False))
            return bigger.raw[:size]
        return self._piece.raw[:size]

    # ---- requests ------------------------------------------------------------------------

    def submit(
        self, request_id: str, prompt: str, options: dict[str, Any], fmt: Any = None
    ) -> None:
        """Queue a generation; raises RequestError for a request that cannot run."""
        if not self.loaded:
            raise RequestError("internal", "no model loaded")
        sampling = SamplingOptions.from_options(options)
        grammar = grammar_for(fmt)
        tokens = self.tokenize(prompt)
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
            self._emit(_done(request_id, "length", len(tokens), 0, 0, 0, prompt_tokens=len(tokens)))
            return
        if grammar is not None:  # a grammar that does not parse is the client's mistake
            SamplerChain(self._vocab, self._n_vocab, sampling, grammar).close()
        self._waiting.append(_Request(request_id, tokens, sampling, grammar, stops, num_predict))

    def cancel(self, request_id: str) -> None:
        """End a request now (`done` with reason "cancel"); its slot and KV are freed."""
        for request in self._waiting:
            if request.id == request_id:
                self._waiting.remove(request)
                self._emit(_done(request_id, "cancel", 0, 0, 0, 0))
                return
        for slot in self.slots:
            if slot.active is not None and slot.active.request.id == request_id:
                self._finish(slot, "cancel", forget=True)
                return

    # ---- scheduling ----------------------------------------------------------------------

    def _pick_slot(self, prompt: list[int]) -> tuple[_Slot, int] | None:
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

        def cost(slot: _Slot) -> tuple[int, bool, float]:
            ids = sorted(active | {slot.seq_id})
            runs = 1 + sum(1 for a, b in itertools.pairwise(ids) if b != a + 1)
            return runs, bool(slot.cache), slot.last_used

        chosen = min(free, key=cost)
        return chosen, common_prefix(chosen.cache, prompt)

    def _admit(self) -> None:
        lib = _llama()
        while self._waiting:
            picked = self._pick_slot(self._waiting[0].prompt)
            if picked is None:
                return
            request = self._waiting.popleft()
            slot, reuse = picked
            reuse = min(reuse, len(request.prompt) - 1)  # evaluate >= 1 token for logits
            if reuse < len(slot.cache) and not lib.llama_memory_seq_rm(
                self._memory, slot.seq_id, reuse, -1
            ):
                lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
                reuse = 0
            del slot.cache[reuse:]
            try:
                sampler = SamplerChain(self._vocab, self._n_vocab, request.options, request.grammar)
            except RequestError as exc:
                self._emit(_error(request.id, exc.kind, str(exc)))
                continue
            slot.active = _Active(
                request=request,
                sampler=sampler,
                stream=TextStream(request.stops),
                fed=reuse,
                prompt_eval_count=len(request.prompt) - reuse,
                started_ns=time.perf_counter_ns(),
            )

    def step(self) -> None:
        """Admit waiting requests, decode one token for every generating sequence (one
        batched llama_decode), read a chunk of waiting prompts, sample and send tokens."""
        self._admit()
        generating = [s for s in self.slots if s.active is not None and not s.active.prefilling]
        if generating:
            tokens = [(s.active.next_token, len(s.cache), s.seq_id) for s in generating if s.active]
            if not self._decode(tokens, generating, list(range(len(tokens)))):
                return
            for index, slot in enumerate(generating):
                assert slot.active is not None
                slot.cache.append(slot.active.next_token)
                self._advance(slot, index)
        budget = self._busy_prefill_chunk() if generating else self._n_batch
        reading = [s for s in self.slots if s.active is not None and s.active.prefilling]
        reading.sort(key=lambda s: s.active.started_ns if s.active else 0)
        for slot in reading:
            active = slot.active
            assert active is not None
            prompt = active.request.prompt
            remaining = len(prompt) - active.fed
            count = min(budget, remaining)
            if remaining - count == 1:
                count -= 1  # never leave a one-token chunk (see the module docstring)
            if count < 2 and remaining > 1:
                break
            chunk = [(prompt[active.fed + i], active.fed + i, slot.seq_id) for i in range(count)]
            last = active.fed + count == len(prompt)
            started = time.perf_counter()
            if not self._decode(chunk, [slot], [count - 1] if last else []):
                continue
            per_token = (time.perf_counter() - started) / count
            self._s_per_token = (
                per_token if not self._s_per_token else 0.7 * self._s_per_token + 0.3 * per_token
            )
            slot.cache.extend(prompt[active.fed : active.fed + count])
            active.fed += count
            budget -= count
            if last:
                self._advance(slot, count - 1)

    def _decode(
        self, tokens: list[tuple[int, int, int]], slots: list[_Slot], outputs: list[int]
    ) -> bool:
        """One llama_decode of (token, position, seq_id) entries, with logits at `outputs`.

        A prompt chunk gets a call of its own, apart from the generating sequences: with the
        KV cache split per sequence, llama.cpp would otherwise cut the chunk into pieces of
        different sizes, depending on what else is in the batch, which changes the results.
        """
        batch = self._batch
        wanted = set(outputs)
        for n, (token, pos, seq_id) in enumerate(tokens):
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = n in wanted
        batch.n_tokens = len(tokens)
        status = int(_llama().llama_decode(self._ctx, batch))
        if status != 0:
            self._fail(slots, f"llama_decode failed ({status})")
            return False
        return True

    def _busy_prefill_chunk(self) -> int:
        if not self._s_per_token:
            return BUSY_PREFILL_FIRST
        fits = int(BUSY_STEP_TARGET_S / self._s_per_token)
        return max(BUSY_PREFILL_MIN, min(fits, self._n_batch))

    def _advance(self, slot: _Slot, index: int) -> None:
        """Sample the slot's next token from batch position `index` and send its text."""
        lib = _llama()
        active = slot.active
        assert active is not None
        token = active.sampler.sample(self._ctx, index)
        if not active.first_token_ns:
            active.first_token_ns = time.perf_counter_ns()
        if lib.llama_vocab_is_eog(self._vocab, token):
            self._finish(slot, "stop")
            return
        active.generated += 1
        text, stopped = active.stream.push(self._piece_of(token))
        if text:
            self._emit({"event": "token", "id": active.request.id, "text": text})
        if stopped:
            self._finish(slot, "stop", flush=False)
        elif 0 < active.request.num_predict <= active.generated:
            self._finish(slot, "length")
        elif len(active.request.prompt) + active.generated >= self.n_ctx:
            self._finish(slot, "length")  # the slot's window is full
        else:
            active.next_token = token

    def _finish(
        self, slot: _Slot, reason: str, *, flush: bool = True, forget: bool = False
    ) -> None:
        active = slot.active
        assert active is not None
        slot.active = None
        slot.last_used = time.monotonic()
        active.sampler.close()
        if forget:
            _llama().llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cache.clear()
        if flush and reason != "cancel":
            text, _ = active.stream.flush()
            if text:
                self._emit({"event": "token", "id": active.request.id, "text": text})
        ended = time.perf_counter_ns()
        first = active.first_token_ns or ended
        self._emit(
            _done(
                active.request.id,
                reason,
                active.prompt_eval_count,
                first - active.started_ns,
                active.generated,
                ended - first,
                prompt_tokens=len(active.request.prompt),
            )
        )

    def _fail(self, slots: list[_Slot], message: str) -> None:
        lib = _llama()
        for slot in slots:
            active = slot.active
            if active is None:
                continue
            slot.active = None
            active.sampler.close()
            lib.llama_memory_seq_rm(self._memory, slot.seq_id, -1, -1)
            slot.cache.clear()
            self._emit(_error(active.request.id, "internal", message))


def _error(request_id: str, kind: str, message: str) -> Frame:
    return {"event": "error", "id": request_id, "kind": kind, "message": message}


def _done(
    request_id: str,
    reason: str,
    prompt_eval_count: int,
    prompt_eval_ns: int,
    eval_count: int,
    eval_ns: int,
    prompt_tokens: int | None = None,
) -> Frame:
    """`prompt_tokens`: the whole prompt; `prompt_eval_count`: the tokens evaluated (the
    rest came from the slot's cache)."""
    return {
        "event": "done",
        "prompt_tokens": prompt_eval_count if prompt_tokens is None else prompt_tokens,
        "id": request_id,
        "done_reason": reason,
        "prompt_eval_count": prompt_eval_count,
        "prompt_eval_duration": max(prompt_eval_ns, 0),
        "eval_count": eval_count,
        "eval_duration": max(eval_ns, 0),
    }


__all__ = [
    "Engine",
    "LoadInfo",
    "RequestError",
    "SamplerChain",
    "SamplingOptions",
    "TextStream",
    "common_prefix",
    "grammar_for",
]
