"""Keys (hashed storage, revocation, a bad keys file), scopes, and the limiter's buckets."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from localserve.access.keys import KeyLimits, KeyStore, hash_secret
from localserve.access.limits import RateLimiter, reset_text
from localserve.access.scopes import missing_scope, normalize_scopes, route_permission
from localserve.config import load_settings
from localserve.errors import BadRequestError, ConfigError, ConflictError, RateLimitedError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_stored_hashed_and_found_by_its_secret(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    key, secret = store.add("chat", scopes=["model:smollm2*"], limits=KeyLimits(rpm=5))
    text = (tmp_path / "keys.json").read_text()
    assert secret not in text and hash_secret(secret) in text
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    assert KeyStore(tmp_path / "keys.json").find(secret) == key  # a fresh reader
    assert store.find(secret + "x") is None
    store.revoke("chat")
    assert store.find(secret) is None
    again, new_secret = store.add("chat")  # a revoked name is reused
    assert store.find(new_secret) == again and store.find(secret) is None


def test_a_second_active_key_of_one_name_is_a_conflict(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.add("chat")
    with pytest.raises(ConflictError):
        store.add("chat")


def test_a_change_to_the_file_is_seen_by_a_running_reader(tmp_path: Path) -> None:
    daemon_view = KeyStore(tmp_path / "keys.json")
    assert daemon_view.active() == []
    _, secret = KeyStore(tmp_path / "keys.json").add("batch")  # the CLI, --local
    assert daemon_view.find(secret) is not None
    KeyStore(tmp_path / "keys.json").revoke("batch")
    assert daemon_view.find(secret) is None


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"rpm": -1}, "rpm"),
        ({"tpm": "many"}, "tpm"),
        ({"concurrent": 1.5}, "concurrent"),
        ({"scopes": ["root"]}, "root"),
        ({"secret_hash": "short"}, "secret_hash"),
    ],
)
def test_a_bad_keys_file_is_a_config_error_naming_the_key_and_field(
    tmp_path: Path, entry: dict[str, object], named: str
) -> None:
    good = {"name": "chat", "secret_hash": "0" * 64, "scopes": ["read"]}
    (tmp_path / "keys.json").write_text(json.dumps({"keys": [{**good, **entry}]}))
    with pytest.raises(ConfigError, match=named) as caught:
        KeyStore(tmp_path / "keys.json").keys()
    assert "chat" in str(caught.value)


@pytest.mark.parametrize("value", ["-5", "ten", "2.5"])
def test_a_default_limit_that_is_negative_or_not_a_number_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="LOCALSERVE_KEY_TPM"):
        load_settings(env={"LOCALSERVE_KEY_TPM": value})


def test_a_limit_in_the_config_file_is_checked_too(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text("key_concurrent = -2\n")
    with pytest.raises(ConfigError, match="key_concurrent"):
        load_settings(env={}, config_file=config)


def test_scopes_are_validated_and_name_what_is_missing() -> None:
    assert normalize_scopes("read, model:Smol*") == ("read", "model:smol*")
    with pytest.raises(BadRequestError, match="'write'"):
        normalize_scopes(["write"])
    scopes = normalize_scopes(["model:smollm2*", "read"])
    assert missing_scope(scopes, "inference", ["smollm2:135m"]) is None
    assert missing_scope(scopes, "inference", ["llama3.2"]) == "model:llama3.2"
    assert missing_scope(scopes, "admin", []) == "admin"
    assert missing_scope(("admin",), "inference", ["anything"]) is None
    assert missing_scope(("model:*",), "read", []) == "read"


def test_unlisted_routes_are_never_open() -> None:
    assert route_permission("POST", "/api/something-new") == "admin"
    assert route_permission("GET", "/api/something-new") == "read"
    assert route_permission("GET", "/") == "public"
    assert route_permission("POST", "/api/pull") == "admin"
    assert route_permission("POST", "/v1/messages") == "inference"


def test_requests_per_minute_refill_continuously() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limits = KeyLimits(rpm=2)
    first = limiter.admit("k", limits)
    assert first["x-ratelimit-remaining-requests"] == "1"
    limiter.finish("k", limits, 0)
    limiter.admit("k", limits)
    limiter.finish("k", limits, 0)
    with pytest.raises(RateLimitedError) as caught:
        limiter.admit("k", limits)
    assert caught.value.retry_after == 30  # one request back in 60/2 s
    assert caught.value.headers["x-ratelimit-remaining-requests"] == "0"
    assert caught.value.headers["x-ratelimit-reset-requests"] == "1m0s"
    clock.now += 30
    limiter.admit("k", limits)


def test_tokens_are_debited_when_a_request_ends_and_refused_while_negative() -> None:
    clock = Clock()
    limiter = RateLimiter(clock)
    limits = KeyLimits(tpm=100)
    limiter.admit("k", limits)
    limiter.finish("k", limits, 130)  # more than the minute's allowance: allowed, then owed
    with pytest.raises(RateLimitedError, match="100 tokens per minute") as caught:
        limiter.admit("k", limits)
    assert caught.value.headers["x-ratelimit-remaining-tokens"] == "0"
    assert caught.value.retry_after == 19  # (30 + 1) tokens at 100/60 per second
    clock.now += 19
    limiter.admit("k", limits)


def test_concurrent_requests_are_limited_while_they_run() -> None:
    limiter = RateLimiter(Clock())
    limits = KeyLimits(concurrent=1)
    limiter.admit("k", limits)
    with pytest.raises(RateLimitedError, match="1 concurrent"):
        limiter.admit("k", limits)
    limiter.admit("other", limits)  # per key
    limiter.finish("k", limits, 0)
    limiter.admit("k", limits)


def test_reset_times_use_openai_notation() -> None:
    assert [reset_text(s) for s in (0, 1.25, 59.9, 60, 361, 3723)] == [
        "0s",
        "1.2s",
        "59.9s",
        "1m0s",
        "6m1s",
        "1h2m3s",
    ]


def test_a_bad_edit_of_a_running_daemons_keys_keeps_the_last_good_keys(tmp_path: Path) -> None:
    daemon_view = KeyStore(tmp_path / "keys.json")
    _, secret = KeyStore(tmp_path / "keys.json").add("chat")
    assert daemon_view.find(secret) is not None
    (tmp_path / "keys.json").write_text("{ not json")
    assert daemon_view.find(secret) is not None  # logged; the keys before stay in force
    with pytest.raises(ConfigError, match="not valid JSON"):
        KeyStore(tmp_path / "keys.json").keys()  # a fresh start refuses the file
