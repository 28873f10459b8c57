"""Settings: `LOCALSERVE_*` environment variables over an optional TOML file over defaults.

This is the only module that reads the environment for localserve's own settings.
"""

from __future__ import annotations

import ipaddress
import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import platformdirs

from localserve.errors import ConfigError

APP_NAME = "localserve"
DEFAULT_PORT = 11435
DEFAULT_KEEP_ALIVE_S = 300.0
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


def parse_duration(value: str | float | int | None, default: float) -> float:
    """Parse an Ollama-style duration into seconds.

    Numbers are seconds; strings may be a bare number or Go-style units ("5m", "1h30m",
    "250ms", "-1"). Negative means forever (returned as a negative number). NaN and
    infinities are refused (Python's float() and json accept them).
    """
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ConfigError(f"invalid duration: {value!r}")
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(f"invalid duration: {value!r}")
        return float(value)
    text = value.strip().lower()
    try:
        number_value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(number_value):
            raise ConfigError(f"invalid duration: {value!r}")
        return number_value
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    sign = -1.0 if text.startswith("-") else 1.0
    rest = text.lstrip("+-")
    total = 0.0
    number = ""
    i = 0
    if not rest:
        raise ConfigError(f"invalid duration: {value!r}")
    while i < len(rest):
        ch = rest[i]
        if ch.isdigit() or ch == ".":
            number += ch
            i += 1
            continue
        unit = ""
        while i < len(rest) and not (rest[i].isdigit() or rest[i] == "."):
            unit += rest[i]
            i += 1
        if not number or unit not in units:
            raise ConfigError(f"invalid duration: {value!r}")
        total += float(number) * units[unit]
        number = ""
    if number:
        raise ConfigError(f"invalid duration: {value!r} (missing unit)")
    return sign * total


def parse_host(value: str) -> tuple[str, int]:
    """Split `host[:port]` (or `http://host:port`) into a bind address and port."""
    text = value.strip()
    for prefix in ("http://", "https://"):
        if text.startswith(prefix):
            text = text[len(prefix) :]
    text = text.rstrip("/")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"invalid host: {value!r}")
        host = text[1:end]
        after = text[end + 1 :]
        if after and not after.startswith(":"):
            raise ConfigError(f"invalid host: {value!r}")
        port_text = after[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    host = host or "127.0.0.1"
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError as exc:
        raise ConfigError(f"invalid port in host {value!r}") from exc
    if not 0 <= port <= 65535:
        raise ConfigError(f"invalid port in host {value!r}")
    return host, port


def _physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


@dataclass(frozen=True)
class Settings:
    """Every tunable of the daemon and its clients, typed and in one place."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    models_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir(APP_NAME)))
    state_dir: Path = field(default_factory=lambda: Path(platformdirs.user_state_dir(APP_NAME)))
    keep_alive_s: float = DEFAULT_KEEP_ALIVE_S
    max_loaded: int = 0
    num_parallel: int = 1
    max_queue: int = 512
    # Replicas (localserve.scheduling.replicas): runners of one model at most; when to add
    # one (requests waited this long, median over 30 s, or this many waited); pin each
    # replica to a CPU set of its own.
    max_replicas: int = 1
    min_replicas: int = 1  # runners started when a model loads (each keeps its keep-alive)
    scale_wait_s: float = 2.0
    scale_queue: int = 4
    cpu_replicas: bool = False
    api_key: str | None = None
    origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    max_body_bytes: int = 32 * 1024 * 1024
    max_blob_bytes: int = 256 * 1024**3
    num_threads: int = field(default_factory=_physical_cores)
    default_num_ctx: int = 4096
    max_ram_bytes: int | None = None
    max_vram_bytes: int | None = None
    ram_reserve_bytes: int = 512 * 1024**2
    vram_reserve_bytes: int = 512 * 1024**2
    load_timeout_s: float = 300.0
    spare_runner: bool = True
    adapt_threads: bool = True  # fewer llama.cpp threads while other programs use cores
    # A request's tokens do not depend on the requests decoded beside it (slower; see
    # localserve.runner.engine).
    batch_invariant: bool = False
    # Flash attention on CPU too, as llama-server's "auto" (see localserve.runner.engine).
    flash_attn: bool = True
    autostart: bool = True  # CLI commands start the daemon when nothing answers
    # -- keys, limits and fair share (issue 16; localserve.access)
    keys_file: Path = field(
        default_factory=lambda: Path(platformdirs.user_config_dir(APP_NAME)) / "keys.json"
    )
    require_keys: bool = False  # loopback requests need a key too
    fair_share: bool = True  # waiting requests served in turn by key (scheduling.fairness)
    key_rpm: int = 0  # default limits of a key that sets none (0: unlimited)
    key_tpm: int = 0
    key_concurrent: int = 0

    @property
    def base_url(self) -> str:
        host = self.host
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host in LOOPBACK_NAMES:
            return True
        try:  # an address, not a name: "127.evil.example" is not loopback
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False

    def validate(self) -> Settings:
        if not self.is_loopback and not self.api_key and not self.require_keys:
            raise ConfigError(
                f"binding to {self.host} (not loopback) requires LOCALSERVE_API_KEY to be set "
                "(or LOCALSERVE_REQUIRE_KEYS=1 with keys from `localserve keys add`)"
            )
        if self.num_parallel < 1:
            raise ConfigError("LOCALSERVE_NUM_PARALLEL must be at least 1")
        if self.max_queue < 0 or self.max_loaded < 0:
            raise ConfigError("LOCALSERVE_MAX_QUEUE and LOCALSERVE_MAX_LOADED must be >= 0")
        if self.max_replicas < 1:
            raise ConfigError("LOCALSERVE_MAX_REPLICAS must be at least 1")
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ConfigError(
                "LOCALSERVE_MIN_REPLICAS must be at least 1 and at most LOCALSERVE_MAX_REPLICAS"
            )
        if self.scale_queue < 1 or self.scale_wait_s < 0:
            raise ConfigError(
                "LOCALSERVE_SCALE_QUEUE must be at least 1 and LOCALSERVE_SCALE_WAIT >= 0"
            )
        return self


def _parse_bytes(text: str) -> int:
    text = text.strip().upper().removesuffix("B")
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    try:
        if text and text[-1] in scale:
            return int(float(text[:-1]) * scale[text[-1]])
        return int(text)
    except ValueError as exc:
        raise ConfigError(f"invalid byte size: {text!r}") from exc


def _parse_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(text)
    return text in ("1", "true", "yes", "on")


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _coerce(name: str, raw: Any) -> Any:
    """Turn one raw setting (from env text or TOML value) into its typed value."""
    try:
        if name in ("keep_alive_s", "load_timeout_s", "scale_wait_s"):
            return parse_duration(raw, DEFAULT_KEEP_ALIVE_S)
        if name in ("max_ram_bytes", "max_vram_bytes", "ram_reserve_bytes", "vram_reserve_bytes"):
            return raw if isinstance(raw, int) else _parse_bytes(str(raw))
        if name in ("max_body_bytes", "max_blob_bytes"):
            return raw if isinstance(raw, int) else _parse_bytes(str(raw))
        if name in (
            "max_loaded",
            "num_parallel",
            "max_queue",
            "num_threads",
            "default_num_ctx",
            "max_replicas",
            "min_replicas",
            "scale_queue",
        ):
            return int(raw)
        if name in KEY_LIMIT_SETTINGS:
            return _non_negative_int(raw)
        if name == "port":
            port = int(raw)
            if not 0 <= port <= 65535:
                raise ValueError(port)
            return port
        if name in ("origins", "allowed_hosts"):
            return tuple(raw) if isinstance(raw, list) else _split_list(str(raw))
        if name in ("models_dir", "state_dir", "keys_file"):
            return Path(str(raw)).expanduser()
        if name == "api_key":
            return str(raw) or None
        if name in (
            "spare_runner",
            "autostart",
            "adapt_threads",
            "batch_invariant",
            "flash_attn",
            "cpu_replicas",
        ):
            return _parse_bool(raw)
        if name in ("require_keys", "fair_share"):
            return _parse_bool(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid value for {_setting_label(name)}: {raw!r}") from exc
    return raw


KEY_LIMIT_SETTINGS = ("key_rpm", "key_tpm", "key_concurrent")


def _non_negative_int(raw: Any) -> int:
    """A whole number >= 0 (`"60"`, `60`); bools, fractions and negatives are refused."""
    if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
        raise ValueError(raw)
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _setting_label(name: str) -> str:
    """A setting as the user wrote it: its environment variable and its TOML name."""
    variables = [var for var, field_name in ENV_VARS.items() if field_name == name]
    return f"{variables[0]} ({name})" if variables else name


# Environment variable -> Settings field.
ENV_VARS: dict[str, str] = {
    "LOCALSERVE_MODELS": "models_dir",
    "LOCALSERVE_STATE_DIR": "state_dir",
    "LOCALSERVE_KEEP_ALIVE": "keep_alive_s",
    "LOCALSERVE_MAX_LOADED": "max_loaded",
    "LOCALSERVE_NUM_PARALLEL": "num_parallel",
    "LOCALSERVE_MAX_QUEUE": "max_queue",
    "LOCALSERVE_MAX_REPLICAS": "max_replicas",
    "LOCALSERVE_MIN_REPLICAS": "min_replicas",
    "LOCALSERVE_SCALE_WAIT": "scale_wait_s",
    "LOCALSERVE_SCALE_QUEUE": "scale_queue",
    "LOCALSERVE_CPU_REPLICAS": "cpu_replicas",
    "LOCALSERVE_API_KEY": "api_key",
    "LOCALSERVE_ORIGINS": "origins",
    "LOCALSERVE_ALLOWED_HOSTS": "allowed_hosts",
    "LOCALSERVE_MAX_BODY": "max_body_bytes",
    "LOCALSERVE_NUM_THREADS": "num_threads",
    "LOCALSERVE_NUM_CTX": "default_num_ctx",
    "LOCALSERVE_MAX_RAM": "max_ram_bytes",
    "LOCALSERVE_MAX_VRAM": "max_vram_bytes",
    "LOCALSERVE_RAM_RESERVE": "ram_reserve_bytes",
    "LOCALSERVE_VRAM_RESERVE": "vram_reserve_bytes",
    "LOCALSERVE_LOAD_TIMEOUT": "load_timeout_s",
    "LOCALSERVE_SPARE_RUNNER": "spare_runner",
    "LOCALSERVE_ADAPT_THREADS": "adapt_threads",
    "LOCALSERVE_BATCH_INVARIANT": "batch_invariant",
    "LOCALSERVE_FLASH_ATTN": "flash_attn",
    "LOCALSERVE_KEYS_FILE": "keys_file",
    "LOCALSERVE_REQUIRE_KEYS": "require_keys",
    "LOCALSERVE_FAIR_SHARE": "fair_share",
    "LOCALSERVE_KEY_RPM": "key_rpm",
    "LOCALSERVE_KEY_TPM": "key_tpm",
    "LOCALSERVE_KEY_CONCURRENT": "key_concurrent",
}


def config_file_path(env: dict[str, str] | None = None) -> Path:
    override = (os.environ if env is None else env).get("LOCALSERVE_CONFIG")
    if override:
        return Path(override).expanduser()
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def load_settings(env: dict[str, str] | None = None, config_file: Path | None = None) -> Settings:
    """Build the settings: environment over the TOML file over defaults."""
    environ = dict(os.environ) if env is None else env
    values: dict[str, Any] = {}
    path = config_file or config_file_path(environ)
    known = {f.name for f in fields(Settings)}
    if path.is_file():
        try:
            data = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
        for key, raw in data.items():
            name = key.lower()
            if name == "host":
                values["host"], values["port"] = parse_host(str(raw))
            elif name in known:
                values[name] = _coerce(name, raw)
            else:
                raise ConfigError(f"unknown setting {key!r} in {path}")
    if environ.get("LOCALSERVE_HOST"):
        values["host"], values["port"] = parse_host(environ["LOCALSERVE_HOST"])
    for var, name in ENV_VARS.items():
        if environ.get(var) not in (None, ""):
            values[name] = _coerce(name, environ[var])
    if environ.get("LOCALSERVE_NO_AUTOSTART") not in (None, ""):
        values["autostart"] = not _coerce("autostart", environ["LOCALSERVE_NO_AUTOSTART"])
    return replace(Settings(), **values)
