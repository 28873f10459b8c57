"""`localserve keys add|list|revoke` and `localserve usage` against a real daemon."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_harness import CliDaemon, serving
from gguf_factory import write_tiny_gguf

from localserve.access.keys import KeyStore
from localserve.names import ModelName
from localserve.store.store import Store


@pytest.fixture(scope="module")
def keyed_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliDaemon]:
    """A daemon that requires keys; the CLI uses an admin key (added with the keys file
    before the daemon started, as `keys add --local` does)."""
    base = tmp_path_factory.mktemp("keys")
    store = Store(base / "models")
    digest = store.import_file(write_tiny_gguf(base / "t.gguf", "t"))
    store.create_model(ModelName.parse("tiny"), digest)
    _, admin = KeyStore(base / "keys.json").add("ops", scopes=["admin"])
    with serving(
        base,
        daemon_env={"LOCALSERVE_REQUIRE_KEYS": "1"},
        LOCALSERVE_KEYS_FILE=str(base / "keys.json"),
    ) as daemon:
        daemon.env["LOCALSERVE_API_KEY"] = admin  # the CLI's key (not the daemon's)
        yield daemon


def status_of(daemon: CliDaemon, secret: str, path: str = "/api/generate") -> int:
    body = {"model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 1}}
    request = urllib.request.Request(
        daemon.base_url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {secret}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_add_prints_the_secret_once_and_revoke_stops_it_at_once(keyed_daemon: CliDaemon) -> None:
    added = keyed_daemon.invoke("keys", "add", "chat", "--scope", "model:tiny*", "--rpm", "50")
    assert added.exit_code == 0, added.output
    secret = added.stdout.strip()
    assert secret.startswith("lsk_") and "shown once" in added.stderr
    assert status_of(keyed_daemon, secret) == 200

    listed = keyed_daemon.invoke("keys", "list", "--json")
    assert listed.exit_code == 0, listed.output
    (chat,) = [k for k in json.loads(listed.stdout)["keys"] if k["name"] == "chat"]
    assert chat["scopes"] == ["model:tiny*"] and chat["rpm"] == 50 and chat["active"]
    assert secret not in listed.stdout
    table = keyed_daemon.invoke("keys", "list")
    assert table.stdout.split("\n")[0].split()[:3] == ["NAME", "KEY", "SCOPES"]

    usage = keyed_daemon.invoke("usage", "--since", "1h", "--key", "chat", "--json")
    assert usage.exit_code == 0, usage.output
    (row,) = json.loads(usage.stdout)["usage"]
    assert row["requests"] == 1 and row["generated_tokens"] == 1

    revoked = keyed_daemon.invoke("keys", "revoke", "chat")
    assert revoked.exit_code == 0, revoked.output
    assert status_of(keyed_daemon, secret) == 401


def test_a_key_added_locally_works_without_a_restart(keyed_daemon: CliDaemon) -> None:
    added = keyed_daemon.invoke("keys", "add", "batch", "--local", "--json")
    assert added.exit_code == 0, added.output
    secret = json.loads(added.stdout)["secret"]
    assert status_of(keyed_daemon, secret) == 200  # the daemon re-read the file
    listed = keyed_daemon.invoke("keys", "list", "--local")
    assert any(line.startswith("batch ") for line in listed.stdout.splitlines())
    assert keyed_daemon.invoke("keys", "revoke", "batch", "--local").exit_code == 0
    assert status_of(keyed_daemon, secret) == 401


def test_bad_keys_exit_2_naming_the_problem(keyed_daemon: CliDaemon) -> None:
    bad_scope = keyed_daemon.invoke("keys", "add", "x", "--scope", "everything")
    assert bad_scope.exit_code == 2 and "everything" in bad_scope.output
    negative = keyed_daemon.invoke("keys", "add", "x", "--rpm", "-3")
    assert negative.exit_code == 2 and "--rpm" in negative.output
    bad_since = keyed_daemon.invoke("usage", "--since", "yesterday")
    assert bad_since.exit_code == 2 and "since" in bad_since.output
    missing = keyed_daemon.invoke("keys", "revoke", "nobody")
    assert missing.exit_code == 4 and "nobody" in missing.output


def test_a_config_limit_that_is_not_a_number_is_named_at_start(tmp_path: Path) -> None:
    from cli_harness import cli_env
    from typer.testing import CliRunner

    from localserve.cli.app import app

    env = cli_env(tmp_path, 1, LOCALSERVE_KEY_RPM="lots", LOCALSERVE_NO_AUTOSTART="1")
    result = CliRunner().invoke(app, ["keys", "list"], env=env)
    assert result.exit_code == 2 and "LOCALSERVE_KEY_RPM" in result.output


class RecordingStatus:
    def __init__(self) -> None:
        self.texts: list[str] = []

    def update(self, text: str) -> None:
        self.texts.append(text)


def test_the_spinner_shows_the_place_in_the_queue(tmp_path: Path) -> None:
    """A key's request waiting behind another key's flood (one slot): the spinner's text
    follows its `request_queued` events ("queued (1st)", with an estimate once known)."""
    import asyncio
    import threading

    from daemon_harness import SubscribedClient, running_daemon
    from eventually import eventually, eventually_async

    from localserve.cli.chat import load_progress_shown, ordinal, queued_text

    keys = KeyStore(tmp_path / "keys.json")
    batch, chat = keys.add("batch")[1], keys.add("chat")[1]
    status = RecordingStatus()
    with running_daemon(tmp_path, keys_file=tmp_path / "keys.json") as daemon:
        daemon.add_model("tiny", write_tiny_gguf(tmp_path / "t.gguf", "t"))

        def flood() -> None:
            body = {"model": "tiny", "prompt": "x", "stream": False}
            request = urllib.request.Request(
                daemon.base_url + "/api/generate",
                data=json.dumps({**body, "options": {"num_predict": 500}}).encode(),
                headers={"Authorization": f"Bearer {batch}"},
            )
            urllib.request.urlopen(request, timeout=300).read()

        threads = [threading.Thread(target=flood) for _ in range(6)]
        for thread in threads:
            thread.start()

        def batch_waiting() -> bool:
            return any(r.get("queued_by_key", {}).get("batch", 0) >= 4 for r in daemon.ps())

        eventually(batch_waiting, 60, what="the flood queued")

        async def ask() -> None:
            client = SubscribedClient(daemon.base_url, api_key=chat)
            async with client, load_progress_shown(client, "tiny", status, "tag-1"):
                await eventually_async(lambda: client.subscriptions >= 1, what="subscribed")
                messages = [{"role": "user", "content": "hi"}]
                async for _ in client.chat(
                    "tiny", messages, options={"num_predict": 1}, request_tag="tag-1"
                ):
                    pass

        asyncio.run(ask())
        for thread in threads:
            thread.join(300)
    assert status.texts and status.texts[0].startswith("queued (1st)"), status.texts
    assert [ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st",
        "2nd",
        "3rd",
        "4th",
        "11th",
        "12th",
        "13th",
        "21st",
        "22nd",
    ]
    assert queued_text({"position": 3, "eta_s": 3.6}) == "queued (3rd), ~4 s"
