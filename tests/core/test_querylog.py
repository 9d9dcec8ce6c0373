"""Log and errors plugin lines, table-driven against CoreDNS's output."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import dns.message
import dns.rcode
import dns.rrset
import pytest

from nodecache.config.settings import LogSettings
from nodecache.core.querylog import (
    COMBINED_LOG_FORMAT,
    QueryLogEntry,
    answered_line,
    effective_bufsize,
    error_line,
    format_duration,
    format_rcode,
    format_rflags,
    log_class,
    query_line,
    render,
)

# The README example of CoreDNS's log plugin.
EXAMPLE = QueryLogEntry(remote="::1", port=50759, id=29008, qtype=1, qclass=1,
                        qname="example.org.", proto="udp", size=41, do=False, bufsize=4096,
                        rcode=0, rflags=0x81A0, rsize=68, duration=0.037990251)


@pytest.mark.parametrize(("changes", "line"), [
    ({}, '[INFO] [::1]:50759 - 29008 "A IN example.org. udp 41 false 4096" NOERROR '
         'qr,rd,ra,ad 68 0.037990251s'),
    ({"remote": "10.0.0.7", "port": 1234, "qtype": 28, "qname": "Web.Default.SVC.cluster.local.",
      "proto": "tcp", "do": True, "bufsize": 65535, "rcode": 3, "rflags": 0x8583, "rsize": 150,
      "duration": 0.0001},
     '[INFO] 10.0.0.7:1234 - 29008 "AAAA IN web.default.svc.cluster.local. tcp 41 true 65535" '
     "NXDOMAIN qr,aa,rd,ra 150 0.0001s"),
    ({"qtype": 65280, "qclass": 3, "rcode": 2, "rflags": 0x8000, "duration": 2.0},
     '[INFO] [::1]:50759 - 29008 "TYPE65280 CH example.org. udp 41 false 4096" SERVFAIL qr 68 2s'),
    ({"rcode": None, "rflags": None, "rsize": 0, "duration": 0.0},
     '[INFO] [::1]:50759 - 29008 "A IN example.org. udp 41 false 4096" - - 0 0s'),
    ({"rcode": 16, "rflags": 0x8010},
     '[INFO] [::1]:50759 - 29008 "A IN example.org. udp 41 false 4096" BADSIG qr,cd 68 '
     "0.037990251s"),
])
def test_common_log_format(changes: dict[str, object], line: str) -> None:
    assert query_line(replace(EXAMPLE, **changes)) == line


def test_render_common_matches_fast_path() -> None:
    for entry in (EXAMPLE, replace(EXAMPLE, rcode=None, rflags=None, remote="192.0.2.1")):
        assert query_line(entry, "{common}") == query_line(entry)
        assert "[INFO] " + render("{common}", entry) == query_line(entry)


@pytest.mark.parametrize(("template", "expected"), [
    ("{combined}", '[::1]:50759 - 29008 "A IN example.org. udp 41 false 4096" NOERROR '
                   'qr,rd,ra,ad 68 0.037990251s "0"'),
    (COMBINED_LOG_FORMAT, '[::1]:50759 - 29008 "A IN example.org. udp 41 false 4096" NOERROR '
                          'qr,rd,ra,ad 68 0.037990251s "0"'),
    ("{name} {type} {rcode}", "example.org. A NOERROR"),
    ("{>ID} {>Do} {>BUFSIZE} {>rflags}", "29008 false 4096 qr,rd,ra,ad"),
    ("{>nosuch} {nosuch} {when}", "- {nosuch} -"),
    ("{remote} {port} {proto} {size} {rsize}", "[::1] 50759 udp 41 68"),
    ("no placeholders", "no placeholders"),
])
def test_render(template: str, expected: str) -> None:
    assert render(template, EXAMPLE) == expected


def test_render_when_and_units() -> None:
    when = datetime(2024, 3, 5, 7, 8, 9, tzinfo=timezone(timedelta(hours=-7)))
    assert render("{when}", EXAMPLE, when=when) == "05/Mar/2024:07:08:09 -0700"
    assert render("{duration}", EXAMPLE, time_units="ms") == "37.990251ms"
    assert query_line(EXAMPLE, "{when} {name}", when=when) == \
        "[INFO] 05/Mar/2024:07:08:09 -0700 example.org."


@pytest.mark.parametrize(("seconds", "units", "text"), [
    (0.037990251, "s", "0.037990251s"),
    (0.0, "s", "0s"),
    (1.0, "s", "1s"),
    (1.5, "s", "1.5s"),
    (0.00001, "s", "0.00001s"),
    (0.0000000004, "s", "0s"),  # below a nanosecond
    (5e-9, "s", "0.000000005s"),
    (123.456789012, "s", "123.456789012s"),
    (0.25, "ms", "250ms"),
    (0.0012345, "ms", "1.2345ms"),
    (0.0012345, "us", "1234.5\u03bcs"),
    (0.0012345, "ns", "1234500ns"),
    (-0.1, "s", "0s"),
])
def test_format_duration(seconds: float, units: str, text: str) -> None:
    assert format_duration(seconds, units) == text


@pytest.mark.parametrize(("flags", "text"), [
    (0x81A0, "qr,rd,ra,ad"),
    (0x8000 | 0x0400 | 0x0200 | 0x0100 | 0x0080 | 0x0040 | 0x0020 | 0x0010,
     "qr,aa,tc,rd,ra,z,ad,cd"),
    (0x0000, "-"),
    (0x000F, "-"),  # rcode bits are not flags
    (0x7800, "-"),  # neither are opcode bits
    (None, "-"),
])
def test_format_rflags(flags: int | None, text: str) -> None:
    assert format_rflags(flags) == text


@pytest.mark.parametrize(("rcode", "text"), [
    (0, "NOERROR"), (1, "FORMERR"), (2, "SERVFAIL"), (3, "NXDOMAIN"), (4, "NOTIMP"),
    (5, "REFUSED"), (16, "BADSIG"), (23, "BADCOOKIE"), (3841, "3841"), (None, "-"),
])
def test_format_rcode(rcode: int | None, text: str) -> None:
    assert format_rcode(rcode) == text


@pytest.mark.parametrize(("proto", "payload", "size"), [
    ("udp", None, 512), ("udp", 4096, 4096), ("udp", 1232, 1232), ("udp", 100, 512),
    ("tcp", None, 65535), ("tcp", 1232, 65535),
])
def test_effective_bufsize(proto: str, payload: int | None, size: int) -> None:
    assert effective_bufsize(proto, payload) == size


@pytest.mark.parametrize(("rcode", "answers", "soa", "cls"), [
    (0, 1, True, "success"),
    (0, 3, False, "success"),
    (0, 0, True, "denial"),      # NODATA
    (0, 0, False, "success"),    # no answer, no SOA: NoError or a referral
    (3, 0, True, "denial"),      # NXDOMAIN
    (3, 0, False, "error"),      # NXDOMAIN without SOA: OtherError
    (2, 0, True, "error"),       # SERVFAIL
    (4, 0, False, "error"),      # NOTIMP
    (5, 0, False, "error"),      # REFUSED
    (1, 0, False, "error"),      # FORMERR
])
def test_log_class(rcode: int, answers: int, soa: bool, cls: str) -> None:
    assert log_class(rcode, answers, soa_in_authority=soa) == cls


def test_log_class_default_assumes_soa() -> None:
    assert log_class(3, 0) == "denial"
    assert log_class(0, 0) == "denial"


@pytest.mark.parametrize(("args", "line"), [
    ((2, "example.com.", 1, "dial tcp 10.0.0.3:53: i/o timeout"),
     "[ERROR] plugin/errors: 2 example.com. A: dial tcp 10.0.0.3:53: i/o timeout"),
    ((2, "Kube-DNS.kube-system.svc.cluster.local.", 28, TimeoutError("read udp: i/o timeout")),
     "[ERROR] plugin/errors: 2 kube-dns.kube-system.svc.cluster.local. AAAA: "
     "read udp: i/o timeout"),
    ((5, "x.", 33, "concurrent queries exceeded maximum 1000"),
     "[ERROR] plugin/errors: 5 x. SRV: concurrent queries exceeded maximum 1000"),
])
def test_error_line(args: tuple[int, str, int, object], line: str) -> None:
    assert error_line(*args) == line


def _exchange(rcode: int, *, answer: bool = False, soa: bool = False) -> tuple[bytes, bytes]:
    query = dns.message.make_query("Host.Example.", "AAAA", use_edns=0, payload=1232,
                                   want_dnssec=True)
    query.id = 513
    response = dns.message.make_response(query)
    response.set_rcode(rcode)
    if answer:
        response.answer.append(dns.rrset.from_text("host.example.", 30, "IN", "AAAA", "::1"))
    if soa:
        response.authority.append(dns.rrset.from_text("example.", 30, "IN", "SOA",
                                                      "ns. host. 1 2 3 4 30"))
    return query.to_wire(), response.to_wire()


def test_answered_line_reads_both_messages() -> None:
    query, reply = _exchange(dns.rcode.NOERROR, answer=True)
    line = answered_line(LogSettings(), ("10.0.0.7", 40000), query, reply, "udp", 0.0015)
    assert line == (f'[INFO] 10.0.0.7:40000 - 513 "AAAA IN host.example. udp {len(query)} '
                    f'true 1232" NOERROR qr,rd {len(reply)} 0.0015s')


@pytest.mark.parametrize(("rcode", "answer", "soa", "classes", "logged"), [
    (dns.rcode.NXDOMAIN, False, True, {"denial"}, True),
    (dns.rcode.NXDOMAIN, False, True, {"success", "error"}, False),
    (dns.rcode.NXDOMAIN, False, False, {"error"}, True),  # no SOA: not a denial
    (dns.rcode.NOERROR, False, True, {"denial"}, True),  # NODATA
    (dns.rcode.NOERROR, True, False, {"denial", "error"}, False),
    (dns.rcode.SERVFAIL, False, False, {"error"}, True),
])
def test_answered_line_keeps_only_the_classes_asked_for(rcode: int, answer: bool, soa: bool,
                                                        classes: set[str],
                                                        logged: bool) -> None:
    query, reply = _exchange(rcode, answer=answer, soa=soa)
    line = answered_line(LogSettings(classes=frozenset(classes)), None, query, reply, "tcp", 0.1)
    assert (line is not None) == logged
    if line is not None:
        assert line.startswith('[INFO] -:0 - 513 "AAAA IN host.example. tcp ')
        assert " 65535\" " in line  # bufsize over TCP
