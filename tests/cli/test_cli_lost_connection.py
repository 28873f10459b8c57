"""A lost connection during create, cp, rm or pull: the CLI reconnects (starting the
daemon, as commands do) and says whether the operation finished before the daemon died.

The daemon is real (`tests/cli/dying_daemon.py`): it SIGKILLs itself right before or
right after one store operation, so "finished" and "not finished" are both certain.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cli_harness import CliDaemon, serving
from fake_hf_server import FakeHub
from gguf_factory import write_tiny_gguf
from typer.testing import CliRunner

# isort: split
from localserve.cli import recovery
from localserve.cli.app import app

HERE = Path(__file__).resolve().parent
REPO = "TinyOrg/Tiny-GGUF"
HUB_MODEL = f"hf.co/{REPO}"

DyingDaemon = Callable[..., CliDaemon]
TinyModelFactory = Callable[..., Path]


@pytest.fixture
def dying_daemon(tmp_path: Path) -> Iterator[DyingDaemon]:
    """Factory: `dying_daemon("after:copy", **env)` starts a daemon that SIGKILLs itself
    at that point; afterwards it and the daemon the CLI started in its place are stopped."""
    pytest.importorskip("localserve.api.app")
    with contextlib.ExitStack() as stack:

        def start(hook: str, **extra: str) -> CliDaemon:
            command = [sys.executable, str(HERE / "dying_daemon.py")]
            try:
                daemon = stack.enter_context(
                    serving(tmp_path, command, {"DYING_DAEMON": hook}, **extra)
                )
            except RuntimeError as exc:
                pytest.fail(str(exc))
            # Registered after `serving`, so it runs first: stop the replacement.
            stack.callback(CliRunner().invoke, app, ["daemon", "stop"], env=daemon.env)
            return daemon

        yield start


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[FakeHub]:
    """A local Hugging Face-compatible server with one tiny repo, on its own loop."""
    fake = FakeHub(chunk_size=16 * 1024)
    fake.add_repo(REPO, {"tiny-Q4_K_M.gguf": write_tiny_gguf(tmp_path / "q4.gguf", "k")})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(fake.start(), loop).result(timeout=30)
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(fake.stop(), loop).result(timeout=30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=30)


def listed(daemon: CliDaemon) -> str:
    result = daemon.invoke("list")
    assert result.exit_code == 0, result.output
    return result.stdout


def test_create_that_finished_before_the_daemon_died_exits_0(
    dying_daemon: DyingDaemon, tiny_model: TinyModelFactory
) -> None:
    daemon = dying_daemon("after:create_model")
    result = daemon.invoke("create", "made", "-f", str(tiny_model("m")))
    assert result.exit_code == 0, result.output
    assert "started localserve daemon" in result.stderr
    assert (
        "connection to the daemon was lost during create; "
        "the model 'made' exists now (created)" in result.stderr
    )
    assert "made:latest" in listed(daemon)


def test_create_cut_during_the_upload_exits_3_and_running_it_again_works(
    dying_daemon: DyingDaemon, tiny_model: TinyModelFactory
) -> None:
    daemon = dying_daemon("before:register_blob")
    path = tiny_model("u")
    result = daemon.invoke("create", "uploaded", "-f", str(path))
    assert result.exit_code == 3, result.output
    assert (
        "connection to the daemon was lost during create; "
        "the model 'uploaded' was not created; run the command again" in result.stderr
    )
    assert "uploaded:latest" not in listed(daemon)
    again = daemon.invoke("create", "uploaded", "-f", str(path))  # the restarted daemon
    assert again.exit_code == 0, again.output
    assert "uploaded:latest" in listed(daemon)


@pytest.mark.parametrize(("hook", "code"), [("after:copy", 0), ("before:copy", 3)])
def test_cp_says_whether_the_copy_exists(
    dying_daemon: DyingDaemon, tiny_model: TinyModelFactory, hook: str, code: int
) -> None:
    daemon = dying_daemon(hook)
    assert daemon.invoke("create", "orig", "-f", str(tiny_model("o"))).exit_code == 0
    result = daemon.invoke("cp", "orig", "dup")
    assert result.exit_code == code, result.output
    assert "connection to the daemon was lost during cp" in result.stderr
    if code == 0:
        assert "the model 'dup' exists now (copied from 'orig')" in result.stderr
        assert "copied 'orig' to 'dup'" in result.stdout
        assert "dup:latest" in listed(daemon)
    else:
        assert "the model 'dup' was not copied; run the command again" in result.stderr
        assert result.stdout == ""
        assert "dup:latest" not in listed(daemon)


@pytest.mark.parametrize(("hook", "code"), [("after:delete", 0), ("before:delete", 3)])
def test_rm_says_whether_the_model_is_gone_and_goes_on_with_the_rest(
    dying_daemon: DyingDaemon, tiny_model: TinyModelFactory, hook: str, code: int
) -> None:
    daemon = dying_daemon(hook)
    for name in ("first", "second"):
        assert daemon.invoke("create", name, "-f", str(tiny_model("r"))).exit_code == 0
    result = daemon.invoke("rm", "first", "second")
    assert result.exit_code == code, result.output
    assert "connection to the daemon was lost during rm" in result.stderr
    assert "deleted 'second'" in result.stdout  # deleted by the restarted daemon
    if code == 0:
        assert "the model 'first' is gone now (deleted)" in result.stderr
        assert "deleted 'first'" in result.stdout
        assert "first:latest" not in listed(daemon)
    else:
        assert "the model 'first' was not deleted; run the command again" in result.stderr
        assert "deleted 'first'" not in result.stdout
        assert "first:latest" in listed(daemon)
    assert "second:latest" not in listed(daemon)


def test_pull_cut_before_the_blob_is_stored_says_rerun_to_resume(
    dying_daemon: DyingDaemon, hub: FakeHub
) -> None:
    daemon = dying_daemon("before:register_blob", HF_ENDPOINT=hub.url)
    result = daemon.invoke("pull", HUB_MODEL)
    assert result.exit_code == 3, result.output
    assert (
        f"connection to the daemon was lost during pull; the pull of '{HUB_MODEL}' "
        "did not finish; run the command again to resume it" in result.stderr
    )
    again = daemon.invoke("pull", HUB_MODEL)
    assert again.exit_code == 0, again.output
    assert "success" in again.stderr
    assert "hf.co/tinyorg/tiny-gguf:latest" in listed(daemon).lower()


def test_pull_that_wrote_its_manifest_before_the_daemon_died_exits_0(
    dying_daemon: DyingDaemon, hub: FakeHub
) -> None:
    daemon = dying_daemon("after:create_model", HF_ENDPOINT=hub.url)
    result = daemon.invoke("pull", HUB_MODEL)
    assert result.exit_code == 0, result.output
    assert f"the model '{HUB_MODEL}' exists now (pulled)" in result.stderr


def test_without_autostart_the_outcome_is_unknown_and_the_exit_code_3(
    dying_daemon: DyingDaemon, tiny_model: TinyModelFactory
) -> None:
    daemon = dying_daemon("after:copy")
    assert daemon.invoke("create", "orig", "-f", str(tiny_model("o"))).exit_code == 0
    result = daemon.invoke("cp", "orig", "dup", LOCALSERVE_NO_AUTOSTART="1")
    assert result.exit_code == 3, result.output
    assert "connection to the daemon was lost during cp" in result.stderr
    assert "Whether 'dup' was copied is unknown" in result.stderr
    assert "started localserve daemon" not in result.stderr


# ---- the judgements, without a daemon ------------------------------------------------------


def test_a_create_is_done_only_when_the_manifest_changed() -> None:
    after = {"x:latest": "new"}
    assert recovery.created("x", {}, after).done
    assert recovery.created("x", {"x:latest": "old"}, after).done
    assert not recovery.created("x", {"x:latest": "new"}, after).done  # unchanged
    assert not recovery.created("x", None, after).done  # may predate it
    assert not recovery.created("y", {}, after).done
    assert "may predate this create" in recovery.created("x", None, after).text


def test_a_copy_is_done_when_the_destination_holds_the_source() -> None:
    assert recovery.copied("a", "b", {"a:latest": "d", "b:latest": "d"}).done
    assert not recovery.copied("a", "b", {"a:latest": "d", "b:latest": "e"}).done
    assert not recovery.copied("a", "b", {"a:latest": "d"}).done


def test_a_delete_is_done_when_the_model_is_gone() -> None:
    assert recovery.deleted("a", {"b:latest": "d"}).done
    assert not recovery.deleted("a", {"a:latest": "d"}).done


def test_an_unfinished_pull_says_it_resumes() -> None:
    outcome = recovery.pulled("m", {"m:latest": "d"}, {"m:latest": "d"})
    assert not outcome.done and "resume" in outcome.text
    assert recovery.pulled("m", {}, {"m:latest": "d"}).done
