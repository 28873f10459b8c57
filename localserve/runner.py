"""A runner process: `python -m localserve.runner --fd N` holds one `llama_cpp.Llama`.

The daemon starts it with one end of a Unix socket pair as fd N. The runner imports
llama_cpp at once, says `ready`, then waits for `load`, so a runner can be started ahead of
need. Requests are queued and run one at a time by the main thread; a reader thread
handles `cancel` and `stats` at once, so a cancel takes effect at the next token.
See localserve.protocol for the messages.
"""

from __future__ import annotations

import argparse
import os
import queue
import socket
import sys
import threading
import time
from typing import Any

from localserve.protocol import Frame, encode_frame, recv_frame

# Options that llama-cpp-python's create_completion takes under another name or not at all.
_SAMPLING_OPTIONS = {
    "temperature": ("temperature", float),
    "top_p": ("top_p", float),
    "top_k": ("top_k", int),
    "min_p": ("min_p", float),
    "typical_p": ("typical_p", float),
    "repeat_penalty": ("repeat_penalty", float),
    "presence_penalty": ("presence_penalty", float),
    "frequency_penalty": ("frequency_penalty", float),
    "seed": ("seed", int),
    "mirostat": ("mirostat_mode", int),
    "mirostat_tau": ("mirostat_tau", float),
    "mirostat_eta": ("mirostat_eta", float),
}


class RequestError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return 0


class Runner:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.send_lock = threading.Lock()
        self.work: queue.Queue[Frame | None] = queue.Queue()
        self.cancelled: set[str] = set()
        self.cancel_lock = threading.Lock()
        self.llm: Any = None
        self.embedder: Any = None
        self.load_params: Frame = {}
        self.n_ctx = 0

    def send(self, message: Frame) -> None:
        data = encode_frame(message)
        with self.send_lock:
            self.sock.sendall(data)

    # ---- reader thread -----------------------------------------------------------------

    def read_loop(self) -> None:
        try:
            while True:
                message = recv_frame(self.sock)
                if message is None:
                    break
                op = message.get("op")
                if op == "cancel":
                    with self.cancel_lock:
                        self.cancelled.add(str(message.get("id")))
                elif op == "stats":
                    self.send({"event": "stats", "rss": _rss()})
                elif op == "shutdown":
                    break
                else:
                    self.work.put(message)
        except OSError:
            pass
        finally:
            self.work.put(None)

    def is_cancelled(self, request_id: str) -> bool:
        with self.cancel_lock:
            return request_id in self.cancelled

    # ---- main thread -------------------------------------------------------------------

    def serve(self) -> int:
        threading.Thread(target=self.read_loop, name="runner-reader", daemon=True).start()
        while True:
            message = self.work.get()
            if message is None:
                return 0
            op = message.get("op")
            request_id = str(message.get("id", ""))
            try:
                if op == "load":
                    self.load(message)
                elif self.llm is None:
                    raise RequestError("internal", "no model loaded")
                elif op == "generate":
                    self.generate(request_id, message)
                elif op == "embed":
                    self.embed(request_id, message)
                else:
                    raise RequestError("bad_request", f"unknown op {op!r}")
            except RequestError as exc:
                self.send(
                    {"event": "error", "id": request_id, "kind": exc.kind, "message": str(exc)}
                )
                if op == "load":
                    return 1
            except Exception as exc:
                self.send(
                    {"event": "error", "id": request_id, "kind": "internal", "message": repr(exc)}
                )
                if op == "load":
                    return 1
            finally:
                with self.cancel_lock:
                    self.cancelled.discard(request_id)

    def load(self, message: Frame) -> None:
        import llama_cpp

        started = time.perf_counter()
        self.load_params = message
        try:
            self.llm = llama_cpp.Llama(
                model_path=str(message["path"]),
                n_ctx=int(message.get("num_ctx", 2048)),
                n_gpu_layers=int(message.get("num_gpu", 0)),
                n_threads=int(message.get("num_threads") or os.cpu_count() or 1),
                n_threads_batch=int(message.get("num_threads") or os.cpu_count() or 1),
                n_batch=int(message.get("num_batch", 512)),
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise RequestError("load_failed", f"llama.cpp could not load the model: {exc}") from exc
        # llama.cpp may round a small n_ctx up (to 256), but llama-cpp-python sizes its token
        # buffer by the n_ctx it was given: a prompt between the two overflows that buffer.
        # So the usable window is the smaller of the two.
        requested = int(message.get("num_ctx", 2048))
        actual = int(self.llm.n_ctx())
        self.n_ctx = min(requested, actual) if requested > 0 else actual
        self.send(
            {
                "event": "loaded",
                "load_duration": int((time.perf_counter() - started) * 1e9),
                "rss": _rss(),
                "n_ctx": self.n_ctx,
                "n_gpu_layers": int(message.get("num_gpu", 0)),
            }
        )

    def _tokenize(self, text: str) -> list[int]:
        llm = self.llm
        tokens: list[int] = llm.tokenize(text.encode(), add_bos=True, special=True)
        bos = llm.token_bos()
        if len(tokens) >= 2 and tokens[0] == bos and tokens[1] == bos:
            tokens = tokens[1:]  # the template already wrote the BOS token
        return tokens

    def generate(self, request_id: str, message: Frame) -> None:
        import llama_cpp

        llm = self.llm
        options: dict[str, Any] = dict(message.get("options") or {})
        prompt = str(message.get("prompt") or "")
        tokens = self._tokenize(prompt)
        n_ctx = self.n_ctx
        num_predict = int(options.get("num_predict", -1))
        if len(tokens) >= n_ctx:
            raise RequestError(
                "bad_request",
                f"prompt is {len(tokens)} tokens, more than the context window "
                f"(num_ctx={n_ctx}); raise num_ctx or shorten the prompt",
            )
        if num_predict == 0:
            self.send(_done(request_id, "length", len(tokens), 0, 0, 0))
            return
        kwargs: dict[str, Any] = {"temperature": 0.8, "top_k": 40, "top_p": 0.9, "min_p": 0.0}
        for option, (name, cast) in _SAMPLING_OPTIONS.items():
            if options.get(option) is not None:
                kwargs[name] = cast(options[option])
        stop = options.get("stop")
        if isinstance(stop, str):
            stop = [stop]
        grammar = _grammar_for(message.get("format"))
        ctx = llm._ctx.ctx
        llama_cpp.llama_perf_context_reset(ctx)
        started = time.perf_counter_ns()
        first_token_at = 0
        eval_count = 0
        done_reason = "stop"
        room = n_ctx - len(tokens)  # generation stops ("length") when the window is full
        stream = llm.create_completion(
            tokens,
            max_tokens=min(num_predict, room) if num_predict > 0 else room,
            stop=list(stop or []),
            stream=True,
            grammar=grammar,
            **kwargs,
        )
        try:
            for chunk in stream:
                if self.is_cancelled(request_id):
                    done_reason = "cancel"
                    break
                choice = chunk["choices"][0]
                text = choice.get("text") or ""
                if not first_token_at:
                    first_token_at = time.perf_counter_ns()
                if text:
                    eval_count += 1
                    self.send({"event": "token", "id": request_id, "text": text})
                if choice.get("finish_reason"):
                    done_reason = str(choice["finish_reason"])
        finally:
            stream.close()
        ended = time.perf_counter_ns()
        perf = llama_cpp.llama_perf_context(ctx)
        prompt_eval_count = int(perf.n_p_eval) or len(tokens)
        prompt_eval_ns = int(perf.t_p_eval_ms * 1e6) or max(first_token_at - started, 0)
        eval_ns = int(perf.t_eval_ms * 1e6) or max(ended - (first_token_at or started), 0)
        eval_count = max(int(perf.n_eval), eval_count)
        self.send(
            _done(request_id, done_reason, prompt_eval_count, prompt_eval_ns, eval_count, eval_ns)
        )

    def embed(self, request_id: str, message: Frame) -> None:
        import llama_cpp

        if self.embedder is None:
            params = self.load_params
            self.embedder = llama_cpp.Llama(
                model_path=str(params["path"]),
                n_ctx=int(params.get("num_ctx", 2048)),
                n_batch=int(params.get("num_ctx", 2048)),
                n_ubatch=int(params.get("num_ctx", 2048)),
                n_gpu_layers=int(params.get("num_gpu", 0)),
                n_threads=int(params.get("num_threads") or os.cpu_count() or 1),
                embedding=True,
                pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                verbose=False,
            )
        inputs = [str(x) for x in message.get("inputs") or []]
        truncate = bool(message.get("truncate", True))
        n_ctx = self.embedder.n_ctx()
        counts = [len(self.embedder.tokenize(text.encode(), add_bos=True)) for text in inputs]
        if not truncate and any(count > n_ctx for count in counts):
            raise RequestError("bad_request", "input length exceeds the context length")
        started = time.perf_counter_ns()
        vectors = [
            self.embedder.embed(text, normalize=bool(message.get("normalize", True)), truncate=True)
            for text in inputs
        ]
        self.send(
            {
                "event": "embeddings",
                "id": request_id,
                "embeddings": vectors,
                "prompt_eval_count": sum(min(c, n_ctx) for c in counts),
                "prompt_eval_duration": time.perf_counter_ns() - started,
            }
        )


def _grammar_for(fmt: Any) -> Any:
    """A llama.cpp grammar for Ollama's `format`: "json" or a JSON schema object."""
    import json

    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if fmt in (None, ""):
        return None
    try:
        if fmt == "json":
            return LlamaGrammar.from_string(JSON_GBNF, verbose=False)
        if isinstance(fmt, dict):
            return LlamaGrammar.from_json_schema(json.dumps(fmt), verbose=False)
    except Exception as exc:
        raise RequestError("bad_request", f"invalid format schema: {exc}") from exc
    raise RequestError("bad_request", 'format must be "json" or a JSON schema object')


def _done(
    request_id: str,
    reason: str,
    prompt_eval_count: int,
    prompt_eval_ns: int,
    eval_count: int,
    eval_ns: int,
) -> Frame:
    return {
        "event": "done",
        "id": request_id,
        "done_reason": reason,
        "prompt_eval_count": prompt_eval_count,
        "prompt_eval_duration": prompt_eval_ns,
        "eval_count": eval_count,
        "eval_duration": eval_ns,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localserve.runner")
    parser.add_argument("--fd", type=int, required=True, help="socket fd inherited from the daemon")
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    import llama_cpp  # noqa: F401 - import before `ready` so a spare runner is warm

    runner = Runner(sock)
    runner.send({"event": "ready", "pid": os.getpid()})
    code = runner.serve()
    sys.stdout.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
