"""Sampling: per-request options (Ollama's names), llama.cpp sampler chains, JSON grammars."""

from __future__ import annotations

import ctypes
import json
from dataclasses import dataclass
from typing import Any

from localserve.runner.errors import RequestError, llama

DEFAULT_SEED = 0xFFFFFFFF  # llama.cpp: pick a random seed
PENALTY_LAST_N = 64  # tokens that repeat/presence/frequency penalties look back on


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

    Plain greedy decoding (temperature 0, no penalties, no grammar) is an argmax over the
    logits in numpy: llama.cpp's sampler first copies the whole vocabulary into a candidate
    array (~0.1 ms a token here); the first maximum wins in both, so the tokens are the same.
    """

    def __init__(self, vocab: Any, n_vocab: int, opts: SamplingOptions, grammar: str | None):
        lib = llama()
        params = lib.llama_sampler_chain_default_params()
        params.no_perf = True
        self._n_vocab = n_vocab
        self._grammar: Any = None
        self._greedy = (
            grammar is None
            and opts.temperature <= 0
            and opts.repeat_penalty == 1.0
            and not opts.presence_penalty
            and not opts.frequency_penalty
        )
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
        llama().llama_sampler_chain_add(self._chain, sampler)

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
        lib = llama()
        if self._grammar is None and not self._greedy:
            return int(lib.llama_sampler_sample(self._chain, ctx, index))
        import numpy as np

        logits = np.ctypeslib.as_array(lib.llama_get_logits_ith(ctx, index), (self._n_vocab,))
        return self.sample_logits(logits)

    def sample_logits(self, logits: Any) -> int:
        """Sample from a vector of logits (numpy, n_vocab floats; kept from an earlier
        decode) and accept the token: the same token `sample` would pick from them."""
        if self._greedy:
            import numpy as np

            return int(np.argmax(logits))
        lib = llama()
        if not hasattr(self, "_data"):
            self._setup_candidates(lib)
        token = self._draw(lib, logits, constrained=False)
        if self._grammar is not None:
            if not self._allowed(lib, token):
                token = self._draw(lib, logits, constrained=True)
            lib.llama_sampler_accept(self._grammar, token)
        lib.llama_sampler_accept(self._chain, token)
        return token

    def _draw(self, lib: Any, logits: Any, *, constrained: bool) -> int:
        """What llama_sampler_sample does: all tokens as candidates, then the chain."""
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
        lib = llama()
        if self._chain:
            lib.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar:
            lib.llama_sampler_free(self._grammar)
            self._grammar = None


__all__ = ["DEFAULT_SEED", "SamplerChain", "SamplingOptions", "grammar_for"]
