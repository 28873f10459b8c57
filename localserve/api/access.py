"""Key management and usage over HTTP (admin scope, except a key reading its own usage):

    GET    /api/keys            {"keys": [{name, hint, scopes, rpm, tpm, concurrent, ...}]}
    POST   /api/keys            {"name", "scopes"?, "rpm"?, "tpm"?, "concurrent"?,
                                 "priority"?, "weight"?} -> {"key": {...}, "secret"}
    DELETE /api/keys/{name}     revoke at once -> {"key": {...}}
    GET    /api/usage?since=7d&key=NAME   {"usage": [per key and model], "since", "notice"}

The secret is in the creation answer only; the daemon keeps its sha256.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from localserve.access.keys import KeyLimits, limit_value, priority_value, weight_value
from localserve.access.service import PRINCIPAL_KEY, Access, Principal
from localserve.api.requests import read_json
from localserve.config import parse_duration
from localserve.errors import BadRequestError, ConfigError

ACCESS_KEY: web.AppKey[Access] = web.AppKey("access", Access)
KEY_FIELDS = frozenset({"name", "scopes", "rpm", "tpm", "concurrent", "priority", "weight"})


def access_of(request: web.Request) -> Access:
    app = request.match_info.apps[0] if request.match_info.apps else request.app
    return app[ACCESS_KEY]


def principal_of(request: web.Request) -> Principal | None:
    return request.get(PRINCIPAL_KEY)


async def list_keys(request: web.Request) -> web.Response:
    access = access_of(request)
    keys = await asyncio.to_thread(access.keys.keys)
    return web.json_response({"keys": [key.public() for key in keys.values()]})


async def create_key(request: web.Request) -> web.Response:
    body = await read_json(request)
    unknown = sorted(set(body) - KEY_FIELDS)
    if unknown:
        raise BadRequestError(f"unknown field(s): {', '.join(unknown)}")
    name = body.get("name")
    if not isinstance(name, str):
        raise BadRequestError("name: required, a string")
    limits = KeyLimits(
        rpm=limit_value("rpm", body.get("rpm")),
        tpm=limit_value("tpm", body.get("tpm")),
        concurrent=limit_value("concurrent", body.get("concurrent")),
    )
    scopes = body.get("scopes")
    access = access_of(request)
    key, secret = await asyncio.to_thread(
        access.keys.add,
        name,
        scopes=scopes,
        limits=limits,
        priority=priority_value(body.get("priority")),
        weight=weight_value(body.get("weight")),
    )
    access.publish_key_change("key_added", key)
    return web.json_response({"key": key.public(), "secret": secret})


async def revoke_key(request: web.Request) -> web.Response:
    access = access_of(request)
    key = await asyncio.to_thread(access.keys.revoke, request.match_info["name"])
    access.publish_key_change("key_revoked", key)
    return web.json_response({"key": key.public()})


def parse_since(text: str) -> float:
    """`7d`, `2w`, `24h`, `30m`, `90s` back from now, as a wall-clock time."""
    raw = text.strip().lower()
    scale = {"d": 86400.0, "w": 604800.0}
    try:
        if raw and raw[-1] in scale:
            seconds = float(raw[:-1]) * scale[raw[-1]]
        else:
            seconds = parse_duration(raw, 0.0)
    except (ValueError, ConfigError) as exc:
        raise BadRequestError(f"since: {text!r} is not a duration (7d, 24h, 30m)") from exc
    if seconds < 0:
        raise BadRequestError(f"since: {text!r} must not be negative")
    return time.time() - seconds


async def usage(request: web.Request) -> web.Response:
    access = access_of(request)
    since_text = request.query.get("since")
    since = parse_since(since_text) if since_text else None
    key = request.query.get("key") or None
    principal = principal_of(request)
    if principal is not None and not ({"admin", "read"} & set(principal.scopes)):
        key = principal.name  # a key without read or admin sees its own usage only
    rows = await access.usage.summary(since, key)
    answer: dict[str, Any] = {"usage": rows, "since": since, "notice": access.usage.notice}
    return web.json_response(answer)
