"""Which version serves one request: a weighted choice, sticky per conversation.

Without a key each request draws from `rng` (a `random.Random`; tests seed it). With a
key (the client's `X-Localserve-Session` header, or OpenAI's `user` field) the key is
hashed to a point in [0, 1) and the point picks the target whose slice of the weights
holds it, so every request of one conversation lands on the same version (and reuses its
prompt cache) as long as the weights stay. Slices are laid out in the targets' order; a
rollout keeps the stable version first and the candidate last, so raising the
candidate's weight only moves the conversations at the boundary to it, never back.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from localserve.routing.table import Target


def sticky_point(key: str) -> float:
    """A stable point in [0, 1) for a conversation key (the same in every process)."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def pick_at(targets: Sequence[Target], point: float) -> str:
    """The target whose slice of the cumulative weights holds `point` (0 <= point < 1);
    zero-weight targets never win."""
    total = sum(t.weight for t in targets)
    if total <= 0:
        raise ValueError("the weights are all zero")
    threshold = point * total
    running = 0.0
    for target in targets:
        if target.weight <= 0:
            continue
        running += target.weight
        if threshold < running:
            return target.model
    return next(t.model for t in reversed(targets) if t.weight > 0)  # float rounding


def choose(targets: Sequence[Target], key: str | None, rng: random.Random) -> str:
    """The version for one request: sticky when there is a key, else a weighted draw."""
    point = sticky_point(key) if key else rng.random()
    return pick_at(targets, point)
