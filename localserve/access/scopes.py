"""Scopes: what a key may call.

    read          listings and monitoring: tags, ps, show, version, /v1/models, events,
                  metrics, usage of its own key, openapi.json
    admin         everything, including pull, create, delete, copy, blobs, model routes
                  and key management (/api/keys)
    model:GLOB    generation and embeddings with the models whose name matches GLOB
                  (fnmatch, case-insensitive: `model:*`, `model:smollm2*`,
                  `model:nomic-embed-text:latest`)

A route needs one kind of permission (`route_permission`): `public` (the health checks
`/`, `/health` and `/api/version`: no key needed), `own` (any key, about itself:
`/api/usage`), `read`, `admin`, or `inference` (checked against the request's `model`
with the key's `model:` scopes). A route not listed is `read` for GET and HEAD, `admin`
otherwise, so a route added later is never open by accident.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Literal

from localserve.errors import BadRequestError

Permission = Literal["public", "read", "admin", "inference", "own"]
SCOPE_WORDS = frozenset({"read", "admin"})
MODEL_PREFIX = "model:"

# Generation and embeddings: the model in the body is checked against `model:` scopes.
INFERENCE_ROUTES = frozenset(
    {
        ("POST", "/api/generate"),
        ("POST", "/api/chat"),
        ("POST", "/api/embed"),
        ("POST", "/api/embeddings"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages/count_tokens"),
        ("POST", "/v1/responses"),
    }
)
PUBLIC_ROUTES = frozenset(
    {("GET", "/"), ("HEAD", "/"), ("GET", "/health"), ("GET", "/api/version")}
)
# Reads that are POSTs (the body names what to read).
READ_POSTS = frozenset({("POST", "/api/show")})
# Any key may call these about itself (its own usage; `read` and `admin` see every key's).
OWN_ROUTES = frozenset({("GET", "/api/usage")})
# Reads that are admin's: the key list shows every key's scopes and limits.
ADMIN_READS = frozenset({("GET", "/api/keys")})


def route_permission(method: str, path: str) -> Permission:
    """What calling `method path` (the route's template) needs."""
    route = (method.upper(), path)
    if route in PUBLIC_ROUTES:
        return "public"
    if route in INFERENCE_ROUTES:
        return "inference"
    if route in READ_POSTS:
        return "read"
    if route in OWN_ROUTES:
        return "own"
    if route in ADMIN_READS:
        return "admin"
    return "read" if route[0] in ("GET", "HEAD") else "admin"


def normalize_scopes(raw: object) -> tuple[str, ...]:
    """Validated scopes, in order, without duplicates; a bad one is a 400 naming it."""
    if isinstance(raw, str):
        raw = [part for part in raw.replace(",", " ").split() if part]
    if not isinstance(raw, Sequence) or not all(isinstance(s, str) for s in raw):
        raise BadRequestError("scopes: must be a list of strings")
    scopes: list[str] = []
    for scope in raw:
        text = scope.strip()
        if text in SCOPE_WORDS:
            value = text
        elif text.startswith(MODEL_PREFIX) and text[len(MODEL_PREFIX) :].strip():
            value = MODEL_PREFIX + text[len(MODEL_PREFIX) :].strip().lower()
        else:
            raise BadRequestError(
                f"scopes: {scope!r} is not a scope (use 'read', 'admin' or 'model:GLOB')"
            )
        if value not in scopes:
            scopes.append(value)
    if not scopes:
        raise BadRequestError("scopes: a key needs at least one scope")
    return tuple(scopes)


def model_allowed(scopes: Sequence[str], names: Sequence[str]) -> bool:
    """Whether one of `names` (the model as sent, and as parsed) matches a model scope."""
    if "admin" in scopes:
        return True
    patterns = [s[len(MODEL_PREFIX) :] for s in scopes if s.startswith(MODEL_PREFIX)]
    return any(fnmatch.fnmatchcase(n.lower(), p) for p in patterns for n in names)


def missing_scope(
    scopes: Sequence[str], permission: Permission, model_names: Sequence[str]
) -> str | None:
    """The scope the call needs and the key lacks (for the 403), or None when allowed."""
    if permission in ("public", "own") or "admin" in scopes:
        return None
    if permission == "read":
        return None if "read" in scopes else "read"
    if permission == "admin":
        return "admin"
    if not model_names:  # no model in the body: the handler answers its own 400
        return None if any(s.startswith(MODEL_PREFIX) for s in scopes) else "model:*"
    if model_allowed(scopes, model_names):
        return None
    return f"model:{model_names[0]}"
