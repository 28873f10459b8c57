"""The fleet commands (issue 15): `localserve daemon drain` against a real daemon process,
and `localserve fleet config` against real nodes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from cli_harness import serving
from eventually import eventually
from gguf_factory import write_tiny_gguf
from held_stream import HELD_TOKENS, held_generate

from localserve.names import ModelName
from localserve.store.store import Store


def _store_with(base: Path, **models: str) -> None:
    store = Store(base / "models")
    for name, letter in models.items():
        path = write_tiny_gguf(base / f"{letter}.gguf", letter, context_length=16384)
        store.create_model(ModelName.parse(name), store.import_file(path))


def _answering(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/api/version", timeout=2):
            return True
    except OSError:
        return False


def test_drain_refuses_new_work_finishes_the_held_request_and_the_daemon_exits(
    tmp_path: Path,
) -> None:
    _store_with(tmp_path, tiny="t")
    with serving(tmp_path, LOCALSERVE_NUM_CTX="16384") as daemon:
        held = held_generate(daemon.base_url, "tiny")
        held.first_line()
        started = daemon.invoke("daemon", "drain", "--no-wait", "--timeout", "120")
        assert started.exit_code == 0, started.output
        assert "draining" in started.output and "1 requests in flight" in started.output
        status = daemon.invoke("daemon", "status")
        assert "draining: refusing new inference requests" in status.output
        ps = daemon.invoke("ps")
        assert ps.exit_code == 0 and "the daemon is draining" in ps.output
        refused = daemon.invoke("run", "tiny", "hi")
        assert refused.exit_code == 5, refused.output  # busy: 503
        answer = held.finish()
        assert answer[-1]["done"] is True and answer[-1]["eval_count"] == HELD_TOKENS
        eventually(lambda: not _answering(daemon.base_url), 60, what="the drained daemon exit")
        assert "drained: shutting down" in daemon.log.read_text()


def test_drain_waits_until_the_daemon_has_exited(tmp_path: Path) -> None:
    with serving(tmp_path) as daemon:
        result = daemon.invoke("daemon", "drain", "--timeout", "30")
        assert result.exit_code == 0, result.output
        assert "drained: the daemon has exited" in result.output
        assert not _answering(daemon.base_url)
        again = daemon.invoke("daemon", "drain")
        assert again.exit_code == 3  # nothing to drain: unreachable


def test_fleet_config_writes_a_litellm_config_from_the_nodes(tmp_path: Path) -> None:
    _store_with(tmp_path / "a", tiny="a", other="o")
    _store_with(tmp_path / "b", tiny="b")
    with serving(tmp_path / "a") as first, serving(tmp_path / "b") as second:
        out = tmp_path / "conf" / "litellm.yaml"
        result = first.invoke(
            "fleet",
            "config",
            first.base_url,
            second.base_url,
            "--strategy",
            "least-busy",
            "--out",
            str(out),
            "--num-retries",
            "2",
        )
        assert result.exit_code == 0, result.output
        assert "3 deployments of 2 models on 2 nodes" in result.output
        config = yaml.safe_load(out.read_text())
        groups = sorted(d["model_name"] for d in config["model_list"])
        assert groups == ["other", "tiny", "tiny"]
        bases = {d["litellm_params"]["api_base"] for d in config["model_list"]}
        assert bases == {first.base_url + "/v1", second.base_url + "/v1"}
        assert config["router_settings"]["routing_strategy"] == "least-busy"
        assert config["router_settings"]["num_retries"] == 2

        as_json = first.invoke("fleet", "config", first.base_url, "--json")
        assert as_json.exit_code == 0
        assert json.loads(as_json.output)["model_list"][0]["model_name"] == "other"

        bad = first.invoke("fleet", "config", first.base_url, "--strategy", "round-robin")
        assert bad.exit_code == 2 and "least-busy" in bad.output
        path = first.invoke("fleet", "config", first.base_url + "/v1")
        assert path.exit_code == 2 and "invalid node URL" in path.output


def test_fleet_config_names_an_unreachable_node(tmp_path: Path) -> None:
    from cli_harness import free_port

    with serving(tmp_path) as daemon:
        gone = f"http://127.0.0.1:{free_port()}"
        result = daemon.invoke("fleet", "config", daemon.base_url, gone)
        assert result.exit_code == 3
        assert gone in result.output
