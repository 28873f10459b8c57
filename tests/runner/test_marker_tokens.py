"""Control tokens that mark tool calls (Mistral's [TOOL_CALLS], Llama's <|python_tag|>)
reach the daemon as text, so its parsers can see them; other control tokens render as
nothing, as llama.cpp renders them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import runner_harness
from gguf_factory import write_tiny_gguf

CONTROLS = ("[TOOL_CALLS]", "<|python_tag|>", "<|turn_marker|>")


@pytest.fixture
def runner(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> Iterator[runner_harness.RunnerProcess]:
    starter = runner_harness.runner_starter(runner_harness.RunnerProcess, subprocess_env, tmp_path)
    proc = next(starter)()
    assert proc.recv()["event"] == "ready"
    yield proc
    for _ in starter:
        pass


def _text_of(runner: runner_harness.RunnerProcess, model: Path, tokens: int) -> tuple[str, int]:
    runner.send({"op": "load", "path": str(model), "num_ctx": 128, "num_threads": 1})
    assert runner.recv()["event"] == "loaded"
    runner.send(
        {"op": "generate", "id": "g", "prompt": "x", "options": {"num_predict": tokens, "seed": 1}}
    )
    text = ""
    while True:
        frame = runner.recv()
        if frame["event"] == "token":
            text += frame["text"]
        else:
            assert frame["event"] == "done", frame
            return text, int(frame["eval_count"])


@pytest.mark.parametrize("marker", ["[TOOL_CALLS]", "<|python_tag|>"])
def test_a_tool_call_marker_is_generated_as_text(
    runner: runner_harness.RunnerProcess, tmp_path: Path, marker: str
) -> None:
    model = write_tiny_gguf(tmp_path / "m.gguf", control_tokens=CONTROLS, answer_token=marker)
    text, count = _text_of(runner, model, 3)
    assert (text, count) == (marker * 3, 3)


def test_other_control_tokens_render_as_nothing(
    runner: runner_harness.RunnerProcess, tmp_path: Path
) -> None:
    model = write_tiny_gguf(
        tmp_path / "c.gguf", control_tokens=CONTROLS, answer_token="<|turn_marker|>"
    )
    text, count = _text_of(runner, model, 3)
    assert (text, count) == ("", 3)
