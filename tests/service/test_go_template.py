"""Ollama Go templates translated to Jinja: library templates render what Ollama renders for a
sample conversation, each construct behaves as in Go, and what is not supported is a 400
naming the construct and its position."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localserve.errors import BadRequestError
from localserve.service.go_template import is_go_template, translate_go_template
from localserve.service.prompts import check_template, render_chat

SYSTEM = "You are a helpful assistant."
CONVERSATION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi, how can I help?"},
    {"role": "user", "content": "Tell me a joke."},
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in the user's city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def render(template: str, messages: list[dict[str, Any]] | None = None) -> str:
    """Translate, then render as the daemon does (prompts.render_chat)."""
    return render_chat(
        translate_go_template(template), CONVERSATION if messages is None else messages
    )


def render_with(template: str, **values: Any) -> str:
    """Render with extra values (tools), in the daemon's Jinja settings."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(translate_go_template(template)).render(**values)


# ---- Ollama library templates ----------------------------------------------------------------

CHATML = """{{- range .Messages }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""

LLAMA3 = """{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}<|eot_id|>"""

LLAMA32 = """<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023

{{ if .System }}{{ .System }}
{{- end }}
{{- if .Tools }}@TOOL_RESPONSE@

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

@GIVEN_FUNCTIONS@

@RESPOND_FORMAT@

{{ range $.Tools }}
{{- . }}
{{ end }}
{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""
LLAMA32 = (
    LLAMA32.replace(
        "@TOOL_RESPONSE@",
        "When you receive a tool call response, use the output to format an answer to the "
        "orginal user question.",
    )
    .replace(
        "@GIVEN_FUNCTIONS@",
        "Given the following functions, please respond with a JSON for a function call with "
        "its proper arguments that best answers the given prompt.",
    )
    .replace(
        "@RESPOND_FORMAT@",
        'Respond in the format {"name": function name, "parameters": dictionary of argument '
        "name and its value}. Do not use variables.",
    )
)

QWEN25 = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

@FOR_EACH_CALL@
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""
QWEN25 = QWEN25.replace(
    "@FOR_EACH_CALL@",
    "For each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:",
)

PHI3 = """{{ if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}{{ if .Prompt }}<|user|>
{{ .Prompt }}<|end|>
{{ end }}<|assistant|>
{{ .Response }}<|end|>
"""

GEMMA2 = """<start_of_turn>user
{{ if .System }}{{ .System }} {{ end }}{{ .Prompt }}<end_of_turn>
<start_of_turn>model
{{ .Response }}<end_of_turn>
"""

MISTRAL = """{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (eq (len (slice $.Messages $index)) 1) $.Tools }}@AVAILABLE_TOOLS@
{{- end }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]
{{- end }}</s>
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]
{{- end }} {{ .Response }}
{{- if .Response }}</s>
{{- end }}"""
MISTRAL = MISTRAL.replace("@AVAILABLE_TOOLS@", "[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]")

LIBRARY = [
    pytest.param(
        CHATML,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi, how can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n",
        id="chatml",
    ),
    pytest.param(
        LLAMA3,
        "<|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi, how can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        id="llama3",
    ),
    pytest.param(
        LLAMA32,
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n"
        "You are a helpful assistant.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHi, how can I help?<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTell me a joke.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        id="llama3.2",
    ),
    pytest.param(
        QWEN25,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\nHi, how can I help?<|im_end|>\n"
        "<|im_start|>user\nTell me a joke.<|im_end|>\n"
        "<|im_start|>assistant\n",
        id="qwen2.5",
    ),
    pytest.param(
        PHI3,
        "<|system|>\nYou are a helpful assistant.<|end|>\n<|user|>\nHello!<|end|>\n"
        "<|assistant|>\nHi, how can I help?<|end|>\n"
        "<|user|>\nTell me a joke.<|end|>\n<|assistant|>\n",
        id="phi3",
    ),
    pytest.param(
        GEMMA2,
        "<start_of_turn>user\nYou are a helpful assistant. Hello!<end_of_turn>\n"
        "<start_of_turn>model\nHi, how can I help?<end_of_turn>\n"
        "<start_of_turn>user\nTell me a joke.<end_of_turn>\n<start_of_turn>model\n",
        id="gemma2",
    ),
    pytest.param(
        MISTRAL,
        "[INST] Hello![/INST] Hi, how can I help?</s>"
        "[INST] You are a helpful assistant.\n\nTell me a joke.[/INST] ",
        id="mistral",
    ),
]


@pytest.mark.parametrize(("template", "expected"), LIBRARY)
def test_library_templates_render_what_ollama_renders(template: str, expected: str) -> None:
    assert is_go_template(template)
    jinja = translate_go_template(template)
    check_template(jinja)
    assert render_chat(jinja, CONVERSATION) == expected


@pytest.mark.parametrize(("template", "expected"), LIBRARY)
def test_library_templates_render_a_single_question(template: str, expected: str) -> None:
    prompt = render(template, [{"role": "user", "content": "Tell me a joke."}])
    assert prompt.endswith(expected[-len(prompt) :][-20:])  # the same generation prompt
    assert "Tell me a joke." in prompt
    assert "Hello!" not in prompt


def test_qwen_template_offers_tools_and_shows_tool_calls_and_results() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
        },
        {"role": "tool", "content": "sunny"},
        {"role": "tool", "content": "22C"},
    ]
    prompt = render_with(QWEN25, messages=messages, tools=TOOLS)
    tools_part = prompt.split("<tools>\n")[1].split("\n</tools>")[0]
    assert json.loads(tools_part) == {"type": "function", "function": TOOLS[0]["function"]}
    assert "The weather in the user's city" in tools_part  # JSON as Go prints it: no \\u0027
    assert (
        '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": '
        '{"city":"Paris"}}\n</tool_call><|im_end|>\n'  # compact, as Go's json prints
    ) in prompt
    # Two tool messages stay two (Ollama merges consecutive messages, except tool ones).
    assert prompt.count("<tool_response>") == 2
    assert prompt.endswith("22C\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_mistral_template_lists_tools_as_json_before_the_last_question() -> None:
    prompt = render_with(MISTRAL, messages=CONVERSATION, tools=TOOLS)
    listed = prompt.split("[AVAILABLE_TOOLS] ")[1].split("[/AVAILABLE_TOOLS]")[0]
    assert json.loads(listed) == TOOLS
    assert prompt.index("[AVAILABLE_TOOLS]") > prompt.index("Hi, how can I help?")


def test_llama32_template_writes_the_tool_call_json() -> None:
    messages = [
        *CONVERSATION,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}],
        },
        {"role": "tool", "content": "snow"},
    ]
    prompt = render_with(LLAMA32, messages=messages, tools=TOOLS)
    assert '\n{"name": "get_weather", "parameters": {"city":"Oslo"}}<|eot_id|>' in prompt
    assert prompt.endswith(
        "<|start_header_id|>ipython<|end_header_id|>\n\nsnow<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert "You are a helpful assistant with tool calling capabilities." in prompt


# ---- Ollama's execution around the template --------------------------------------------------


def test_consecutive_messages_of_one_role_are_merged_and_systems_joined() -> None:
    template = "{{ .System }}|{{ range .Messages }}[{{ .Role }}:{{ .Content }}]{{ end }}"
    messages = [
        {"role": "system", "content": "A"},
        {"role": "system", "content": "B"},
        {"role": "user", "content": "1"},
        {"role": "user", "content": "2"},
    ]
    assert render(template, messages) == "A\n\nB|[system:A\n\nB][user:1\n\n2]"


def test_a_legacy_template_without_response_gets_it_appended() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
    ]
    assert render("{{ .System }}|{{ .Prompt }}", messages) == "|ab|c"


def test_a_legacy_template_continues_a_trailing_assistant_message() -> None:
    messages = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A partial"}]
    assert render(PHI3, messages) == "<|user|>\nQ<|end|>\n<|assistant|>\nA partial"


def test_the_last_legacy_turn_is_cut_inside_branches_too() -> None:
    template = (
        "{{ if .Prompt }}<u>{{ .Prompt }}</u>{{ end }}<a>{{ if .System }}{{ .Response }}</a>"
        "{{ end }}!"
    )
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "q"},
    ]
    assert render(template, messages) == "<u>q</u><a>"


# ---- constructs ------------------------------------------------------------------------------

SYSTEM_ONLY = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("a  \n {{- .System -}} \n  b{{ .Messages | len }}", "aSb2"),
        ("{{ if not .System }}none{{ else }}[{{ .System }}]{{ end }}{{ .Messages | len }}", "[S]2"),
        ('{{ or .Prompt "dflt" }} {{ and .System "yes" }}{{ len .Messages }}', "dflt yes2"),
        (
            '{{ range .Messages }}{{ if eq .Role "user" "human" }}U{{ else if eq .Role "system" }}'
            "S{{ else }}?{{ end }}{{ end }}",
            "SU",
        ),
        ("{{ range .Tools }}x{{ else }}no tools{{ end }}{{ len .Messages }}", "no tools2"),
        ("{{ $n := len .Messages }}{{ $n }}{{ $n = 5 }}{{ $n }}", "25"),
        ("{{ $c := 0 }}{{ range .Messages }}{{ $c = .Content }}{{ end }}{{ $c }}", "U"),
        ("{{ range $i, $m := .Messages }}{{ $i }}={{ $m.Role }},{{ end }}", "0=system,1=user,"),
        ("{{ range .Messages }}<{{ $.System }}>{{ end }}", "<S><S>"),
        ("{{ with .System }}[{{ . }}]{{ else }}none{{ end }}{{ len .Messages }}", "[S]2"),
        ("{{ with $s := .System }}{{ $s }}{{ $s }}{{ end }}{{ len .Messages }}", "SS2"),
        ("{{ (index .Messages 1).Content }}{{ len (slice .Messages 1) }}", "U1"),
        ('{{ printf "%s=%d%%" "n" (len .Messages) }}', "n=2%"),
        (
            "{{ eq 1 1 }} {{ lt 1 2 }} {{ ne .System .System }}{{ len .Messages }}",
            "true true false2",
        ),
        (
            "{{ json .System }} {{ json .Messages }}",
            '"S" [{"content":"S","role":"system"},{"content":"U","role":"user"}]',
        ),
        ('{{ json "<a & b>" }}{{ len .Messages }}', '"\\u003ca \\u0026 b\\u003e"2'),
        (
            '{{ range .Messages }}{{ if eq .Role "user" }}{{ break }}{{ end }}'
            "{{ .Role }};{{ end }}",
            "system;",
        ),
        (
            '{{ range .Messages }}{{ if eq .Role "system" }}{{ continue }}{{ end }}'
            "{{ .Role }};{{ end }}",
            "user;",
        ),
        ("a{{/* a comment */}}b {{- /* trimmed */ -}} c{{ len .Messages }}", "abc2"),
        ('{{ `raw\\n` }}{{ "tab\\there" }}{{ len .Messages }}', "raw\\ntab\there2"),
        (
            '{{ "{{ not jinja }}" }} {% raw %} {# x #}{{ len .Messages }}',
            "{{ not jinja }} {% raw %} {# x #}2",
        ),
        ("line\r\nend{{ len .Messages }}\n", "line\r\nend2\n"),
        ("{{ .Missing }}|{{ .Messages.Nothing.Deeper }}|{{ len .Messages }}", "||2"),
        ("{{ print 1 2 }} {{ println .System }}{{ len .Messages }}", "12 S\n2"),
    ],
)
def test_constructs_behave_as_in_go(template: str, expected: str) -> None:
    assert render(template, SYSTEM_ONLY) == expected


def test_jinja_whitespace_settings_do_not_change_the_text() -> None:
    template = "{{ range .Messages }}\n  {{ if .Content }}\n    x\n  {{ end }}\n{{ end }}"
    one = [{"role": "user", "content": "U"}]
    assert render(template, one) == "\n  \n    x\n  \n"


# ---- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("template", "complaint"),
    [
        (
            "Today is {{ currentDate }}",
            "line 1, column 13: function 'currentDate' is not supported",
        ),
        ('{{ define "x" }}{{ end }}', "line 1, column 4: '{{ define }}' is not supported"),
        ('{{ template "x" . }}', "'{{ template }}' is not supported"),
        ('{{ block "b" . }}{{ end }}', "'{{ block }}' is not supported"),
        ('a\n{{ .Messages.Foo "arg" }}', "line 2, column 4: method calls with arguments"),
        ("{{ $undefined }}", "undefined variable $undefined"),
        (
            "{{ range .Messages }}\n{{ $x := 1 }}{{ end }}{{ $x }}",
            "line 2, column 26: undefined variable $x",
        ),
        ("{{ if .System }}never closed", "line 1, column 4: unclosed 'if'"),
        ("{{ end }}", "'end' without 'if', 'range' or 'with'"),
        ("{{ with .System }}{{ else with .Prompt }}{{ end }}", "'else with' here is not supported"),
        ("{{ 'c' }}", "character constant"),
        ("{{ .System | .Prompt }}", "only a function can follow '|'"),
        ("{{ .System", "unclosed action"),
        ("{{ break }}", "'{{ break }}' outside 'range'"),
        ("{{ html .System }}", "function 'html' is not supported"),
        ('{{ printf "%q" .System }}', "printf supports only"),
        ("{{ eq .System }}", "wrong number of arguments for 'eq'"),
    ],
)
def test_unsupported_constructs_are_refused_with_their_position(
    template: str, complaint: str
) -> None:
    with pytest.raises(BadRequestError) as info:
        translate_go_template(template)
    assert info.value.status == 400
    assert complaint in info.value.message
    assert info.value.message.startswith("cannot use this Go template: template line ")


# ---- telling Go from Jinja -------------------------------------------------------------------

JINJA_CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize(
    "template",
    [CHATML, LLAMA3, "{{ .Prompt }}", "{{- if .System }}x{{ end }}", "{{ $x := 1 }}", "{{/* */}}"],
)
def test_go_templates_are_recognised(template: str) -> None:
    assert is_go_template(template)


@pytest.mark.parametrize(
    "template",
    [
        JINJA_CHATML,
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}",
        "plain text without tags",
        "{{ messages[0]['content'] }}",
    ],
)
def test_jinja_templates_are_not_mistaken_for_go(template: str) -> None:
    assert not is_go_template(template)
