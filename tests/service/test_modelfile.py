"""Modelfiles: every directive, quoting, multi-line values, errors naming their line, the
printed form reading back equal, and the /api/create request they mean."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localserve.errors import BadRequestError
from localserve.service.modelfile import (
    Modelfile,
    ModelfileMessage,
    from_kind,
    modelfile_to_create_request,
    parse_modelfile,
    render_modelfile,
)

DIGEST = "sha256:" + "ab" * 32

FULL = '''# A Modelfile with every directive
FROM llama3.2:1b
PARAMETER temperature 0.7
PARAMETER top_k 40
PARAMETER num_ctx 4096
PARAMETER seed 42
PARAMETER stop "<|eot_id|>"
PARAMETER stop <|end|>
TEMPLATE """{{ if .System }}<|system|>
{{ .System }}{{ end }}<|user|>
{{ .Prompt }}"""
SYSTEM You are a pirate.
MESSAGE user Who are you?
MESSAGE assistant "Arr, a pirate!"
LICENSE """MIT License

Permission is hereby granted..."""
LICENSE Apache-2.0
'''


def test_every_directive_is_read() -> None:
    parsed = parse_modelfile(FULL)
    assert parsed == Modelfile(
        from_="llama3.2:1b",
        template="{{ if .System }}<|system|>\n{{ .System }}{{ end }}<|user|>\n{{ .Prompt }}",
        system="You are a pirate.",
        parameters={
            "temperature": 0.7,
            "top_k": 40,
            "num_ctx": 4096,
            "seed": 42,
            "stop": ["<|eot_id|>", "<|end|>"],
        },
        messages=[
            ModelfileMessage("user", "Who are you?"),
            ModelfileMessage("assistant", "Arr, a pirate!"),
        ],
        licenses=["MIT License\n\nPermission is hereby granted...", "Apache-2.0"],
    )


def test_directives_are_case_insensitive_and_blank_lines_and_comments_skipped() -> None:
    text = "\n  # comment\n\nfrom base\n\tSystem  hello there  \nparameter TOP_P 0.5\n"
    with pytest.raises(BadRequestError, match="unknown parameter 'TOP_P'"):
        parse_modelfile(text)  # parameter names are Ollama's: lower case
    parsed = parse_modelfile(text.replace("TOP_P", "top_p"))
    assert (parsed.from_, parsed.system, parsed.parameters) == (
        "base",
        "hello there",
        {"top_p": 0.5},
    )


def test_values_are_typed_like_request_options() -> None:
    parsed = parse_modelfile(
        "FROM m\nPARAMETER temperature 1\nPARAMETER repeat_penalty 1.1\nPARAMETER num_predict -1\n"
    )
    assert parsed.parameters == {"temperature": 1, "repeat_penalty": 1.1, "num_predict": -1}
    assert isinstance(parsed.parameters["temperature"], int)


def test_options_without_effect_here_are_accepted_and_dropped() -> None:
    parsed = parse_modelfile("FROM m\nPARAMETER num_thread 8\nPARAMETER use_mmap false\n")
    assert parsed.parameters == {}


def test_quoted_values_keep_spaces_and_may_span_lines() -> None:
    parsed = parse_modelfile('FROM m\nSYSTEM "  padded \\"quoted\\" \\\\ \nnext line"\n')
    assert parsed.system == '  padded "quoted" \\ \nnext line'


def test_triple_quoted_values_are_taken_as_is() -> None:
    parsed = parse_modelfile('FROM m\nTEMPLATE """\n  {{ "x\\n" }}"quoted"\n"""\n')
    assert parsed.template == '\n  {{ "x\\n" }}"quoted"\n'


def test_windows_line_endings_are_read() -> None:
    assert parse_modelfile("FROM m\r\nSYSTEM hi\r\n").system == "hi"


def test_an_empty_stop_is_dropped_and_a_message_may_be_empty() -> None:
    parsed = parse_modelfile('FROM m\nPARAMETER stop ""\nMESSAGE assistant ""\n')
    assert parsed.parameters == {"stop": []}
    assert parsed.messages == [ModelfileMessage("assistant", "")]


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("FROM m\nFORM x\n", "Modelfile line 2: unknown directive 'FORM' (did you mean FROM?)"),
        ("FROM m\n\nADAPTER ./lora.gguf\n", "Modelfile line 3: ADAPTER is not supported"),
        ("FROM m\nPARAMETER top_k forty\n", "Modelfile line 2: PARAMETER top_k must be an integer"),
        ("FROM m\nPARAMETER temperature hot\n", "line 2: PARAMETER temperature must be a number"),
        ("FROM m\nPARAMETER temperature nan\n", "line 2: PARAMETER temperature must be a finite"),
        (
            "FROM m\nPARAMETER temprature 1\n",
            "unknown parameter 'temprature' (did you mean temperature?)",
        ),
        ("FROM m\nPARAMETER use_mmap maybe\n", "line 2: PARAMETER use_mmap must be true or false"),
        ("FROM m\nPARAMETER num_ctx 0\n", "Modelfile line 2: option 'num_ctx' must be between"),
        ("FROM m\nPARAMETER\n", "line 2: PARAMETER needs a name and a value"),
        ("FROM m\nPARAMETER seed\n", "line 2: PARAMETER seed needs a value"),
        (
            "FROM m\nMESSAGE tool hi\n",
            "line 2: MESSAGE role must be one of system, user, assistant",
        ),
        ('FROM m\nSYSTEM """never\nclosed\n', 'Modelfile line 2: SYSTEM: no closing """'),
        ('FROM m\nSYSTEM "never closed\n', 'Modelfile line 2: SYSTEM: no closing "'),
        ('FROM m\nSYSTEM "a" b\n', "line 2: unexpected text after the quoted SYSTEM"),
        ('FROM m\nTEMPLATE """a\nb""" c\n', "line 3: unexpected text after the quoted TEMPLATE"),
        ("FROM a\nFROM b\n", "Modelfile line 2: FROM given twice (first on line 1)"),
        ("FROM a\nSYSTEM x\nSYSTEM y\n", "line 3: SYSTEM given twice (first on line 2)"),
        ("FROM\n", "Modelfile line 1: FROM needs"),
        ("SYSTEM only\n", "Modelfile has no FROM line"),
        ("", "Modelfile has no FROM line"),
    ],
)
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(BadRequestError) as info:
        parse_modelfile(text)
    assert info.value.status == 400
    assert message in info.value.message


# ---- printing it back --------------------------------------------------------------------


def test_the_printed_modelfile_reads_back_equal() -> None:
    parsed = parse_modelfile(FULL)
    text = render_modelfile(parsed, header="Modelfile generated by localserve\nFROM base:latest")
    assert text.startswith(
        "# Modelfile generated by localserve\n# FROM base:latest\nFROM llama3.2:1b\n"
    )
    assert 'PARAMETER stop "<|eot_id|>"\n' in text
    assert parse_modelfile(text) == parsed


def test_awkward_values_are_quoted_so_that_they_read_back() -> None:
    awkward = [
        "",
        " leading",
        "trailing ",
        '"starts with a quote',
        'ends with a quote"',
        'has """ triple quotes',
        'both """ and a final "',
        "back\\slash",
        "# not a comment",
        "multi\nline",
    ]
    for value in awkward:
        modelfile = Modelfile(
            from_="m",
            template=value,
            system=value,
            parameters={"stop": [value or "x"]},
            messages=[ModelfileMessage("user", value)],
            licenses=[value],
        )
        assert parse_modelfile(render_modelfile(modelfile)) == modelfile, value


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"), max_size=40)


@settings(max_examples=200, deadline=None)
@given(
    system=st.none() | _text,
    template=st.none() | _text,
    stops=st.lists(_text.filter(bool), max_size=3),
    temperature=st.none() | st.floats(0, 2, allow_nan=False),
    top_k=st.none() | st.integers(0, 1000),
    messages=st.lists(
        st.tuples(st.sampled_from(["system", "user", "assistant"]), _text), max_size=3
    ),
    licenses=st.lists(_text, max_size=2),
)
def test_any_modelfile_round_trips(
    system: str | None,
    template: str | None,
    stops: list[str],
    temperature: float | None,
    top_k: int | None,
    messages: list[tuple[str, str]],
    licenses: list[str],
) -> None:
    parameters: dict[str, object] = {}
    if temperature is not None:
        parameters["temperature"] = temperature
    if top_k is not None:
        parameters["top_k"] = top_k
    if stops:
        parameters["stop"] = stops
    modelfile = Modelfile(
        "hf.co/Org/Repo-GGUF:Q4_K_M",
        template,
        system,
        parameters,
        [ModelfileMessage(role, content) for role, content in messages],
        licenses,
    )
    assert parse_modelfile(render_modelfile(modelfile)) == modelfile


# ---- what FROM means and the /api/create request ------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("llama3.2", "name"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M", "name"),
        ("team/model:v1", "name"),
        (DIGEST, "digest"),
        ("sha256-" + "ab" * 32, "digest"),
        ("@" + DIGEST, "digest"),
        ("./model.gguf", "path"),
        ("../models/x.gguf", "path"),
        ("/abs/path/model", "path"),
        ("~/models/m.gguf", "path"),
        ("weights/model.GGUF", "path"),
        ("C:\\models\\m.gguf", "path"),
    ],
)
def test_from_kinds(value: str, kind: str) -> None:
    assert from_kind(value) == kind


def test_create_request_from_a_model_name() -> None:
    request = modelfile_to_create_request(parse_modelfile(FULL))
    assert request == {
        "from": "llama3.2:1b",
        "template": "{{ if .System }}<|system|>\n{{ .System }}{{ end }}<|user|>\n{{ .Prompt }}",
        "system": "You are a pirate.",
        "parameters": {
            "temperature": 0.7,
            "top_k": 40,
            "num_ctx": 4096,
            "seed": 42,
            "stop": ["<|eot_id|>", "<|end|>"],
        },
        "messages": [
            {"role": "user", "content": "Who are you?"},
            {"role": "assistant", "content": "Arr, a pirate!"},
        ],
        "license": ["MIT License\n\nPermission is hereby granted...", "Apache-2.0"],
    }


def test_create_request_from_a_blob_digest_names_its_file() -> None:
    request = modelfile_to_create_request(parse_modelfile(f"FROM {DIGEST}\n"), "tiny.gguf")
    assert request == {"files": {"tiny.gguf": DIGEST}}
    dashed = parse_modelfile("FROM sha256-" + "ab" * 32)
    assert modelfile_to_create_request(dashed) == {"files": {"model.gguf": DIGEST}}


def test_create_request_refuses_a_path_and_a_bad_name() -> None:
    with pytest.raises(BadRequestError, match=r"names a file on the client.*POST /api/blobs"):
        modelfile_to_create_request(parse_modelfile("FROM ./model.gguf\n"))
    with pytest.raises(BadRequestError, match="invalid model name"):
        modelfile_to_create_request(parse_modelfile("FROM bad name with spaces\n"))
