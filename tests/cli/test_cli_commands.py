"""The CLI against a real daemon (`localserve serve` in a subprocess, tiny GGUF models)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_harness import CliDaemon, cli_env, free_port
from eventually import eventually, eventually_async
from typer.testing import CliRunner

from localserve.config import load_settings

# isort: split
from localserve.cli import app as cli
from localserve.cli import repl, store_cmds
from localserve.cli.app import app, run_repl

TinyModelFactory = Callable[..., Path]


def create(cli_daemon: CliDaemon, name: str, path: Path) -> None:
    result = cli_daemon.invoke("create", name, "-f", str(path))
    assert result.exit_code == 0, result.output
    assert "success" in result.stderr


def test_create_from_a_gguf_then_list_shows_it(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory
) -> None:
    path = tiny_model("q")
    create(cli_daemon, "listed", path)

    result = cli_daemon.invoke("list")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(r for r in rows if r.startswith("listed:latest "))
    assert "KB" in row and row.endswith("ago")

    result = cli_daemon.invoke("ls", "--json")
    assert result.exit_code == 0, result.output
    models = json.loads(result.stdout)["models"]
    entry = next(m for m in models if m["name"] == "listed:latest")
    assert entry["size"] == path.stat().st_size
    assert entry["digest"][:12] in row


def test_creating_again_reuses_the_uploaded_blob(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory
) -> None:
    path = tiny_model("r")
    create(cli_daemon, "first-copy", path)
    result = cli_daemon.invoke("create", "second-copy", "-f", str(path))
    assert result.exit_code == 0, result.output
    assert "using existing blob sha256:" in result.stderr


def test_run_with_a_prompt_streams_the_answer(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory
) -> None:
    create(cli_daemon, "answers-b", tiny_model("b"))
    result = cli_daemon.invoke(
        "run", "answers-b", "Say", "something", "--verbose", "--keepalive", "1m"
    )
    assert result.exit_code == 0, result.output
    answer = result.stdout.strip()
    assert answer and set(answer) == {"b"}
    assert "eval rate:" in result.stderr
    for label in ("total duration:", "load duration:", "prompt eval count:", "eval count:"):
        assert label in result.stderr


def test_run_reads_the_prompt_from_stdin(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory
) -> None:
    create(cli_daemon, "answers-c", tiny_model("c"))
    result = cli_daemon.invoke("run", "answers-c", input="hello from a pipe\n")
    assert result.exit_code == 0, result.output
    assert set(result.stdout.strip()) == {"c"}


def test_run_of_an_unknown_model_exits_4_and_suggests_pull(cli_daemon: CliDaemon) -> None:
    result = cli_daemon.invoke("run", "no-such-model", "hi")
    assert result.exit_code == 4
    assert "no-such-model" in result.stderr
    assert "localserve pull no-such-model" in result.stderr
    assert result.stdout == ""


def test_run_with_a_bad_option_value_exits_2(cli_daemon: CliDaemon) -> None:
    assert cli_daemon.invoke("run", "x", "hi", "--keepalive", "soon").exit_code == 2
    assert cli_daemon.invoke("run", "x", "hi", "--format", "yaml").exit_code == 2


def test_ps_shows_a_loaded_model_and_stop_unloads_it(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory
) -> None:
    create(cli_daemon, "loaded", tiny_model("d"))
    assert cli_daemon.invoke("run", "loaded", "hi", "--keepalive", "10m").exit_code == 0

    result = cli_daemon.invoke("ps")
    assert result.exit_code == 0, result.output
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    row = next(r for r in rows if r.startswith("loaded:latest "))
    assert "100% CPU" in row or "GPU" in row
    assert "from now" in row

    models = json.loads(cli_daemon.invoke("ps", "--json").stdout)["models"]
    assert any(m["name"] == "loaded:latest" and m["context_length"] > 0 for m in models)

    assert cli_daemon.invoke("stop", "loaded").exit_code == 0
    eventually(
        lambda: "loaded:latest" not in cli_daemon.invoke("ps").stdout,
        20,
        interval=0.2,
        what="`ps` without the stopped model",
    )
    assert "loaded:latest" not in cli_daemon.invoke("ps").stdout


def test_show_prints_details_and_json(cli_daemon: CliDaemon, tiny_model: TinyModelFactory) -> None:
    path = tiny_model("e", context_length=256)
    result = cli_daemon.invoke("create", "shown", "-f", str(path), "--system", "You are terse.")
    assert result.exit_code == 0, result.output

    result = cli_daemon.invoke("show", "shown")
    assert result.exit_code == 0, result.output
    assert "architecture        llama" in result.stdout
    assert "context length      256" in result.stdout
    assert "quantization        F32" in result.stdout
    assert "You are terse." in result.stdout

    data = json.loads(cli_daemon.invoke("show", "shown", "--json").stdout)
    assert data["details"]["family"] == "llama"
    assert cli_daemon.invoke("show", "shown", "--system").stdout.strip() == "You are terse."
    assert "FROM " in cli_daemon.invoke("show", "shown", "--modelfile").stdout
    assert cli_daemon.invoke("show", "missing-model").exit_code == 4


def test_cp_then_rm_removes_a_model(cli_daemon: CliDaemon, tiny_model: TinyModelFactory) -> None:
    create(cli_daemon, "original", tiny_model("f"))
    result = cli_daemon.invoke("cp", "original", "duplicate")
    assert result.exit_code == 0, result.output
    assert "duplicate:latest" in cli_daemon.invoke("list").stdout

    result = cli_daemon.invoke("rm", "duplicate", "original")
    assert result.exit_code == 0, result.output
    assert "deleted 'duplicate'" in result.stdout
    listing = cli_daemon.invoke("list").stdout
    assert "duplicate:latest" not in listing and "original:latest" not in listing


def test_rm_of_a_missing_model_exits_4_but_removes_the_others(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory
) -> None:
    create(cli_daemon, "doomed", tiny_model("g"))
    result = cli_daemon.invoke("rm", "never-existed", "doomed")
    assert result.exit_code == 4
    assert "deleted 'doomed'" in result.stdout
    assert "doomed:latest" not in cli_daemon.invoke("list").stdout


def test_create_from_a_non_gguf_file_exits_2_with_the_servers_message(
    cli_daemon: CliDaemon, tmp_path: Path
) -> None:
    bogus = tmp_path / "notes.gguf"
    bogus.write_text("this is not a model\n")
    result = cli_daemon.invoke("create", "bogus", "-f", str(bogus))
    assert result.exit_code == 2
    assert "not a GGUF" in result.stderr
    assert "bogus:latest" not in cli_daemon.invoke("list").stdout


def test_create_from_a_missing_file_exits_2(cli_daemon: CliDaemon, tmp_path: Path) -> None:
    result = cli_daemon.invoke("create", "ghost", "-f", str(tmp_path / "absent.gguf"))
    assert result.exit_code == 2


def test_version_reports_client_and_daemon(cli_daemon: CliDaemon) -> None:
    result = cli_daemon.invoke("version")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("localserve version is ")
    assert "client version is " in result.stdout


def test_pull_of_an_unknown_name_fails_with_the_servers_message(cli_daemon: CliDaemon) -> None:
    result = cli_daemon.invoke("pull", "not-in-the-catalog")
    assert result.exit_code == 4
    assert "cannot pull" in result.stderr


def test_unreachable_daemon_exits_3_with_a_clear_message(tmp_path: Path) -> None:
    env = cli_env(tmp_path, free_port(), LOCALSERVE_NO_AUTOSTART="1")
    runner = CliRunner()
    for args in (["list"], ["ps"], ["run", "m", "hi"], ["show", "m"]):
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == 3, (args, result.output)
        assert "could not connect to the localserve daemon" in result.stderr
        assert "localserve daemon start" in result.stderr

    result = runner.invoke(app, ["version"], env=env)  # never autostarts
    assert result.exit_code == 3
    assert "client version is" in result.stdout


def test_daemon_start_status_stop_lifecycle(tmp_path: Path) -> None:
    """`daemon start` runs the real server detached, with a pidfile and a log."""
    pytest.importorskip("localserve.api.app")
    env = cli_env(tmp_path, free_port())
    pidfile = tmp_path / "state" / "localserve.pid"
    runner = CliRunner()

    result = runner.invoke(app, ["daemon", "status"], env=env)
    assert result.exit_code == 3 and "not running" in result.stdout

    result = runner.invoke(app, ["daemon", "start"], env=env)
    assert result.exit_code == 0, result.output
    try:
        pid = int(pidfile.read_text().split()[0])
        assert f"pid {pid}" in result.stdout

        status = runner.invoke(app, ["daemon", "status", "--json"], env=env)
        assert status.exit_code == 0, status.output
        data = json.loads(status.stdout)
        assert data["running"] and data["pid"] == pid and data["version"]

        again = runner.invoke(app, ["daemon", "start"], env=env)
        assert again.exit_code == 0 and "already running" in again.stdout
    finally:
        stopped = runner.invoke(app, ["daemon", "stop"], env=env)
    assert stopped.exit_code == 0, stopped.output
    assert f"stopped localserve daemon (pid {pid})" in stopped.stdout
    assert not pidfile.exists()
    assert "listening on" in (tmp_path / "state" / "localserve.log").read_text()

    result = runner.invoke(app, ["daemon", "stop"], env=env)
    assert result.exit_code == 0 and "not running" in result.stdout


def test_commands_start_the_daemon_when_nothing_answers(tmp_path: Path) -> None:
    pytest.importorskip("localserve.api.app")
    env = cli_env(tmp_path, free_port())
    runner = CliRunner()
    result = runner.invoke(app, ["list"], env=env)
    try:
        assert result.exit_code == 0, result.output
        assert "started localserve daemon" in result.stderr
        assert result.stdout.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    finally:
        runner.invoke(app, ["daemon", "stop"], env=env)


def test_serve_refuses_a_non_loopback_bind_without_an_api_key(tmp_path: Path) -> None:
    env = cli_env(tmp_path, free_port())
    env["LOCALSERVE_HOST"] = "0.0.0.0:1"
    result = CliRunner().invoke(app, ["serve"], env=env)
    assert result.exit_code == 2
    assert "LOCALSERVE_API_KEY" in result.stderr


def test_interactive_session_keeps_history_and_handles_commands(
    cli_daemon: CliDaemon,
    tiny_model: TinyModelFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    create(cli_daemon, "chatty", tiny_model("h"))
    typed = iter(
        [
            "/set parameter num_predict 3",
            "/set parameter colour red",
            "/set system Be brief.",
            "/show info",
            "first question",
            '"""',
            "a second",
            'multi-line question"""',
            "/clear",
            "/bye",
        ]
    )
    monkeypatch.setattr("builtins.input", lambda prompt="": next(typed))
    settings = load_settings(env={**cli_daemon.env, "LOCALSERVE_STATE_DIR": str(tmp_path)})
    conversation = repl.Conversation()
    seen: list[list[dict[str, str]]] = []
    original = repl.Conversation.chat_messages

    def spy(self: repl.Conversation, text: str) -> list[dict[str, str]]:
        messages = original(self, text)
        seen.append(messages)
        return messages

    monkeypatch.setattr(repl.Conversation, "chat_messages", spy)
    run_repl(settings, "chatty", conversation, None)
    out = capsys.readouterr().out

    assert "Set parameter 'num_predict' to '3'" in out
    assert "unknown parameter 'colour'" in out
    assert "architecture        llama" in out
    assert "hhh\n" in out  # num_predict 3 reached the daemon
    assert "Cleared session context" in out
    assert conversation.options == {"num_predict": 3}
    assert conversation.messages == []  # /clear
    # The second turn carried the system message and the first exchange.
    assert [m["role"] for m in seen[1]] == ["system", "user", "assistant", "user"]
    assert seen[1][-1]["content"] == "a second\nmulti-line question"
    assert (tmp_path / "history").exists()


def test_ctrl_c_exits_130(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    async def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(store_cmds, "need_daemon", lambda settings: None)
    monkeypatch.setattr(store_cmds, "pull_with_progress", interrupted)
    result = CliRunner().invoke(app, ["pull", "some-model"], env=cli_env(tmp_path, free_port()))
    assert result.exit_code == 130


def test_pin_keeps_a_model_forever_and_unpin_lets_it_expire(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory
) -> None:
    create(cli_daemon, "pinned", tiny_model("p"))
    result = cli_daemon.invoke("pin", "pinned")
    assert result.exit_code == 0, result.output
    row = next(r for r in cli_daemon.invoke("ps").stdout.splitlines() if r.startswith("pinned"))
    assert row.rstrip().endswith("Forever")
    assert cli_daemon.invoke("unpin", "pinned", "--keepalive", "10m").exit_code == 0
    row = next(r for r in cli_daemon.invoke("ps").stdout.splitlines() if r.startswith("pinned"))
    assert "from now" in row
    assert cli_daemon.invoke("pin", "no-such-model").exit_code == 4


def test_run_smollm2_answers_with_real_text(cli_daemon: CliDaemon, smollm2_path: Path) -> None:
    create(cli_daemon, "smollm2:135m", smollm2_path)
    # A greedy variant, so the answer is the same every run.
    body = {
        "model": "smollm2:greedy",
        "from": "smollm2:135m",
        "stream": False,
        "parameters": {"temperature": 0, "num_predict": 32},
    }
    request = urllib.request.Request(
        cli_daemon.base_url + "/api/create", json.dumps(body).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        assert json.loads(response.read())["status"] == "success"
    result = cli_daemon.invoke(
        "run", "smollm2:greedy", "What is the capital of France? Answer in one word.", "--verbose"
    )
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    assert "eval rate:" in result.stderr


def test_tui_and_top_are_commands_with_readonly_and_refresh() -> None:
    runner = CliRunner()
    for name in ("tui", "top"):
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0
        assert "--readonly" in result.stdout and "--refresh" in result.stdout
    assert runner.invoke(app, ["tui", "--refresh", "0"]).exit_code == 2


class RecordingStatus:
    """Stands in for rich's Status: records what the spinner would show."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def update(self, text: str) -> None:
        self.texts.append(text)


def test_the_load_spinner_shows_the_daemons_load_progress(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory
) -> None:
    from daemon_harness import SubscribedClient

    from localserve.cli.app import load_progress_shown

    create(cli_daemon, "progress", tiny_model("p"))
    create(cli_daemon, "other", tiny_model("o"))
    status = RecordingStatus()

    async def load_both() -> None:
        client = SubscribedClient(cli_daemon.base_url)
        async with client, load_progress_shown(client, "progress", status):
            await eventually_async(
                lambda: client.subscriptions >= 1, what="the spinner's event stream subscribed"
            )
            await client.load("other")  # not ours: the spinner ignores it
            await client.load("progress")
            await eventually_async(
                lambda: status.texts and status.texts[-1] == "", what="the spinner told: loaded"
            )

    asyncio.run(load_both())
    *loading, loaded = status.texts
    assert loaded == "" and loading and loading[-1] == "loading progress 100%"
    assert all(text.startswith("loading progress ") for text in loading)
    percents = [int(text.rsplit(" ", 1)[1].rstrip("%")) for text in loading]
    assert percents == sorted(percents)


def test_shell_completion_offers_installed_model_names(
    cli_daemon: CliDaemon, tiny_model: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(cli_daemon, "complete-me", tiny_model("c"))
    for key, value in cli_daemon.env.items():
        monkeypatch.setenv(key, value)
    assert cli.complete_model_name("complete-") == ["complete-me", "complete-me:latest"]
    assert cli.complete_model_name("no-such-prefix") == []


def test_shell_completion_offers_nothing_and_starts_nothing_without_a_daemon(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    for key, value in cli_env(tmp_path, port).items():
        monkeypatch.setenv(key, value)
    assert cli.complete_model_name("") == []
    assert not (tmp_path / "state" / "localserve.pid").exists()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
