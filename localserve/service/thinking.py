"""Reasoning apart from the answer: `<think>...</think>` (and the common variants) split
out of generated text as it streams.

A template that makes the model think either opens the tag itself (the generation prompt
ends with `<think>`: the answer starts inside the reasoning) or lets the model write it.
`ThinkingSplitter(started_inside=...)` covers both; text that may be the start of a tag
is held back until it is ruled out, so a tag split across chunks is never shown.
"""

from __future__ import annotations

from dataclasses import dataclass

TAG_PAIRS = (("<think>", "</think>"), ("<thinking>", "</thinking>"), ("<|think|>", "<|/think|>"))
THINK_LEVELS = ("low", "medium", "high")


@dataclass
class Split:
    thinking: str = ""
    content: str = ""


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper prefix of `tag`."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class ThinkingSplitter:
    def __init__(self, *, started_inside: bool = False) -> None:
        self._inside = started_inside
        self._closing = TAG_PAIRS[0][1]
        self._seen_content = False
        self._after_block = False  # drop the whitespace between `</think>` and the answer
        self._held = ""

    def push(self, piece: str) -> Split:
        self._held += piece
        return self._drain(final=False)

    def finish(self) -> Split:
        return self._drain(final=True)

    def _drain(self, *, final: bool) -> Split:
        out = Split()
        while self._held:
            text = self._held
            if self._inside:
                end = text.find(self._closing)
                if end >= 0:
                    out.thinking += text[:end]
                    self._held = text[end + len(self._closing) :]
                    self._inside = False
                    self._after_block = True
                    continue
                keep = 0 if final else _partial_suffix(text, self._closing)
                out.thinking += text[: len(text) - keep]
                self._held = text[len(text) - keep :]
                break
            if not self._seen_content:
                opened = self._opening(text, final)
                if opened is None:  # may still become an opening tag: wait
                    break
                if opened:
                    continue
            if self._after_block:
                text = text.lstrip()
                self._after_block = not text
            out.content += text
            self._seen_content = self._seen_content or bool(text.strip())
            self._held = ""
        return out

    def _opening(self, text: str, final: bool) -> bool | None:
        """At the start of the answer: True if a tag opened (consumed), False if the
        answer is plain content, None while undecided."""
        stripped = text.lstrip()
        for opening, closing in TAG_PAIRS:
            if stripped.startswith(opening):
                self._inside = True
                self._closing = closing
                self._held = stripped[len(opening) :]
                return True
            if not final and opening.startswith(stripped):
                return None
        return False
