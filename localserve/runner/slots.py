"""What the batching engine (localserve.runner.engine) keeps per request and per slot, and
the two small rules it cuts prompts by."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from localserve.runner.sampling import SamplerChain, SamplingOptions
from localserve.runner.text import TextStream


@dataclass
class Request:
    id: str
    prompt: list[int]
    options: SamplingOptions
    grammar: str | None
    stops: list[str]
    num_predict: int
    submitted_ns: int = field(default_factory=time.perf_counter_ns)
    logprobs: int | None = None  # alternatives per token to report (None: no logprobs)
    return_tokens: bool = False  # the done frame carries the prompt and generated ids


@dataclass
class Active:
    """A request running in a slot."""

    request: Request
    sampler: SamplerChain
    stream: TextStream
    fed: int  # prompt tokens already in the KV cache (reused, copied or evaluated)
    started_ns: int
    next_token: int = -1  # sampled, to be fed in the next step (-1: still reading the prompt)
    generated: int = 0
    first_token_ns: int = 0
    reused: int = 0  # prompt tokens taken from a cache (its slot's own, or copied)
    saved: Any = None  # logits to sample the first token from (the whole prompt was cached)
    # Following another slot's read of the same prompt prefix: (slot, its request id, the
    # prompt tokens to copy from it once it has read them).
    follow: tuple[Slot, str, int] | None = None
    output: list[int] = field(default_factory=list)  # generated ids (when return_tokens)

    @property
    def prefilling(self) -> bool:
        return self.fed < len(self.request.prompt)

    @property
    def reading(self) -> bool:
        """Reading its prompt now (not waiting to copy another slot's)."""
        return self.follow is None and self.prefilling

    @property
    def prompt_eval_count(self) -> int:
        """Prompt tokens this request evaluates (or evaluated) itself."""
        return len(self.request.prompt) - self.reused


@dataclass
class Slot:
    seq_id: int
    cache: list[int] = field(default_factory=list)  # tokens at KV positions 0..len-1
    active: Active | None = None
    last_used: float = 0.0
    # The logits after the last prompt token of the slot's latest prompt read (numpy, never
    # changed in place) and that prompt's length: the same prompt again needs no decode.
    logits: Any = None
    logits_at: int = 0

    def trim(self, count: int) -> None:
        """Keep the first `count` cached tokens (the KV beyond is removed by the caller)."""
        del self.cache[count:]
        if self.logits_at > count:
            self.logits, self.logits_at = None, 0


@dataclass
class Part:
    """One sequence's share of a decode: its generated token, or a chunk of its prompt."""

    slot: Slot
    tokens: list[int]
    sample: bool  # sample the next token from the logits of the last one
    prompt: bool


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def prompt_chunk(remaining: int, budget: int) -> int:
    """How many of `remaining` prompt tokens to read with `budget` tokens left: never a cut
    that leaves one token for later, and never a partial chunk under two tokens (0: wait)."""
    count = min(budget, remaining)
    if count < remaining:
        if remaining - count == 1:
            count -= 1
        if count < 2:
            return 0
    return count


__all__ = ["Active", "Part", "Request", "Slot", "common_prefix", "prompt_chunk"]
