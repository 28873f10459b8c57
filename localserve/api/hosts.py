"""The DNS-rebinding guard: parse a `Host` header strictly and decide whether to serve it.

A browser sends the page's own host name in `Host`, so a rebinding attack shows up as a
name the attacker controls (`127.0.0.1.nip.io`, `127.attacker.example`). The header is
parsed as an RFC 3986 authority (`host [":" port]`, no userinfo, nothing after the port):

- an IP literal (`127.0.0.2`, `[::1]`, `[::ffff:127.0.0.1]`) is accepted when it is a
  loopback address (or the non-loopback address the daemon binds);
- a name must equal an allowed name exactly (case-insensitive, one trailing dot
  tolerated): the loopback names, `LOCALSERVE_ALLOWED_HOSTS`, and the bind host when the
  daemon binds a non-loopback one. `*` among the allowed hosts turns the guard off.

    host_allowed("127.0.0.1:11435")                            -> True
    host_allowed("127.0.0.1.nip.io")                           -> False
    host_allowed("box.lan:80", allowed_hosts=["box.lan"])      -> True
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Iterable
from dataclasses import dataclass

from localserve.config import LOOPBACK_NAMES

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# RFC 3986 reg-name: unreserved / pct-encoded / sub-delims (no ":", "@", "[", "]", "/").
_REG_NAME = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})+")
# dec-octet "." dec-octet "." dec-octet "." dec-octet, without leading zeros.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}")
_PORT = re.compile(r":([0-9]{1,5})")
_IPV6_CHARS = frozenset(string.hexdigits + ":.")


@dataclass(frozen=True)
class Authority:
    """A parsed `Host` header: an address or a lower-case name, and the port if given."""

    host: str  # a name: lower case, without a trailing dot; an address: compressed form
    address: IPAddress | None
    port: int | None


def parse_authority(value: str) -> Authority | None:
    """Parse `host[:port]` as RFC 3986 allows it in a Host header; None when malformed."""
    if value.startswith("["):
        end = value.find("]")
        literal, rest = value[1:end], value[end + 1 :]
        address: IPAddress | None = _ipv6(literal) if end > 0 else None
        if address is None:
            return None
    else:
        colon = value.find(":")
        literal, rest = (value, "") if colon < 0 else (value[:colon], value[colon:])
        if not _REG_NAME.fullmatch(literal):
            return None
        literal = literal.lower()
        if len(literal) > 1 and literal.endswith("."):
            literal = literal[:-1]
        address = ipaddress.IPv4Address(literal) if _IPV4.fullmatch(literal) else None
    port = None
    if rest:
        match = _PORT.fullmatch(rest)
        if match is None or int(match[1]) > 65535:
            return None
        port = int(match[1])
    host = address.compressed if address is not None else literal
    return Authority(host=host, address=address, port=port)


def _ipv6(literal: str) -> ipaddress.IPv6Address | None:
    """An IPv6address inside brackets; IPvFuture and zone ids ("%25eth0") are refused."""
    if not literal or not set(literal) <= _IPV6_CHARS:
        return None
    try:
        return ipaddress.IPv6Address(literal)
    except ValueError:
        return None


def is_loopback(address: IPAddress) -> bool:
    """Loopback, including IPv4-mapped IPv6 (`::ffff:127.0.0.1`)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def _allowed_entry(entry: str) -> Authority | None:
    """A configured host (`box.lan`, `10.0.0.5`, `fe80::1`, `[fe80::1]`) as an Authority."""
    text = entry.strip()
    if ":" in text and not text.startswith("["):
        address = _ipv6(text)
        return None if address is None else Authority(address.compressed, address, None)
    parsed = parse_authority(text)
    return None if parsed is None else Authority(parsed.host, parsed.address, None)


def host_allowed(
    header: str | None, *, allowed_hosts: Iterable[str] = (), bind_host: str | None = None
) -> bool:
    """Whether a request with this `Host` header (None: absent or repeated) is served.

    `allowed_hosts` are the configured extra names; `bind_host` is the daemon's bind
    address when that is not loopback (it is then accepted too).
    """
    extra = list(allowed_hosts)
    if "*" in (entry.strip() for entry in extra):
        return True
    if header is None:
        return False
    parsed = parse_authority(header)
    if parsed is None:
        return False
    if parsed.address is not None and is_loopback(parsed.address):
        return True
    entries = [*LOOPBACK_NAMES, *extra, *([bind_host] if bind_host else [])]
    wanted = Authority(parsed.host, parsed.address, None)
    return any(_allowed_entry(entry) == wanted for entry in entries)
