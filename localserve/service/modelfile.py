r'''Ollama's Modelfile format: parsing, printing back, and the `/api/create` request it means.

    # a comment line
    FROM llama3.2
    PARAMETER temperature 0.7
    PARAMETER stop "<|im_end|>"
    PARAMETER stop "<|endoftext|>"
    TEMPLATE """{{ .Prompt }}"""
    SYSTEM You are terse.
    MESSAGE user Hello
    MESSAGE assistant Hi!
    LICENSE """MIT License ..."""

FROM is an installed model, a blob digest (`sha256:<hex>`) or a GGUF path (which only the
CLI can use: it uploads the file and writes its digest). Directives are case-insensitive;
a comment is a line starting with `#` (there are no comments after a value). A value is the
rest of its line, or a double-quoted string (may span lines; a backslash escapes a quote or
a backslash), or a triple-quoted string (may span lines, taken as is). Several `stop`
parameters make a list; LICENSE may repeat; FROM, TEMPLATE and SYSTEM may not. PARAMETER
values are typed and checked like request options (`options.parse_options`); options Ollama
accepts that have no effect here are checked and dropped. MESSAGE roles are system, user,
assistant. ADAPTER (LoRA) is refused. Errors are 400s naming the line: "Modelfile line 3:
unknown directive 'FORM' (did you mean FROM?)". Line endings are normalised to "\n".

`render_modelfile` prints a `Modelfile` that `parse_modelfile` reads back equal.
'''

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from localserve.errors import BadRequestError
from localserve.names import ModelName, parse_digest
from localserve.service.options import IGNORED_OPTIONS, OPTION_TYPES, parse_options

__all__ = [
    "Modelfile",
    "ModelfileMessage",
    "from_kind",
    "modelfile_to_create_request",
    "parse_modelfile",
    "render_modelfile",
]

DIRECTIVES = ("FROM", "ADAPTER", "PARAMETER", "TEMPLATE", "SYSTEM", "MESSAGE", "LICENSE")
MESSAGE_ROLES = ("system", "user", "assistant")
_WS = " \t"
# Types of the options Ollama accepts that have no effect here (checked, then dropped).
_IGNORED_TYPES: dict[str, type] = {
    "num_keep": int,
    "repeat_last_n": int,
    "num_batch": int,
    "main_gpu": int,
    "num_thread": int,
    "tfs_z": float,
    "penalize_newline": bool,
    "numa": bool,
    "use_mmap": bool,
    "use_mlock": bool,
    "low_vram": bool,
    "vocab_only": bool,
    "f16_kv": bool,
}


@dataclass(frozen=True)
class ModelfileMessage:
    role: str
    content: str


@dataclass
class Modelfile:
    """A parsed Modelfile. `from_` is the FROM value as written."""

    from_: str
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    messages: list[ModelfileMessage] = field(default_factory=list)
    licenses: list[str] = field(default_factory=list)


def _error(line: int, message: str) -> BadRequestError:
    return BadRequestError(f"Modelfile line {line}: {message}")


# ---- parsing ---------------------------------------------------------------------------------


class _Reader:
    """The Modelfile text with a cursor; values may run over several lines."""

    def __init__(self, text: str) -> None:
        self.text = text.replace("\r\n", "\n")
        self.pos = 0

    def line_no(self, pos: int | None = None) -> int:
        return self.text.count("\n", 0, self.pos if pos is None else pos) + 1

    def at_end(self) -> bool:
        return self.pos >= len(self.text)

    def skip_blank(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WS:
            self.pos += 1

    def word(self) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in " \t\n":
            self.pos += 1
        return self.text[start : self.pos]

    def rest_of_line(self) -> str:
        end = self.text.find("\n", self.pos)
        end = len(self.text) if end < 0 else end
        value = self.text[self.pos : end]
        self.pos = end
        return value

    def end_line(self, what: str) -> None:
        """After a quoted value: only blanks may follow on its line."""
        self.skip_blank()
        if not self.at_end() and self.text[self.pos] != "\n":
            raise _error(self.line_no(), f"unexpected text after the quoted {what}")

    def value(self, what: str) -> str:
        self.skip_blank()
        start_line = self.line_no()
        if self.text.startswith('"""', self.pos):
            end = self.text.find('"""', self.pos + 3)
            if end < 0:
                raise _error(start_line, f'{what}: no closing """')
            value = self.text[self.pos + 3 : end]
            self.pos = end + 3
            self.end_line(what)
            return value
        if self.text.startswith('"', self.pos):
            out: list[str] = []
            i = self.pos + 1
            while True:
                if i >= len(self.text):
                    raise _error(start_line, f'{what}: no closing "')
                char = self.text[i]
                if char == "\\" and self.text[i + 1 : i + 2] in ('"', "\\"):
                    out.append(self.text[i + 1])
                    i += 2
                elif char == '"':
                    break
                else:
                    out.append(char)
                    i += 1
            self.pos = i + 1
            self.end_line(what)
            return "".join(out)
        return self.rest_of_line().rstrip(_WS)


def _typed_parameter(line: int, name: str, raw: str) -> Any:
    """A PARAMETER value as the type its option takes (int, float, bool, string)."""
    types = OPTION_TYPES.get(name)
    if types is None and name in _IGNORED_TYPES:
        types = (_IGNORED_TYPES[name],)
    if types is None:
        known = sorted([*OPTION_TYPES, *IGNORED_OPTIONS])
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise _error(line, f"unknown parameter {name!r}{hint}")
    if str in types or list in types:
        return raw
    text = raw.strip()
    if bool in types:
        if text.lower() in ("true", "false"):
            return text.lower() == "true"
        raise _error(line, f"PARAMETER {name} must be true or false, not {raw!r}")
    try:
        if int in types and float not in types:
            return int(text)
        number = float(text)
    except ValueError:
        kind = "an integer" if float not in types else "a number"
        raise _error(line, f"PARAMETER {name} must be {kind}, not {raw!r}") from None
    if not math.isfinite(number):
        raise _error(line, f"PARAMETER {name} must be a finite number, not {raw!r}")
    return int(number) if int in types and number.is_integer() and "." not in text else number


def parse_modelfile(text: str) -> Modelfile:
    """Parse a Modelfile; errors are 400s naming the line."""
    reader = _Reader(text)
    base: str | None = None
    seen: dict[str, int] = {}
    template: str | None = None
    system: str | None = None
    raw_parameters: dict[str, Any] = {}
    stops: list[str] = []
    messages: list[ModelfileMessage] = []
    licenses: list[str] = []
    while not reader.at_end():
        reader.skip_blank()
        if reader.at_end():
            break
        if reader.text[reader.pos] == "\n":
            reader.pos += 1
            continue
        line = reader.line_no()
        if reader.text[reader.pos] == "#":
            reader.rest_of_line()
            continue
        word = reader.word()
        directive = word.upper()
        if directive not in DIRECTIVES:
            close = difflib.get_close_matches(directive, DIRECTIVES, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise _error(line, f"unknown directive {word!r}{hint}")
        if directive == "ADAPTER":
            raise _error(
                line,
                "ADAPTER is not supported: localserve does not apply LoRA adapters; merge the "
                "adapter into the model (llama.cpp's llama-export-lora) and FROM the result",
            )
        if directive in ("FROM", "TEMPLATE", "SYSTEM") and directive in seen:
            raise _error(line, f"{directive} given twice (first on line {seen[directive]})")
        seen.setdefault(directive, line)
        if directive == "PARAMETER":
            reader.skip_blank()
            name = reader.word()
            if not name:
                raise _error(line, "PARAMETER needs a name and a value")
            value = reader.value(f"value of {name}")
            if not value and name != "stop":
                raise _error(line, f"PARAMETER {name} needs a value")
            typed = _typed_parameter(line, name, value)
            if name == "stop":
                stops.append(typed)
                raw_parameters["stop"] = stops
            elif name in _IGNORED_TYPES and name not in OPTION_TYPES:
                continue  # accepted as Ollama does, without effect here
            else:
                raw_parameters[name] = typed
            try:
                parse_options({name: raw_parameters[name]})
            except BadRequestError as exc:
                raise _error(line, exc.message) from None
            continue
        if directive == "MESSAGE":
            reader.skip_blank()
            role = reader.word()
            if role.lower() not in MESSAGE_ROLES:
                raise _error(
                    line, f"MESSAGE role must be one of {', '.join(MESSAGE_ROLES)}, not {role!r}"
                )
            messages.append(ModelfileMessage(role.lower(), reader.value("message")))
            continue
        value = reader.value(directive)
        if directive == "FROM":
            if not value.strip():
                raise _error(line, "FROM needs a model name, a blob digest or a GGUF path")
            base = value.strip()
        elif directive == "TEMPLATE":
            template = value
        elif directive == "SYSTEM":
            system = value
        else:
            licenses.append(value)
    if base is None:
        raise BadRequestError("Modelfile has no FROM line")
    parameters = parse_options(raw_parameters) if raw_parameters else {}
    return Modelfile(base, template, system, parameters, messages, licenses)


# ---- printing --------------------------------------------------------------------------------


def _quote(value: str, bare_ok: bool = True) -> str:
    """A value as the parser reads it back: bare when allowed and unambiguous, else in
    triple quotes, else in escaped double quotes."""
    bare = (
        bare_ok
        and value
        and "\n" not in value
        and value == value.strip(_WS)
        and not value.startswith(('"', "#"))
    )
    if bare:
        return value
    if '"""' not in value and not value.endswith('"'):
        return f'"""{value}"""'
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _parameter_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    text = str(value)
    if "\n" in text:
        return _quote(text)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'  # as Ollama prints stops


def render_modelfile(modelfile: Modelfile, header: str | None = None) -> str:
    """The Modelfile's text (`header` becomes `#` comment lines at the top)."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()] if header else []
    lines.append(f"FROM {_quote(modelfile.from_)}")
    if modelfile.template is not None:
        lines.append(f"TEMPLATE {_quote(modelfile.template, bare_ok=False)}")
    if modelfile.system is not None:
        lines.append(f"SYSTEM {_quote(modelfile.system, bare_ok=False)}")
    for name, value in modelfile.parameters.items():
        for item in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {name} {_parameter_text(item)}")
    for message in modelfile.messages:
        lines.append(f"MESSAGE {message.role} {_quote(message.content)}")
    for license_text in modelfile.licenses:
        lines.append(f"LICENSE {_quote(license_text, bare_ok=False)}")
    return "\n".join(lines) + "\n"


# ---- the /api/create request -----------------------------------------------------------------


def from_kind(value: str) -> str:
    """What a FROM value names: "digest" (`sha256:<hex>`), "path" (a file on the client:
    starts with `/`, `./`, `../` or `~`, or ends with `.gguf`) or "name" (a model)."""
    text = value.strip()
    try:
        parse_digest(text.removeprefix("@"))
    except BadRequestError:
        pass
    else:
        return "digest"
    if text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or "\\" in text:
        return "path"
    if text.lower().endswith(".gguf"):
        return "path"
    return "name"


def modelfile_to_create_request(
    modelfile: Modelfile, filename: str = "model.gguf"
) -> dict[str, Any]:
    """The `/api/create` body fields (without `model`) that create this Modelfile's model:
    `files` for a FROM blob digest, `from` for a FROM model name; a FROM path is a 400 (a
    path is on the client: upload the file with POST /api/blobs and FROM its digest)."""
    kind = from_kind(modelfile.from_)
    request: dict[str, Any] = {}
    if kind == "digest":
        request["files"] = {filename: parse_digest(modelfile.from_.strip().removeprefix("@"))}
    elif kind == "path":
        raise BadRequestError(
            f"FROM {modelfile.from_} names a file on the client: upload it with POST "
            "/api/blobs/sha256:<digest> and write FROM sha256:<digest> "
            "(`localserve create NAME -f Modelfile` does this)"
        )
    else:
        ModelName.parse(modelfile.from_)  # a 400 for a malformed name
        request["from"] = modelfile.from_.strip()
    if modelfile.template is not None:
        request["template"] = modelfile.template
    if modelfile.system is not None:
        request["system"] = modelfile.system
    if modelfile.parameters:
        request["parameters"] = dict(modelfile.parameters)
    if modelfile.messages:
        request["messages"] = [
            {"role": message.role, "content": message.content} for message in modelfile.messages
        ]
    if modelfile.licenses:
        request["license"] = list(modelfile.licenses)
    return request
