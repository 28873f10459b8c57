"""The interactive `run` session: command parsing, parameters, multi-line input."""

from __future__ import annotations

from collections.abc import Callable

import pytest

# isort: split
from localserve.cli import repl
from localserve.cli.repl import Command, ReplError, parse_command


def test_plain_text_is_a_message() -> None:
    assert parse_command("Why is the sky blue?") == Command("message", text="Why is the sky blue?")


def test_double_slash_escapes_a_message_starting_with_slash() -> None:
    assert parse_command("//etc/hosts is a file") == Command("message", text="/etc/hosts is a file")


@pytest.mark.parametrize(
    ("line", "kind"),
    [("/bye", "bye"), ("/exit", "bye"), ("/clear", "clear"), ("/?", "help"), ("/help", "help")],
)
def test_session_commands(line: str, kind: str) -> None:
    assert parse_command(line).kind == kind


def test_set_parameter_keeps_name_and_values() -> None:
    assert parse_command("/set parameter temperature 0.7") == Command(
        "set_parameter", ("temperature", "0.7")
    )


def test_set_system_keeps_the_whole_text() -> None:
    command = parse_command("/set system You are a pirate.  Answer briefly.")
    assert command == Command("set_system", text="You are a pirate.  Answer briefly.")


def test_show_defaults_to_info() -> None:
    assert parse_command("/show") == Command("show", ("info",))
    assert parse_command("/show template") == Command("show", ("template",))


@pytest.mark.parametrize(
    "line", ["/nope", "/set", "/set parameter", "/set colour red", "/show everything"]
)
def test_bad_commands_are_errors(line: str) -> None:
    with pytest.raises(ReplError):
        parse_command(line)


@pytest.mark.parametrize(
    ("name", "values", "expected"),
    [
        ("temperature", ["0.7"], 0.7),
        ("num_ctx", ["4096"], 4096),
        ("seed", ["42"], 42),
        ("num_predict", ["-1"], -1),
        ("stop", ["<|im_end|>", "###"], ["<|im_end|>", "###"]),
    ],
)
def test_parameters_are_typed(name: str, values: list[str], expected: object) -> None:
    assert repl.parse_parameter(name, values) == (name, expected)


def test_bad_parameters_explain_themselves() -> None:
    with pytest.raises(ReplError, match="unknown parameter 'colour'"):
        repl.parse_parameter("colour", ["red"])
    with pytest.raises(ReplError, match="invalid value for num_ctx"):
        repl.parse_parameter("num_ctx", ["big"])
    with pytest.raises(ReplError, match="takes one value"):
        repl.parse_parameter("temperature", ["1", "2"])


def test_conversation_keeps_history_and_clears_it() -> None:
    conversation = repl.Conversation()
    conversation.record("hi", "hello")
    conversation.system = "Be brief."
    messages = conversation.chat_messages("again")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "again"
    conversation.clear()
    assert conversation.chat_messages("x") == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "x"},
    ]


def test_stop_parameters_accumulate() -> None:
    conversation = repl.Conversation()
    conversation.set_parameter(("stop", "a"))
    conversation.set_parameter(("stop", "b", "c"))
    conversation.set_parameter(("temperature", "0"))
    assert conversation.options == {"stop": ["a", "b", "c"], "temperature": 0.0}


def lines(*items: str) -> Callable[[str], str]:
    queue = list(items)
    prompts: list[str] = []

    def read(prompt: str) -> str:
        prompts.append(prompt)
        if not queue:
            raise EOFError
        return queue.pop(0)

    return read


def test_triple_quotes_span_lines() -> None:
    assert repl.read_message(lines('"""first', "second", 'third"""')) == "first\nsecond\nthird"
    assert repl.read_message(lines('"""', "only", '"""')) == "only"


def test_triple_quotes_on_one_line() -> None:
    assert repl.read_message(lines('"""all in one"""')) == "all in one"


def test_single_line_is_returned_as_is() -> None:
    assert repl.read_message(lines("hello")) == "hello"


def test_unfinished_multiline_raises_eof() -> None:
    with pytest.raises(EOFError):
        repl.read_message(lines('"""start', "more"))
