"""Ollama's Go chat templates (`{{ .Prompt }}`, `{{ range .Messages }}`...) translated to Jinja.

Ollama's templates are Go `text/template` programs over Ollama's values. `translate_go_template`
parses one and writes a Jinja template over what `localserve.service.prompts.render_chat`
passes (`messages`; `tools` when given) that renders the same text, the way Ollama runs it:

- A template that mentions `.Messages` runs once, with `.System` (the system messages joined
  by a blank line), `.Messages` (consecutive messages of one role merged with a blank line,
  tool messages kept apart) and `.Tools`; `.Response` is empty.
- An older template (`.System`, `.Prompt`, `.Response` only) runs once per user/assistant
  turn; the last turn is cut right after its `{{ .Response }}` (a template without one gets
  it appended at its end, as Ollama's parser does).

Go's trim markers (`{{-`, `-}}`) are applied here, and every Jinja block tag is written as
`{%+ ... +%}` (no `trim_blocks`/`lstrip_blocks`), so the text comes out byte for byte. Field
names become snake_case keys (`.ToolCalls` -> `tool_calls`); printed maps and lists are
JSON, as Ollama's tool types print (compact, Go's escaping and key order). Go
prints `true`/`false` for booleans and nothing for missing values.

Supported: text, comments, `if`/`else if`/`else`, `range` (with `$i, $v :=`, `else`), `with`,
variables (`$x := ...`, `$x = ...`, `$`, `$.Field`), pipelines, parenthesised pipelines and
the functions `eq ne lt le gt ge and or not len index slice print printf println json`.
Anything else (`define`, `template`, `block`, `break`, `continue`, other functions, method
calls with arguments) is a 400 naming the construct with its line and column.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Union

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from localserve.errors import BadRequestError
from localserve.service.prompts import check_template, render_chat

__all__ = ["is_go_template", "translate_go_template"]

_WS = " \t\r\n"
_GO_ACTION = re.compile(
    r"\{\{-?\s*(?:\.|\$|/\*|(?:if|range|with|end|else|define|template|block)\b)"
)
_RIGHT_TRIM = re.compile(r"[ \t\r\n]+-\}\}")
_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
    |(?P<str>"(?:[^"\\\n]|\\.)*")
    |(?P<raw>`[^`]*`)
    |(?P<char>'(?:[^'\\\n]|\\.)+')
    |(?P<decl>:=)
    |(?P<assign>=)
    |(?P<lparen>\()
    |(?P<rparen>\))
    |(?P<pipe>\|)
    |(?P<comma>,)
    |(?P<var>\$[A-Za-z0-9_]*)
    |(?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+)
    |(?P<num>[+-]?(?:0[xX][0-9a-fA-F_]+|(?:\d[\d_]*)?\.?\d[\d_]*(?:[eE][+-]?\d+)?))
    |(?P<dot>\.)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset(
    {"if", "else", "end", "range", "with", "define", "template", "block", "break", "continue"}
)
_FUNCTIONS = frozenset(
    {"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "index", "slice"}
    | {"print", "printf", "println", "json"}
)
_SEQUENCE_FIELDS = frozenset({"Messages", "Tools", "ToolCalls", "Images"})
_GO_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_GO_ESCAPES.update({"\\": "\\", '"': '"', "'": "'"})


# ---- syntax tree -----------------------------------------------------------------------------


@dataclass
class _Tok:
    kind: str
    text: str
    pos: int
    glued: bool  # no whitespace between this token and the previous one


@dataclass
class _Dot:
    pos: int


@dataclass
class _Lit:
    value: str | int | float | bool | None
    pos: int


@dataclass
class _Func:  # a function name where an operand is expected: a call without arguments
    name: str
    pos: int


@dataclass
class _Field:  # `.A.B` on the dot (base None), or on another operand (`(x).A`, `$v.A`)
    base: _Expr | None
    names: tuple[str, ...]
    pos: int


@dataclass
class _Var:  # `$name.A.B`; name "" is `$`, the root
    name: str
    names: tuple[str, ...]
    pos: int


@dataclass
class _Call:
    name: str
    args: list[_Expr]
    pos: int


_Expr = Union[_Dot, _Lit, _Func, _Field, _Var, _Call]  # noqa: UP007 (used at runtime)


@dataclass
class _Text:
    text: str


@dataclass
class _Out:
    expr: _Expr
    pos: int


@dataclass
class _Set:
    var: str
    expr: _Expr
    declare: bool
    pos: int


@dataclass
class _If:
    branches: list[tuple[_Expr, list[_Node]]]
    else_body: list[_Node] | None
    pos: int


@dataclass
class _Range:
    key_var: str | None
    value_var: str | None
    expr: _Expr
    body: list[_Node]
    else_body: list[_Node] | None
    pos: int


@dataclass
class _With:
    var: str | None
    expr: _Expr
    body: list[_Node]
    else_body: list[_Node] | None
    pos: int


@dataclass
class _Stop:  # `{{ break }}` (brk) or `{{ continue }}`
    brk: bool
    pos: int


_Node = Union[_Text, _Out, _Set, _If, _Range, _With, _Stop]  # noqa: UP007 (used at runtime)


# ---- errors ----------------------------------------------------------------------------------


def _where(source: str, pos: int) -> str:
    line = source.count("\n", 0, pos) + 1
    column = pos - (source.rfind("\n", 0, pos) + 1) + 1
    return f"template line {line}, column {column}"


class _Refusal(Exception):
    def __init__(self, pos: int, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


# ---- lexing ----------------------------------------------------------------------------------


@dataclass
class _Action:
    tokens: list[_Tok]
    pos: int
    left_trim: bool
    right_trim: bool
    comment: bool = False


def _lex(source: str) -> list[str | _Action]:
    """Text pieces and actions, in order (trim markers not applied yet)."""
    items: list[str | _Action] = []
    pos = 0
    while True:
        start = source.find("{{", pos)
        if start < 0:
            items.append(source[pos:])
            return items
        items.append(source[pos:start])
        i = start + 2
        left_trim = source.startswith("-", i) and i + 1 < len(source) and source[i + 1] in _WS
        if left_trim:
            i += 2
        if source.startswith("/*", i):
            end = source.find("*/", i + 2)
            if end < 0:
                raise _Refusal(start, "unclosed comment")
            k = end + 2
            trim = _RIGHT_TRIM.match(source, k)
            if trim and trim.end() - k == 4:  # exactly " -}}"
                items.append(_Action([], start, left_trim, True, comment=True))
                pos = trim.end()
            elif source.startswith("}}", k):
                items.append(_Action([], start, left_trim, False, comment=True))
                pos = k + 2
            else:
                raise _Refusal(start, "comment does not end right before '}}'")
            continue
        tokens, pos, right_trim = _lex_action(source, i, start)
        items.append(_Action(tokens, start, left_trim, right_trim))


def _lex_action(source: str, i: int, start: int) -> tuple[list[_Tok], int, bool]:
    tokens: list[_Tok] = []
    glued = True
    while True:
        if i >= len(source):
            raise _Refusal(start, "unclosed action (no '}}')")
        trim = _RIGHT_TRIM.match(source, i)
        if trim:
            return tokens, trim.end(), True
        if source.startswith("}}", i):
            return tokens, i + 2, False
        match = _TOKEN.match(source, i)
        if match is None:
            raise _Refusal(i, f"unexpected character {source[i]!r} in an action")
        kind = match.lastgroup or ""
        if kind == "ws":
            glued = False
        else:
            tokens.append(_Tok(kind, match.group(), i, glued))
            glued = True
        i = match.end()


# ---- parsing ---------------------------------------------------------------------------------


def _go_string(token: _Tok) -> str:
    if token.kind == "raw":
        return token.text[1:-1].replace("\r", "")
    body = token.text[1:-1]
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt in _GO_ESCAPES:
            out.append(_GO_ESCAPES[nxt])
            i += 2
        elif nxt in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[nxt]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise _Refusal(token.pos, f"bad escape in string {token.text}")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        elif nxt in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or not all(c in "01234567" for c in digits):
                raise _Refusal(token.pos, f"bad escape in string {token.text}")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise _Refusal(token.pos, f"bad escape '\\{nxt}' in string {token.text}")
    return "".join(out)


def _go_number(token: _Tok) -> int | float:
    text = token.text.replace("_", "")
    try:
        if text.lower().lstrip("+-").startswith("0x"):
            return int(text, 16)
        if any(c in text for c in ".eE"):
            return float(text)
        return int(text, 10)
    except ValueError:
        raise _Refusal(token.pos, f"bad number {token.text!r}") from None


class _ActionParser:
    """One action's tokens: a keyword with a pipeline, or a pipeline (with `$x :=`)."""

    def __init__(self, tokens: list[_Tok], pos: int) -> None:
        self.tokens = tokens
        self.i = 0
        self.pos = pos

    def peek(self, offset: int = 0) -> _Tok | None:
        j = self.i + offset
        return self.tokens[j] if j < len(self.tokens) else None

    def take(self) -> _Tok:
        token = self.peek()
        if token is None:
            raise _Refusal(self.pos, "unexpected end of action")
        self.i += 1
        return token

    def at_end(self) -> bool:
        return self.i >= len(self.tokens)

    def expect_end(self) -> None:
        token = self.peek()
        if token is not None:
            raise _Refusal(token.pos, f"unexpected {token.text!r} in action")

    def declaration(self) -> tuple[list[str], bool] | None:
        """`$a :=`, `$a, $b :=` or `$a =` at the start; (names, declare)."""
        first, second = self.peek(), self.peek(1)
        if first is None or first.kind != "var" or second is None:
            return None
        if second.kind in ("decl", "assign"):
            self.i += 2
            return [first.text[1:]], second.kind == "decl"
        third, fourth = self.peek(2), self.peek(3)
        if (
            second.kind == "comma"
            and third is not None
            and third.kind == "var"
            and fourth is not None
            and fourth.kind in ("decl", "assign")
        ):
            self.i += 4
            return [first.text[1:], third.text[1:]], fourth.kind == "decl"
        return None

    def pipeline(self, closing: str | None = None) -> _Expr:
        start = self.peek()
        if start is None or start.kind == closing:
            raise _Refusal(start.pos if start else self.pos, "missing value in pipeline")
        value = self.command(None)
        while (token := self.peek()) is not None and token.kind == "pipe":
            self.take()
            value = self.command(value)
        return value

    def command(self, piped: _Expr | None) -> _Expr:
        operands: list[_Expr] = []
        while (token := self.peek()) is not None and token.kind not in ("pipe", "rparen"):
            operands.append(self.operand())
        if not operands:
            where = self.peek().pos if self.peek() else self.pos  # type: ignore[union-attr]
            raise _Refusal(where, "missing command in pipeline")
        head, args = operands[0], operands[1:]
        if isinstance(head, _Func):
            call_args = [_as_value(a) for a in args]
            if piped is not None:
                call_args.append(piped)
            return _check_call(_Call(head.name, call_args, head.pos))
        if piped is not None:
            raise _Refusal(_pos(head), "only a function can follow '|' in a pipeline")
        if args:
            if isinstance(head, _Field | _Var):
                raise _Refusal(_pos(head), "method calls with arguments are not supported")
            raise _Refusal(_pos(args[0]), "cannot give arguments to a value")
        return head

    def operand(self) -> _Expr:
        token = self.take()
        term: _Expr
        if token.kind in ("str", "raw"):
            term = _Lit(_go_string(token), token.pos)
        elif token.kind == "char":
            raise _Refusal(token.pos, f"character constant {token.text} is not supported")
        elif token.kind == "num":
            term = _Lit(_go_number(token), token.pos)
        elif token.kind == "field":
            term = _Field(None, tuple(token.text[1:].split(".")), token.pos)
        elif token.kind == "dot":
            term = _Dot(token.pos)
        elif token.kind == "var":
            term = _Var(token.text[1:], (), token.pos)
        elif token.kind == "lparen":
            term = self.pipeline("rparen")
            closing = self.take()
            if closing.kind != "rparen":
                raise _Refusal(closing.pos, "missing ')'")
        elif token.kind == "ident":
            if token.text in ("true", "false"):
                term = _Lit(token.text == "true", token.pos)
            elif token.text == "nil":
                term = _Lit(None, token.pos)
            elif token.text in _KEYWORDS:
                raise _Refusal(token.pos, f"unexpected keyword {token.text!r}")
            elif token.text not in _FUNCTIONS:
                raise _Refusal(token.pos, f"function {token.text!r} is not supported")
            else:
                term = _Func(token.text, token.pos)
        else:
            raise _Refusal(token.pos, f"unexpected {token.text!r}")
        while (nxt := self.peek()) is not None and nxt.kind == "field" and nxt.glued:
            self.take()
            names = tuple(nxt.text[1:].split("."))
            if isinstance(term, _Var) and not term.names:
                term = _Var(term.name, names, term.pos)
            elif isinstance(term, _Func | _Lit):
                raise _Refusal(nxt.pos, f"cannot take field {nxt.text} of a constant")
            else:
                term = _Field(term, names, nxt.pos)
        return term


def _pos(expr: _Expr) -> int:
    return expr.pos


def _as_value(expr: _Expr) -> _Expr:
    """A function name used as an argument is a call without arguments (Go's rule)."""
    if isinstance(expr, _Func):
        return _check_call(_Call(expr.name, [], expr.pos))
    return expr


def _check_call(call: _Call) -> _Call:
    count = len(call.args)
    need = {
        "eq": (2, None),
        "ne": (2, 2),
        "lt": (2, 2),
        "le": (2, 2),
        "gt": (2, 2),
        "ge": (2, 2),
        "and": (1, None),
        "or": (1, None),
        "not": (1, 1),
        "len": (1, 1),
        "index": (1, None),
        "slice": (1, 3),
        "json": (1, 1),
        "print": (0, None),
        "println": (0, None),
        "printf": (1, None),
    }[call.name]
    low, high = need
    if count < low or (high is not None and count > high):
        raise _Refusal(call.pos, f"wrong number of arguments for {call.name!r}: {count}")
    if call.name == "printf":
        fmt = call.args[0]
        if not isinstance(fmt, _Lit) or not isinstance(fmt.value, str):
            raise _Refusal(call.pos, "printf needs a constant format string")
        verbs = re.findall(r"%[^%]|%%", fmt.value)
        if any(v not in ("%s", "%d", "%v", "%%") for v in verbs):
            raise _Refusal(call.pos, "printf supports only %s, %d, %v and %%")
    return call


@dataclass
class _Frame:
    kind: str  # "root", "if", "range", "with"
    node: _If | _Range | _With | None
    body: list[_Node] = field(default_factory=list)
    in_else: bool = False


def _parse(source: str) -> list[_Node]:
    items = _lex(source)
    # Apply trim markers to the text around actions.
    texts: list[str | _Action] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            before = items[index - 1] if index > 0 else None
            after = items[index + 1] if index + 1 < len(items) else None
            if isinstance(before, _Action) and before.right_trim:
                item = item.lstrip(_WS)
            if isinstance(after, _Action) and after.left_trim:
                item = item.rstrip(_WS)
        texts.append(item)

    stack = [_Frame("root", None)]

    def add(node: _Node) -> None:
        stack[-1].body.append(node)

    for item in texts:
        if isinstance(item, str):
            if item:
                add(_Text(item))
            continue
        if item.comment:
            continue
        if not item.tokens:
            raise _Refusal(item.pos, "empty action")
        parser = _ActionParser(item.tokens, item.pos)
        head = item.tokens[0]
        keyword = head.text if head.kind == "ident" and head.text in _KEYWORDS else None
        if keyword is None:
            decl = parser.declaration()
            expr = parser.pipeline()
            parser.expect_end()
            if decl is None:
                add(_Out(expr, item.pos))
            elif len(decl[0]) != 1:
                raise _Refusal(item.pos, "two variables are only allowed in range")
            else:
                add(_Set(decl[0][0], expr, decl[1], item.pos))
            continue
        parser.take()
        if keyword in ("define", "template", "block"):
            raise _Refusal(head.pos, f"'{{{{ {keyword} }}}}' is not supported")
        if keyword in ("break", "continue"):
            parser.expect_end()
            if not any(frame.kind == "range" for frame in stack):
                raise _Refusal(head.pos, f"'{{{{ {keyword} }}}}' outside 'range'")
            add(_Stop(keyword == "break", head.pos))
            continue
        if keyword == "if":
            if parser.declaration() is not None:
                raise _Refusal(head.pos, "variable declarations in 'if' are not supported")
            cond = parser.pipeline()
            parser.expect_end()
            body: list[_Node] = []
            node = _If([(cond, body)], None, head.pos)
            add(node)
            stack.append(_Frame("if", node, body))
        elif keyword == "range":
            decl = parser.declaration()
            if decl is not None and not decl[1]:
                raise _Refusal(head.pos, "range needs ':=' for its variables")
            expr = parser.pipeline()
            parser.expect_end()
            names = decl[0] if decl else []
            key_var = names[0] if len(names) == 2 else None
            value_var = names[-1] if names else None
            range_node = _Range(key_var, value_var, expr, [], None, head.pos)
            add(range_node)
            stack.append(_Frame("range", range_node, range_node.body))
        elif keyword == "with":
            decl = parser.declaration()
            if decl is not None and (len(decl[0]) != 1 or not decl[1]):
                raise _Refusal(head.pos, "with takes one variable declared with ':='")
            expr = parser.pipeline()
            parser.expect_end()
            with_node = _With(decl[0][0] if decl else None, expr, [], None, head.pos)
            add(with_node)
            stack.append(_Frame("with", with_node, with_node.body))
        elif keyword == "else":
            frame = stack[-1]
            if frame.kind == "root":
                raise _Refusal(head.pos, "'else' without 'if', 'range' or 'with'")
            if frame.in_else:
                raise _Refusal(head.pos, "'else' after 'else'")
            nxt = parser.peek()
            if nxt is not None and nxt.kind == "ident" and nxt.text in ("if", "with"):
                parser.take()
                if nxt.text == "with" or frame.kind != "if":
                    raise _Refusal(head.pos, f"'else {nxt.text}' here is not supported")
                cond = parser.pipeline()
                parser.expect_end()
                assert isinstance(frame.node, _If)
                frame.body = []
                frame.node.branches.append((cond, frame.body))
                continue
            parser.expect_end()
            frame.in_else = True
            frame.body = []
            assert frame.node is not None
            frame.node.else_body = frame.body
        elif keyword == "end":
            parser.expect_end()
            if len(stack) == 1:
                raise _Refusal(head.pos, "'end' without 'if', 'range' or 'with'")
            stack.pop()
    if len(stack) > 1:
        raise _Refusal(stack[-1].node.pos if stack[-1].node else 0, f"unclosed '{stack[-1].kind}'")
    return stack[0].body


# ---- what Ollama does around the template ----------------------------------------------------


def _names_in(expr: _Expr) -> list[str]:
    if isinstance(expr, _Field):
        return [*expr.names, *(_names_in(expr.base) if expr.base is not None else [])]
    if isinstance(expr, _Var):
        return list(expr.names)
    if isinstance(expr, _Call):
        return [n for a in expr.args for n in _names_in(a)]
    return []


def _identifiers(nodes: list[_Node]) -> set[str]:
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, _Out | _Set):
            found.update(n.lower() for n in _names_in(node.expr))
        elif isinstance(node, _If):
            for cond, body in node.branches:
                found.update(n.lower() for n in _names_in(cond))
                found |= _identifiers(body)
            found |= _identifiers(node.else_body or [])
        elif isinstance(node, _Range | _With):
            found.update(n.lower() for n in _names_in(node.expr))
            found |= _identifiers(node.body) | _identifiers(node.else_body or [])
    return found


def _mentions_response(expr: _Expr) -> bool:
    if isinstance(expr, _Field):
        return "Response" in expr.names or (expr.base is not None and _mentions_response(expr.base))
    if isinstance(expr, _Call):
        return any(_mentions_response(a) for a in expr.args)
    return False


def _cut_after_response(nodes: list[_Node]) -> list[_Node]:
    """Ollama's last legacy turn: everything after the first `{{ .Response }}` removed."""
    cut = False

    def walk_list(body: list[_Node] | None) -> list[_Node] | None:
        if body is None:
            return None
        kept: list[_Node] = []
        for node in body:
            if not cut:
                kept.append(walk(node))
        return kept

    def walk(node: _Node) -> _Node:
        nonlocal cut
        if isinstance(node, _Out | _Set):
            if _mentions_response(node.expr):
                cut = True
            return node
        if isinstance(node, _If):
            branches = [(cond, walk_list(body) or []) for cond, body in node.branches]
            return _If(branches, walk_list(node.else_body), node.pos)
        if isinstance(node, _Range):
            body = walk_list(node.body) or []
            return _Range(
                node.key_var, node.value_var, node.expr, body, walk_list(node.else_body), node.pos
            )
        if isinstance(node, _With):
            body = walk_list(node.body) or []
            return _With(node.var, node.expr, body, walk_list(node.else_body), node.pos)
        return node

    return walk_list(nodes) or []


# ---- writing Jinja ---------------------------------------------------------------------------


def _tag(body: str) -> str:
    return "{%+ " + body + " +%}"


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _literal(value: str | int | float | bool | None) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


# Go's encoding/json, compact: `<`, `>` and `&` escaped; map keys sorted; objects whose keys
# are all fields of Ollama's tool types in those types' field order.
_STRUCT_FIELDS = (
    "type", "items", "function", "name", "description", "parameters", "$defs", "required",
    "properties", "enum", "index", "arguments",
)  # fmt: skip
_ESCAPES = (
    ("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"),
    ("\b", "\\u0008"), ("\f", "\\u000c"), ("<", "\\u003c"), (">", "\\u003e"),
    ("&", "\\u0026"),
)  # fmt: skip
_QUOTE = "".join(f" | replace({old!r}, {new!r})" for old, new in _ESCAPES)
_JSON_MACRO = (
    _tag("macro _j(v)")
    + _tag("if v is undefined or v is none")
    + "null"
    + _tag("elif v is boolean")
    + "{{ 'true' if v else 'false' }}"
    + _tag("elif v is number")
    + "{{ v }}"
    + _tag("elif v is string")
    + '"{{ v'
    + _QUOTE
    + ' }}"'
    + _tag("elif v is mapping")
    + "{{ '{' }}"
    + _tag(f"set _f = {list(_STRUCT_FIELDS)!r}")
    + _tag(
        "set _ks = (_f | select('in', v) | list) if (v | reject('in', _f) | list | length == 0)"
        " else (v | sort)"
    )
    + _tag("for _k in _ks")
    + "{{ _j(_k | string) }}:{{ _j(v[_k]) }}"
    + _tag("if not loop.last")
    + ","
    + _tag("endif")
    + _tag("endfor")
    + "{{ '}' }}"
    + _tag("elif v is iterable")
    + "["
    + _tag("for _x in v")
    + "{{ _j(_x) }}"
    + _tag("if not loop.last")
    + ","
    + _tag("endif")
    + _tag("endfor")
    + "]"
    + _tag("else")
    + "{{ _j(v | string) }}"
    + _tag("endif")
    + _tag("endmacro")
)
_PRINT_MACRO = (
    _JSON_MACRO
    + _tag("macro _p(v)")
    + _tag("if v is undefined or v is none")
    + _tag("elif v is string")
    + "{{ v }}"
    + _tag("elif v is boolean")
    + "{{ 'true' if v else 'false' }}"
    + _tag("elif v is mapping or v is sequence")
    + "{{ _j(v) }}"
    + _tag("else")
    + "{{ v }}"
    + _tag("endif")
    + _tag("endmacro")
)
_COLLATE = (
    _tag("set _n = namespace(c=[], s=[])")
    + _tag("for _m in messages")
    + _tag("if _m['role'] == 'system'")
    + _tag("set _n.s = _n.s + [_m['content']]")
    + _tag("endif")
    + _tag("if _n.c and _n.c[-1]['role'] == _m['role'] and _m['role'] != 'tool'")
    + _tag(
        "set _n.c = _n.c[:-1] + [dict(_n.c[-1], content=_n.c[-1]['content'] ~ '\\n\\n' ~ "
        "_m['content'])]"
    )
    + _tag("else")
    + _tag("set _n.c = _n.c + [_m]")
    + _tag("endif")
    + _tag("endfor")
    + _tag("set _v = namespace()")
)
_THINK = "'think': false, 'think_level': '', 'is_think_set': false"
_MESSAGES_ROOT = _tag(
    "set _r = {'system': _n.s | join('\\n\\n'), 'messages': _n.c, "
    "'tools': (tools if tools is defined and tools else []), "
    f"'prompt': '', 'suffix': '', 'response': '', {_THINK}}}"
)
_FLUSH = (
    _tag(
        "set _t.turns = _t.turns + [{'system': _t.system, 'prompt': _t.prompt, "
        f"'response': _t.response, {_THINK}}}]"
    )
    + _tag("set _t.system = ''")
    + _tag("set _t.prompt = ''")
    + _tag("set _t.response = ''")
)
_LEGACY_TURNS = (
    _tag("set _t = namespace(turns=[], system='', prompt='', response='')")
    + _tag("for _m in _n.c")
    + _tag("if _m['role'] == 'system'")
    + _tag("if _t.prompt or _t.response")
    + _FLUSH
    + _tag("endif")
    + _tag("set _t.system = _m['content']")
    + _tag("elif _m['role'] == 'user'")
    + _tag("if _t.response")
    + _FLUSH
    + _tag("endif")
    + _tag("set _t.prompt = _m['content']")
    + _tag("elif _m['role'] == 'assistant'")
    + _tag("set _t.response = _m['content']")
    + _tag("endif")
    + _tag("endfor")
)
_LEGACY_LAST = _tag(
    f"set _r = {{'system': _t.system, 'prompt': _t.prompt, 'response': _t.response, {_THINK}}}"
)


class _Writer:
    """Writes Jinja for the parsed nodes; resolves Go's variable scopes as it goes."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.counter = 0
        self.scopes: list[dict[str, str]] = [{}]
        self.loops: list[tuple[str, str]] = []  # (skip flag, break flag) per enclosing range

    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def text(self, text: str) -> None:
        if not text:
            return
        risky = any(s in text for s in ("{{", "{%", "{#", "\r")) or text.endswith("{")
        self.out.append("{{ " + repr(text) + " }}" if risky else text)

    def declare(self, name: str) -> str:
        safe = re.sub(r"[^A-Za-z0-9_]", "_", name) or "x"
        target = f"_v.{self.fresh(safe + '_')}"
        self.scopes[-1][name] = target
        return target

    def lookup(self, name: str, pos: int) -> str:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        raise _Refusal(pos, f"undefined variable ${name}")

    def chain(self, base: str, names: tuple[str, ...]) -> str:
        """`.A.B` on `base`; a missing value anywhere gives nothing, not an error."""
        expr = base
        for index, name in enumerate(names):
            key = repr(_snake(name))
            safe = index == 0 and base in ("_r", "_rt")  # Ollama's values: always a dict
            expr = f"{expr}[{key}]" if safe else f"({expr} or {{}})[{key}]"
        return expr

    def expr(self, node: _Expr, dot: str, root: str) -> str:
        if isinstance(node, _Dot):
            return dot
        if isinstance(node, _Lit):
            return _literal(node.value)
        if isinstance(node, _Field):
            base = dot if node.base is None else f"({self.expr(node.base, dot, root)})"
            return self.chain(base, node.names)
        if isinstance(node, _Var):
            base = root if node.name == "" else self.lookup(node.name, node.pos)
            return self.chain(base, node.names)
        if isinstance(node, _Func):
            return self.expr(_check_call(_Call(node.name, [], node.pos)), dot, root)
        return self.call(node, dot, root)

    def call(self, node: _Call, dot: str, root: str) -> str:
        args = [self.expr(a, dot, root) for a in node.args]
        name = node.name
        operators = {"ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}
        if name == "eq":
            return "(" + " or ".join(f"({args[0]}) == ({a})" for a in args[1:]) + ")"
        if name in operators:
            return f"(({args[0]}) {operators[name]} ({args[1]}))"
        if name in ("and", "or"):
            return "(" + f" {name} ".join(f"({a})" for a in args) + ")"
        if name == "not":
            return f"(not ({args[0]}))"
        if name == "len":
            return f"(({args[0]}) | length)"
        if name == "index":
            expr = f"({args[0]})"
            for key in args[1:]:
                expr = f"({expr} or {{}})[{key}]"
            return expr
        if name == "slice":
            low = args[1] if len(args) > 1 else ""
            high = args[2] if len(args) > 2 else ""
            return f"({args[0]})[{low}:{high}]"
        if name == "json":
            return f"(_j({args[0]}) | string)"
        if name == "printf":
            fmt = node.args[0]
            assert isinstance(fmt, _Lit) and isinstance(fmt.value, str)
            python_fmt = re.sub(r"%[dv]", "%s", fmt.value)
            rest = ", ".join(f"({a})" for a in args[1:])
            return f"({_literal(python_fmt)} | format({rest}))"
        # print, println
        parts = [f"(({a}) | string)" for a in args]
        joined = " ~ ' ' ~ ".join(parts) if name == "println" else " ~ ".join(parts)
        if name == "println":
            joined = f"{joined} ~ '\\n'" if parts else "'\\n'"
        return f"({joined or repr('')})"

    def iterable(self, node: _Expr, text: str) -> tuple[str, bool]:
        """The Jinja iterable for `range`, and whether it is known to be a list."""
        names = node.names if isinstance(node, _Field | _Var) else ()
        if names and names[-1] in _SEQUENCE_FIELDS:
            return f"(({text}) or [])", True
        return f"((({text}) | dictsort) if ({text}) is mapping else (({text}) or []))", False

    def nodes(self, nodes: list[_Node], dot: str, root: str) -> None:
        for index, node in enumerate(nodes):
            if isinstance(node, _Stop):
                skip, brk = self.loops[-1]
                self.out.append(_tag(f"set {skip} = true"))
                if node.brk:
                    self.out.append(_tag(f"set {brk} = true"))
                return  # the rest of this list never runs
            self.node(node, dot, root)
            rest = nodes[index + 1 :]
            if rest and self.loops and _may_stop(node):
                self.out.append(_tag(f"if not {self.loops[-1][0]}"))
                self.nodes(rest, dot, root)
                self.out.append(_tag("endif"))
                return

    def scoped(self, nodes: list[_Node], dot: str, root: str) -> None:
        self.scopes.append({})
        self.nodes(nodes, dot, root)
        self.scopes.pop()

    def node(self, node: _Node, dot: str, root: str) -> None:
        if isinstance(node, _Text):
            self.text(node.text)
        elif isinstance(node, _Out):
            if isinstance(node.expr, _Lit) and isinstance(node.expr.value, str):
                self.text(node.expr.value)
            else:
                self.out.append("{{ _p(" + self.expr(node.expr, dot, root) + ") }}")
        elif isinstance(node, _Set):
            value = self.expr(node.expr, dot, root)
            target = self.declare(node.var) if node.declare else self.lookup(node.var, node.pos)
            self.out.append(_tag(f"set {target} = {value}"))
        elif isinstance(node, _If):
            for index, (cond, body) in enumerate(node.branches):
                keyword = "if" if index == 0 else "elif"
                self.out.append(_tag(f"{keyword} {self.expr(cond, dot, root)}"))
                self.scoped(body, dot, root)
            if node.else_body is not None:
                self.out.append(_tag("else"))
                self.scoped(node.else_body, dot, root)
            self.out.append(_tag("endif"))
        elif isinstance(node, _Range):
            source = self.expr(node.expr, dot, root)
            iterable, is_list = self.iterable(node.expr, source)
            item = self.fresh("_e")
            skip, brk = f"_v.{self.fresh('skip')}", f"_v.{self.fresh('break')}"
            breaks = _may_stop(_If([(_Lit(True, 0), node.body)], None, 0), brk=True)
            if breaks:
                self.out.append(_tag(f"set {brk} = false"))
                iterable = f"{iterable} if not {brk}"
            self.out.append(_tag(f"for {item} in {iterable}"))
            if any(_may_stop(n) for n in node.body):
                self.out.append(_tag(f"set {skip} = false"))
            self.loops.append((skip, brk))
            self.scopes.append({})
            if is_list:
                element, key = item, "loop.index0"
            else:
                mapping = f"({source}) is mapping"
                element = self.fresh("_d")
                key = f"({item}[0] if {mapping} else loop.index0)"
                self.out.append(_tag(f"set {element} = ({item}[1] if {mapping} else {item})"))
            if node.key_var is not None:
                self.out.append(_tag(f"set {self.declare(node.key_var)} = {key}"))
            if node.value_var is not None:
                self.out.append(_tag(f"set {self.declare(node.value_var)} = {element}"))
            self.nodes(node.body, element, root)
            self.scopes.pop()
            self.loops.pop()
            if node.else_body is not None:
                self.out.append(_tag("else"))
                self.scoped(node.else_body, dot, root)
            self.out.append(_tag("endfor"))
        elif isinstance(node, _With):
            value = self.fresh("_w")
            self.out.append(_tag(f"with {value} = {self.expr(node.expr, dot, root)}"))
            self.out.append(_tag(f"if {value}"))
            self.scopes.append({})
            if node.var is not None:
                self.out.append(_tag(f"set {self.declare(node.var)} = {value}"))
            self.nodes(node.body, value, root)
            self.scopes.pop()
            if node.else_body is not None:
                self.out.append(_tag("else"))
                self.scoped(node.else_body, dot, root)
            self.out.append(_tag("endif"))
            self.out.append(_tag("endwith"))


def _may_stop(node: _Node, brk: bool = False) -> bool:
    """Whether `node` may run a `break` (brk) or any `break`/`continue` of the enclosing
    range (those inside a nested range belong to it)."""
    if isinstance(node, _Stop):
        return node.brk or not brk
    bodies: list[list[_Node] | None] = []
    if isinstance(node, _If):
        bodies = [*(body for _, body in node.branches), node.else_body]
    elif isinstance(node, _With):
        bodies = [node.body, node.else_body]
    elif isinstance(node, _Range):
        bodies = [node.else_body]  # its own body's stops are its own
    return any(_may_stop(n, brk) for body in bodies for n in body or [])


def _write(nodes: list[_Node]) -> str:
    identifiers = _identifiers(nodes)
    writer = _Writer()
    writer.out.append(_PRINT_MACRO + _COLLATE)
    if "messages" in identifiers:
        writer.out.append(_MESSAGES_ROOT)
        writer.nodes(nodes, "_r", "_r")
    else:
        if "response" not in identifiers:
            nodes = [*nodes, _Out(_Field(None, ("Response",), 0), 0)]
        writer.out.append(_LEGACY_TURNS)
        writer.out.append(_tag("for _rt in _t.turns"))
        writer.scoped(nodes, "_rt", "_rt")
        writer.out.append(_tag("endfor"))
        writer.out.append(_LEGACY_LAST)
        writer.scoped(_cut_after_response(nodes), "_r", "_r")
    if writer.out and writer.out[-1].endswith("\n"):
        # Jinja drops one newline at the very end of a template's source.
        writer.out[-1] = "{{ " + repr(writer.out[-1]) + " }}"
    return "".join(writer.out)


# ---- public API ------------------------------------------------------------------------------


def is_go_template(text: str) -> bool:
    """Whether `text` is a Go template (Ollama's) rather than a Jinja one."""
    if not _GO_ACTION.search(text):
        return False
    if "{%" not in text:
        return True
    try:  # both syntaxes' markers: a template that compiles as Jinja is Jinja
        ImmutableSandboxedEnvironment().parse(text)
    except TemplateError:
        return True
    return False


_SAMPLES: tuple[list[dict[str, str]], ...] = (
    [{"role": "user", "content": "Hello"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Bye"},
    ],
)


def translate_go_template(text: str) -> str:
    """The Jinja equivalent of an Ollama Go template; a 400 naming the construct (with its
    line and column) when it uses one outside the supported subset; the result compiles
    and renders a sample conversation (checked here)."""
    try:
        jinja = _write(_parse(text))
    except _Refusal as exc:
        raise BadRequestError(
            f"cannot use this Go template: {_where(text, exc.pos)}: {exc.message}"
        ) from None
    check_template(jinja)
    for messages in _SAMPLES:
        try:
            render_chat(jinja, messages)
        except BadRequestError as exc:
            raise BadRequestError(f"cannot use this Go template: {exc.message}") from exc
    return jinja
