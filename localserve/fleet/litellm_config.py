"""The LiteLLM proxy config of a fleet of localserve nodes (`localserve fleet config`).

    nodes = await discover(["http://10.0.0.5:11435", "http://10.0.0.6:11435"])
    text = render_yaml(build_config(nodes, FleetOptions(strategy="least-busy")))

`discover` asks each node, through the one client (localserve.client.http), for its
installed models (`/api/tags`) and its routes (`/api/routes`, when the node has it).
`build_config` makes one LiteLLM deployment per (node, served name): the deployments of
one name form a model group, across which the proxy balances, retries and cools down.

Why `openai/<name>` with `api_base: <node>/v1`: it is LiteLLM's OpenAI-compatible
provider, which streams over SSE and maps the node's errors by status (a drained node's
503 + Retry-After becomes a retry on another node and a cooldown of Retry-After
seconds); localserve's `/v1` dialect is its most complete one (tools, response_format,
usage in streams). LiteLLM's `ollama_chat/` provider would go through `/api/chat`
instead, with its own NDJSON parsing and fewer of the OpenAI fields passed through.

The API key of each node comes from the environment of the proxy (`api_key:
os.environ/VAR`): one variable for every node (default LOCALSERVE_API_KEY, the
variable a node itself reads), or one per node. A node without a key ignores it.

YAML without a YAML library: JSON is YAML, but a config people read and edit should look
like the configs in LiteLLM's docs, so `render_yaml` writes block-style YAML from plain
dicts, lists and scalars, with every string double-quoted and escaped (so no name can
turn into a YAML number, boolean or comment). Tests parse it back with PyYAML and LiteLLM.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from localserve.client.http import LocalserveClient
from localserve.errors import BadRequestError

STRATEGIES = (
    "least-busy",
    "latency-based-routing",
    "usage-based-routing-v2",
    "simple-shuffle",
)
DEFAULT_KEY_ENV = "LOCALSERVE_API_KEY"
DEFAULT_MASTER_KEY_ENV = "LITELLM_MASTER_KEY"
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Node:
    """What one node serves, as `discover` found it."""

    url: str  # the base URL, e.g. http://10.0.0.5:11435 (no trailing slash)
    models: tuple[str, ...]  # installed models, as clients call them ("tiny", "qwen:0.5b")
    routes: tuple[str, ...] | None = None  # route names; None: the node has no /api/routes
    key_env: str = DEFAULT_KEY_ENV  # the proxy's environment variable with this node's key

    @property
    def served(self) -> tuple[str, ...]:
        """Every name a client may call on this node: models, then routes."""
        names = list(self.models)
        names += [r for r in self.routes or () if r not in names]
        return tuple(names)


@dataclass(frozen=True)
class FleetOptions:
    """The proxy's routing settings (LiteLLM `router_settings` and health checks)."""

    strategy: str = "least-busy"
    num_retries: int = 3  # a failed call is retried this often, on another node when any
    timeout_s: float = 600.0  # one call, a long generation included
    allowed_fails: int = 1  # failures per minute before a node is cooled down
    cooldown_s: float = 30.0  # when the node's answer carries no Retry-After
    health_check_interval_s: float = 60.0  # background health checks; 0 turns them off
    # the proxy's own key (general_settings.master_key): LiteLLM refuses to start without
    # one; clients of the proxy send it as their bearer token. None leaves it out.
    master_key_env: str | None = DEFAULT_MASTER_KEY_ENV
    extra_router_settings: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> FleetOptions:
        if self.strategy not in STRATEGIES:
            raise BadRequestError(
                f"unknown strategy {self.strategy!r}: one of {', '.join(STRATEGIES)}"
            )
        for name in ("num_retries", "allowed_fails"):
            if getattr(self, name) < 0:
                raise BadRequestError(f"{name} must not be negative")
        for name in ("timeout_s", "cooldown_s", "health_check_interval_s"):
            if getattr(self, name) < 0:
                raise BadRequestError(f"{name} must not be negative")
        if self.timeout_s == 0:
            raise BadRequestError("timeout_s must be positive")
        if self.master_key_env is not None:
            check_env_name(self.master_key_env)
        return self


def check_env_name(name: str) -> str:
    if not _ENV_NAME.fullmatch(name):
        raise BadRequestError(f"invalid environment variable name {name!r}")
    return name


def normalize_node_url(raw: str) -> str:
    """`http(s)://host[:port]` without a trailing slash; a path, query or other scheme is
    a BadRequestError naming the URL (the node's /v1 is added by the config)."""
    text = raw.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError as exc:
        raise BadRequestError(f"invalid node URL {raw!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadRequestError(f"invalid node URL {raw!r}: expected http(s)://host[:port]")
    if parts.path or parts.query or parts.fragment or parts.username or parts.password:
        raise BadRequestError(
            f"invalid node URL {raw!r}: give the node's base URL only (no path, query or"
            " credentials; put the key in the environment)"
        )
    return text


def key_envs_for(count: int, key_envs: Sequence[str]) -> list[str]:
    """One variable name per node: none given -> the default for all; one -> it for all;
    else exactly one per node."""
    if not key_envs:
        return [DEFAULT_KEY_ENV] * count
    names = [check_env_name(n) for n in key_envs]
    if len(names) == 1:
        return names * count
    if len(names) != count:
        raise BadRequestError(
            f"{len(names)} API key variables for {count} nodes: give one for all nodes,"
            " or one per node"
        )
    return names


def client_name(installed: str) -> str:
    """The name clients call: the installed name without the default `:latest` tag."""
    return installed.removesuffix(":latest")


ClientFactory = Callable[[str, str | None], LocalserveClient]


def _default_client(url: str, api_key: str | None) -> LocalserveClient:
    return LocalserveClient(url, api_key=api_key or "", timeout=30)


async def discover_node(
    url: str, key_env: str = DEFAULT_KEY_ENV, client: ClientFactory = _default_client
) -> Node:
    """Ask one node what it serves. Raises the client's errors (unreachable, 401, ...)."""
    base = normalize_node_url(url)
    async with client(base, os.environ.get(key_env)) as node:
        models = [client_name(str(m["name"])) for m in await node.list_models()]
        routes = await node.route_names()
    return Node(
        url=base,
        models=tuple(sorted(set(models))),
        routes=None if routes is None else tuple(sorted(set(routes))),
        key_env=key_env,
    )


async def discover(
    urls: Sequence[str],
    key_envs: Sequence[str] = (),
    client: ClientFactory = _default_client,
) -> list[Node]:
    """Ask every node (concurrently); the first failure is raised."""
    if not urls:
        raise BadRequestError("give at least one node URL")
    bases = [normalize_node_url(u) for u in urls]
    if len(set(bases)) != len(bases):
        raise BadRequestError("a node URL is given twice")
    envs = key_envs_for(len(bases), key_envs)
    return list(
        await asyncio.gather(
            *(discover_node(b, e, client) for b, e in zip(bases, envs, strict=True))
        )
    )


def deployment_id(node: Node, name: str) -> str:
    """A stable id per (node, name): LiteLLM's `x-litellm-model-id` header names it."""
    parts = urlsplit(node.url)
    return f"{name}@{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def build_config(nodes: Sequence[Node], options: FleetOptions | None = None) -> dict[str, Any]:
    """The LiteLLM proxy config (a plain dict: `render_yaml` or json.dumps it)."""
    options = (options or FleetOptions()).validate()
    if not nodes:
        raise BadRequestError("give at least one node")
    model_list: list[dict[str, Any]] = []
    names = sorted({name for node in nodes for name in node.served})
    for name in names:
        for node in nodes:
            if name not in node.served:
                continue
            model_list.append(
                {
                    "model_name": name,
                    "litellm_params": {
                        "model": f"openai/{name}",
                        "api_base": f"{node.url}/v1",
                        "api_key": f"os.environ/{node.key_env}",
                    },
                    "model_info": {
                        "id": deployment_id(node, name),
                        "mode": "chat",
                        "health_check_max_tokens": 1,  # a health check costs one token
                    },
                }
            )
    if not model_list:
        raise BadRequestError("the nodes serve no models (pull or create one on each node)")
    router_settings: dict[str, Any] = {
        "routing_strategy": options.strategy,
        "num_retries": options.num_retries,
        "timeout": _number(options.timeout_s),
        "allowed_fails": options.allowed_fails,
        "cooldown_time": _number(options.cooldown_s),
        **options.extra_router_settings,
    }
    general_settings: dict[str, Any] = {}
    if options.health_check_interval_s > 0:
        general_settings["background_health_checks"] = True
        general_settings["health_check_interval"] = _number(options.health_check_interval_s)
        # a node whose last health check failed gets no requests until one passes
        router_settings["enable_health_check_routing"] = True
    if options.master_key_env:
        general_settings["master_key"] = f"os.environ/{options.master_key_env}"
    config: dict[str, Any] = {"model_list": model_list, "router_settings": router_settings}
    if general_settings:
        config["general_settings"] = general_settings
    return config


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


# ---- YAML --------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def yaml_string(text: str) -> str:
    """A YAML double-quoted scalar: printable ASCII as is, everything else escaped."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"not a finite number: {value!r}")
        return repr(value)
    if isinstance(value, str):
        return yaml_string(value)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _key(key: Any) -> str:
    if not isinstance(key, str):
        raise TypeError(f"YAML keys must be strings here, not {type(key).__name__}")
    plain = _PLAIN_KEY.fullmatch(key) and key.lower() not in _RESERVED
    return key if plain else yaml_string(key)


# Plain words YAML 1.1 (PyYAML) would read as booleans or null.
_RESERVED = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _is_nested(value: Any) -> bool:
    return isinstance(value, dict | list) and bool(value)


def _emit(value: Any, indent: int, lines: list[str]) -> None:
    pad = " " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if _is_nested(item):
                lines.append(f"{pad}{_key(key)}:")
                _emit(item, indent + 2, lines)
            else:
                lines.append(f"{pad}{_key(key)}: {_inline(item)}")
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, dict) and item:
                nested: list[str] = []
                _emit(item, indent + 2, nested)
                nested[0] = f"{pad}- " + nested[0][indent + 2 :]
                lines.extend(nested)
            elif isinstance(item, list) and item:
                lines.append(f"{pad}-")
                _emit(item, indent + 2, lines)
            else:
                lines.append(f"{pad}- {_inline(item)}")
    else:
        lines.append(pad + _scalar(value))


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def render_yaml(config: dict[str, Any], header: str = "") -> str:
    """Block-style YAML of `config` (dicts, lists, str, int, float, bool, None), with
    `header` as leading `#` comment lines."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    _emit(config, 0, lines)
    return "\n".join(lines) + "\n"
