"""The access service the HTTP layer calls: who is asking (`authenticate`), may they
(`guard`: scopes, limits), and what they used (usage, metrics, events).

    principal = access.authenticate(request)        # 401 for an unknown or revoked key
    response = await access.guard(request, principal, handler)   # 403, 429; accounting

Keys come as `Authorization: Bearer KEY` (Ollama's and OpenAI's clients) or
`x-api-key: KEY` (Anthropic's). Keys are required when the daemon binds a non-loopback
address, when `LOCALSERVE_REQUIRE_KEYS` is set, or when the legacy `LOCALSERVE_API_KEY`
is set (that key is an admin key named `api_key`); otherwise a request without a key is
`anonymous` with every permission, as before keys existed: a valid key sent is still
that key (its scopes, limits, usage), anything else sent (clients that must send some
placeholder key) is anonymous.

A generation or embedding request runs inside a `RequestContext` (a context variable,
so the dialects need not pass it): the inference path reads its `caller` for fair share
and adds the tokens and busy seconds it used; `guard` then commits one usage row, debits
the token bucket and counts the metrics.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter

from localserve.access.keys import ApiKey, KeyLimits, KeyStore
from localserve.access.limits import RateLimiter
from localserve.access.scopes import Permission, missing_scope, route_permission
from localserve.access.usage import UsageRecord, UsageStore
from localserve.config import Settings
from localserve.errors import (
    ConfigError,
    ForbiddenError,
    LocalserveError,
    RateLimitedError,
    UnauthorizedError,
)
from localserve.names import ModelName
from localserve.scheduling.fairness import ANONYMOUS, Caller
from localserve.telemetry.events import EventBus

log = logging.getLogger("localserve.access")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
REQUEST_TAG_HEADER = "X-Localserve-Request-Tag"
HeldAccess = tuple["RequestContext", dict[str, str]]
QUEUE_POSITION_HEADER = "X-Localserve-Queue-Position"
QUEUE_WAIT_HEADER = "X-Localserve-Queue-Wait"
LEGACY_KEY_NAME = "api_key"
INVALID_KEY = "invalid API key"  # the same for unknown and revoked keys


class ScopeError(ForbiddenError):
    """A key outside its scopes (403, `insufficient_scope`); the message names the scope."""

    code = "insufficient_scope"


@dataclass(frozen=True)
class Principal:
    """Who a request is: a key (or the legacy key, or anonymous) with what it may do."""

    name: str
    scopes: tuple[str, ...]
    limits: KeyLimits = field(default_factory=KeyLimits)
    weight: float = 1.0
    priority: int = 0

    @property
    def is_admin(self) -> bool:
        return "admin" in self.scopes


ANONYMOUS_PRINCIPAL = Principal(ANONYMOUS, ("admin",))


@dataclass
class RequestContext:
    """One generation or embedding request of a principal, while it runs."""

    principal: Principal
    caller: Caller | None  # fair share's (None for anonymous requests)
    model: str | None  # as the client named it
    served_model: str | None = None  # as the inference path resolved it
    prompt_tokens: int = 0
    generated_tokens: int = 0
    busy_seconds: float = 0.0
    failed: bool = False

    def add_usage(
        self,
        *,
        model: str,
        prompt_tokens: int = 0,
        generated_tokens: int = 0,
        busy_seconds: float = 0.0,
        failed: bool = False,
    ) -> None:
        """Called by the inference path (localserve.service.inference) as it ends."""
        self.served_model = model
        self.prompt_tokens += prompt_tokens
        self.generated_tokens += generated_tokens
        self.busy_seconds += busy_seconds
        self.failed = self.failed or failed

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.generated_tokens


_CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "localserve_request_context", default=None
)


HELD_KEY: web.RequestKey[HeldAccess] = web.RequestKey("localserve_access")
PRINCIPAL_KEY: web.RequestKey[Principal] = web.RequestKey("localserve_principal", Principal)


def current_request() -> RequestContext | None:
    """The generation request running in this task (None outside the HTTP layer)."""
    return _CURRENT.get()


def presented_keys(request: web.Request) -> list[str]:
    """The keys a request sent: `Authorization: Bearer KEY`, then `x-api-key: KEY`."""
    found: list[str] = []
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        found.append(value.strip())
    api_key = request.headers.get("x-api-key", "").strip()
    if api_key and api_key not in found:
        found.append(api_key)
    return found


class Access:
    def __init__(
        self,
        settings: Settings,
        events: EventBus,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.events = events
        self.keys = KeyStore(settings.keys_file)
        self.limiter = RateLimiter()
        self.usage = UsageStore(settings.state_dir)
        self.defaults = KeyLimits(settings.key_rpm, settings.key_tpm, settings.key_concurrent)
        r = registry or CollectorRegistry()
        self.m_requests = Counter(
            "localserve_key_requests",
            "Generation and embedding requests by API key, model and status",
            ["key", "model", "status"],
            registry=r,
        )
        self.m_prompt = Counter(
            "localserve_key_prompt_tokens", "Prompt tokens by API key", ["key", "model"], registry=r
        )
        self.m_generated = Counter(
            "localserve_key_generated_tokens",
            "Generated tokens by API key",
            ["key", "model"],
            registry=r,
        )
        self.m_busy = Counter(
            "localserve_key_busy_seconds",
            "Seconds a runner held a lease for the key",
            ["key", "model"],
            registry=r,
        )
        self.m_limited = Counter(
            "localserve_key_rate_limited",
            "429s by API key and the limit hit",
            ["key", "limit"],
            registry=r,
        )

    # ---- lifecycle -----------------------------------------------------------------------

    @property
    def keys_required(self) -> bool:
        s = self.settings
        return bool(s.api_key) or s.require_keys or not s.is_loopback

    def start(self) -> None:
        """Read the keys (a bad file is a ConfigError), open the usage database."""
        active = self.keys.active()
        if self.keys_required and not self.settings.api_key and not active:
            raise ConfigError(
                f"keys are required (LOCALSERVE_REQUIRE_KEYS, or the bind address "
                f"{self.settings.host}) but {self.settings.keys_file} holds none: "
                "add one with `localserve keys add NAME`"
            )
        self.usage.open()
        if self.usage.notice:
            self.events.publish("usage_store_reset", message=self.usage.notice)

    def close(self) -> None:
        self.usage.close()

    # ---- who -------------------------------------------------------------------------------

    def principal_of(self, key: ApiKey) -> Principal:
        return Principal(
            name=key.name,
            scopes=key.scopes,
            limits=key.limits.or_defaults(self.defaults),
            weight=key.weight,
            priority=key.priority,
        )

    def is_public(self, request: web.Request) -> bool:
        """The health checks (`/`, `/health`, `/api/version`) need no key."""
        return _permission_of(request) == "public"

    def authenticate(self, request: web.Request) -> Principal:
        """The principal of a request; 401 without a valid key where keys are needed."""
        presented = presented_keys(request)
        legacy = self.settings.api_key
        for secret in presented:
            if legacy and _same(secret, legacy):
                return Principal(LEGACY_KEY_NAME, ("admin",))
            key = self.keys.find(secret)
            if key is not None:
                return self.principal_of(key)
        if not self.keys_required:
            # As before keys existed: clients that must send some key (OpenAI's needs
            # one) send a placeholder ("ollama", "sk-no-key"); it is not a key.
            return ANONYMOUS_PRINCIPAL
        if presented:
            raise UnauthorizedError(INVALID_KEY)
        raise UnauthorizedError(
            "missing API key (send Authorization: Bearer KEY or x-api-key: KEY)"
        )

    # ---- may they ------------------------------------------------------------------------

    async def guard(
        self, request: web.Request, principal: Principal, handler: Handler
    ) -> web.StreamResponse:
        """Check the route's scope, then (for generation) the limits; run the handler."""
        permission = _permission_of(request)
        names = await _model_names(request) if permission == "inference" else []
        scope = missing_scope(principal.scopes, permission, names)
        if scope is not None:
            raise ScopeError(f"this API key lacks the scope '{scope}'")
        if permission != "inference":
            return await handler(request)
        return await self._run_inference(request, principal, names[0] if names else None, handler)

    async def _run_inference(
        self, request: web.Request, principal: Principal, model: str | None, handler: Handler
    ) -> web.StreamResponse:
        limits = principal.limits
        try:
            headers = self.limiter.admit(principal.name, limits)
        except RateLimitedError as exc:
            which = "tokens" if "tokens per minute" in exc.message else "requests"
            if "concurrent" in exc.message:
                which = "concurrent"
            self.m_limited.labels(principal.name, which).inc()
            self.events.publish(
                "rate_limited", key=principal.name, limit=which, retry_after=exc.retry_after
            )
            await self.usage.record(UsageRecord(principal.name, model or "-", rate_limited=True))
            raise
        caller = None
        if principal is not ANONYMOUS_PRINCIPAL:  # keyless requests queue as before keys
            caller = Caller(
                principal.name,
                principal.weight,
                principal.priority,
                request_tag=request.headers.get(REQUEST_TAG_HEADER),
            )
        context = RequestContext(principal, caller, model)
        request[HELD_KEY] = (context, headers)
        token = _CURRENT.set(context)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except LocalserveError as exc:
            status = exc.status
            raise
        finally:
            _CURRENT.reset(token)
            self.limiter.finish(principal.name, limits, context.tokens)
            await self._account(context, status)

    async def _account(self, context: RequestContext, status: int) -> None:
        failed = context.failed or status >= 400
        name = context.principal.name
        model = context.served_model or context.model or "-"
        self.m_requests.labels(name, model, "error" if failed else "ok").inc()
        if context.prompt_tokens:
            self.m_prompt.labels(name, model).inc(context.prompt_tokens)
        if context.generated_tokens:
            self.m_generated.labels(name, model).inc(context.generated_tokens)
        if context.busy_seconds:
            self.m_busy.labels(name, model).inc(context.busy_seconds)
        await self.usage.record(
            UsageRecord(
                key=name,
                model=model,
                error=failed,
                prompt_tokens=context.prompt_tokens,
                generated_tokens=context.generated_tokens,
                busy_seconds=context.busy_seconds,
            )
        )

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Rate-limit and queue headers on every generation answer (streams included)."""
        held = request.get(HELD_KEY)
        if held is None:
            return
        context, headers = held
        response.headers.update(headers)
        if context.caller is not None:
            queue = context.caller.queue
            response.headers[QUEUE_POSITION_HEADER] = str(queue.position)
            response.headers[QUEUE_WAIT_HEADER] = f"{queue.waited_s:.3f}"

    # ---- key management ------------------------------------------------------------------

    def publish_key_change(self, kind: str, key: ApiKey) -> None:
        self.events.publish(kind, key=key.name, scopes=list(key.scopes))

    def now(self) -> float:
        return time.time()


def _same(a: str, b: str) -> bool:
    import hmac

    return hmac.compare_digest(a.encode(), b.encode())


def _permission_of(request: web.Request) -> Permission:
    route = request.match_info.route
    resource = route.resource
    path = resource.canonical if resource is not None else request.path
    return route_permission(request.method, path)


async def _model_names(request: web.Request) -> list[str]:
    """The model a generation request names (as sent, and as parsed), or [] when the
    body is not a JSON object with one (the handler answers that with its own 400)."""
    try:
        body = json.loads(await request.read())
    except (ValueError, UnicodeDecodeError, web.HTTPException):
        return []
    if not isinstance(body, dict):
        return []
    raw = body.get("model") or body.get("name")
    if not isinstance(raw, str) or not raw:
        return []
    names = [raw]
    try:
        display = ModelName.parse(raw).display()
    except LocalserveError:
        return names
    if display not in names:
        names.append(display)
    return names
