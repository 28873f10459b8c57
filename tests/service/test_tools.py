# ruff: noqa: E501  (real chat templates are quoted verbatim; their lines are long)
"""Tool calling: template detection, parsing canned model outputs, streaming, grammar schemas.

Canned outputs are what real GGUF models write (Qwen2.5 / Hermes, Llama 3.1 / 3.2, Mistral
Nemo and Small 3.2, Qwen3-Coder, generic JSON). The streaming property: for every split of
each canned output into 2 or 3 chunks, the streamed content and calls equal the one-shot
parse, so text that is a call is never streamed as content. The grammar schemas go through
llama_cpp's `json_schema_to_gbnf` and, on the tiny byte-vocabulary model, through a real
constrained generation whose answer `parse_constrained` reads back.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localserve.errors import BadRequestError
from localserve.service.tools import (
    ToolCall,
    ToolCallStream,
    ToolChoice,
    ToolFormat,
    detect_tool_format,
    parse_constrained,
    parse_tool_calls,
    short_call_id,
    template_supports_thinking,
    template_supports_tools,
    tool_call_schema,
    validate_parallel_tool_calls,
    validate_tool_choice,
    validate_tools,
)

H, L, M, J = ToolFormat.HERMES, ToolFormat.LLAMA3, ToolFormat.MISTRAL, ToolFormat.JSON

# ---------------------------------------------------------------- real template snippets

QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- for tool_call in message.tool_calls %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA31 = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if tools is not none and not tools_in_user_message %}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
{%- endif %}
{%- for message in messages %}
    {%- if 'tool_calls' in message %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
"""

LLAMA32 = """{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
    {%- endfor %}
{%- endif %}
"""

MISTRAL_NEMO = """{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS][" }}
            {{- "[/AVAILABLE_TOOLS]" }}
        {%- endif %}
        {{- "[INST]" + message["content"] + "[/INST]" }}
    {%- elif (message.tool_calls is defined and message.tool_calls is not none) %}
        {{- "[TOOL_CALLS][" }}
    {%- endif %}
{%- endfor %}
"""

MISTRAL_SMALL_32 = """{%- if tools is defined and tools is not none and tools|length > 0 %}
    {{- '[AVAILABLE_TOOLS]' + tools|tojson + '[/AVAILABLE_TOOLS]' }}
{%- endif %}
{%- if message.get('tool_calls') %}
    {%- for tool_call in message.tool_calls %}
        {{- '[TOOL_CALLS]' + tool_call.function.name }}
        {{- '[CALL_ID]' + tool_call.id }}
        {{- '[ARGS]' + tool_call['function']['arguments']|tojson }}
    {%- endfor %}
{%- endif %}
"""

HERMES2_PRO = """{%- macro json_to_python_type(json_spec) %}{%- endmacro %}
{{- bos_token }}
{%- if tools is iterable and tools | length > 0 %}
{{- "For each function call return a json object with function name and arguments within <tool_call></tool_call> XML tags as follows:\\n" }}
{{- "<tool_call>\\n" }}
{{- '{"name": <function-name>, "arguments": <args-dict>}\\n' }}
{{- '</tool_call><|im_end|>\\n' }}
{%- endif %}
"""

SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)

QWEN3_THINKING = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
{%- endif %}
{%- if message.reasoning_content is defined and message.reasoning_content is not none %}
    {%- set reasoning_content = message.reasoning_content %}
{%- endif %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\\n\\n</think>\\n\\n' }}
    {%- endif %}
{%- endif %}
"""

DEEPSEEK_R1_DISTILL = """{%- for message in messages -%}
  {%- if message['role'] == 'assistant' and message['content'] is not none -%}
    {%- set content = message['content'] -%}
    {%- if '</think>' in content -%}
      {%- set content = content.split('</think>')[-1] -%}
    {%- endif -%}
    {{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}
  {%- endif -%}
{%- endfor -%}
{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}
"""

# Ollama's Go template for qwen2.5 (library/qwen2.5), the tools part.
OLLAMA_QWEN25_GO = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .Tools }}

# Tools

<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- end }}"""

OLLAMA_DEEPSEEK_R1_GO = """{{- range $i, $_ := .Messages }}
{{- if eq .Role "assistant" }}<｜Assistant｜>
  {{- if and $.IsThinkSet (and $last .Thinking) -}}
<think>
{{ .Thinking }}
</think>
{{- end }}{{ .Content }}
{{- end }}
{{- end }}"""


@pytest.mark.parametrize(
    ("template", "fmt", "tools", "thinking"),
    [
        pytest.param(QWEN25, H, True, False, id="qwen2.5"),
        pytest.param(HERMES2_PRO, H, True, False, id="hermes-2-pro"),
        pytest.param(QWEN3_THINKING, J, True, True, id="qwen3-part"),
        pytest.param(LLAMA31, L, True, False, id="llama3.1"),
        pytest.param(LLAMA32, L, True, False, id="llama3.2"),
        pytest.param(MISTRAL_NEMO, M, True, False, id="mistral-nemo"),
        pytest.param(MISTRAL_SMALL_32, M, True, False, id="mistral-small-3.2"),
        pytest.param(SMOLLM2, J, False, False, id="smollm2"),
        pytest.param(DEEPSEEK_R1_DISTILL, J, False, True, id="deepseek-r1-distill"),
        pytest.param(OLLAMA_QWEN25_GO, H, True, False, id="ollama-go-qwen2.5"),
        pytest.param(OLLAMA_DEEPSEEK_R1_GO, J, False, True, id="ollama-go-deepseek-r1"),
        pytest.param("", J, False, False, id="empty"),
    ],
)
def test_template_detection(template: str, fmt: ToolFormat, tools: bool, thinking: bool) -> None:
    assert detect_tool_format(template) is fmt
    assert template_supports_tools(template) is tools
    assert template_supports_thinking(template) is thinking


def test_tools_in_text_only_is_not_tool_support() -> None:
    # "tools" inside a string literal, a comment or plain text is not the variable
    template = "{# tools #}You may use tools.{{ '<|im_start|>system\\nuse tools<|im_end|>' }}"
    assert not template_supports_tools(template)
    assert not template_supports_tools(None)
    assert template_supports_tools("{% for t in tools %}{{ t }}{% endfor %}")
    assert not template_supports_tools("{% for t in builtin_tools %}{{ t }}{% endfor %}")
    assert detect_tool_format(None) is J


# ---------------------------------------------------------------- canned outputs

W = {"location": "Paris, France", "unit": "celsius"}
Calls = list[tuple[str, dict[str, Any]]]

CANNED: list[tuple[str, ToolFormat, str, str, Calls]] = [
    # id, format, model output, expected content, expected calls
    (
        "qwen-one",
        H,
        '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France", '
        '"unit": "celsius"}}\n</tool_call>',
        "",
        [("get_weather", W)],
    ),
    (
        "qwen-two",
        H,
        '<tool_call>\n{"name": "get_weather", "arguments": {"location": "Paris, France", '
        '"unit": "celsius"}}\n</tool_call>\n<tool_call>\n{"name": "search", "arguments": '
        '{"query": "Paris events", "max_results": 5}}\n</tool_call>',
        "",
        [("get_weather", W), ("search", {"query": "Paris events", "max_results": 5})],
    ),
    (
        "qwen-text-before",
        H,
        "Let me check the weather for you.\n\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}'
        "\n</tool_call>",
        "Let me check the weather for you.",
        [("get_weather", W)],
    ),
    (
        "hermes-string-arguments",
        H,
        '<tool_call>\n{"arguments": "{\\"query\\": \\"llama.cpp\\"}", "name": "search"}\n'
        "</tool_call>",
        "",
        [("search", {"query": "llama.cpp"})],
    ),
    (
        "hermes-unclosed-at-eos",
        H,
        '<tool_call>\n{"name": "search", "arguments": {"query": "x"}}\n',
        "",
        [("search", {"query": "x"})],
    ),
    (
        "hermes-text-after",
        H,
        'Sure.\n<tool_call>{"name": "search", "arguments": {}}</tool_call>\nDone  ',
        "Sure.\nDone  ",
        [("search", {})],
    ),
    (
        "hermes-broken-json",
        H,
        'I will call it.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": '
        "Paris}}\n</tool_call>",
        'I will call it.\n<tool_call>\n{"name": "get_weather", "arguments": {"location": '
        "Paris}}\n</tool_call>",
        [],
    ),
    (
        "hermes-broken-then-good",
        H,
        '<tool_call>{"name": 1}</tool_call>\n<tool_call>{"name": "search", "arguments": '
        '{"query": "q"}}</tool_call>',
        '<tool_call>{"name": 1}</tool_call>',
        [("search", {"query": "q"})],
    ),
    (
        "hermes-truncated",
        H,
        'Checking.<tool_call>\n{"name": "get_weather", "arguments": {"loc',
        'Checking.<tool_call>\n{"name": "get_weather", "arguments": {"loc',
        [],
    ),
    (
        "qwen-bare-json",
        H,
        '{"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}',
        "",
        [("get_weather", W)],
    ),
    (
        "qwen3-coder-xml",
        H,
        "<tool_call>\n<function=search>\n<parameter=query>\nbest pizza\n</parameter>\n"
        "<parameter=max_results>\n3\n</parameter>\n</function>\n</tool_call>",
        "",
        [("search", {"query": "best pizza", "max_results": 3})],
    ),
    (
        "hermes-plain",
        H,
        "The answer is <b>42</b>, not <tool.",
        "The answer is <b>42</b>, not <tool.",
        [],
    ),
    (
        "llama31-json",
        L,
        '{"name": "get_weather", "parameters": {"location": "Paris, France", "unit": "celsius"}}',
        "",
        [("get_weather", W)],
    ),
    (
        "llama32-typed-json",
        L,
        '{"type": "function", "name": "search", "parameters": {"query": "news", '
        '"max_results": "3"}}',
        "",
        [("search", {"query": "news", "max_results": "3"})],
    ),
    (
        "llama32-two-json",
        L,
        '{"name": "search", "parameters": {"query": "a"}}; '
        '{"name": "search", "parameters": {"query": "b"}}',
        "",
        [("search", {"query": "a"}), ("search", {"query": "b"})],
    ),
    (
        "llama31-python-tag-json",
        L,
        '<|python_tag|>{"name": "get_weather", "parameters": {"location": "Paris, France", '
        '"unit": "celsius"}}',
        "",
        [("get_weather", W)],
    ),
    (
        "llama31-python-tag-builtin",
        L,
        '<|python_tag|>brave_search.call(query="weather in Paris", count=3)',
        "",
        [("brave_search", {"query": "weather in Paris", "count": 3})],
    ),
    (
        "llama31-text-then-tag",
        L,
        'Let me search.\n<|python_tag|>{"name": "search", "parameters": {"query": "x"}}',
        "Let me search.",
        [("search", {"query": "x"})],
    ),
    ("llama-plain", L, "Paris is the capital of France.", "Paris is the capital of France.", []),
    ("llama-json-not-a-call", L, '{"capital": "Paris"}', '{"capital": "Paris"}', []),
    (
        "llama-broken-json",
        L,
        '{"name": "get_weather", "parameters": {"location": "Paris"',
        '{"name": "get_weather", "parameters": {"location": "Paris"',
        [],
    ),
    (
        "mistral-nemo-list",
        M,
        '[TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Paris, France", '
        '"unit": "celsius"}, "id": "a1b2c3d4e"}, {"name": "search", "arguments": '
        '{"query": "q"}}]',
        "",
        [("get_weather", W), ("search", {"query": "q"})],
    ),
    (
        "mistral-v03-space",
        M,
        'Calling.[TOOL_CALLS] [{"name": "search", "arguments": {"query": "q"}}]',
        "Calling.",
        [("search", {"query": "q"})],
    ),
    (
        "mistral-small-args",
        M,
        '[TOOL_CALLS]get_weather[ARGS]{"location": "Paris, France", "unit": "celsius"}',
        "",
        [("get_weather", W)],
    ),
    (
        "mistral-small-two-with-call-id",
        M,
        '[TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"location": "Paris, France", '
        '"unit": "celsius"}[TOOL_CALLS]search[ARGS]{"query": "q"}',
        "",
        [("get_weather", W), ("search", {"query": "q"})],
    ),
    (
        "mistral-broken",
        M,
        'Hmm.[TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Par',
        'Hmm.[TOOL_CALLS][{"name": "get_weather", "arguments": {"location": "Par',
        [],
    ),
    (
        "mistral-no-marker-list",
        M,
        '[{"name": "search", "arguments": {"query": "q"}}]',
        "",
        [("search", {"query": "q"})],
    ),
    ("mistral-plain", M, "[1] See the docs.", "[1] See the docs.", []),
    (
        "json-object",
        J,
        '{"name": "get_weather", "arguments": {"location": "Paris, France", "unit": "celsius"}}',
        "",
        [("get_weather", W)],
    ),
    (
        "json-list",
        J,
        '  [{"name": "search", "arguments": {"query": "a"}}, {"name": "search", '
        '"arguments": {"query": "b"}}]\n',
        "",
        [("search", {"query": "a"}), ("search", {"query": "b"})],
    ),
    (
        "json-fenced",
        J,
        '```json\n{"name": "search", "arguments": {"query": "pizza"}}\n```',
        "",
        [("search", {"query": "pizza"})],
    ),
    (
        "json-openai-shape",
        J,
        '{"type": "function", "function": {"name": "search", "arguments": "{\\"query\\": \\"q\\"}"}}',
        "",
        [("search", {"query": "q"})],
    ),
    (
        "json-fenced-python",
        J,
        "```python\nprint('hi')\n```",
        "```python\nprint('hi')\n```",
        [],
    ),
    (
        "json-prose-around",
        J,
        'Here: {"name": "search", "arguments": {}} ok',
        'Here: {"name": "search", "arguments": {}} ok',
        [],
    ),
    (
        "json-broken",
        J,
        '{"name": "search", "arguments": {',
        '{"name": "search", "arguments": {',
        [],
    ),
    ("json-no-arguments", J, '{"name": "Bob"}', '{"name": "Bob"}', []),
    ("json-plain", J, "Hello there! ", "Hello there! ", []),
]


def _summary(content: str, calls: list[ToolCall]) -> tuple[str, Calls]:
    return content, [(c.name, c.arguments) for c in calls]


@pytest.mark.parametrize(
    ("fmt", "text", "content", "calls"),
    [pytest.param(*case[1:], id=case[0]) for case in CANNED],
)
def test_parse_canned(fmt: ToolFormat, text: str, content: str, calls: Calls) -> None:
    got_content, got_calls = parse_tool_calls(text, fmt)
    assert _summary(got_content, got_calls) == (content, calls)
    for call in got_calls:
        assert call.id.startswith("call_") and len(call.id) == 29
        int(call.id[5:], 16)
    assert len({c.id for c in got_calls}) == len(got_calls)


def _stream(fmt: ToolFormat, pieces: list[str]) -> tuple[str, list[ToolCall]]:
    stream = ToolCallStream(fmt)
    shown = "".join(stream.push(p) for p in pieces)
    rest, calls = stream.finish()
    return shown + rest, calls


def _splits(text: str, parts: int) -> list[list[str]]:
    cuts = range(len(text) + 1)
    return [
        [text[a:b] for a, b in itertools.pairwise((0, *points, len(text)))]
        for points in itertools.combinations(cuts, parts - 1)
    ]


@pytest.mark.parametrize(
    ("fmt", "text"), [pytest.param(case[1], case[2], id=case[0]) for case in CANNED]
)
def test_stream_every_split_matches_parse(fmt: ToolFormat, text: str) -> None:
    expected = _summary(*parse_tool_calls(text, fmt))
    # every 2-way split; every 3-way split (on a stride for the longest outputs)
    three = _splits(text, 3)
    stride = max(1, len(three) // 4000)
    for pieces in _splits(text, 2) + three[::stride]:
        assert _summary(*_stream(fmt, pieces)) == expected, pieces
    assert _summary(*_stream(fmt, list(text))) == expected  # one character at a time


def test_stream_holds_back_call_text_and_shows_prose_early() -> None:
    stream = ToolCallStream(H)
    assert stream.push("Let me check ") == "Let me check"  # trailing whitespace waits
    assert stream.push("it.\n<tool_c") == " it."  # a possible marker waits
    assert stream.push('all>\n{"name": "search", ') == ""
    assert stream.push('"arguments": {"query": "q"}}\n</tool_call>') == ""
    content, calls = stream.finish()
    assert content == "" and [c.name for c in calls] == ["search"]
    with pytest.raises(RuntimeError):
        stream.push("more")
    assert stream.finish() == ("", [])

    stream = ToolCallStream(H)
    assert stream.push("<tool_c") == ""
    assert stream.push("ar> is not a marker ") == "<tool_car> is not a marker"
    assert stream.finish() == (" ", [])

    json_stream = ToolCallStream(J)
    assert json_stream.push('{"') == ""  # may be a bare JSON call: held to the end
    assert json_stream.push("name") == ""
    assert ToolCallStream(J).push("{x: 1} ") == "{x: 1}"  # cannot be a call: shown
    assert ToolCallStream(L).push("[1, 2]") == "[1, 2]"


def test_names_filter_for_bare_json() -> None:
    text = '{"name": "Bob", "arguments": {"age": 3}}'
    assert parse_tool_calls(text, J, names=["get_weather"]) == (text, [])
    content, calls = parse_tool_calls('{"name": "get_time"}', J, names={"get_time"})
    assert content == "" and calls[0].name == "get_time" and calls[0].arguments == {}
    # tagged calls are calls whatever the name (the client reports the unknown tool)
    _, tagged = parse_tool_calls('<tool_call>{"name": "nope"}</tool_call>', H, names=[])
    assert [c.name for c in tagged] == ["nope"]


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "[TOOL_CALLS]",
    "[ARGS]",
    "<|python_tag|>",
    '{"name": "search", "arguments": {"query": "q"}}',
    '{"name": "f", "parameters": {}}',
    '[{"name": "g", "arguments": {}}]',
    "search",
    '{"name": ',
    "```json\n",
    "```",
    "{",
    "}",
    "[",
    "hello",
    " ",
    "\n",
    ";",
    '"',
    'f(x="1")',
    ".call(",
]


@settings(max_examples=300, deadline=None)
@given(
    fmt=st.sampled_from(list(ToolFormat)),
    parts=st.lists(st.sampled_from(FRAGMENTS), max_size=12),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_stream_matches_parse_on_random_text(
    fmt: ToolFormat, parts: list[str], cuts: list[int]
) -> None:
    text = "".join(parts)
    expected = _summary(*parse_tool_calls(text, fmt))
    points = sorted({c % (len(text) + 1) for c in cuts})
    pieces = [text[a:b] for a, b in itertools.pairwise((0, *points, len(text)))]
    assert _summary(*_stream(fmt, pieces)) == expected
    if not expected[1]:
        assert expected[0] == text  # no call found: the text is returned unchanged


def test_tool_call_serialisation() -> None:
    call = ToolCall(name="get_weather", arguments={"location": "Zürich"}, id="call_1")
    assert call.to_openai() == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Zürich"}'},
    }
    assert call.to_openai(index=2)["index"] == 2
    assert call.to_ollama() == {
        "id": "call_1",
        "function": {"name": "get_weather", "arguments": {"location": "Zürich"}},
    }
    assert call.to_ollama(index=0)["function"]["index"] == 0
    short = short_call_id("call_0123456789abcdef01234567")
    assert short == "f01234567" and short.isalnum()
    assert len(short_call_id("x")) == 9 and short_call_id("x") == short_call_id("x")


# ---------------------------------------------------------------- grammar schemas

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a given location",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["location", "unit"],
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "max_results": {"type": "integer", "default": 5, "minimum": 1},
            },
            "required": ["query"],
        },
    },
}
# What LangChain / pydantic send: titles, $defs and $ref, anyOf with null, formats.
PYDANTIC = {
    "type": "function",
    "function": {
        "name": "book_flight",
        "parameters": {
            "title": "BookFlight",
            "type": "object",
            "$defs": {
                "Passenger": {
                    "title": "Passenger",
                    "type": "object",
                    "properties": {
                        "name": {"title": "Name", "type": "string", "minLength": 1},
                        "age": {"anyOf": [{"type": "integer"}, {"type": "null"}]},
                    },
                    "required": ["name"],
                }
            },
            "properties": {
                "origin": {"type": "string", "pattern": "^[A-Z]{3}$"},
                "date": {"type": "string", "format": "date"},
                "passengers": {"type": "array", "items": {"$ref": "#/$defs/Passenger"}},
                "class": {"type": ["string", "null"]},
                "extras": {},
                "meta": {"type": "object", "additionalProperties": {"type": "number"}},
            },
            "required": ["origin", "passengers"],
        },
    },
}
NO_PARAMS = {"type": "function", "function": {"name": "get_time"}}
TOOLS = validate_tools([WEATHER, SEARCH, PYDANTIC, NO_PARAMS])


def _gbnf(schema: dict[str, Any]) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return str(json_schema_to_gbnf(json.dumps(schema)))


@pytest.mark.parametrize("parallel", [False, True])
@pytest.mark.parametrize(
    "choice",
    [
        "required",
        *({"type": "function", "function": {"name": t["function"]["name"]}} for t in TOOLS),
    ],
)
def test_schema_accepted_by_json_schema_to_gbnf(choice: Any, parallel: bool) -> None:
    schema = tool_call_schema(TOOLS, choice, parallel)
    grammar = _gbnf(schema)
    assert "root ::=" in grammar
    names = [t["function"]["name"] for t in TOOLS]
    if choice == "required":
        assert all(f'\\"{n}\\"' in grammar for n in names)
    else:
        chosen = choice["function"]["name"]
        assert [n for n in names if f'\\"{n}\\"' in grammar] == [chosen]
        assert schema["properties"]["name"] == {"const": chosen}  # one object, even parallel


def test_schema_shape() -> None:
    one = tool_call_schema([WEATHER], "required", parallel=False)
    assert one == {
        "type": "object",
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {
                "type": "object",
                "properties": {
                    "location": {"type": "string"},
                    "unit": {"enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location", "unit"],
            },
        },
        "required": ["name", "arguments"],
    }
    many = tool_call_schema([WEATHER, SEARCH], "required", parallel=True, max_calls=4)
    assert many["type"] == "array" and many["minItems"] == 1 and many["maxItems"] == 4
    assert len(many["items"]["anyOf"]) == 2
    no_args = tool_call_schema([NO_PARAMS], ToolChoice("function", "get_time"), parallel=False)
    assert no_args["properties"]["arguments"] == {"type": "object", "properties": {}}
    pyd = tool_call_schema([PYDANTIC], "required", False)["properties"]["arguments"]
    passenger = pyd["properties"]["passengers"]["items"]
    assert passenger["properties"]["age"] == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert pyd["properties"]["origin"] == {"type": "string"}  # pattern dropped
    assert "$defs" not in json.dumps(pyd) and "title" not in json.dumps(pyd)
    with pytest.raises(ValueError):
        tool_call_schema(TOOLS, "auto", parallel=False)
    with pytest.raises(BadRequestError):
        tool_call_schema(TOOLS, {"type": "function", "function": {"name": "nope"}}, False)


def test_recursive_ref_is_cut_off() -> None:
    tree = {
        "type": "function",
        "function": {
            "name": "tree",
            "parameters": {
                "type": "object",
                "$defs": {
                    "Node": {
                        "type": "object",
                        "properties": {
                            "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}}
                        },
                    }
                },
                "properties": {"root": {"$ref": "#/$defs/Node"}, "bad": {"$ref": "http://x/y"}},
            },
        },
    }
    assert "root ::=" in _gbnf(tool_call_schema([tree], "required", parallel=False))


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ('{"name": "search", "arguments": {"query": "q"}}', ["search"]),
        ('[{"name": "a", "arguments": {}}, {"name": "b", "arguments": {"x": 1}}]', ["a", "b"]),
        ('{"tool_calls": [{"name": "a", "arguments": {}}]}', ["a"]),
        (' {"name" :"search","arguments" : {"query" :"" } } ', ["search"]),
        ('{"name": "search", "arguments": {"query": "q"', []),  # cut off by the token limit
        ("[]", []),
        ('{"name": "search", "arguments": [1]}', []),
        ("not json", []),
    ],
)
def test_parse_constrained(text: str, names: list[str]) -> None:
    assert [c.name for c in parse_constrained(text)] == names


def test_grammar_forces_a_valid_call_on_a_tiny_model(tiny_model: Any) -> None:
    """A model that only ever wants to say '"' still answers valid calls under the grammar.

    (It fills an open-ended map or array forever, so the tools here have neither.)"""
    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

    tools = validate_tools([WEATHER, SEARCH, NO_PARAMS])
    by_name = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    llm = Llama(model_path=str(Path(tiny_model('"'))), n_ctx=512, n_threads=2, verbose=False)
    cases: list[tuple[Any, bool, set[str], range]] = [
        ("required", False, set(by_name), range(1, 2)),
        ("required", True, set(by_name), range(1, 4)),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            False,
            {"get_weather"},
            range(1, 2),
        ),
        ({"type": "function", "function": {"name": "search"}}, True, {"search"}, range(1, 2)),
        ({"type": "function", "function": {"name": "get_time"}}, False, {"get_time"}, range(1, 2)),
    ]
    for choice, parallel, allowed, count in cases:
        schema = tool_call_schema(tools, choice, parallel, max_calls=3)
        grammar = LlamaGrammar.from_string(_gbnf(schema), verbose=False)
        out: Any = llm.create_completion("hi", grammar=grammar, max_tokens=300, temperature=0)
        text = out["choices"][0]["text"]
        calls = parse_constrained(text)
        assert len(calls) in count and {c.name for c in calls} <= allowed, text
        for call in calls:
            params = by_name[call.name]
            assert (
                set(params.get("required", [])) <= set(call.arguments) <= set(params["properties"])
            ), text
            if call.name == "get_weather":
                assert call.arguments["unit"] in ("celsius", "fahrenheit")
                assert isinstance(call.arguments["location"], str)
            if call.name == "search" and "max_results" in call.arguments:
                assert isinstance(call.arguments["max_results"], int)


# ---------------------------------------------------------------- request validation


def test_validate_tools_both_dialects() -> None:
    openai_tools = [WEATHER, SEARCH]
    assert validate_tools(openai_tools) == openai_tools
    assert validate_tools(None) == []
    assert validate_tools([]) == []
    # Ollama's clients send the same shape, sometimes without "type"
    ollama = validate_tools([{"function": {"name": "f", "description": "d"}}])
    assert ollama == [
        {
            "type": "function",
            "function": {
                "name": "f",
                "description": "d",
                "parameters": {"type": "object", "properties": {}},
            },
        }
    ]
    # the Responses API's flat shape
    flat = validate_tools([{"type": "function", "name": "f", "parameters": {"type": "object"}}])
    assert flat == [
        {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    ]
    assert validate_tools(validate_tools(openai_tools)) == openai_tools


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"type": "function"}, "tools must be an array"),
        ([1], "tools[0] must be an object"),
        ([WEATHER, {"type": "retrieval"}], "tools[1].type"),
        ([{"type": "function", "function": "f"}], "tools[0].function must be an object"),
        ([{"type": "function", "function": {}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "a b"}}], "tools[0].function.name"),
        ([{"type": "function", "function": {"name": "x" * 65}}], "tools[0].function.name"),
        ([WEATHER, WEATHER], "tools[1].function.name 'get_weather' is used by two tools"),
        ([{"function": {"name": "f", "description": 3}}], "tools[0].function.description"),
        ([{"function": {"name": "f", "parameters": []}}], "tools[0].function.parameters"),
        (
            [{"function": {"name": "f", "parameters": {"type": "string"}}}],
            "tools[0].function.parameters.type",
        ),
        (
            [{"function": {"name": "f", "parameters": {"properties": {"a": 1}}}}],
            "tools[0].function.parameters.properties.a",
        ),
        (
            [{"function": {"name": "f", "parameters": {"required": "a"}}}],
            "tools[0].function.parameters.required",
        ),
        ([{"type": "function", "name": 5}], "tools[0].name"),
    ],
)
def test_validate_tools_errors(raw: Any, field: str) -> None:
    with pytest.raises(BadRequestError) as info:
        validate_tools(raw)
    assert info.value.status == 400
    assert field in info.value.message


def test_validate_tool_choice() -> None:
    assert validate_tool_choice(None, TOOLS) == ToolChoice("auto")
    assert validate_tool_choice(None, []) == ToolChoice("none")
    assert validate_tool_choice("none", TOOLS) == ToolChoice("none")
    assert validate_tool_choice("auto", []) == ToolChoice("auto")
    required = validate_tool_choice("required", TOOLS)
    assert required == ToolChoice("required") and required.forced
    named = validate_tool_choice({"type": "function", "function": {"name": "search"}}, TOOLS)
    assert named == ToolChoice("function", "search") and named.forced
    flat = validate_tool_choice({"type": "function", "name": "search"}, TOOLS)  # Responses API
    assert flat == named
    assert not ToolChoice("auto").forced


@pytest.mark.parametrize(
    ("raw", "tools", "field"),
    [
        ("always", TOOLS, "tool_choice must be"),
        (3, TOOLS, "tool_choice must be"),
        ("required", [], "tool_choice 'required' needs at least one tool"),
        ({"type": "allowed_tools"}, TOOLS, "tool_choice.type"),
        ({"type": "function", "function": {}}, TOOLS, "tool_choice.function.name"),
        ({"type": "function", "function": {"name": "nope"}}, TOOLS, "'nope' is not one of"),
        ({"type": "function", "name": "nope"}, TOOLS, "tool_choice.name 'nope'"),
    ],
)
def test_validate_tool_choice_errors(raw: Any, tools: list[dict[str, Any]], field: str) -> None:
    with pytest.raises(BadRequestError) as info:
        validate_tool_choice(raw, tools)
    assert field in info.value.message


def test_validate_parallel_tool_calls() -> None:
    assert validate_parallel_tool_calls(None) is True
    assert validate_parallel_tool_calls(False) is False
    with pytest.raises(BadRequestError, match="parallel_tool_calls"):
        validate_parallel_tool_calls("yes")
