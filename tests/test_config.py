"""Settings: environment over TOML over defaults, host and duration parsing, validation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from localserve.config import (
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_PORT,
    Settings,
    load_settings,
    parse_duration,
    parse_host,
)
from localserve.errors import ConfigError


@pytest.fixture
def no_config(tmp_path: Path) -> Path:
    """A config file path that does not exist (so the user's real file is never read)."""
    return tmp_path / "absent.toml"


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


# ---- layering ------------------------------------------------------------------------------


def test_defaults_apply_without_env_or_file(no_config: Path) -> None:
    settings = load_settings(env={}, config_file=no_config)
    assert settings.host == "127.0.0.1"
    assert settings.port == DEFAULT_PORT
    assert settings.keep_alive_s == DEFAULT_KEEP_ALIVE_S
    assert settings.api_key is None
    assert settings.origins == ()
    assert settings.num_threads >= 1
    settings.validate()


def test_toml_overrides_defaults(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path,
        'host = "127.0.0.1:9000"\n'
        'keep_alive_s = "10m"\n'
        "max_loaded = 3\n"
        'origins = ["http://a.example", "http://b.example"]\n'
        f'models_dir = "{tmp_path / "models"}"\n'
        'max_ram_bytes = "2G"\n',
    )
    settings = load_settings(env={}, config_file=config)
    assert settings.port == 9000
    assert settings.keep_alive_s == 600.0
    assert settings.max_loaded == 3
    assert settings.origins == ("http://a.example", "http://b.example")
    assert settings.models_dir == tmp_path / "models"
    assert settings.max_ram_bytes == 2 * 1024**3


def test_env_overrides_toml(tmp_path: Path) -> None:
    config = write_toml(tmp_path, 'host = "127.0.0.1:9000"\nkeep_alive_s = "10m"\nmax_loaded = 3\n')
    env = {
        "LOCALSERVE_HOST": "127.0.0.1:9100",
        "LOCALSERVE_KEEP_ALIVE": "30s",
        "LOCALSERVE_MODELS": str(tmp_path / "env-models"),
    }
    settings = load_settings(env=env, config_file=config)
    assert settings.port == 9100
    assert settings.keep_alive_s == 30.0
    assert settings.models_dir == tmp_path / "env-models"
    assert settings.max_loaded == 3  # not in env: the file's value stays


def test_empty_env_value_does_not_override_toml(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "max_queue = 7\n")
    settings = load_settings(env={"LOCALSERVE_MAX_QUEUE": ""}, config_file=config)
    assert settings.max_queue == 7


def test_env_lists_are_comma_separated(no_config: Path) -> None:
    env = {"LOCALSERVE_ORIGINS": " http://a.example , ,http://b.example "}
    settings = load_settings(env=env, config_file=no_config)
    assert settings.origins == ("http://a.example", "http://b.example")


def test_env_byte_sizes_accept_units(no_config: Path) -> None:
    env = {"LOCALSERVE_MAX_VRAM": "1.5GB", "LOCALSERVE_RAM_RESERVE": "256M"}
    settings = load_settings(env=env, config_file=no_config)
    assert settings.max_vram_bytes == int(1.5 * 1024**3)
    assert settings.ram_reserve_bytes == 256 * 1024**2


def test_models_dir_expands_the_home_directory(no_config: Path) -> None:
    settings = load_settings(env={"LOCALSERVE_MODELS": "~/m"}, config_file=no_config)
    assert settings.models_dir == Path.home() / "m"


def test_config_file_is_found_through_localserve_config(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "max_queue = 11\n")
    settings = load_settings(env={"LOCALSERVE_CONFIG": str(config)})
    assert settings.max_queue == 11


def test_unknown_toml_key_is_refused(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "max_loded = 3\n")
    with pytest.raises(ConfigError, match="max_loded"):
        load_settings(env={}, config_file=config)


def test_malformed_toml_is_a_config_error(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "max_loaded = = 3\n")
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(env={}, config_file=config)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("LOCALSERVE_MAX_LOADED", "three"),
        ("LOCALSERVE_NUM_PARALLEL", "1.5x"),
        ("LOCALSERVE_MAX_RAM", "lots"),
        ("LOCALSERVE_KEEP_ALIVE", "5 minutes"),
        ("LOCALSERVE_HOST", "127.0.0.1:http"),
    ],
)
def test_malformed_env_values_are_config_errors(no_config: Path, var: str, value: str) -> None:
    with pytest.raises(ConfigError):
        load_settings(env={var: value}, config_file=no_config)


@pytest.mark.parametrize("value", ['"abc"', "70000", "-1"])
def test_malformed_toml_port_is_refused(tmp_path: Path, value: str) -> None:
    config = write_toml(tmp_path, f"port = {value}\n")
    with pytest.raises(ConfigError):
        load_settings(env={}, config_file=config)


def test_toml_port_is_used(tmp_path: Path) -> None:
    config = write_toml(tmp_path, "port = 9001\n")
    assert load_settings(env={}, config_file=config).port == 9001


# ---- LOCALSERVE_HOST -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:11434", ("0.0.0.0", 11434)),
        ("localhost", ("localhost", DEFAULT_PORT)),
        ("example.lan", ("example.lan", DEFAULT_PORT)),
        ("0.0.0.0", ("0.0.0.0", DEFAULT_PORT)),
        (":9000", ("127.0.0.1", 9000)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::1]", ("::1", DEFAULT_PORT)),
        ("::1", ("::1", DEFAULT_PORT)),
        ("[::]:80", ("::", 80)),
        ("http://127.0.0.1:9000", ("127.0.0.1", 9000)),
        ("http://127.0.0.1:9000/", ("127.0.0.1", 9000)),
        ("https://[::1]:9443", ("::1", 9443)),
        ("  localhost:1234  ", ("localhost", 1234)),
    ],
)
def test_host_forms_are_parsed(text: str, expected: tuple[str, int]) -> None:
    assert parse_host(text) == expected


@pytest.mark.parametrize(
    "text", ["127.0.0.1:port", "127.0.0.1:70000", "127.0.0.1:-1", "[::1:8080", "[::1]x"]
)
def test_bad_hosts_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_host(text)


def test_env_host_sets_host_and_port(no_config: Path) -> None:
    settings = load_settings(env={"LOCALSERVE_HOST": "[::1]:8181"}, config_file=no_config)
    assert (settings.host, settings.port) == ("::1", 8181)
    assert settings.base_url == "http://[::1]:8181"


def test_base_url_for_wildcard_bind_points_at_loopback() -> None:
    assert Settings(host="0.0.0.0", port=1).base_url == "http://127.0.0.1:1"


# ---- durations -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("1h30m15s", 5415.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("-1", -1.0),
        ("-1m", -60.0),
        ("0", 0.0),
        ("0s", 0.0),
        ("90", 90.0),
        ("2.5", 2.5),
        (" 10s ", 10.0),
        ("5M", 300.0),
        (42, 42.0),
        (0, 0.0),
        (-1, -1.0),
        (1.5, 1.5),
    ],
)
def test_durations_are_parsed_to_seconds(value: str | float, seconds: float) -> None:
    assert parse_duration(value, default=123.0) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, ""])
def test_missing_duration_takes_the_default(value: str | None) -> None:
    assert parse_duration(value, default=123.0) == 123.0


@pytest.mark.parametrize(
    "value",
    ["abc", "m", "5x", "5m3", "-", "5 m", "1d", "h1", "nan", "inf", True, math.nan, math.inf],
)
def test_invalid_durations_are_config_errors(value: object) -> None:
    with pytest.raises(ConfigError):
        parse_duration(value, default=1.0)  # type: ignore[arg-type]


def test_keep_alive_env_accepts_negative_for_forever(no_config: Path) -> None:
    settings = load_settings(env={"LOCALSERVE_KEEP_ALIVE": "-1"}, config_file=no_config)
    assert settings.keep_alive_s < 0


# ---- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.lan", "127.evil.com"])
def test_non_loopback_bind_without_api_key_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="API_KEY"):
        Settings(host=host).validate()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10"])
def test_non_loopback_bind_with_api_key_is_allowed(host: str) -> None:
    assert Settings(host=host, api_key="secret").validate().api_key == "secret"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_loopback_bind_needs_no_api_key(host: str) -> None:
    assert Settings(host=host).validate().is_loopback


def test_non_loopback_env_without_key_fails_validation(no_config: Path) -> None:
    settings = load_settings(env={"LOCALSERVE_HOST": "0.0.0.0"}, config_file=no_config)
    with pytest.raises(ConfigError):
        settings.validate()
    keyed = load_settings(
        env={"LOCALSERVE_HOST": "0.0.0.0", "LOCALSERVE_API_KEY": "k"}, config_file=no_config
    )
    assert keyed.validate().api_key == "k"


@pytest.mark.parametrize(
    "settings",
    [Settings(num_parallel=0), Settings(max_queue=-1), Settings(max_loaded=-2)],
)
def test_nonsense_limits_are_refused(settings: Settings) -> None:
    with pytest.raises(ConfigError):
        settings.validate()


def test_no_autostart_env_turns_autostart_off(tmp_path: Path) -> None:
    assert load_settings(env={}, config_file=tmp_path / "none.toml").autostart is True
    settings = load_settings(env={"LOCALSERVE_NO_AUTOSTART": "1"}, config_file=tmp_path / "n")
    assert settings.autostart is False
    with pytest.raises(ConfigError):
        load_settings(env={"LOCALSERVE_NO_AUTOSTART": "maybe"}, config_file=tmp_path / "n")


def test_adaptive_threads_are_on_unless_turned_off(tmp_path: Path) -> None:
    none = tmp_path / "none.toml"
    assert load_settings(env={}, config_file=none).adapt_threads is True
    settings = load_settings(env={"LOCALSERVE_ADAPT_THREADS": "0"}, config_file=none)
    assert settings.adapt_threads is False
    with pytest.raises(ConfigError, match="adapt_threads"):
        load_settings(env={"LOCALSERVE_ADAPT_THREADS": "sometimes"}, config_file=none)


@pytest.mark.parametrize(
    ("variable", "setting", "default"),
    [
        ("LOCALSERVE_BATCH_INVARIANT", "batch_invariant", False),
        ("LOCALSERVE_FLASH_ATTN", "flash_attn", True),  # as llama-server's "auto"
    ],
)
def test_decode_modes_have_their_defaults_and_can_be_switched(
    tmp_path: Path, variable: str, setting: str, default: bool
) -> None:
    none = tmp_path / "none.toml"
    assert getattr(load_settings(env={}, config_file=none), setting) is default
    for value, expected in (("1", True), ("0", False)):
        assert getattr(load_settings(env={variable: value}, config_file=none), setting) is expected
    with pytest.raises(ConfigError, match=setting):
        load_settings(env={variable: "often"}, config_file=none)


def test_replica_settings_are_read_and_checked(tmp_path: Path) -> None:
    none = tmp_path / "none.toml"
    settings = load_settings(
        env={
            "LOCALSERVE_MAX_REPLICAS": "3",
            "LOCALSERVE_CPU_REPLICAS": "1",
            "LOCALSERVE_SCALE_WAIT": "5s",
            "LOCALSERVE_SCALE_QUEUE": "2",
        },
        config_file=none,
    ).validate()
    assert (settings.max_replicas, settings.cpu_replicas) == (3, True)
    assert (settings.scale_wait_s, settings.scale_queue) == (5.0, 2)
    with pytest.raises(ConfigError, match="LOCALSERVE_MAX_REPLICAS"):
        load_settings(env={"LOCALSERVE_MAX_REPLICAS": "0"}, config_file=none).validate()
    with pytest.raises(ConfigError, match="LOCALSERVE_MIN_REPLICAS"):
        load_settings(
            env={"LOCALSERVE_MIN_REPLICAS": "3", "LOCALSERVE_MAX_REPLICAS": "2"}, config_file=none
        ).validate()
    with pytest.raises(ConfigError, match="max_replicas"):
        load_settings(env={"LOCALSERVE_MAX_REPLICAS": "two"}, config_file=none)
