"""Tool calling: template detection, parsing calls out of generated text, grammar schemas.

Pure functions over text; no model, no I/O. The pieces:

- `detect_tool_format(template)` picks how a model writes calls, from its chat template
  (Jinja or Ollama's Go template): Hermes/Qwen `<tool_call>{json}</tool_call>`, Llama 3.x
  `{"name": .., "parameters": ..}` / `<|python_tag|>`, Mistral `[TOOL_CALLS]`, or generic
  JSON. `template_supports_tools` / `template_supports_thinking` answer capabilities.
- `parse_tool_calls(text, fmt)` splits a finished answer into content and `ToolCall`s;
  `ToolCallStream` does the same piece by piece and never shows text that turns out to be a
  call. `parse_tool_calls` *is* the stream fed in one piece, so both always agree.
- `tool_call_schema` / `parse_constrained`: the JSON Schema (for llama_cpp's
  `json_schema_to_gbnf`) that forces an answer to be a valid call, and its parser.
- `validate_tools` / `validate_tool_choice` / `validate_parallel_tool_calls`: request checks
  (400 naming the field).

Content rules, the same for every format: text around calls is content; whitespace next to
a removed call is dropped, and text on both sides of a call is joined with one newline.
Anything that does not parse as a call stays content, verbatim; nothing here raises on model
output. Markers are matched as text, so the runner must render special tokens
(`[TOOL_CALLS]`, `<|python_tag|>`); without them an answer that is nothing but a JSON call
(or list of calls) is still found, as for the generic format.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from localserve.errors import BadRequestError

__all__ = [
    "ToolCall",
    "ToolCallStream",
    "ToolChoice",
    "ToolFormat",
    "detect_tool_format",
    "parse_constrained",
    "parse_tool_calls",
    "short_call_id",
    "template_supports_thinking",
    "template_supports_tools",
    "tool_call_schema",
    "validate_parallel_tool_calls",
    "validate_tool_choice",
    "validate_tools",
]


class ToolFormat(StrEnum):
    """How a model writes tool calls."""

    HERMES = "hermes"  # <tool_call>{"name":..,"arguments":..}</tool_call> (Qwen, Hermes)
    LLAMA3 = "llama3"  # {"name":..,"parameters":..} or <|python_tag|>...
    MISTRAL = "mistral"  # [TOOL_CALLS][{..}] or [TOOL_CALLS]name[ARGS]{..}
    JSON = "json"  # the whole answer is a JSON call or a list of them


# ---------------------------------------------------------------------------- templates

_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.S)
_TEMPLATE_BLOCK = re.compile(r"\{\{(.*?)\}\}|\{%(.*?)%\}", re.S)
_STRING_LITERAL = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', re.S)
_TOOLS_VAR = re.compile(r"(?<![\w.])tools\b|\.Tools\b")
_THINKING_VAR = re.compile(r"\.Thinking\b|\.IsThinkSet\b")


def _template_code(template: str) -> str:
    """The code inside a template's `{{ }}` / `{% %}` blocks, string literals removed."""
    source = _JINJA_COMMENT.sub("", template)
    parts = [m.group(1) or m.group(2) or "" for m in _TEMPLATE_BLOCK.finditer(source)]
    return _STRING_LITERAL.sub('""', "\n".join(parts))


def template_supports_tools(template: str | None) -> bool:
    """True when the template's code uses `tools` (Jinja) or `.Tools` (Go)."""
    return bool(template) and _TOOLS_VAR.search(_template_code(template or "")) is not None


def template_supports_thinking(template: str | None) -> bool:
    """True when the template knows reasoning: `<think>`, `enable_thinking`,
    `reasoning_content` (Jinja) or `.Thinking` (Go)."""
    if not template:
        return False
    if any(s in template for s in ("<think>", "</think>", "enable_thinking", "reasoning_content")):
        return True
    return _THINKING_VAR.search(_template_code(template)) is not None


def detect_tool_format(template: str | None) -> ToolFormat:
    """The tool-call format a chat template teaches its model; JSON when none is known."""
    src = template or ""
    if "<tool_call>" in src:
        return ToolFormat.HERMES
    if "[TOOL_CALLS]" in src:
        return ToolFormat.MISTRAL
    if "<|python_tag|>" in src:
        return ToolFormat.LLAMA3
    if "<|start_header_id|>" in src and '"parameters"' in src and template_supports_tools(src):
        return ToolFormat.LLAMA3
    return ToolFormat.JSON


# ---------------------------------------------------------------------------- calls


def _new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


@dataclass
class ToolCall:
    """One parsed call: `arguments` is always an object."""

    name: str
    arguments: dict[str, Any]
    id: str = field(default_factory=_new_call_id)

    def arguments_json(self) -> str:
        """The arguments as OpenAI sends them: a JSON string."""
        return json.dumps(self.arguments, ensure_ascii=False)

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        """OpenAI `tool_calls[]` entry; `index` for streaming deltas."""
        out: dict[str, Any] = {}
        if index is not None:
            out["index"] = index
        out.update(
            id=self.id,
            type="function",
            function={"name": self.name, "arguments": self.arguments_json()},
        )
        return out

    def to_ollama(self, index: int | None = None) -> dict[str, Any]:
        """Ollama `message.tool_calls[]` entry: arguments as an object."""
        function: dict[str, Any] = {}
        if index is not None:
            function["index"] = index
        function.update(name=self.name, arguments=self.arguments)
        return {"id": self.id, "function": function}


def short_call_id(call_id: str) -> str:
    """A 9-character alphanumeric id derived from `call_id` (Mistral templates need one)."""
    alnum = re.sub(r"[^A-Za-z0-9]", "", call_id.removeprefix("call_"))
    if len(alnum) >= 9:
        return alnum[-9:]
    value = 0
    for ch in call_id:  # a fixed polynomial hash: the same id on every run
        value = (value * 131 + ord(ch)) % (62**9)
    digits = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    for _ in range(9):
        value, rem = divmod(value, 62)
        out += digits[rem]
    return out


_DECODER = json.JSONDecoder()


def _call_from_obj(obj: Any, tagged: bool, names: frozenset[str] | None) -> ToolCall | None:
    """A call from a decoded JSON object, or None.

    Accepts `{"name", "arguments"|"parameters"}` and OpenAI's `{"function": {...}}`;
    arguments given as a JSON string are decoded. Untagged JSON (no marker around it) is a
    call only if its name is a known tool, or, with no names known, if it has arguments.
    """
    if not isinstance(obj, dict):
        return None
    fn = obj.get("function")
    inner: dict[str, Any] = fn if isinstance(fn, dict) and "name" in fn else obj
    name = inner.get("name")
    if not isinstance(name, str) or not name.strip():
        return None
    name = name.strip()
    key = "arguments" if "arguments" in inner else "parameters" if "parameters" in inner else None
    if not tagged:
        if names is not None and name not in names:
            return None
        if names is None and key is None:
            return None
    args: Any = inner.get(key) if key else None
    if args is None or (isinstance(args, str) and not args.strip()):
        args = {}
    elif isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(name=name, arguments=args)


def _calls_from_value(value: Any, tagged: bool, names: frozenset[str] | None) -> list[ToolCall]:
    """Calls from one JSON value (an object or a non-empty list of them); [] if any is bad."""
    items = value if isinstance(value, list) else [value]
    calls = [_call_from_obj(item, tagged, names) for item in items]
    if not calls or any(c is None for c in calls):
        return []
    return [c for c in calls if c is not None]


def _json_sequence(
    text: str, tagged: bool, names: frozenset[str] | None
) -> tuple[list[ToolCall], str]:
    """Leading JSON calls separated by whitespace, `;` or `,`; and the text after them."""
    calls: list[ToolCall] = []
    pos = end = 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if calls and pos < len(text) and text[pos] in ";,":
            pos += 1
            while pos < len(text) and text[pos].isspace():
                pos += 1
        if pos >= len(text) or text[pos] not in "{[":
            break
        try:
            value, nxt = _DECODER.raw_decode(text, pos)
        except ValueError:
            break
        got = _calls_from_value(value, tagged, names)
        if not got:
            break
        calls += got
        pos = end = nxt
    return calls, text[end:]


_FENCE = re.compile(r"```[ \t]*(?:json)?[ \t]*\n(.*?)(?:\s*```)?[ \t]*", re.S | re.I)


def _untagged_calls(text: str, names: frozenset[str] | None) -> list[ToolCall] | None:
    """The calls when `text` is nothing but JSON calls (maybe in a ```json fence)."""
    body = text.strip()
    fence = _FENCE.fullmatch(body)
    if fence:
        body = fence.group(1).strip()
    calls, rest = _json_sequence(body, tagged=False, names=names)
    return calls if calls and not rest.strip() else None


_XML_FUNCTION = re.compile(r"\s*<function=([^>\s]+)>(.*?)(?:</function>)?\s*", re.S)
_XML_PARAMETER = re.compile(r"<parameter=([^>\s]+)>\n?(.*?)\n?</parameter>", re.S)
_JSONISH_VALUE = re.compile(r"\s*(?:[\[{]|-?\d|true\b|false\b|null\b)")


def _hermes_body(body: str) -> list[ToolCall]:
    """The calls inside one `<tool_call>` block: JSON, or Qwen3-Coder's `<function=..>`."""
    text = body.strip()
    fence = _FENCE.fullmatch(text)
    if fence:
        text = fence.group(1).strip()
    try:
        return _calls_from_value(json.loads(text), tagged=True, names=None)
    except ValueError:
        pass
    m = _XML_FUNCTION.fullmatch(text)
    if not m:
        return []
    inner = m.group(2)
    args: dict[str, Any] = {}
    for key, raw in _XML_PARAMETER.findall(inner):
        value: Any = raw
        if _JSONISH_VALUE.match(raw):
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
        args[key] = value
    if _XML_PARAMETER.sub("", inner).strip():
        return []
    return [ToolCall(name=m.group(1), arguments=args)]


_PY_CALL = re.compile(r"\s*([A-Za-z_]\w*)\.call\((.*)\)\s*", re.S)
_PY_KWARG = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*")
_PY_SQ_STRING = re.compile(r"'((?:[^'\\]|\\.)*)'", re.S)
_PY_CONSTANTS = {"True": True, "False": False, "None": None}


def _python_call(text: str) -> ToolCall | None:
    """Llama 3.1's built-in tool syntax: `name.call(key="value", n=3)`."""
    m = _PY_CALL.fullmatch(text)
    if not m:
        return None
    src, pos = m.group(2), 0
    args: dict[str, Any] = {}
    while src[pos:].strip():
        kw = _PY_KWARG.match(src, pos)
        if not kw:
            return None
        pos = kw.end()
        value: Any
        sq = _PY_SQ_STRING.match(src, pos)
        const = re.match(r"(True|False|None)\b", src[pos:])
        if sq:
            value, pos = re.sub(r"\\(.)", r"\1", sq.group(1)), sq.end()
        elif const:
            value, pos = _PY_CONSTANTS[const.group(1)], pos + const.end()
        else:
            try:
                value, pos = _DECODER.raw_decode(src, pos)
            except ValueError:
                return None
        args[kw.group(1)] = value
        sep = re.match(r"\s*(,|$)", src[pos:])
        if not sep:
            return None
        pos += sep.end()
    return ToolCall(name=m.group(1), arguments=args)


_MISTRAL_NAME = re.compile(r"\s*([\w.:\-]+)\s*(?:\[CALL_ID\]\s*[\w\-]*\s*)?\[ARGS\]\s*")


def _mistral_segment(seg: str) -> tuple[list[ToolCall], str] | None:
    """Calls after one `[TOOL_CALLS]`: a JSON list/object, or `name[ARGS]{..}`; and the rest."""
    stripped = seg.lstrip()
    start = len(seg) - len(stripped)
    if stripped[:1] in ("[", "{"):
        try:
            value, end = _DECODER.raw_decode(seg, start)
        except ValueError:
            return None
        calls = _calls_from_value(value, tagged=True, names=None)
        return (calls, seg[end:]) if calls else None
    m = _MISTRAL_NAME.match(seg)
    if not m:
        return None
    try:
        args, end = _DECODER.raw_decode(seg, m.end())
    except ValueError:
        return None
    call = _call_from_obj({"name": m.group(1), "arguments": args}, tagged=True, names=None)
    return ([call], seg[end:]) if call else None


def _mistral_tail(tail: str) -> tuple[list[ToolCall], str]:
    """Calls in the text after the first `[TOOL_CALLS]`; and the raw text left."""
    segments = tail.split(_MISTRAL_OPEN)
    calls: list[ToolCall] = []
    for i, seg in enumerate(segments):
        parsed = _mistral_segment(seg)
        if parsed is None:
            left = _MISTRAL_OPEN + _MISTRAL_OPEN.join(segments[i:])
            return calls, left
        calls += parsed[0]
        if parsed[1].strip() or i == len(segments) - 1:
            rest = parsed[1] + "".join(_MISTRAL_OPEN + s for s in segments[i + 1 :])
            return calls, rest
    return calls, ""  # pragma: no cover - the loop always returns


def _llama_tail(tail: str) -> tuple[list[ToolCall], str]:
    """Calls after `<|python_tag|>`: JSON calls or `name.call(...)`; and the text left."""
    calls, rest = _json_sequence(tail, tagged=True, names=None)
    if calls:
        return calls, rest
    call = _python_call(tail)
    return ([call], "") if call else ([], tail)


# ---------------------------------------------------------------------------- streaming

_HERMES_OPEN, _HERMES_CLOSE = "<tool_call>", "</tool_call>"
_MISTRAL_OPEN = "[TOOL_CALLS]"
_LLAMA_OPEN = "<|python_tag|>"
_OPEN_MARKER: dict[ToolFormat, str | None] = {
    ToolFormat.HERMES: _HERMES_OPEN,
    ToolFormat.MISTRAL: _MISTRAL_OPEN,
    ToolFormat.LLAMA3: _LLAMA_OPEN,
    ToolFormat.JSON: None,
}

_Mode = Literal["start", "hold_json", "text", "block", "tail"]


def _json_start(buf: str) -> bool | None:
    """Whether the answer so far starts like JSON calls (`{"`, `[{`, a ```json fence);
    None while it cannot tell yet. The answer never changes as more text arrives."""
    s = buf.lstrip()
    if s.startswith("```"):
        after = s[3:]
        nl = after.find("\n")
        if nl < 0:
            return None if "json".startswith(after.strip().lower()) else False
        if after[:nl].strip().lower() not in ("", "json"):
            return False
        s = after[nl + 1 :].lstrip()
    elif s and "```".startswith(s):
        return None
    if not s:
        return None
    if s[0] not in "{[":
        return False
    rest = s[1:].lstrip()
    if not rest:
        return None
    return rest[0] == ('"' if s[0] == "{" else "{")


def _partial_marker(buf: str, marker: str) -> int:
    """Length of the longest end of `buf` that is a proper start of `marker`."""
    for n in range(min(len(buf), len(marker) - 1), 0, -1):
        if marker.startswith(buf[-n:]):
            return n
    return 0


class _Content:
    """Collects content: drops whitespace next to calls, holds trailing whitespace."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.pending_ws = ""
        self.after_call = False
        self.emitted = False

    def text(self, s: str) -> None:
        sep = ""
        if self.after_call:
            s = s.lstrip()
            if not s:
                return
            self.after_call = False
            sep = "\n" if self.emitted else ""
        body = s.rstrip()
        if body:
            self.out.append(sep + self.pending_ws + body)
            self.pending_ws = s[len(body) :]
            self.emitted = True
        else:
            self.pending_ws += s

    def call(self) -> None:
        self.pending_ws = ""
        self.after_call = True

    def flush(self) -> None:
        if not self.after_call:
            self.out.append(self.pending_ws)
        self.pending_ws = ""

    def take(self) -> str:
        text = "".join(self.out)
        self.out.clear()
        return text


class ToolCallStream:
    """Finds tool calls in an answer that arrives piece by piece.

    `push` returns the text safe to show as content now; it holds back a possible start of
    a call marker (`<tool_c`), a leading `{"` / `[{` / ```json (the answer may be a bare
    JSON call) and trailing whitespace. `finish` returns the rest of the content and all
    calls. The result does not depend on how the answer was split.
    """

    def __init__(self, fmt: ToolFormat, names: Collection[str] | None = None) -> None:
        self._fmt = ToolFormat(fmt)
        self._names = frozenset(names) if names is not None else None
        self._marker = _OPEN_MARKER[self._fmt]
        self._mode: _Mode = "start"
        self._buf = ""
        self._calls: list[ToolCall] = []
        self._content = _Content()
        self._finished = False

    def push(self, piece: str) -> str:
        """Add generated text; return the content that can be shown now."""
        if self._finished:
            raise RuntimeError("push after finish")
        self._buf += piece
        self._advance(final=False)
        return self._content.take()

    def finish(self) -> tuple[str, list[ToolCall]]:
        """End of the answer: the content not yet returned, and every call found."""
        if self._finished:
            return "", []
        self._finished = True
        self._advance(final=True)
        self._content.flush()
        return self._content.take(), list(self._calls)

    def _add(self, calls: list[ToolCall]) -> None:
        self._calls += calls
        self._content.call()

    def _advance(self, final: bool) -> None:
        while True:
            if self._mode == "start":
                starts_json = _json_start(self._buf)
                if starts_json is None and not final:
                    return
                self._mode = "hold_json" if starts_json else "text"
            elif self._mode == "hold_json":
                if not final:
                    return
                calls = _untagged_calls(self._buf, self._names)
                if calls is not None:
                    self._add(calls)
                    self._buf = ""
                    return
                self._mode = "text"  # not a bare call: scan it for the format's markers
            elif self._mode == "text":
                if not self._scan_text(final):
                    return
            elif self._mode == "block":
                if not self._scan_block(final):
                    return
            else:  # tail: everything after a Mistral / Llama marker, parsed at the end
                if not final:
                    return
                parse = _mistral_tail if self._fmt is ToolFormat.MISTRAL else _llama_tail
                calls, left = parse(self._buf)
                if calls:
                    self._add(calls)
                    self._content.text(left)
                else:
                    self._content.text((self._marker or "") + self._buf)
                self._buf = ""
                return

    def _scan_text(self, final: bool) -> bool:
        """Content up to the next marker; True when a marker switched the mode."""
        marker = self._marker
        at = self._buf.find(marker) if marker else -1
        if marker and at >= 0:
            self._content.text(self._buf[:at])
            self._buf = self._buf[at + len(marker) :]
            self._mode = "block" if self._fmt is ToolFormat.HERMES else "tail"
            return True
        keep = 0 if final or not marker else _partial_marker(self._buf, marker)
        self._content.text(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]
        return False

    def _scan_block(self, final: bool) -> bool:
        """One `<tool_call>` block; True when it is done and scanning goes on."""
        close = self._buf.find(_HERMES_CLOSE)
        if close < 0 and not final:
            return False
        body = self._buf if close < 0 else self._buf[:close]
        calls = _hermes_body(body)
        if calls:
            self._add(calls)
        else:
            self._content.text(_HERMES_OPEN + body + ("" if close < 0 else _HERMES_CLOSE))
        self._buf = "" if close < 0 else self._buf[close + len(_HERMES_CLOSE) :]
        self._mode = "text"
        return close >= 0


def parse_tool_calls(
    text: str, fmt: ToolFormat, names: Collection[str] | None = None
) -> tuple[str, list[ToolCall]]:
    """Split a finished answer into content and tool calls; never raises on bad output.

    `names` (the request's tool names) makes bare JSON a call only when it names a tool.
    """
    stream = ToolCallStream(fmt, names)
    head = stream.push(text)
    tail, calls = stream.finish()
    return head + tail, calls


# ---------------------------------------------------------------------------- grammar

_ANY_VALUE: dict[str, Any] = {"type": ["string", "number", "boolean", "object", "array", "null"]}
_PRIMITIVES = ("string", "number", "integer", "boolean", "null")
_MAX_REF_DEPTH = 12


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Any:
    """A local `#/$defs/X` / `#/definitions/X` target, or None."""
    if not ref.startswith("#/"):
        return None
    node: Any = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _grammar_schema(schema: Any, root: Mapping[str, Any], depth: int = 0) -> dict[str, Any]:
    """`schema` cut down to what json_schema_to_gbnf handles: type, properties, required,
    enum, const, items, anyOf, additionalProperties, min/maxItems. Local `$ref`s are
    inlined (recursion stops at a depth: any value); unknowns become "any value"."""
    if not isinstance(schema, dict) or depth > _MAX_REF_DEPTH:
        return dict(_ANY_VALUE)
    if isinstance(schema.get("$ref"), str):
        return _grammar_schema(_resolve_ref(schema["$ref"], root), root, depth + 1)
    if "const" in schema:
        return {"const": schema["const"]}
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return {"enum": list(schema["enum"])}
    for key in ("anyOf", "oneOf"):
        alts = schema.get(key)
        if isinstance(alts, list) and alts:
            return {"anyOf": [_grammar_schema(a, root, depth + 1) for a in alts]}
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        if len(all_of) == 1 and not schema.get("properties"):
            return _grammar_schema(all_of[0], root, depth + 1)
        merged: dict[str, Any] = {"type": "object", "properties": {}, "required": []}
        for part in [schema, *all_of]:
            sub = part if part is schema else _grammar_schema(part, root, depth + 1)
            if isinstance(sub.get("properties"), dict):
                merged["properties"].update(sub["properties"])
                merged["required"] += [r for r in sub.get("required", []) if isinstance(r, str)]
        return _grammar_schema(merged, root, depth + 1)
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if isinstance(k, str)]
        alts = [_grammar_schema({**schema, "type": k}, root, depth) for k in kinds]
        return alts[0] if len(alts) == 1 else {"anyOf": alts} if alts else dict(_ANY_VALUE)
    if kind is None:
        if isinstance(schema.get("properties"), dict):
            kind = "object"
        elif "items" in schema:
            kind = "array"
        else:
            return dict(_ANY_VALUE)
    if kind == "object":
        return _object_schema(schema, root, depth)
    if kind == "array":
        out: dict[str, Any] = {"type": "array"}
        items = schema.get("items")
        if isinstance(items, dict):
            out["items"] = _grammar_schema(items, root, depth + 1)
        for key, limit in (("minItems", 8), ("maxItems", 16)):
            n = schema.get(key)
            if isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= limit:
                out[key] = n
        if out.get("minItems", 0) > out.get("maxItems", 16):
            out.pop("maxItems")
        return out
    if kind in _PRIMITIVES:
        return {"type": kind}
    return dict(_ANY_VALUE)


def _object_schema(
    schema: Mapping[str, Any], root: Mapping[str, Any], depth: int
) -> dict[str, Any]:
    props = schema.get("properties")
    extra = schema.get("additionalProperties")
    out: dict[str, Any] = {"type": "object"}
    if isinstance(props, dict):
        out["properties"] = {str(k): _grammar_schema(v, root, depth + 1) for k, v in props.items()}
        required = schema.get("required")
        if isinstance(required, list):
            out["required"] = [r for r in required if isinstance(r, str) and r in props]
        if extra is True:
            out["additionalProperties"] = True
    if isinstance(extra, dict):
        out["additionalProperties"] = _grammar_schema(extra, root, depth + 1)
    elif extra is False and not isinstance(props, dict):
        out["additionalProperties"] = False
    return out


def _call_schema(tool: Mapping[str, Any]) -> dict[str, Any]:
    fn = tool["function"]
    params = fn.get("parameters")
    arguments = _grammar_schema(params, params) if isinstance(params, dict) else {"type": "object"}
    if arguments.get("type") != "object":
        arguments = {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": arguments},
        "required": ["name", "arguments"],
    }


def tool_call_schema(
    tools: Sequence[Mapping[str, Any]],
    choice: ToolChoice | str | Mapping[str, Any],
    parallel: bool,
    max_calls: int | None = None,
) -> dict[str, Any]:
    """JSON Schema whose every instance is a valid call, for a forced `tool_choice`.

    The answer is one object `{"name": <const>, "arguments": {..per parameters..}}`; for
    "required" with `parallel`, a JSON array of one or more of them (at most `max_calls`).
    A named function always gives one object. Parse the answer with `parse_constrained`.
    """
    valid = validate_tools(list(tools))
    if not isinstance(choice, ToolChoice):
        choice = validate_tool_choice(choice, valid)
    if choice.mode == "function":
        chosen = [t for t in valid if t["function"]["name"] == choice.name]
        return _call_schema(chosen[0])
    if choice.mode != "required":
        raise ValueError(f"tool_choice {choice.mode!r} does not constrain the answer")
    alts = [_call_schema(t) for t in valid]
    one = alts[0] if len(alts) == 1 else {"anyOf": alts}
    if not parallel:
        return one
    out: dict[str, Any] = {"type": "array", "items": one, "minItems": 1}
    if max_calls is not None:
        out["maxItems"] = max(1, max_calls)
    return out


def parse_constrained(text: str) -> list[ToolCall]:
    """The calls in an answer made under `tool_call_schema`; [] when it is not valid
    (for example cut off by the token limit). Also takes `{"tool_calls": [...]}`."""
    try:
        value = json.loads(text.strip())
    except ValueError:
        return []
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    return _calls_from_value(value, tagged=True, names=None)


# ---------------------------------------------------------------------------- requests

_TOOL_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class ToolChoice:
    """A validated `tool_choice`; `name` is set for mode "function"."""

    mode: Literal["none", "auto", "required", "function"]
    name: str | None = None

    @property
    def forced(self) -> bool:
        """True when the answer must be a call (enforced by a grammar)."""
        return self.mode in ("required", "function")


def _check_parameters(params: Any, where: str) -> dict[str, Any]:
    if not isinstance(params, dict):
        raise BadRequestError(f"{where} must be a JSON Schema object")
    if params.get("type", "object") != "object":
        raise BadRequestError(f"{where}.type must be 'object'")
    props = params.get("properties")
    if props is not None:
        if not isinstance(props, dict):
            raise BadRequestError(f"{where}.properties must be an object")
        for key, sub in props.items():
            if not isinstance(sub, dict):
                raise BadRequestError(f"{where}.properties.{key} must be a JSON Schema object")
    required = params.get("required")
    if required is not None and (
        not isinstance(required, list) or not all(isinstance(r, str) for r in required)
    ):
        raise BadRequestError(f"{where}.required must be an array of strings")
    return params


def validate_tools(raw: Any) -> list[dict[str, Any]]:
    """Check a request's `tools` (OpenAI / Ollama shape, or the Responses API's flat
    `{"type": "function", "name", ...}`); return them as
    `[{"type": "function", "function": {"name", "description"?, "parameters"}}]`."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequestError("tools must be an array")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequestError(f"{where} must be an object")
        kind = tool.get("type", "function")
        if kind != "function":
            raise BadRequestError(f"{where}.type must be 'function', got {kind!r}")
        fn, fwhere = tool, where
        if "function" in tool:
            fn, fwhere = tool["function"], f"{where}.function"
            if not isinstance(fn, dict):
                raise BadRequestError(f"{fwhere} must be an object")
        name = fn.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequestError(f"{fwhere}.name must be a non-empty string")
        if not _TOOL_NAME.fullmatch(name):
            raise BadRequestError(
                f"{fwhere}.name {name!r} must be 1-64 letters, digits, '_', '-' or '.'"
            )
        if name in seen:
            raise BadRequestError(f"{fwhere}.name {name!r} is used by two tools")
        seen.add(name)
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise BadRequestError(f"{fwhere}.description must be a string")
        params = fn.get("parameters")
        entry: dict[str, Any] = {"name": name}
        if description:
            entry["description"] = description
        entry["parameters"] = (
            {"type": "object", "properties": {}}
            if params is None
            else _check_parameters(params, f"{fwhere}.parameters")
        )
        out.append({"type": "function", "function": entry})
    return out


_CHOICE_HELP = "tool_choice must be 'none', 'auto', 'required' or a function"


def validate_tool_choice(raw: Any, tools: Sequence[Mapping[str, Any]]) -> ToolChoice:
    """Check `tool_choice` against validated `tools`; absent means "auto" with tools."""
    names = {t["function"]["name"] for t in tools}
    if raw is None:
        return ToolChoice("auto" if tools else "none")
    if raw == "none":
        return ToolChoice("none")
    if raw == "auto":
        return ToolChoice("auto")
    if raw == "required":
        if not tools:
            raise BadRequestError("tool_choice 'required' needs at least one tool in tools")
        return ToolChoice("required")
    if isinstance(raw, str):
        raise BadRequestError(f"{_CHOICE_HELP}, got {raw!r}")
    if not isinstance(raw, dict):
        raise BadRequestError(f"{_CHOICE_HELP} object")
    if raw.get("type") != "function":
        raise BadRequestError(f"tool_choice.type must be 'function', got {raw.get('type')!r}")
    fn = raw.get("function")
    if isinstance(fn, dict):
        name, where = fn.get("name"), "tool_choice.function.name"
    else:  # the Responses API's {"type": "function", "name": ...}
        name, where = raw.get("name"), "tool_choice.name"
    if not isinstance(name, str) or not name:
        raise BadRequestError(f"{where} must be a non-empty string")
    if name not in names:
        raise BadRequestError(f"{where} {name!r} is not one of the request's tools")
    return ToolChoice("function", name)


def validate_parallel_tool_calls(raw: Any) -> bool:
    """`parallel_tool_calls`: absent means True (OpenAI's default)."""
    if raw is None:
        return True
    if not isinstance(raw, bool):
        raise BadRequestError("parallel_tool_calls must be a boolean")
    return raw
