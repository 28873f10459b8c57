"""A runner subprocess (`python -m localserve.runner --fd N`) driven from a test over a real
socket pair, plus a fixture factory that starts runners and closes them after the test.

`recv` gives per-request frames as the daemon's handle does: a step's `tokens` frame
({event, texts: {id: text}}) becomes one `token` frame ({event, id, text}) per request, in
the frame's order; `wire` keeps every frame as it came off the socket."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from localserve.runner.protocol import Frame, encode_frame, recv_frame


class RunnerProcess:
    """One runner subprocess and the daemon's end of its socket pair."""

    def __init__(self, env: dict[str, str], log: Path, timeout_s: float = 30.0) -> None:
        self.timeout_s = timeout_s
        self.sock, child = socket.socketpair()
        self.sock.settimeout(timeout_s)
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localserve.runner", "--fd", str(child.fileno())],
            pass_fds=[child.fileno()],
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        child.close()
        self.load_progress: list[float] = []
        self.wire: list[Frame] = []  # every frame received, as sent
        self._split: deque[Frame] = deque()  # token frames of a tokens frame, not yet taken

    def send(self, message: Frame) -> None:
        self.sock.sendall(encode_frame(message))

    def recv(self) -> Frame:
        """The next per-request frame, with `load_progress` frames set aside in
        `self.load_progress`."""
        while True:
            if self._split:
                return self._split.popleft()
            frame = recv_frame(self.sock)
            assert frame is not None, "runner closed the socket"
            self.wire.append(frame)
            event = frame.get("event")
            if event == "tokens":
                texts = frame["texts"]
                assert texts, frame  # a step with no text sends no tokens frame
                logprobs = frame.get("logprobs") or {}
                for request_id, text in texts.items():
                    token: Frame = {"event": "token", "id": request_id, "text": text}
                    if request_id in logprobs:
                        token["logprobs"] = logprobs[request_id]
                    self._split.append(token)
            elif event != "load_progress":
                return frame
            else:
                self.load_progress.append(float(frame["progress"]))

    def wait(self) -> int:
        return self.proc.wait(self.timeout_s)

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.log.close()


RunnerT = TypeVar("RunnerT", bound=RunnerProcess)


def runner_starter(
    kind: Callable[[dict[str, str], Path], RunnerT], env: dict[str, str], log_dir: Path
) -> Iterator[Callable[[], RunnerT]]:
    """Yield a function that starts runners; close every one started when resumed."""
    started: list[RunnerT] = []

    def start() -> RunnerT:
        runner = kind(env, log_dir / f"runner-{len(started)}.log")
        started.append(runner)
        return runner

    yield start
    for runner in started:
        runner.close()
