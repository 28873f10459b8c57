"""Run the localserve daemon in the background: start, stop, status, ensure running.

The background daemon is the same server as `localserve serve`, started detached from the
terminal (a new session, stdin from /dev/null) as `python -m localserve`, which imports
only the core (never typer, rich or textual). Its files live in the state dir
(`LOCALSERVE_STATE_DIR`, default: the platformdirs user state dir):

    localserve.pid    the daemon's pid, written by `start_background`, removed by `stop`
    localserve.log    the daemon's stdout and stderr, appended across starts
    daemon.lock       serialises concurrent starts (two commands auto-starting at once)

A pidfile whose process is gone, or whose pid now belongs to another program, is stale:
`status` reports it and `start_background` / `stop` remove it.

This module never reads the environment for settings; callers pass a `Settings`
(from `localserve.config.load_settings()`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import psutil
from filelock import FileLock

from localserve.client.http import APIError, DaemonUnreachableError, LocalserveClient
from localserve.config import Settings
from localserve.errors import LocalserveError

PIDFILE_NAME = "localserve.pid"
LOGFILE_NAME = "localserve.log"
LOCKFILE_NAME = "daemon.lock"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
PROBE_TIMEOUT_S = 2.0
LOG_TAIL_LINES = 30

T = TypeVar("T")

# Children started by this process, kept so that they are reaped by `stop` (and so that
# Popen does not warn about a running child when the object is collected).
_children: dict[int, subprocess.Popen[bytes]] = {}


class DaemonError(LocalserveError):
    """A background-daemon operation failed."""


class DaemonStartError(DaemonError):
    """The daemon did not come up: it exited, or did not answer in time."""

    def __init__(self, message: str, log_path: Path, log_tail: str) -> None:
        text = message
        if log_tail.strip():
            text += f"\n--- last lines of {log_path} ---\n{log_tail.rstrip()}"
        else:
            text += f" (log: {log_path})"
        super().__init__(text)
        self.log_path = log_path
        self.log_tail = log_tail


class DaemonNotManagedError(DaemonError):
    """A daemon answers at the address but was not started by `start_background`."""


class DaemonNotRunningError(DaemonError):
    """Nothing answers at the address and autostart is off."""

    def __init__(self, base_url: str) -> None:
        super().__init__(f"localserve daemon not reachable at {base_url}")
        self.base_url = base_url


@dataclass(frozen=True)
class DaemonStatus:
    base_url: str
    pid: int | None  # from the pidfile, when that process is alive and is localserve
    answering: bool  # something answers HTTP at base_url
    version: str | None  # the daemon's /api/version, when it answered with one
    pidfile: Path
    log_path: Path
    stale_pidfile: bool  # a pidfile exists but its process is gone (or is not ours)

    @property
    def running(self) -> bool:
        return self.answering

    @property
    def managed(self) -> bool:
        """Started by `start_background` (so `stop` can stop it)."""
        return self.pid is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["pidfile"] = str(self.pidfile)
        data["log_path"] = str(self.log_path)
        data["running"] = self.running
        data["managed"] = self.managed
        return data


def pidfile_path(settings: Settings) -> Path:
    return settings.state_dir / PIDFILE_NAME


def log_path(settings: Settings) -> Path:
    return settings.state_dir / LOGFILE_NAME


def default_command() -> list[str]:
    """The command that runs the daemon in the foreground without the CLI's imports
    (`python -m localserve`, the same server as `localserve serve`)."""
    return [sys.executable, "-m", "localserve"]


# ---- probing ---------------------------------------------------------------------------


def _run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run, also from a thread that already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _probe_async(settings: Settings, timeout: float) -> tuple[bool, str | None]:
    async with LocalserveClient(
        settings.base_url, api_key=settings.api_key, timeout=timeout
    ) as client:
        try:
            return True, await client.version()
        except (DaemonUnreachableError, TimeoutError):
            return False, None
        except APIError:
            return True, None  # something answers (e.g. 401 without an API key)


def probe(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> tuple[bool, str | None]:
    """(answering, version): whether a daemon answers at `settings.base_url`."""
    return _run_sync(_probe_async(settings, timeout))


def is_answering(settings: Settings, timeout: float = PROBE_TIMEOUT_S) -> bool:
    return probe(settings, timeout)[0]


# ---- pidfile ---------------------------------------------------------------------------


def _read_pidfile_fields(settings: Settings) -> tuple[int, float | None] | None:
    """(pid, process start time) from the pidfile; the start time guards against pid
    reuse (it is absent from pidfiles written by hand)."""
    try:
        fields = pidfile_path(settings).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        pid = int(fields[0]) if fields else 0
        created = float(fields[1]) if len(fields) > 1 else None
    except ValueError:
        return None
    return (pid, created) if pid > 0 else None


def read_pidfile(settings: Settings) -> int | None:
    fields = _read_pidfile_fields(settings)
    return fields[0] if fields else None


def _write_pidfile(settings: Settings, pid: int) -> None:
    """`<pid>\n<process start time>\n`, written atomically."""
    try:
        created = f"{psutil.Process(pid).create_time():.6f}\n"
    except psutil.Error:
        created = ""
    path = pidfile_path(settings)
    tmp = path.with_suffix(".pid.tmp")
    tmp.write_text(f"{pid}\n{created}")
    os.replace(tmp, path)


def _remove_pidfile(settings: Settings) -> None:
    pidfile_path(settings).unlink(missing_ok=True)


def _is_our_process(pid: int, created: float | None) -> bool:
    """The pid is alive, not a zombie, and is the process the pidfile was written for:
    same start time when the pidfile has one, else localserve on its command line."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if created is not None:
            return abs(process.create_time() - created) < 0.01
        cmdline = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # alive, and we cannot tell: do not call it stale
    return "localserve" in cmdline


def managed_pid(settings: Settings) -> int | None:
    """The pid from the pidfile when that process is a live localserve, else None."""
    fields = _read_pidfile_fields(settings)
    if fields is None or not _is_our_process(*fields):
        return None
    return fields[0]


def status(settings: Settings) -> DaemonStatus:
    raw_pid = read_pidfile(settings)
    pid = managed_pid(settings)
    answering, version = probe(settings)
    return DaemonStatus(
        base_url=settings.base_url,
        pid=pid,
        answering=answering,
        version=version,
        pidfile=pidfile_path(settings),
        log_path=log_path(settings),
        stale_pidfile=pidfile_path(settings).exists() and (raw_pid is None or pid is None),
    )


# ---- start -----------------------------------------------------------------------------


def _log_tail(path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])


def _child_env(settings: Settings) -> dict[str, str]:
    """The environment of the daemon: ours, with the settings that name where it lives."""
    env = dict(os.environ)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    env["LOCALSERVE_HOST"] = f"{host}:{settings.port}"
    env["LOCALSERVE_MODELS"] = str(settings.models_dir.expanduser().resolve())
    env["LOCALSERVE_STATE_DIR"] = str(settings.state_dir.expanduser().resolve())
    if env.get("LOCALSERVE_CONFIG"):
        env["LOCALSERVE_CONFIG"] = str(Path(env["LOCALSERVE_CONFIG"]).expanduser().resolve())
    # Import the same localserve as this process, even from an uninstalled checkout.
    source_root = str(Path(__file__).resolve().parent.parent)
    paths = [source_root, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _spawn(command: Sequence[str], settings: Settings, log_handle: Any) -> subprocess.Popen[bytes]:
    kwargs: dict[str, Any] = {}
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        kwargs["creationflags"] = (
            subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP  # type: ignore[attr-defined]
        )
    else:
        kwargs["start_new_session"] = True
    return subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=log_handle,
        stderr=subprocess.STDOUT,
        cwd=str(settings.state_dir),
        env=_child_env(settings),
        close_fds=True,
        **kwargs,
    )


def start_background(
    settings: Settings,
    *,
    timeout: float = START_TIMEOUT_S,
    command: Sequence[str] | None = None,
) -> int:
    """Start the daemon detached and wait until it answers; return its pid.

    When a daemon already answers at the address, return the pid of the managed one
    (or 0 when it was not started here, e.g. by a service manager). Raises
    DaemonStartError, with the tail of the log, when the child exits or stays silent
    past `timeout` (the child is then killed).
    """
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(settings.state_dir / LOCKFILE_NAME), timeout=timeout + 10):
        if is_answering(settings):
            return managed_pid(settings) or 0
        if read_pidfile(settings) is not None and managed_pid(settings) is None:
            _remove_pidfile(settings)  # stale
        path = log_path(settings)
        with path.open("ab") as log_handle:
            log_handle.write(
                f"--- localserve daemon starting at {time.strftime('%Y-%m-%d %H:%M:%S')}"
                f" on {settings.base_url} ---\n".encode()
            )
            log_handle.flush()
            offset = log_handle.tell()
            child = _spawn(command or default_command(), settings, log_handle)
        _children[child.pid] = child
        _write_pidfile(settings, child.pid)
        deadline = time.monotonic() + timeout
        while True:
            code = child.poll()
            if code is not None:
                _children.pop(child.pid, None)
                _remove_pidfile(settings)
                raise DaemonStartError(
                    f"localserve daemon exited with status {code} during start-up",
                    path,
                    _log_tail(path, offset),
                )
            if is_answering(settings, timeout=min(PROBE_TIMEOUT_S, timeout)):
                return child.pid
            if time.monotonic() >= deadline:
                _terminate(child.pid, grace=5.0)
                _remove_pidfile(settings)
                raise DaemonStartError(
                    f"localserve daemon did not answer at {settings.base_url} within {timeout:g}s",
                    path,
                    _log_tail(path, offset),
                )
            time.sleep(0.1)


def ensure_running(settings: Settings, *, autostart: bool = True) -> int | None:
    """Make sure a daemon answers at `settings.base_url`, starting one when allowed.

    Returns the pid when this call started it, None when one was already answering.
    Autostart only happens for a local bind address (loopback or all interfaces);
    otherwise, and when `autostart` is false, DaemonNotRunningError is raised.
    """
    if is_answering(settings):
        return None
    local = settings.is_loopback or settings.host in ("0.0.0.0", "::", "")
    if not autostart or not local:
        raise DaemonNotRunningError(settings.base_url)
    return start_background(settings)


# ---- stop ------------------------------------------------------------------------------


def _terminate(pid: int, grace: float) -> bool:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL. True when it had to kill."""
    try:
        process = psutil.Process(pid)
        process.send_signal(signal.SIGTERM)
    except psutil.NoSuchProcess:
        return False
    child = _children.pop(pid, None)
    try:
        if child is not None:
            child.wait(timeout=grace)
        else:
            process.wait(timeout=grace)
        return False
    except (psutil.TimeoutExpired, subprocess.TimeoutExpired):
        pass
    with contextlib.suppress(psutil.NoSuchProcess):
        process.kill()
        if child is not None:
            child.wait(timeout=10)
        else:
            process.wait(timeout=10)
    return True


def stop(settings: Settings, *, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop the daemon started by `start_background`; True when one was stopped.

    Sends SIGTERM (graceful shutdown: runners are stopped), waits up to `timeout`
    seconds, then SIGKILL. The pidfile is removed, stale or not. Raises
    DaemonNotManagedError when nothing is managed but a daemon answers anyway.
    """
    pid = managed_pid(settings)
    if pid is None:
        _remove_pidfile(settings)
        if is_answering(settings):
            raise DaemonNotManagedError(
                f"a localserve daemon answers at {settings.base_url} but was not started "
                "by `localserve daemon start` (no pidfile); stop it where it was started "
                "(the terminal running `localserve serve`, or its service manager)"
            )
        return False
    _terminate(pid, grace=timeout)
    _remove_pidfile(settings)
    return True
