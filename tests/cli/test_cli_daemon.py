"""Background daemon management (localserve.client.background): pidfile, log, start/stop/status.

Most tests run a small fake daemon (an aiohttp app answering /api/version) so they test
the process management alone; tests/cli/test_cli_commands.py runs the real one.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest
from cli_harness import free_port
from eventually import eventually

from localserve.client import background
from localserve.config import Settings

FAKE_DAEMON = textwrap.dedent(
    """
    import os, signal, sys
    from aiohttp import web

    if os.environ.get("FAKE_IGNORE_TERM"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.environ.get("FAKE_FAIL"):
        print("fake daemon: cannot bind, giving up", file=sys.stderr)
        sys.exit(7)
    host, port = os.environ["LOCALSERVE_HOST"].rsplit(":", 1)

    async def version(request):
        return web.json_response({"version": "9.9.9"})

    app = web.Application()
    app.router.add_get("/api/version", version)
    print("fake daemon listening", flush=True)
    web.run_app(app, host=host, port=int(port), print=None, handle_signals=True)
    """
)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=free_port(),
        models_dir=tmp_path / "models",
        state_dir=tmp_path / "state",
    )


@pytest.fixture
def fake_command(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_localserve_daemon.py"  # "localserve" in its command line
    script.write_text(FAKE_DAEMON)
    return [sys.executable, str(script)]


def test_start_writes_pidfile_and_status_reports_running(
    settings: Settings, fake_command: list[str]
) -> None:
    pid = background.start_background(settings, command=fake_command, timeout=20)
    try:
        assert background.read_pidfile(settings) == pid
        created = psutil.Process(pid).create_time()
        assert background.pidfile_path(settings).read_text() == f"{pid}\n{created:.6f}\n"
        state = background.status(settings)
        assert state.running and state.managed and state.pid == pid
        assert state.version == "9.9.9"
        assert state.base_url == settings.base_url
        assert not state.stale_pidfile
        assert "fake daemon listening" in background.log_path(settings).read_text()
        assert state.to_dict()["log_path"] == str(background.log_path(settings))
        # The daemon is detached: its own session, so a terminal's Ctrl-C does not reach it.
        assert os.getsid(pid) == pid
    finally:
        assert background.stop(settings) is True
    assert not background.pidfile_path(settings).exists()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not background.status(settings).running


def test_start_when_already_running_returns_the_same_pid(
    settings: Settings, fake_command: list[str]
) -> None:
    pid = background.start_background(settings, command=fake_command, timeout=20)
    try:
        assert background.start_background(settings, command=fake_command) == pid
        assert background.ensure_running(settings) is None
    finally:
        background.stop(settings)


def test_a_child_that_dies_raises_with_the_log_tail(
    settings: Settings, fake_command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FAIL", "1")
    with pytest.raises(background.DaemonStartError) as info:
        background.start_background(settings, command=fake_command, timeout=20)
    assert "exited with status 7" in str(info.value)
    assert "cannot bind, giving up" in info.value.log_tail
    assert not background.pidfile_path(settings).exists()


def test_a_silent_child_times_out_and_is_killed(settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "silent_localserve.py"
    script.write_text("import time\ntime.sleep(60)\n")
    with pytest.raises(background.DaemonStartError, match="did not answer"):
        background.start_background(settings, command=[sys.executable, str(script)], timeout=1)
    assert not background.pidfile_path(settings).exists()


def test_stop_escalates_to_sigkill(
    settings: Settings, fake_command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_IGNORE_TERM", "1")
    pid = background.start_background(settings, command=fake_command, timeout=20)
    assert background.stop(settings, timeout=0.5) is True
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_stale_pidfile_is_reported_and_cleaned(settings: Settings, fake_command: list[str]) -> None:
    settings.state_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    background.pidfile_path(settings).write_text(f"{dead.pid}\n")
    state = background.status(settings)
    assert state.stale_pidfile and state.pid is None and not state.running
    assert background.stop(settings) is False  # nothing to stop; the stale pidfile goes
    assert not background.pidfile_path(settings).exists()

    # A live pid whose start time differs (the pid was reused) is stale too.
    background.pidfile_path(settings).write_text(f"{os.getpid()}\n12345.0\n")
    assert background.managed_pid(settings) is None
    assert background.status(settings).stale_pidfile
    pid = background.start_background(settings, command=fake_command, timeout=20)
    try:
        assert background.read_pidfile(settings) == pid
    finally:
        background.stop(settings)


def test_garbage_pidfile_reads_as_none(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True)
    background.pidfile_path(settings).write_text("not a pid")
    assert background.read_pidfile(settings) is None
    assert background.status(settings).stale_pidfile


def test_ensure_running_without_autostart_raises(settings: Settings) -> None:
    with pytest.raises(background.DaemonNotRunningError, match=str(settings.port)):
        background.ensure_running(settings, autostart=False)


def test_ensure_running_never_starts_a_remote_address(settings: Settings) -> None:
    remote = dataclasses.replace(settings, host="192.0.2.1")
    with pytest.raises(background.DaemonNotRunningError):
        background.ensure_running(remote)


def test_ensure_running_starts_the_daemon(
    settings: Settings, fake_command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(background, "default_command", lambda: fake_command)
    pid = background.ensure_running(settings)
    try:
        assert pid and background.managed_pid(settings) == pid
    finally:
        background.stop(settings)


def test_stop_refuses_a_daemon_it_did_not_start(
    settings: Settings, fake_command: list[str], tmp_path: Path
) -> None:
    env = {**os.environ, "LOCALSERVE_HOST": f"127.0.0.1:{settings.port}"}
    process = subprocess.Popen(fake_command, env=env, stdout=subprocess.DEVNULL)
    try:
        eventually(lambda: background.is_answering(settings), 10, what="the fake daemon answering")
        state = background.status(settings)
        assert state.running and not state.managed
        with pytest.raises(background.DaemonNotManagedError, match="not started"):
            background.stop(settings)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def test_daemon_module_does_not_import_ui_libraries() -> None:
    code = (
        "import sys, localserve.client.background\n"
        "bad = [m for m in ('typer', 'rich', 'textual') if m in sys.modules]\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
