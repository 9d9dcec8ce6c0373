"""Parsers for the values that appear in Corefile arguments.

Each returns the parsed value or raises ``ValueError`` saying briefly why
the text is not one; callers add the file position, the plugin context and
what was expected (see :mod:`nodecache.config.args`).
"""
from __future__ import annotations

import ipaddress
import math
import re

from nodecache.core import wire
from nodecache.errors import ConfigError

# Go's time.ParseDuration units, in seconds.
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0,
          "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
# time.Duration is an int64 of nanoseconds.
_MAX_DURATION = (2**63 - 1) * 1e-9  # s
# Enough digits for any value that makes sense here, few enough that int()
# never has to guard against huge inputs.
_INT_RE = re.compile(r"[0-9]{1,18}")
# A name whose text needs no escapes, IDNA or '@' (almost every name in a Corefile).
_PLAIN_NAME_RE = re.compile(r"(?:[A-Za-z0-9_*-]{1,63}\.)*[A-Za-z0-9_*-]{1,63}\.?")
_MAX_NAME = 255  # octets in wire form, RFC 1035 section 3.1
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*\.?")


def parse_duration(text: str) -> float:
    """Parse a Go-style duration (``500ms``, ``5s``, ``1m30s``, ``1h``) into seconds.

    As in Go, a unit is required except for ``0``. Negative durations are
    refused: no Corefile setting takes one.

    :raises ConfigError: If ``text`` is not a duration (without a file position).
    """
    try:
        return duration(text)
    except ValueError as exc:
        raise ConfigError(f"expected a duration, found {text!r} ({exc})") from None


def duration(text: str) -> float:
    """:func:`parse_duration`, raising ``ValueError`` with the reason."""
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            if _INT_RE.fullmatch(text):
                raise ValueError("missing unit, as in 5s")
            raise ValueError("durations look like 500ms, 5s or 1m30s")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0:
        raise ValueError("durations look like 500ms, 5s or 1m30s")
    if not math.isfinite(total) or total > _MAX_DURATION:
        raise ValueError("longer than 2562047h")
    return total


def integer(text: str) -> int:
    """A non-negative decimal integer (ASCII digits only, unlike ``int()``)."""
    if not _INT_RE.fullmatch(text):
        raise ValueError("not a decimal integer")
    return int(text)


def zone(text: str) -> tuple[str, ...]:
    """Normalise a zone: lower-case, absolute (``"cluster.local."``).

    A CIDR becomes the reverse zones covering it (CoreDNS does the same):
    ``10.0.0.0/8`` is ``10.in-addr.arpa.``; a prefix between label
    boundaries gives several zones (``10.0.0.0/15`` -> two).
    """
    if "/" in text:
        return _reverse_zones(text)
    if text in ("", "."):
        return (".",)
    if ":" in text:
        # Legal in a DNS label, but here it is a misplaced port or address.
        raise ValueError("a zone name has no ':'")
    try:
        return (domain_name(text),)
    except ValueError:
        raise ValueError("not a valid domain name") from None


def domain_name(text: str) -> str:
    """A domain name as absolute lower-case text (``"Cluster.Local"`` -> ``"cluster.local."``).

    Plain names are checked here; any other text (escapes, non-ASCII, ``@``)
    goes to dnspython, so that only such Corefiles load it.

    :raises ValueError: Not a valid domain name, saying why.
    """
    if _PLAIN_NAME_RE.fullmatch(text) and len(text.rstrip(".")) + 2 <= _MAX_NAME:
        return text.lower() if text.endswith(".") else text.lower() + "."
    import dns.exception  # noqa: PLC0415
    import dns.name  # noqa: PLC0415
    try:
        return dns.name.from_text(text, origin=dns.name.root).to_text().lower()
    except dns.exception.DNSException as exc:
        raise ValueError(str(exc)) from None
    except UnicodeError:
        raise ValueError("not a valid domain name") from None


def _reverse_zones(text: str) -> tuple[str, ...]:
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError("not a domain name nor a CIDR such as 10.0.0.0/8") from None
    # Reverse zones have one label per octet (IPv4) or per nibble (IPv6).
    step = 8 if net.version == 4 else 4
    prefix = -(-net.prefixlen // step) * step
    zones = []
    for sub in net.subnets(new_prefix=prefix):
        labels = sub.network_address.reverse_pointer.split(".")
        # reverse_pointer names the whole address; keep the labels of the prefix.
        suffix = 2  # in-addr.arpa / ip6.arpa
        keep = prefix // step
        zones.append(".".join(labels[len(labels) - suffix - keep:]).lower() + ".")
    return tuple(zones)


def port(text: str) -> int:
    """A TCP/UDP port, 1-65535."""
    if not _INT_RE.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError("a port is a number from 1 to 65535")
    return int(text)


def ip(text: str) -> str:
    """An IPv4 or IPv6 address (an IPv6 scope such as ``%eth0`` is kept), normalised."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(NOT_AN_IP) from None


NOT_AN_IP = "not an IP address"


def split_host_port(text: str) -> tuple[str, str | None]:
    """Split ``host``, ``host:port``, ``[v6]``, ``[v6]:port`` or a bare IPv6 address."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1:]
        if not rest:
            return host, None
        if not rest.startswith(":"):
            raise ValueError("only ':PORT' may follow ']'")
        return host, rest[1:]
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return host, port_text
    return text, None


def listen_address(text: str) -> str:
    """A ``HOST:PORT`` to listen on, as the health/ready/prometheus plugins take.

    HOST may be empty (every address), an IP (IPv6 in brackets) or a host
    name such as ``localhost``. The text is returned unchanged.
    """
    if not text.startswith("[") and text.count(":") > 1:
        raise ValueError("an IPv6 address must be in brackets")
    host, port_text = split_host_port(text)
    if port_text is None:
        raise ValueError("the port is required")
    port(port_text)
    if text.startswith("["):
        try:
            if ipaddress.ip_address(host).version != 6:
                raise ValueError
        except ValueError:
            raise ValueError("only an IPv6 address goes in brackets") from None
    elif host and not _HOSTNAME_RE.fullmatch(host):
        raise ValueError("HOST must be an IP address or a host name")
    return text


def rdtype(text: str) -> int:
    """An RR type mnemonic (``A``, ``AAAA``, ``ANY``, ``TYPE65280``) -> its number."""
    return wire.type_value(text)


def rdclass(text: str) -> int:
    """A class mnemonic (``IN``, ``CH``, ``ANY``) -> its number."""
    return wire.class_value(text)


def rcode(text: str) -> int:
    """An RCODE mnemonic (``NOERROR``, ``NXDOMAIN``) -> its number."""
    return wire.rcode_value(text)
