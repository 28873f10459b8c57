"""The one inference path every API dialect translates onto.

A dialect parses its request into a `GenerationRequest` (or `EmbeddingRequest`), and
the service does the rest: `Inference.start` resolves the model and renders the prompt
(the model's chat template for messages, the template or raw text for a prompt), raising
the request's own errors (404, 400) at once; `Generation.events()` then leases a runner
from the scheduler and yields `Token` events and one `Finished` carrying Ollama's timing
fields. The dialect encodes those events in its own shape (NDJSON, SSE, ...).

Errors while waiting for the runner (a model that does not fit, a full queue, a load
that fails) are raised from the first `__anext__`, so a stream writer that holds the
first event back still answers with their real HTTP status.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from localserve.access.service import RequestContext, current_request
from localserve.config import Settings
from localserve.errors import BadRequestError, BusyError, RunnerError
from localserve.names import ModelName
from localserve.routing import context as routing_context
from localserve.routing.context import Pick, RouteResolver
from localserve.scheduling.fairness import Caller
from localserve.scheduling.scheduler import ModelSpec, Scheduler
from localserve.service.prompts import render_chat
from localserve.service.thinking import TAG_PAIRS, ThinkingSplitter
from localserve.service.tools import (
    ToolCall,
    ToolCallStream,
    ToolChoice,
    ToolFormat,
    detect_tool_format,
    parse_constrained,
    template_supports_thinking,
    template_supports_tools,
    tool_call_schema,
)
from localserve.store.store import Store, StoredModel
from localserve.telemetry.events import EventBus
from localserve.telemetry.monitor import ProgressReporter, new_request_id

Format = str | dict[str, Any] | None
AUTO = ToolChoice("auto")


@dataclass(frozen=True)
class ResolvedModel:
    stored: StoredModel
    spec: ModelSpec
    options: dict[str, Any]
    route: str | None = None  # the route the request named (localserve.routing)
    requested: str | None = None  # the name as the request gave it, when a route

    @property
    def name(self) -> str:
        """The installed model (the serving version, when a route chose it)."""
        return self.stored.name.display()

    @property
    def answer_name(self) -> str:
        """The `model` an answer shows: the requested name for a route, so a client
        sees no change when the route moves."""
        return self.requested if self.route and self.requested else self.name

    def labels(self) -> dict[str, Any]:
        """The route field of request events (none when not routed)."""
        return {"route": self.route} if self.route else {}


@dataclass(frozen=True)
class GenerationRequest:
    """One generation, whatever the dialect: `messages` (chat) or `prompt` (completion)."""

    model: str
    endpoint: str  # for events and metrics: "generate", "chat", "v1/chat/completions", ...
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    system: str | None = None  # completion only; chat puts it in `messages`
    raw: bool = False  # completion only: the prompt is sent as is, without the template
    suffix: str | None = None  # completion only: fill in the middle between prompt and this
    template: str | None = None  # completion only: this template instead of the model's
    options: dict[str, Any] = field(default_factory=dict)
    format: Format = None
    keep_alive_s: float | None = None
    think: bool | str | None = None  # True/False/"low"/"medium"/"high"; None: the model's way
    tools: list[dict[str, Any]] | None = None  # validated (localserve.service.tools)
    tool_choice: ToolChoice = AUTO
    parallel_tool_calls: bool = True
    session: str | None = None  # a conversation key: a route keeps it on one version
    # Log-probabilities of the generated tokens with this many alternatives (0..20);
    # None: none (see localserve.runner.protocol.TokenLogprobs).
    logprobs: int | None = None
    context: list[int] | None = None  # completion only: Ollama's token context, read first
    return_context: bool = False  # Finished carries the prompt's and answer's token ids
    # The API key's request (fair share, usage: localserve.access); None: the HTTP
    # layer's current one.
    caller: RequestContext | None = None

    @property
    def uses_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice.mode != "none"


MAX_PARALLEL_CALLS = 8  # a grammar-forced list of calls ends after this many


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    inputs: list[str]
    options: dict[str, Any] = field(default_factory=dict)
    truncate: bool = True
    normalize: bool = True
    keep_alive_s: float | None = None
    dimensions: int | None = None  # keep the first N and renormalise (Matryoshka models)
    caller: RequestContext | None = None  # as GenerationRequest.caller


Logprob = dict[str, Any]
"""A generated token's log-probability entry, as the runner sends it: {token, bytes,
logprob, top_logprobs: [{token, bytes, logprob}]} (localserve.runner.protocol)."""


@dataclass(frozen=True)
class Token:
    text: str
    logprobs: tuple[Logprob, ...] = ()  # the tokens this text came from (when asked)


@dataclass(frozen=True)
class Finished:
    """The end of a generation, with Ollama's timing fields (durations in ns)."""

    done_reason: str
    prompt_eval_count: int
    prompt_eval_duration: int
    eval_count: int
    eval_duration: int
    load_duration: int
    total_duration: int
    prompt_tokens: int = 0  # the whole prompt, cached or not (prompt_eval_count: evaluated)
    served_by: str | None = None  # the version that answered, when the model was a route
    stop_sequence: str | None = None  # the stop string that ended the answer, when one did
    context: list[int] | None = None  # prompt and answer token ids (when asked)

    @property
    def cached_tokens(self) -> int:
        return max(0, self.prompt_tokens - self.prompt_eval_count)

    def timings(self) -> dict[str, Any]:
        return {
            "done_reason": self.done_reason,
            "total_duration": self.total_duration,
            "load_duration": self.load_duration,
            "prompt_eval_count": self.prompt_eval_count,
            "prompt_eval_duration": self.prompt_eval_duration,
            "eval_count": self.eval_count,
            "eval_duration": self.eval_duration,
        }


@dataclass(frozen=True)
class Thinking:
    """Reasoning text, apart from the answer's content."""

    text: str


@dataclass(frozen=True)
class ToolCalls:
    """The calls the answer made (after its content tokens, before Finished)."""

    calls: list[ToolCall]


GenerationEvent = Token | Thinking | ToolCalls | Finished


@dataclass(frozen=True)
class Embeddings:
    model: str
    vectors: list[list[float]]
    prompt_eval_count: int
    load_duration: int
    total_duration: int


class Inference:
    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler, events: EventBus):
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.events = events
        self.routing: RouteResolver | None = None  # the daemon's routes (issue 14)

    async def resolve(
        self, raw_name: str, options: dict[str, Any], session: str | None = None
    ) -> ResolvedModel:
        """Look a model up and fix its load-time parameters (num_ctx, num_gpu).

        A route's name resolves here, for every dialect: the route picks the version
        (sticky on `session`, or the request's `X-Localserve-Session`), recorded in the
        request's routing context for the response header."""
        state = routing_context.current()
        if session is None and state is not None:
            session = state.session
        pick = self.routing.pick(raw_name, session) if self.routing is not None else None
        if pick is not None and state is not None and state.route == pick.route and state.version:
            pick = Pick(pick.route, state.version)  # one request (n choices): one version
        if pick is not None:
            resolved = await self._resolve_model(pick.version, options)
            if state is not None:
                state.route, state.version = pick.route, resolved.name
            return dataclasses.replace(resolved, route=pick.route, requested=raw_name)
        return await self._resolve_model(raw_name, options)

    async def _resolve_model(self, raw_name: str, options: dict[str, Any]) -> ResolvedModel:
        name = ModelName.parse(raw_name)
        stored = await asyncio.to_thread(self.store.get, name)
        manifest = stored.manifest
        merged = {**manifest.parameters, **options}
        num_ctx = int(merged.get("num_ctx") or self.settings.default_num_ctx)
        num_ctx = max(16, min(num_ctx, manifest.facts.context_length or num_ctx))
        spec = ModelSpec(
            name=name,
            digest=manifest.model_digest,
            path=self.store.blob_path(manifest.model_digest),
            facts=manifest.facts,
            num_ctx=num_ctx,
            num_gpu=int(merged["num_gpu"]) if merged.get("num_gpu") is not None else None,
            num_parallel=int(merged.get("num_parallel") or self.settings.num_parallel),
            max_replicas=int(manifest.parameters.get("max_replicas") or self.settings.max_replicas),
            min_replicas=int(manifest.parameters.get("min_replicas") or self.settings.min_replicas),
        )
        return ResolvedModel(stored, spec, merged)

    # ---- prompts -------------------------------------------------------------------------

    def prompt_for(self, model: ResolvedModel, request: GenerationRequest) -> str:
        manifest = model.stored.manifest
        template = request.template or manifest.template or manifest.facts.chat_template
        facts = manifest.facts
        if request.suffix is not None:
            if not facts.fim_tokens:
                raise BadRequestError(
                    f"suffix: {model.name} does not support fill-in-the-middle "
                    "(its GGUF has no FIM prefix/suffix/middle tokens)"
                )
            pre, suf, mid = facts.fim_tokens
            return f"{pre}{request.prompt or ''}{suf}{request.suffix}{mid}"
        if request.messages is not None:
            # The Modelfile's MESSAGEs come first, as in Ollama.
            messages = [*manifest.messages, *request.messages]
            if manifest.system and not any(m["role"] == "system" for m in messages):
                messages = [{"role": "system", "content": manifest.system}, *messages]
            tools = request.tools if request.uses_tools else None
            if tools and not template_supports_tools(template):
                raise BadRequestError(f"{model.name} does not support tools")
            return render_chat(
                template,
                messages,
                bos_token=facts.bos_token,
                eos_token=facts.eos_token,
                tools=tools,
                variables=self._thinking_variables(model, request, template),
            )
        prompt = request.prompt or ""
        if request.raw or not template:
            prefix = request.system or ("" if request.raw else manifest.system) or ""
            return f"{prefix}\n\n{prompt}" if prefix else prompt
        messages = []
        if request.system or manifest.system:
            messages.append({"role": "system", "content": request.system or manifest.system})
        messages.extend(manifest.messages)
        messages.append({"role": "user", "content": prompt})
        return render_chat(
            template,
            messages,
            bos_token=facts.bos_token,
            eos_token=facts.eos_token,
            variables=self._thinking_variables(model, request, template),
        )

    @staticmethod
    def _thinking_variables(
        model: ResolvedModel, request: GenerationRequest, template: str | None
    ) -> dict[str, Any]:
        """`think` as the templates of thinking models read it (`enable_thinking`, and a
        reasoning effort); a model that cannot think refuses `think: true` (400)."""
        think = request.think
        if think is None:
            return {}
        if think is not False and not template_supports_thinking(template):
            raise BadRequestError(f"{model.name} does not support thinking")
        variables: dict[str, Any] = {"enable_thinking": think is not False}
        if isinstance(think, str):
            variables["reasoning_effort"] = think
        return variables

    # ---- load / unload -------------------------------------------------------------------

    async def load(
        self, raw_name: str, options: dict[str, Any], keep_alive_s: float | None
    ) -> tuple[str, int]:
        """Load (or keep) a model without generating: (its name, load duration in ns)."""
        model = await self.resolve(raw_name, options)
        started = time.perf_counter_ns()
        async with self.scheduler.lease(model.spec, keep_alive_s, _caller_of(None)):
            pass
        return model.answer_name, time.perf_counter_ns() - started

    async def unload(self, raw_name: str) -> str:
        """Unload a model now (or once its requests finish); returns its name."""
        stored = await asyncio.to_thread(self.store.get, ModelName.parse(raw_name))
        await self.scheduler.unload(stored.name)
        return stored.name.display()

    # ---- generation ----------------------------------------------------------------------

    async def start(self, request: GenerationRequest) -> Generation:
        """Resolve the model and render the prompt (errors here are the request's own:
        404, 400); the generation itself runs when `Generation.events()` is iterated."""
        started = time.perf_counter_ns()
        model = await self.resolve(request.model, request.options, request.session)
        prompt = self.prompt_for(model, request)
        if request.context:
            _check_context(request.context, model.stored.manifest.facts.vocab_size)
        if request.uses_tools and request.tool_choice.forced:
            if request.format is not None:
                raise BadRequestError("format cannot be combined with a forced tool_choice")
            schema = tool_call_schema(
                request.tools or [],
                request.tool_choice,
                request.parallel_tool_calls,
                max_calls=MAX_PARALLEL_CALLS,
            )
            request = dataclasses.replace(request, format=schema)
        return Generation(self, request, model, prompt, started)

    async def count_tokens(self, request: GenerationRequest) -> int:
        """The token count of the prompt `request` would give the model (template,
        tools and thinking variables rendered, tokenized by the model's runner): a
        generation of no tokens, which the runner answers from tokenizing alone."""
        model = await self.resolve(request.model, request.options, request.session)
        prompt = self.prompt_for(model, request)
        caller = _caller_of(request.caller)
        async with self.scheduler.lease(model.spec, request.keep_alive_s, caller) as lease:
            message = {"op": "generate", "prompt": prompt, "options": {"num_predict": 0}}
            async with lease.runner.request(message) as frames:
                async for frame in frames:
                    if frame.get("event") == "done":
                        return int(frame.get("prompt_tokens") or 0)
        raise RunnerError(f"the runner for {model.name} did not count the prompt's tokens")

    async def embed(self, request: EmbeddingRequest) -> Embeddings:
        if not request.inputs:
            raise BadRequestError("input must not be empty")
        if request.dimensions is not None and request.dimensions < 1:
            raise BadRequestError("dimensions must be a positive integer")
        started = time.perf_counter_ns()
        model = await self.resolve(request.model, request.options)
        context = request.caller or current_request()
        caller = context.caller if context else None
        async with self.scheduler.lease(model.spec, request.keep_alive_s, caller) as lease:
            load_ns = time.perf_counter_ns() - started
            message = {
                "op": "embed",
                "inputs": request.inputs,
                "truncate": request.truncate,
                "normalize": request.normalize,
            }
            async with lease.runner.request(message) as frames:
                async for frame in frames:
                    vectors = [list(map(float, v)) for v in frame.get("embeddings", [])]
                    if request.dimensions is not None:
                        vectors = [_shorten(v, request.dimensions, model.name) for v in vectors]
                    if context is not None:  # usage (localserve.access)
                        context.add_usage(
                            model=model.name,
                            prompt_tokens=int(frame.get("prompt_eval_count", 0)),
                            busy_seconds=(time.perf_counter_ns() - started - load_ns) / 1e9,
                        )
                    return Embeddings(
                        model=model.answer_name,
                        vectors=vectors,
                        prompt_eval_count=int(frame.get("prompt_eval_count", 0)),
                        load_duration=load_ns,
                        total_duration=time.perf_counter_ns() - started,
                    )
        raise RunnerError(f"the runner for {model.name} returned no embeddings")


class Generation:
    """One started generation: `model_name` for the answer, `events()` to run it."""

    def __init__(
        self,
        inference: Inference,
        request: GenerationRequest,
        model: ResolvedModel,
        prompt: str,
        started_ns: int,
    ) -> None:
        self._inference = inference
        self.request = request
        self.model = model
        self.prompt = prompt
        self._started = started_ns

    @property
    def model_name(self) -> str:
        """The `model` of the answer: the requested name when it was a route."""
        return self.model.answer_name

    @property
    def served_version(self) -> str | None:
        """The installed model that serves a routed request (None when not routed)."""
        return self.model.name if self.model.route else None

    def events(self) -> AsyncIterator[GenerationEvent]:
        """Token events (content), ToolCalls when the answer called tools, then one
        Finished. Closing the iterator early (the client went away) cancels the
        generation in the runner."""
        manifest = self.model.stored.manifest
        template = self.request.template or manifest.template or manifest.facts.chat_template
        events: AsyncIterator[Any] = self._run()
        if self.request.think is not False and template_supports_thinking(template):
            events = _with_thinking(events, started_inside=_opens_thinking(self.prompt))
        if self.request.uses_tools:
            events = _with_tool_calls(
                events,
                forced=self.request.tool_choice.forced,
                fmt=detect_tool_format(template),
                names=[t["function"]["name"] for t in self.request.tools or []],
            )
        if self.model.route and self._inference.routing is not None:  # shadow traffic
            events = self._inference.routing.shadowed(self, events)
        return events

    async def _run(self) -> AsyncIterator[Token | Finished]:
        inference, request, model = self._inference, self.request, self.model
        events, scheduler = inference.events, inference.scheduler
        started = self._started
        # A request id ties started/progress/finished/ended events together; a request
        # refused or abandoned while queued is reported as ended.
        request_id = new_request_id()
        endpoint = request.endpoint
        keep_alive_s = request.keep_alive_s
        context = request.caller or current_request()  # the API key's (localserve.access)
        caller = context.caller if context else None
        # `held` holds the lease for the whole generation: leaving it releases the lease
        # once, however the generation ends (answer, error, cancel, closed iterator).
        async with contextlib.AsyncExitStack() as held:
            try:
                lease = await held.enter_async_context(
                    scheduler.lease(model.spec, keep_alive_s, caller, prompt=self.prompt)
                )
            except BaseException as exc:
                refused = "rejected" if isinstance(exc, BusyError) else "error"
                events.publish(
                    "request_ended",
                    request_id=request_id,
                    model=model.name,
                    endpoint=endpoint,
                    **model.labels(),
                    outcome="cancel" if isinstance(exc, asyncio.CancelledError) else refused,
                    error=str(exc) or type(exc).__name__,
                )
                raise
            load_ns = time.perf_counter_ns() - started
            first_token_ns = 0
            request_started = time.time()
            events.publish(
                "request_started",
                request_id=request_id,
                model=model.name,
                endpoint=endpoint,
                **model.labels(),
            )
            progress = ProgressReporter(
                events,
                model=model.name,
                endpoint=endpoint,
                request_id=request_id,
                started=started / 1e9,
            )
            outcome = "error"
            finished = False
            try:
                message = {
                    "op": "generate",
                    "prompt": self.prompt,
                    "options": model.options,
                    "format": request.format,
                    **_generate_fields(request),
                }
                finished = False
                pending: list[Logprob] = []  # logprobs of tokens whose text is held back
                async with lease.runner.request(message) as frames:
                    async for frame in frames:
                        if frame.get("event") != "done":
                            if not first_token_ns:
                                first_token_ns = time.perf_counter_ns()
                            progress.token()  # publishes request_progress every ~250 ms
                            text = str(frame.get("text", ""))
                            if "logprobs" in frame:
                                pending.extend(frame["logprobs"])
                                if text:
                                    yield Token(text, tuple(pending))
                                    pending.clear()
                                continue
                            yield Token(text)
                            continue
                        if pending:
                            yield Token("", tuple(pending))
                        finished = True
                        outcome = str(frame.get("done_reason", "stop"))
                        done = Finished(
                            done_reason=outcome,
                            prompt_eval_count=int(frame.get("prompt_eval_count", 0)),
                            prompt_eval_duration=int(frame.get("prompt_eval_duration", 0)),
                            eval_count=int(frame.get("eval_count", 0)),
                            eval_duration=int(frame.get("eval_duration", 0)),
                            load_duration=load_ns,
                            total_duration=time.perf_counter_ns() - started,
                            prompt_tokens=int(
                                frame.get("prompt_tokens") or frame.get("prompt_eval_count") or 0
                            ),
                            served_by=self.served_version,
                            stop_sequence=frame.get("stop_sequence"),
                            context=frame.get("tokens") if request.return_context else None,
                        )
                        events.publish(
                            "request_finished",
                            request_id=request_id,
                            model=model.name,
                            endpoint=endpoint,
                            prompt_tokens=done.prompt_eval_count,
                            eval_count=done.eval_count,
                            ttft_ms=(first_token_ns - started) / 1e6 if first_token_ns else None,
                            tokens_per_second=_rate(done.eval_count, done.eval_duration),
                            duration_s=time.time() - request_started,
                            done_reason=outcome,
                            **model.labels(),
                        )
                        yield done
                if not finished:
                    raise RunnerError(
                        f"the runner for {model.name} ended the answer without a result"
                    )
            except (asyncio.CancelledError, GeneratorExit):
                outcome = "cancel"
                raise
            finally:  # leaving `held` then releases the lease
                if context is not None:  # usage: the whole prompt, cached or not
                    context.add_usage(
                        model=model.name,
                        prompt_tokens=done.prompt_tokens if finished else 0,
                        generated_tokens=done.eval_count if finished else progress.count,
                        busy_seconds=time.time() - request_started,
                        failed=outcome == "error",
                    )
                if outcome in ("cancel", "error"):
                    events.publish(
                        "request_ended",
                        request_id=request_id,
                        model=model.name,
                        endpoint=endpoint,
                        outcome=outcome,
                        eval_count=progress.count,
                        duration_s=time.time() - request_started,
                        **model.labels(),
                    )


def _caller_of(context: RequestContext | None) -> Caller | None:
    """The fair-share caller of a request: its own context's, else the HTTP layer's."""
    held = context or current_request()
    return held.caller if held else None


def _check_context(context: list[int], vocab_size: int) -> None:
    """Ollama's `context`: token ids of the model's vocabulary (when its size is known;
    the runner checks again)."""
    for token in context:
        if type(token) is not int or token < 0 or (vocab_size and token >= vocab_size):
            limit = f" (0 to {vocab_size - 1})" if vocab_size else ""
            raise BadRequestError(
                f"field 'context': {token!r} is not a token id of this model{limit}"
            )


def _generate_fields(request: GenerationRequest) -> dict[str, Any]:
    """The generate op's optional fields (localserve.runner.protocol.GenerateOp)."""
    fields: dict[str, Any] = {}
    if request.logprobs is not None:
        fields["logprobs"] = request.logprobs
    if request.context:
        fields["prefix"] = request.context
    if request.return_context:
        fields["return_tokens"] = True
    return fields


def _opens_thinking(prompt: str) -> bool:
    """Whether the rendered prompt leaves the model inside a `<think>` block already."""
    tail = prompt.rstrip()
    return any(tail.endswith(opening) for opening, _ in TAG_PAIRS)


async def _with_thinking(
    events: AsyncIterator[GenerationEvent], *, started_inside: bool
) -> AsyncIterator[GenerationEvent]:
    """Reasoning (`<think>...</think>`) as Thinking events, the rest as content.
    Logprobs stay with content: those of tokens that were reasoning are dropped."""
    splitter = ThinkingSplitter(started_inside=started_inside)
    pending: list[Logprob] = []
    try:
        async for event in events:
            if isinstance(event, Token):
                split = splitter.push(event.text)
                pending.extend(event.logprobs)
            elif isinstance(event, Finished):
                split = splitter.finish()
            else:
                yield event
                continue
            if split.thinking:
                yield Thinking(split.thinking)
            if split.content:
                yield Token(split.content, tuple(pending))
                pending.clear()
            elif split.thinking:
                pending.clear()
            if isinstance(event, Finished):
                yield event
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


async def _with_tool_calls(
    events: AsyncIterator[GenerationEvent], *, forced: bool, fmt: ToolFormat, names: list[str]
) -> AsyncIterator[GenerationEvent]:
    """Content tokens with tool calls taken out: a forced answer (grammar-constrained)
    is all calls; otherwise text that turns out to be a call is never sent as content.
    Logprobs go with the content they came from (a call's tokens have none)."""
    detector = ToolCallStream(fmt, names)
    forced_text: list[str] = []
    pending: list[Logprob] = []
    try:
        async for event in events:
            if isinstance(event, Token):
                if forced:
                    forced_text.append(event.text)
                    continue
                pending.extend(event.logprobs)
                if text := detector.push(event.text):
                    yield Token(text, tuple(pending))
                    pending.clear()
                continue
            if not isinstance(event, Finished):
                yield event
                continue
            if forced:
                calls = parse_constrained("".join(forced_text))
            else:
                rest, calls = detector.finish()
                if rest:
                    yield Token(rest, () if calls else tuple(pending))
            if calls:
                yield ToolCalls(calls)
            yield event
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()


def _shorten(vector: list[float], dimensions: int, model: str) -> list[float]:
    """The first `dimensions` values, renormalised to unit length."""
    if dimensions > len(vector):
        raise BadRequestError(
            f"dimensions {dimensions} is larger than {model}'s embedding size {len(vector)}"
        )
    head = vector[:dimensions]
    norm = math.sqrt(sum(x * x for x in head))
    return [x / norm for x in head] if norm > 0 else head


def _rate(count: int, duration_ns: int) -> float:
    return count / (duration_ns / 1e9) if duration_ns > 0 else 0.0


@dataclass(frozen=True)
class Answer:
    """A whole generation, for answers that are not streamed."""

    text: str
    calls: list[ToolCall]
    finished: Finished
    thinking: str = ""
    logprobs: list[Logprob] = field(default_factory=list)  # of the content's tokens


async def collect(events: AsyncIterator[GenerationEvent]) -> Answer:
    parts: list[str] = []
    thoughts: list[str] = []
    calls: list[ToolCall] = []
    logprobs: list[Logprob] = []
    final: Finished | None = None
    try:
        async for event in events:
            if isinstance(event, Token):
                parts.append(event.text)
                logprobs.extend(event.logprobs)
            elif isinstance(event, Thinking):
                thoughts.append(event.text)
            elif isinstance(event, ToolCalls):
                calls.extend(event.calls)
            else:
                final = event
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            await aclose()
    if final is None:
        raise RunnerError("the generation ended without a result")
    return Answer("".join(parts), calls, final, "".join(thoughts), logprobs)
