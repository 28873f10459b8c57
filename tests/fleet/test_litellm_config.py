"""`localserve fleet config`: the LiteLLM proxy config built from what each node serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from daemon_harness import running_daemon
from gguf_factory import write_tiny_gguf

from localserve.errors import BadRequestError
from localserve.fleet.litellm_config import (
    STRATEGIES,
    FleetOptions,
    Node,
    build_config,
    discover,
    key_envs_for,
    normalize_node_url,
    render_yaml,
    yaml_string,
)

NODE_A = Node("http://10.0.0.5:11435", ("qwen:0.5b", "tiny"), None)
NODE_B = Node("http://10.0.0.6:11435", ("tiny",), ("chat",), key_env="NODE_B_KEY")


def _deployments(config: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [d for d in config["model_list"] if d["model_name"] == name]


def test_every_served_name_is_a_group_with_one_deployment_per_node_that_serves_it() -> None:
    config = build_config([NODE_A, NODE_B])
    tiny = _deployments(config, "tiny")
    assert [d["litellm_params"]["api_base"] for d in tiny] == [
        "http://10.0.0.5:11435/v1",
        "http://10.0.0.6:11435/v1",
    ]
    assert {d["litellm_params"]["model"] for d in tiny} == {"openai/tiny"}
    assert [d["litellm_params"]["api_key"] for d in tiny] == [
        "os.environ/LOCALSERVE_API_KEY",
        "os.environ/NODE_B_KEY",
    ]
    assert len({d["model_info"]["id"] for d in config["model_list"]}) == len(config["model_list"])
    (qwen,) = _deployments(config, "qwen:0.5b")
    assert qwen["litellm_params"]["api_base"] == "http://10.0.0.5:11435/v1"
    (route,) = _deployments(config, "chat")  # a route is served like a model
    assert route["litellm_params"]["api_base"] == "http://10.0.0.6:11435/v1"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_router_settings_carry_the_strategy_retries_cooldown_and_health_checks(
    strategy: str,
) -> None:
    options = FleetOptions(
        strategy=strategy,
        num_retries=5,
        timeout_s=120,
        allowed_fails=2,
        cooldown_s=7.5,
        health_check_interval_s=15,
        master_key_env="PROXY_KEY",
    )
    config = build_config([NODE_A], options)
    assert config["router_settings"] == {
        "routing_strategy": strategy,
        "num_retries": 5,
        "timeout": 120,
        "allowed_fails": 2,
        "cooldown_time": 7.5,
        "enable_health_check_routing": True,
    }
    assert config["general_settings"] == {
        "background_health_checks": True,
        "health_check_interval": 15,
        "master_key": "os.environ/PROXY_KEY",
    }


def test_health_checks_off_leaves_no_health_settings() -> None:
    config = build_config([NODE_A], FleetOptions(health_check_interval_s=0))
    assert config["general_settings"] == {"master_key": "os.environ/LITELLM_MASTER_KEY"}
    assert "enable_health_check_routing" not in config["router_settings"]
    bare = build_config([NODE_A], FleetOptions(health_check_interval_s=0, master_key_env=None))
    assert "general_settings" not in bare


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (FleetOptions(strategy="round-robin"), "strategy"),
        (FleetOptions(num_retries=-1), "num_retries"),
        (FleetOptions(timeout_s=0), "timeout_s"),
        (FleetOptions(cooldown_s=-1), "cooldown_s"),
        (FleetOptions(master_key_env="not a name"), "not a name"),
    ],
)
def test_bad_options_are_refused_naming_the_field(options: FleetOptions, field: str) -> None:
    with pytest.raises(BadRequestError, match=field):
        build_config([NODE_A], options)


def test_nodes_that_serve_nothing_are_an_error() -> None:
    with pytest.raises(BadRequestError, match="serve no models"):
        build_config([Node("http://10.0.0.7:1", ())])


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("http://10.0.0.5:11435/", "http://10.0.0.5:11435"),
        ("  https://node.example  ", "https://node.example"),
        ("http://[::1]:8080", "http://[::1]:8080"),
    ],
)
def test_node_urls_are_normalized(raw: str, expected: str) -> None:
    assert normalize_node_url(raw) == expected


@pytest.mark.parametrize(
    "raw",
    ["10.0.0.5:11435", "ftp://x", "http://x/v1", "http://x?a=1", "http://u:p@x", "http://x:99999"],
)
def test_bad_node_urls_are_refused_naming_the_url(raw: str) -> None:
    with pytest.raises(BadRequestError, match="invalid node URL"):
        normalize_node_url(raw)


def test_key_variables_one_for_all_or_one_per_node() -> None:
    assert key_envs_for(2, []) == ["LOCALSERVE_API_KEY"] * 2
    assert key_envs_for(3, ["K"]) == ["K", "K", "K"]
    assert key_envs_for(2, ["A", "B"]) == ["A", "B"]
    with pytest.raises(BadRequestError, match="2 API key variables for 3 nodes"):
        key_envs_for(3, ["A", "B"])
    with pytest.raises(BadRequestError, match="invalid environment variable"):
        key_envs_for(1, ["1X"])


# ---- YAML ----------------------------------------------------------------------------------


def test_the_yaml_parses_back_to_the_same_config_with_a_comment_header() -> None:
    config = build_config([NODE_A, NODE_B])
    text = render_yaml(config, "written by a test\nsecond line")
    assert text.startswith("# written by a test\n# second line\n")
    assert yaml.safe_load(text) == config


@pytest.mark.parametrize(
    "value",
    [
        "yes",
        "no",
        "null",
        "1e3",
        "0x10",
        "# not a comment",
        "a: b",
        "- item",
        'quote " and \\ backslash',
        "tab\tnew\nline",
        "é ü 中文",
        "emoji \U0001f600",
        "\x7f\x85\u2028",
        "",
    ],
)
def test_strings_survive_yaml_as_strings(value: str) -> None:
    document = {"key": value, "list": [value, {"nested": value}], value or "empty": 1}
    parsed = yaml.safe_load(render_yaml(document))
    assert parsed == document
    assert yaml.safe_load(yaml_string(value)) == value


def test_scalars_lists_and_empty_containers_keep_their_types() -> None:
    document = {
        "int": 3,
        "float": 2.5,
        "true": True,  # a key YAML 1.1 would read as a boolean is quoted
        "none": None,
        "empty_list": [],
        "empty_map": {},
        "lists": [[1, 2], [], {"a": [True, None]}],
    }
    assert yaml.safe_load(render_yaml(document)) == document


def test_non_finite_numbers_and_unknown_types_are_refused() -> None:
    with pytest.raises(ValueError):
        render_yaml({"x": float("nan")})
    with pytest.raises(TypeError):
        render_yaml({"x": object()})


# ---- discovery against real nodes ------------------------------------------------------------


async def test_discover_asks_each_real_node_for_its_models(tmp_path: Path) -> None:
    with (
        running_daemon(tmp_path / "a") as a,
        running_daemon(tmp_path / "b", api_key="secret-b") as b,
    ):
        a.add_model("tiny", write_tiny_gguf(tmp_path / "a.gguf", "a"))
        a.add_model("other:v2", write_tiny_gguf(tmp_path / "o.gguf", "o"))
        b.add_model("tiny", write_tiny_gguf(tmp_path / "b.gguf", "b"))
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("KEY_A", "")
            patch.setenv("KEY_B", "secret-b")
            nodes = await discover([a.base_url, b.base_url + "/"], ["KEY_A", "KEY_B"])
        assert [n.url for n in nodes] == [a.base_url, b.base_url]
        assert nodes[0].models == ("other:v2", "tiny")
        assert nodes[1].models == ("tiny",)
        assert nodes[1].key_env == "KEY_B"
        config = build_config(nodes)
        assert len(_deployments(config, "tiny")) == 2
        assert json.loads(json.dumps(config)) == config


async def test_discover_without_the_node_key_is_a_401(tmp_path: Path) -> None:
    from localserve.client.http import APIError

    with running_daemon(tmp_path, api_key="secret") as node:
        node.add_model("tiny", write_tiny_gguf(tmp_path / "t.gguf", "t"))
        with pytest.MonkeyPatch.context() as patch:
            patch.delenv("NO_SUCH_KEY", raising=False)
            with pytest.raises(APIError) as caught:
                await discover([node.base_url], ["NO_SUCH_KEY"])
    assert caught.value.status == 401


async def test_discover_refuses_the_same_node_twice() -> None:
    with pytest.raises(BadRequestError, match="twice"):
        await discover(["http://10.0.0.5:1", "http://10.0.0.5:1/"])
