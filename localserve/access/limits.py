"""Per-key limits: requests per minute, tokens per minute, concurrent requests.

Requests and tokens are token buckets holding a minute's allowance and refilling
continuously (a key with `rpm=60` may send 60 at once, then one a second). A request
takes one request token when it is admitted, and is refused while the token bucket is
empty; its prompt and generated tokens are taken when it ends (they are only known then),
so the bucket may go below zero and the key waits until it refills. Over a limit: a 429
(`RateLimitedError`) with `Retry-After` and OpenAI's headers:

    x-ratelimit-limit-requests      x-ratelimit-limit-tokens
    x-ratelimit-remaining-requests  x-ratelimit-remaining-tokens
    x-ratelimit-reset-requests      x-ratelimit-reset-tokens     (until full: "1s", "6m0s")

Admitted requests carry the same headers. Only generation and embedding routes count.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from localserve.access.keys import KeyLimits
from localserve.errors import RateLimitedError

WINDOW_S = 60.0


def reset_text(seconds: float) -> str:
    """OpenAI's reset format: "0s", "1.5s", "6m0s", "1h2m3s"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        rounded = round(seconds, 1)
        return f"{rounded:g}s"
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes}m{secs}s" if hours else f"{minutes}m{secs}s"


@dataclass
class Bucket:
    """A token bucket of `capacity`, refilling `capacity` per minute."""

    capacity: int
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / WINDOW_S
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        """Seconds until the level reaches `amount` (0 when it has)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / (self.capacity / WINDOW_S)

    def seconds_until_full(self) -> float:
        return self.seconds_until(self.capacity)


@dataclass
class KeyState:
    limits: KeyLimits
    requests: Bucket | None
    tokens: Bucket | None
    in_flight: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


class RateLimiter:
    """The buckets of every key (by name). One event loop uses it: no locking."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._keys: dict[str, KeyState] = {}

    def _state(self, name: str, limits: KeyLimits) -> KeyState:
        now = self.clock()
        state = self._keys.get(name)
        if state is None or state.limits != limits:  # new, or its limits changed
            state = KeyState(
                limits=limits,
                requests=Bucket(limits.rpm, limits.rpm, now) if limits.rpm else None,
                tokens=Bucket(limits.tpm, limits.tpm, now) if limits.tpm else None,
                in_flight=state.in_flight if state else 0,
            )
            self._keys[name] = state
        for bucket in (state.requests, state.tokens):
            if bucket is not None:
                bucket.refill(now)
        return state

    def headers(self, name: str, limits: KeyLimits) -> dict[str, str]:
        """The x-ratelimit-* headers of a key now (none for a key without limits)."""
        state = self._state(name, limits)
        return _headers(state)

    def admit(self, name: str, limits: KeyLimits) -> dict[str, str]:
        """Take one request (raises RateLimitedError when over a limit); the headers to
        send. The caller must call `finish` once the request ends."""
        state = self._state(name, limits)
        refusal: tuple[str, float] | None = None
        if state.requests is not None and state.requests.level < 1:
            wait = state.requests.seconds_until(1)
            refusal = (f"{limits.rpm} requests per minute", wait)
        elif state.tokens is not None and state.tokens.level <= 0:
            wait = state.tokens.seconds_until(1)
            refusal = (f"{limits.tpm} tokens per minute", wait)
        elif limits.concurrent and state.in_flight >= limits.concurrent:
            refusal = (f"{limits.concurrent} concurrent requests", 1.0)
        if refusal is not None:
            what, wait = refusal
            kind = what.split(" ", 1)[1]
            state.rejected[kind] = state.rejected.get(kind, 0) + 1
            retry_after = max(1, math.ceil(wait))
            raise RateLimitedError(
                f"rate limit reached for key '{name}': {what}; retry in {retry_after} s",
                retry_after=retry_after,
                headers=_headers(state),
            )
        if state.requests is not None:
            state.requests.level -= 1
        state.in_flight += 1
        return _headers(state)

    def finish(self, name: str, limits: KeyLimits, tokens: int) -> None:
        """A request of `name` ended, having used `tokens` (prompt + generated)."""
        state = self._state(name, limits)
        state.in_flight = max(0, state.in_flight - 1)
        if state.tokens is not None:
            state.tokens.level -= tokens

    def in_flight(self, name: str) -> int:
        state = self._keys.get(name)
        return state.in_flight if state else 0


def _headers(state: KeyState) -> dict[str, str]:
    headers: dict[str, str] = {}
    for kind, bucket in (("requests", state.requests), ("tokens", state.tokens)):
        if bucket is None:
            continue
        headers[f"x-ratelimit-limit-{kind}"] = str(bucket.capacity)
        headers[f"x-ratelimit-remaining-{kind}"] = str(max(0, math.floor(bucket.level)))
        headers[f"x-ratelimit-reset-{kind}"] = reset_text(bucket.seconds_until_full())
    return headers
