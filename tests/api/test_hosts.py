"""The DNS-rebinding guard: strict Host parsing (localserve.api.hosts) and the daemon's 403."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator

import pytest
from daemon_harness import DaemonThread, running_daemon
from hypothesis import assume, given
from hypothesis import strategies as st

from localserve.api.hosts import Authority, host_allowed, parse_authority

BYPASSES = [
    "127.attacker.example:11435",
    "127.attacker.example",
    "127.0.0.1.nip.io",
    "127.0.0.1.nip.io:11435",
    "localhost.evil.com",
    "[::1].evil.com",
    "[::1]evil.com:80",
    "localhost:11435@evil.com",
    "user@localhost",
    "127.0.0.1 evil.com",
    "127.0.0.1\tevil.com",
    " 127.0.0.1",
    "127.0.0.1 ",
    "",
    ":11435",
    "localhost:",
    "localhost:port",
    "localhost:+80",
    "localhost:-1",
    "localhost:65536",
    "localhost:11435:1",
    "localhost:١٢",  # non-ASCII digits
    "localhost/evil",
    "localhost..",
    "127.0.0.01",  # not an RFC 3986 IPv4address, so a name, and not an allowed one
    "127.0.0.1\n",
    "[::1",
    "[::1]]",
    "[127.0.0.1]",
    "[v1.fe]",
    "[fe80::1%25lo]",
    "[::2]",
    "[::ffff:10.0.0.1]",
    "10.0.0.1",
    "0.0.0.0",
    "evil.example",
    "xn--lcalhost-z2a",
]

ACCEPTED = [
    "127.0.0.1",
    "127.0.0.1:11435",
    "127.1.2.3:80",
    "127.255.255.254",
    "localhost",
    "localhost:11435",
    "LOCALHOST:1",
    "LocalHost",
    "localhost.",
    "localhost.:0",
    "[::1]",
    "[::1]:8080",
    "[0:0:0:0:0:0:0:1]",
    "[::ffff:127.0.0.1]",
    "[::FFFF:7f00:1]:11435",
]


@pytest.mark.parametrize("header", BYPASSES)
def test_bypass_forms_are_refused(header: str) -> None:
    assert host_allowed(header) is False


@pytest.mark.parametrize("header", ACCEPTED)
def test_loopback_forms_are_accepted(header: str) -> None:
    assert host_allowed(header) is True


def test_parse_authority_splits_host_and_port() -> None:
    assert parse_authority("LOCALHOST.:80") == Authority("localhost", None, 80)
    parsed = parse_authority("[0:0::1]:8080")
    assert parsed is not None and (parsed.host, parsed.port) == ("::1", 8080)
    parsed = parse_authority("127.0.0.1")
    assert parsed is not None and parsed.address is not None and parsed.port is None
    assert parse_authority("a@b") is None


def test_missing_or_repeated_host_is_refused() -> None:
    assert host_allowed(None) is False


def test_configured_names_match_exactly() -> None:
    allowed = ["box.lan", "10.0.0.7", "[fd00::7]", "fd00::8"]
    for header in ("box.lan", "BOX.LAN:8080", "box.lan.", "10.0.0.7:1", "[fd00::7]", "[fd00::8]:9"):
        assert host_allowed(header, allowed_hosts=allowed), header
    for header in ("evil.box.lan", "box.lan.evil", "box.lanx", "10.0.0.70", "[fd00::9]"):
        assert not host_allowed(header, allowed_hosts=allowed), header
    assert not host_allowed("box.lan"), "only when configured"


def test_star_accepts_every_host() -> None:
    for header in ("evil.example", "127.0.0.1.nip.io", "a b@c", None):
        assert host_allowed(header, allowed_hosts=["*"])


def test_a_non_loopback_bind_host_is_accepted_too() -> None:
    assert host_allowed("10.0.0.5:11435", bind_host="10.0.0.5")
    assert host_allowed("[fe80::1]:11435", bind_host="fe80::1")
    assert host_allowed("Server.Lan", bind_host="server.lan")
    assert not host_allowed("10.0.0.6:11435", bind_host="10.0.0.5")
    assert not host_allowed("10.0.0.5:11435")


# ---- properties ------------------------------------------------------------------------------

LOOPBACK_PREFIXES = ["127.0.0.1", "127.1.2.3", "localhost", "[::1]", "[::ffff:127.0.0.1]"]
FORBIDDEN_CHARS = ["@", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\xa0", "\u2003", "\u3000"]


@given(
    st.text(max_size=30),
    st.sampled_from(FORBIDDEN_CHARS),
    st.text(max_size=30),
    st.lists(st.sampled_from(["box.lan", "127.0.0.1", "localhost"]), max_size=3),
)
def test_userinfo_or_whitespace_is_always_refused(
    before: str, forbidden: str, after: str, allowed: list[str]
) -> None:
    assert not host_allowed(before + forbidden + after, allowed_hosts=allowed)


@given(
    st.sampled_from(LOOPBACK_PREFIXES),
    # A separator, then a label with a letter: never an IPv4 address, never just "."
    st.from_regex(r"[.\-_~][a-z0-9.\-]*[a-z][a-z0-9.\-]*", fullmatch=True),
    st.one_of(st.none(), st.integers(0, 65535)),
)
def test_a_loopback_prefix_with_a_suffix_is_refused(
    prefix: str, suffix: str, port: int | None
) -> None:
    header = prefix + suffix + ("" if port is None else f":{port}")
    assert not host_allowed(header)


@given(st.ip_addresses(v=4, network="127.0.0.0/8"), st.integers(0, 65535), st.booleans())
def test_any_loopback_ipv4_with_a_valid_port_is_accepted(
    address: object, port: int, mapped: bool
) -> None:
    host = f"[::ffff:{address}]" if mapped else str(address)
    assert host_allowed(f"{host}:{port}")
    assert host_allowed(host)


@given(
    st.one_of(
        st.text(max_size=40),
        st.from_regex(r"[a-z0-9.\[\]:@ -]{0,30}", fullmatch=True),
        st.sampled_from(BYPASSES),
    ),
    st.integers(0, 65535),
)
def test_a_refused_host_stays_refused_with_a_port_appended(header: str, port: int) -> None:
    assume(not host_allowed(header))
    assert not host_allowed(f"{header}:{port}")


@given(st.ip_addresses(v=6))
def test_ipv6_literals_are_accepted_exactly_when_loopback(address: object) -> None:
    import ipaddress

    assert isinstance(address, ipaddress.IPv6Address)
    mapped = address.ipv4_mapped
    expected = address.is_loopback or (mapped is not None and mapped.is_loopback)
    assert host_allowed(f"[{address}]:80") is expected


# ---- through a real daemon ----------------------------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonThread]:
    with running_daemon(tmp_path_factory.mktemp("hosts")) as running:
        yield running


def _get_tags(daemon: DaemonThread, host: str) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.daemon.port, timeout=30)
    try:
        conn.putrequest("GET", "/api/tags", skip_host=True)
        conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type", ""), response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("host", ["127.attacker.example:{port}", "127.0.0.1.nip.io:{port}"])
def test_the_daemon_refuses_a_rebinding_host_with_403_json(daemon: DaemonThread, host: str) -> None:
    status, content_type, body = _get_tags(daemon, host.format(port=daemon.daemon.port))
    assert status == 403
    assert content_type.startswith("application/json")
    assert "not allowed" in json.loads(body)["error"]


def test_the_daemon_serves_a_loopback_host(daemon: DaemonThread) -> None:
    status, _, body = _get_tags(daemon, f"localhost:{daemon.daemon.port}")
    assert status == 200 and json.loads(body) == {"models": []}


def test_repeated_host_headers_are_refused(daemon: DaemonThread) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", daemon.daemon.port, timeout=30)
    try:
        conn.putrequest("GET", "/api/tags", skip_host=True)
        conn.putheader("Host", "127.0.0.1")
        conn.putheader("Host", "evil.example")
        conn.endheaders()
        response = conn.getresponse()
        response.read()
        assert response.status in (400, 403)
    finally:
        conn.close()
