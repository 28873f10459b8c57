"""Reasoning split from the answer as it streams, whatever the chunking."""

from __future__ import annotations

import pytest

from localserve.service.thinking import Split, ThinkingSplitter


def _run(pieces: list[str], started_inside: bool = False) -> Split:
    splitter = ThinkingSplitter(started_inside=started_inside)
    total = Split()
    for piece in [*pieces, None]:
        part = splitter.finish() if piece is None else splitter.push(piece)
        total.thinking += part.thinking
        total.content += part.content
    return total


ANSWER = "<think>The user greets me.\nI greet back.</think>\n\nHello there!"


@pytest.mark.parametrize("cut", range(len(ANSWER) + 1))
def test_a_tag_split_anywhere_is_found(cut: int) -> None:
    split = _run([ANSWER[:cut], ANSWER[cut:]])
    assert split.thinking == "The user greets me.\nI greet back."
    assert split.content == "Hello there!"


def test_one_character_at_a_time() -> None:
    split = _run(list(ANSWER))
    assert (split.thinking, split.content) == ("The user greets me.\nI greet back.", "Hello there!")


def test_a_prompt_that_opened_the_block_starts_inside_it() -> None:
    split = _run(["reasoning", " more</th", "ink>answer"], started_inside=True)
    assert (split.thinking, split.content) == ("reasoning more", "answer")


def test_an_answer_without_tags_is_all_content() -> None:
    split = _run(["<b>bold</b> and ", "<thin", "gs>"])
    assert (split.thinking, split.content) == ("", "<b>bold</b> and <things>")


def test_a_tag_later_in_the_answer_is_content() -> None:
    split = _run(["Hello. ", "<think>not reasoning</think>"])
    assert split.thinking == "" and "<think>" in split.content


def test_an_unclosed_block_is_all_thinking() -> None:
    split = _run(["<think>still going"])
    assert (split.thinking, split.content) == ("still going", "")


def test_other_tag_variants() -> None:
    split = _run(["<thinking>hmm</thinking>ok"])
    assert (split.thinking, split.content) == ("hmm", "ok")
