"""What both APIs share: resolve a model, render its prompt, run a generation or embedding
through the scheduler, and report Ollama's timing fields.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from localserve.config import Settings
from localserve.errors import BadRequestError, BusyError, RunnerError
from localserve.names import ModelName
from localserve.runner.protocol import Frame
from localserve.scheduling.scheduler import ModelSpec, Scheduler
from localserve.service.prompts import render_chat
from localserve.store.store import Store, StoredModel
from localserve.telemetry.events import EventBus
from localserve.telemetry.monitor import ProgressReporter, new_request_id


@dataclass(frozen=True)
class ResolvedModel:
    stored: StoredModel
    spec: ModelSpec
    options: dict[str, Any]

    @property
    def name(self) -> str:
        return self.stored.name.display()


class ModelService:
    def __init__(self, settings: Settings, store: Store, scheduler: Scheduler, events: EventBus):
        self.settings = settings
        self.store = store
        self.scheduler = scheduler
        self.events = events

    async def resolve(self, raw_name: str, options: dict[str, Any]) -> ResolvedModel:
        """Look a model up and fix its load-time parameters (num_ctx, num_gpu)."""
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
        )
        return ResolvedModel(stored, spec, merged)

    def chat_prompt(self, model: ResolvedModel, messages: list[dict[str, Any]]) -> str:
        manifest = model.stored.manifest
        if manifest.system and not any(m["role"] == "system" for m in messages):
            messages = [{"role": "system", "content": manifest.system}, *messages]
        return render_chat(
            manifest.template or manifest.facts.chat_template,
            messages,
            bos_token=manifest.facts.bos_token,
            eos_token=manifest.facts.eos_token,
        )

    def generate_prompt(
        self, model: ResolvedModel, prompt: str, system: str | None, raw: bool
    ) -> str:
        """Ollama's /api/generate: the prompt through the template unless raw."""
        manifest = model.stored.manifest
        template = manifest.template or manifest.facts.chat_template
        if raw or not template:
            prefix = system or ("" if raw else manifest.system) or ""
            return f"{prefix}\n\n{prompt}" if prefix else prompt
        messages = []
        if system or manifest.system:
            messages.append({"role": "system", "content": system or manifest.system})
        messages.append({"role": "user", "content": prompt})
        return render_chat(
            template,
            messages,
            bos_token=manifest.facts.bos_token,
            eos_token=manifest.facts.eos_token,
        )

    async def load(self, model: ResolvedModel, keep_alive_s: float | None) -> int:
        """Load (or keep) a model without generating; returns the load duration in ns."""
        started = time.perf_counter_ns()
        lease = await self.scheduler.acquire(model.spec, keep_alive_s)
        lease.release(keep_alive_s)
        return time.perf_counter_ns() - started

    async def generate(
        self,
        model: ResolvedModel,
        prompt: str,
        *,
        fmt: str | dict[str, Any] | None,
        keep_alive_s: float | None,
        endpoint: str,
    ) -> AsyncIterator[Frame]:
        """Token frames, then one `done` frame carrying Ollama's timing fields.

        Closing the iterator early (the client went away) cancels the generation.
        """
        started = time.perf_counter_ns()
        # -- monitoring (issue 6): a request id ties started/progress/finished/ended
        # together; a request refused or abandoned while queued is reported as ended.
        request_id = new_request_id()
        try:
            lease = await self.scheduler.acquire(model.spec, keep_alive_s)
        except BaseException as exc:
            refused = "rejected" if isinstance(exc, BusyError) else "error"
            self.events.publish(
                "request_ended",
                request_id=request_id,
                model=model.name,
                endpoint=endpoint,
                outcome="cancel" if isinstance(exc, asyncio.CancelledError) else refused,
                error=str(exc) or type(exc).__name__,
            )
            raise
        load_ns = time.perf_counter_ns() - started
        first_token_ns = 0
        request_started = time.time()
        self.events.publish(
            "request_started", request_id=request_id, model=model.name, endpoint=endpoint
        )
        progress = ProgressReporter(
            self.events,
            model=model.name,
            endpoint=endpoint,
            request_id=request_id,
            started=started / 1e9,
        )
        outcome = "error"
        eval_count = 0
        try:
            message = {
                "op": "generate",
                "prompt": prompt,
                "options": model.options,
                "format": fmt,
            }
            finished = False
            async with lease.runner.request(message) as frames:
                async for frame in frames:
                    if frame.get("event") == "done":
                        finished = True
                        outcome = str(frame.get("done_reason", "stop"))
                        eval_count = int(frame.get("eval_count", 0))
                        frame = {
                            **frame,
                            "load_duration": load_ns,
                            "total_duration": time.perf_counter_ns() - started,
                        }
                        self.events.publish(
                            "request_finished",
                            request_id=request_id,
                            model=model.name,
                            endpoint=endpoint,
                            prompt_tokens=frame.get("prompt_eval_count", 0),
                            eval_count=eval_count,
                            ttft_ms=(first_token_ns - started) / 1e6 if first_token_ns else None,
                            tokens_per_second=_rate(eval_count, int(frame.get("eval_duration", 0))),
                            duration_s=time.time() - request_started,
                        )
                    else:
                        if not first_token_ns:
                            first_token_ns = time.perf_counter_ns()
                        progress.token()  # publishes request_progress every ~250 ms
                    yield frame
            if not finished:
                raise RunnerError(f"the runner for {model.name} ended the answer without a result")
        except (asyncio.CancelledError, GeneratorExit):
            outcome = "cancel"
            raise
        finally:
            lease.release(keep_alive_s)
            if outcome in ("cancel", "error"):
                self.events.publish(
                    "request_ended",
                    request_id=request_id,
                    model=model.name,
                    endpoint=endpoint,
                    outcome=outcome,
                    eval_count=progress.count,
                    duration_s=time.time() - request_started,
                )

    async def embed(
        self,
        model: ResolvedModel,
        inputs: list[str],
        *,
        truncate: bool,
        normalize: bool,
        keep_alive_s: float | None,
    ) -> tuple[list[list[float]], int, int]:
        """(vectors, prompt token count, load duration ns)."""
        if not inputs:
            raise BadRequestError("input must not be empty")
        started = time.perf_counter_ns()
        lease = await self.scheduler.acquire(model.spec, keep_alive_s)
        load_ns = time.perf_counter_ns() - started
        try:
            message = {
                "op": "embed",
                "inputs": inputs,
                "truncate": truncate,
                "normalize": normalize,
            }
            async with lease.runner.request(message) as frames:
                async for frame in frames:
                    vectors = [list(map(float, v)) for v in frame.get("embeddings", [])]
                    return vectors, int(frame.get("prompt_eval_count", 0)), load_ns
        finally:
            lease.release(keep_alive_s)
        raise RunnerError(f"the runner for {model.name} returned no embeddings")


def _rate(count: int, duration_ns: int) -> float:
    return count / (duration_ns / 1e9) if duration_ns > 0 else 0.0


@contextlib.asynccontextmanager
async def closing(frames: AsyncIterator[Frame]) -> AsyncIterator[AsyncIterator[Frame]]:
    try:
        yield frames
    finally:
        aclose = getattr(frames, "aclose", None)
        if aclose is not None:
            await aclose()
