"""Which stop string ended a generation (the `stop_sequence` of the runner's `done`
frame; Anthropic's `stop_reason: "stop_sequence"` names it)."""

from __future__ import annotations

from localserve.runner.text import TextStream


def test_the_earliest_stop_string_is_the_one_matched() -> None:
    stream = TextStream(["world", "lo w", "zz"])
    assert stream.push(b"hel") == ("he", False)  # "l" may start "lo w": held back
    assert stream.matched is None
    assert stream.push(b"lo world") == ("l", True)
    assert stream.matched == "lo w"


def test_no_stop_string_matched_leaves_it_unset() -> None:
    stream = TextStream(["zz"])
    assert stream.push(b"abc") == ("abc", False)
    assert stream.flush() == ("", False)
    assert stream.matched is None
