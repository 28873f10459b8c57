"""Token bytes to text for one generation: whole UTF-8 characters only, and never text that
may still turn out to start a stop string."""

from __future__ import annotations

import codecs

# Control tokens kept as text when generated: the markers of tool calls and reasoning the
# daemon parses (localserve.service.tools and .thinking). Other control tokens (turn
# markers and the like) render as nothing, as llama.cpp renders them without `special`.
MARKER_TOKENS = frozenset(
    marker.encode()
    for marker in (
        "[TOOL_CALLS]",
        "[ARGS]",
        "[CALL_ID]",
        "<|python_tag|>",
        "<tool_call>",
        "</tool_call>",
        "<think>",
        "</think>",
    )
)


class TextStream:
    """Token bytes in, text out: complete UTF-8 only, and nothing that may start a stop string.

    `push` returns (text to send now, whether a stop string was hit). After a hit, the text
    before the stop string has been returned and the rest is dropped.
    """

    def __init__(self, stops: list[str] | None = None) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in stops or [] if s]
        self._held = ""
        self.matched: str | None = None  # the stop string that ended the text, once hit

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
        hits = [(i, stop) for stop in self._stops if (i := held.find(stop)) >= 0]
        if hits:
            at, self.matched = min(hits, key=lambda hit: hit[0])
            self._held = ""
            return held[:at], True
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


__all__ = ["TextStream"]
