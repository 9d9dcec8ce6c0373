"""Text of the ``log`` and ``errors`` plugin lines, as CoreDNS writes them.

Pure formatting: the agent collects the fields of one answered query into a
:class:`QueryLogEntry` and gets back a line; nothing here reads a clock or
writes anywhere. The default is CoreDNS's Common Log Format::

    [INFO] [::1]:50759 - 29008 "A IN example.org. udp 41 false 4096" NOERROR qr,rd,ra,ad 68 0.037990251s

Custom formats use CoreDNS's placeholders (``plugin/pkg/replacer``): ``{remote}``,
``{port}``, ``{type}``, ``{class}``, ``{name}``, ``{proto}``, ``{size}``,
``{rcode}``, ``{rsize}``, ``{duration}``, ``{when}`` and the header ones
``{>id}``, ``{>opcode}``, ``{>do}``, ``{>bufsize}``, ``{>rflags}`` (these are
case-insensitive). ``{common}`` and ``{combined}`` expand to the two stock
formats. An empty value prints as ``-``; so does an unknown ``{>...}``; an unknown
``{...}`` is left as written.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodecache.config.settings import LogSettings
from nodecache.core import wire
from nodecache.core.wire import class_name, name_text, rcode_name, type_name

if TYPE_CHECKING:
    from datetime import datetime

#: CoreDNS ``replacer`` prints this for a placeholder without a value.
EMPTY_VALUE = "-"
COMMON_LOG_FORMAT = ('{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} '
                     '{>bufsize}" {rcode} {>rflags} {rsize} {duration}')
COMBINED_LOG_FORMAT = COMMON_LOG_FORMAT + ' "{>opcode}"'
#: Log classes (``log { class ... }``), CoreDNS ``plugin/pkg/response/classify.go``.
SUCCESS, DENIAL, ERROR = "success", "denial", "error"
_ALL_CLASSES = LogSettings().classes
_TYPE_SOA = 6

# Response header flags in the order CoreDNS prints them (RFC 1035 section 4.1.1,
# RFC 4035 section 3.2 for AD/CD).
_FLAG_NAMES: tuple[tuple[int, str], ...] = (
    (0x8000, "qr"), (0x0400, "aa"), (0x0200, "tc"), (0x0100, "rd"),
    (0x0080, "ra"), (0x0040, "z"), (0x0020, "ad"), (0x0010, "cd"),
)
# miekg/dns names rcode 16 BADSIG (it is BADVERS too, RFC 6891); CoreDNS prints that.
_RCODE_NAMES = {16: "BADSIG"}
#: The largest DNS message, what ``{>bufsize}`` shows for TCP (``edns.Size``).
MAX_MSG_SIZE = 65535  # bytes
#: RFC 1035 UDP limit, the floor of ``{>bufsize}``.
MIN_UDP_SIZE = 512  # bytes
_PLACEHOLDER = re.compile(r"\{(>?)([^{}]*)\}")
_TIME_UNITS = ("s", "ms", "us", "ns")


@dataclass(frozen=True, slots=True)
class QueryLogEntry:
    """What the ``log`` plugin knows about one answered query."""

    #: Client IP address, text form (brackets are added for IPv6).
    remote: str
    #: Client port.
    port: int
    #: DNS message ID of the query.
    id: int
    qtype: int
    qclass: int
    #: Query name, text form with the trailing dot; printed lower-cased.
    qname: str
    #: ``"udp"`` or ``"tcp"``.
    proto: str
    #: Query size, bytes.
    size: int
    #: The DO bit of the query's OPT record.
    do: bool
    #: The EDNS buffer size as CoreDNS reports it; see :func:`effective_bufsize`.
    bufsize: int
    #: Response code, with the EDNS extended bits; ``None`` if nothing was written.
    rcode: int | None
    #: The response's 16-bit header flags word (bytes 2-3 of the message); ``None`` if none.
    rflags: int | None
    #: Response size, bytes.
    rsize: int
    #: Time from receiving the query to writing the answer, s.
    duration: float
    #: Query opcode (``{>opcode}``).
    opcode: int = 0


def effective_bufsize(proto: str, edns_payload: int | None) -> int:
    """``{>bufsize}``: 65535 over TCP; else the EDNS payload size, at least 512.

    :param edns_payload: The query's OPT UDP payload size, ``None`` without EDNS.
    """
    if proto == "tcp":
        return MAX_MSG_SIZE
    return max(MIN_UDP_SIZE, edns_payload or 0)


def format_rflags(flags: int | None) -> str:
    """``qr,aa,tc,rd,ra,z,ad,cd``, those set, in that order; ``-`` for none."""
    if flags is None:
        return EMPTY_VALUE
    return ",".join(name for bit, name in _FLAG_NAMES if flags & bit) or EMPTY_VALUE


def format_rcode(rcode: int | None) -> str:
    """``NOERROR``, ``NXDOMAIN``, ...; the number for an unnamed code; ``-`` for none."""
    if rcode is None:
        return EMPTY_VALUE
    return _RCODE_NAMES.get(rcode) or rcode_name(rcode)


def _shortest_fixed(value: float) -> str:
    # Go's FormatFloat(v, 'f', -1, 64): the shortest digits that round-trip, no exponent.
    from decimal import Decimal  # noqa: PLC0415 - only where a block logs (about 0.5 MB)
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_duration(seconds: float, units: str = "s") -> str:
    """A duration as CoreDNS prints it (``0.037990251s``), at nanosecond precision.

    :param units: ``s`` (the default), ``ms``, ``us`` or ``ns``.
    """
    ns = max(0, round(seconds * 1e9))
    if units == "ns":
        return f"{ns}ns"
    if units == "ms":
        return _shortest_fixed(ns / 1e9 * 1000) + "ms"
    if units == "us":
        return _shortest_fixed(ns / 1e9 * 1000000) + "\u03bcs"
    assert units == "s", f"unknown time unit {units!r}, want one of {_TIME_UNITS}"
    return _shortest_fixed(ns / 1e9) + "s"


def _remote(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


def format_common(entry: QueryLogEntry) -> str:
    """The Common Log Format line, without the ``[INFO] `` prefix."""
    return (f"{_remote(entry.remote)}:{entry.port} - {entry.id} "
            f'"{type_name(entry.qtype)} {class_name(entry.qclass)} '
            f"{entry.qname.lower()} {entry.proto} {entry.size} "
            f'{"true" if entry.do else "false"} {entry.bufsize}" '
            f"{format_rcode(entry.rcode)} {format_rflags(entry.rflags)} {entry.rsize} "
            f"{format_duration(entry.duration)}")


def render(template: str, entry: QueryLogEntry, *, when: datetime | None = None,
           time_units: str = "s") -> str:
    """A custom ``log`` format filled from ``entry``, without the ``[INFO] `` prefix.

    :param when: Time for ``{when}`` (the caller reads the clock); ``-`` if ``None``.
    :param time_units: Units of ``{duration}``: ``s``, ``ms``, ``us`` or ``ns``.
    """
    template = template.replace("{common}", COMMON_LOG_FORMAT).replace(
        "{combined}", COMBINED_LOG_FORMAT)
    values = {
        "remote": _remote(entry.remote),
        "port": str(entry.port),
        "type": type_name(entry.qtype),
        "class": class_name(entry.qclass),
        "name": entry.qname.lower(),
        "proto": entry.proto,
        "size": str(entry.size),
        "rcode": format_rcode(entry.rcode),
        "rsize": str(entry.rsize),
        "duration": format_duration(entry.duration, time_units),
        "when": when.strftime("%d/%b/%Y:%H:%M:%S %z") if when is not None else "",
    }
    header = {
        "id": str(entry.id),
        "opcode": str(entry.opcode),
        "do": "true" if entry.do else "false",
        "bufsize": str(entry.bufsize),
        "rflags": format_rflags(entry.rflags),
    }

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return header.get(match.group(2).lower()) or EMPTY_VALUE
        value = values.get(match.group(2))
        if value is None:
            return match.group(0)
        return value or EMPTY_VALUE

    return _PLACEHOLDER.sub(substitute, template)


def query_line(entry: QueryLogEntry, template: str | None = None, *,
               when: datetime | None = None) -> str:
    """The full ``log`` plugin line: ``[INFO] `` and the formatted entry.

    :param template: A CoreDNS log format; ``None`` (or ``{common}``) is the Common Log Format.
    """
    if template is None or template == "{common}":
        return "[INFO] " + format_common(entry)
    return "[INFO] " + render(template, entry, when=when)


def answered_line(settings: LogSettings | None, addr: object, query: bytes, reply: bytes,
                  proto: str, duration: float) -> str | None:
    """The ``log`` line for one answered query; None when ``log { class }`` leaves it out.

    :param addr: The client's address tuple (anything else prints as ``-``).
    :param proto: ``"udp"`` or ``"tcp"``.
    :param duration: From receiving ``query`` to sending ``reply``, s.
    :raises ClientProtocolError: ``query`` cannot be parsed.
    :raises ValueError: ``reply`` cannot be indexed (class filtering only).
    """
    question = wire.parse_query(query)
    rcode = reply[3] & 0xF if len(reply) >= wire.HEADER_LEN else None
    ancount = wire.read_u16(reply, 6) if len(reply) >= wire.HEADER_LEN else 0
    if settings is not None and rcode is not None and settings.classes != _ALL_CLASSES:
        # NXDOMAIN and NODATA are denials only with an SOA (CoreDNS's Typify).
        soa = ancount == 0 and any(r.rtype == _TYPE_SOA
                                   for r in wire.index_response(reply).authority)
        if log_class(rcode, ancount, soa_in_authority=soa) not in settings.classes:
            return None
    host, port = (addr[0], addr[1]) if isinstance(addr, tuple) else ("-", 0)
    edns = question.edns
    entry = QueryLogEntry(
        remote=host, port=port, id=wire.read_u16(query, 0), qtype=question.qtype,
        qclass=question.qclass, qname=name_text(question.qname), proto=proto,
        size=len(query), do=bool(edns and edns[2]),
        bufsize=effective_bufsize(proto, edns[0] if edns else None),
        rcode=rcode, rflags=wire.read_u16(reply, 2) if len(reply) >= 4 else None,
        rsize=len(reply), duration=duration)
    return query_line(entry, settings.format if settings else None)


def log_class(rcode: int, answer_count: int, *, soa_in_authority: bool = True) -> str:
    """``success``, ``denial`` or ``error``, as ``log { class ... }`` filters.

    Follows CoreDNS ``response.Typify`` then ``Classify``: NOERROR with answers,
    and referrals, are success; NXDOMAIN and NODATA with an SOA in authority are
    denial (RFC 2308 section 2); everything else (SERVFAIL, REFUSED, FORMERR,
    NOTIMP, an NXDOMAIN without SOA) is error. A NOERROR answer with neither
    answers nor SOA is success.

    :param answer_count: Records in the answer section.
    :param soa_in_authority: Whether the authority section holds an SOA record.
    """
    if rcode == wire.NOERROR:
        if answer_count or not soa_in_authority:
            return SUCCESS
        return DENIAL
    if rcode == wire.NXDOMAIN and soa_in_authority:
        return DENIAL
    return ERROR


def error_line(rcode: int, qname: str, qtype: int, error: object) -> str:
    """The ``errors`` plugin line: ``[ERROR] plugin/errors: 2 example.com. A: <error>``.

    :param rcode: The rcode sent (2 for SERVFAIL), printed as a number.
    :param error: The error, printed with ``str()``.
    """
    return (f"[ERROR] plugin/errors: {rcode} {qname.lower()} "
            f"{type_name(qtype)}: {error}")
