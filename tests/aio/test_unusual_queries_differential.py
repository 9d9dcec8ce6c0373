"""Unusual queries, byte for byte, beside node-cache (:mod:`tests.kit.diffkit`).

Each row is a query as bytes; both servers get it over UDP and over TCP,
twice (the miss, then the hit), and their replies must agree on everything
but the ID, TTLs, compression and record order (:func:`diffkit.wire_view`):
RCODE, every header flag (RA too), the counts, the question, the OPT with
its options, and the records. Where nodecache answers otherwise on purpose,
docs/plugins.md says so and why; those rows are not here.
"""
from __future__ import annotations

import struct
from pathlib import Path

from tests.kit.diffkit import Pair, Zone, wire_view
from tests.kit.refnodecache import closed_port

ZONE = {"www.example.org. A": ["www.example.org. 300 IN A 192.0.2.10"],
        "www.example.org. TXT": ['www.example.org. 300 IN TXT "t"']}
SOA = "example.org. 60 IN SOA ns.example.org. hostmaster.example.org. 1 7200 3600 86400 60"
#: How long a query that gets no reply is waited for, s.
DROP_WAIT = 0.5

WWW = b"\x03www\x07example\x03org\x00"
_A_RR = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\xc0\x00\x02\x01"


def opt(size: int = 1232, version: int = 0, do: bool = False, options: bytes = b"",
        zflags: int = 0, ext_rcode: int = 0) -> bytes:
    ttl = ext_rcode << 24 | version << 16 | (0x8000 if do else 0) | zflags
    return b"\x00" + struct.pack("!HHIH", 41, size, ttl, len(options)) + options


def query(flags: int = 0x0100, qtype: int = 1, qclass: int = 1, *, name: bytes = WWW,
          counts: tuple[int, int, int, int] | None = None, rest: bytes | None = None,
          tail: bytes = b"") -> bytes:
    """ID 0x4242; by default one question and our OPT after it (ARCOUNT 1)."""
    rest = opt() if rest is None else rest
    counts = counts or (1, 0, 0, 1 if rest else 0)
    return struct.pack("!HH4H", 0x4242, flags, *counts) + name + struct.pack("!HH", qtype, qclass) \
        + rest + tail


def option(code: int, data: bytes) -> bytes:
    return struct.pack("!HH", code, len(data)) + data


#: The rows: query bytes by what is unusual in them.
ROWS = {
    # opcodes node-cache does not take: NOTIMP, its header alone
    "opcode IQUERY": query(0x0900),
    "opcode STATUS": query(0x1100),
    "opcode 3": query(0x1900),
    "opcode UPDATE": query(0x2800, qtype=6),
    "opcode DSO": query(0x3000),
    "opcode 15, TC AD CD": query(0x7B30),
    # header counts no query has: FORMERR, the header alone
    "QDCOUNT 0": struct.pack("!HH4H", 0x4242, 0x0100, 0, 0, 0, 0),
    "QDCOUNT 2": query(counts=(2, 0, 0, 0), rest=WWW + b"\x00\x01\x00\x01"),
    "ANCOUNT 2": query(counts=(1, 2, 0, 0), rest=_A_RR * 2),
    "ARCOUNT 3": query(counts=(1, 0, 0, 3), rest=_A_RR * 2 + opt()),
    # a question that does not read: FORMERR without it
    "label of 64": query(name=b"\x40" + b"a" * 64 + b"\x00"),
    "name of 256": query(name=(b"\x3f" + b"a" * 63) * 4 + b"\x00"),
    "pointer in question": query(name=b"\xc0\x0c"),
    # what miekg/dns reads past: answered
    "trailing bytes": query(tail=b"\xde\xad"),
    "trailing bytes, no EDNS": query(rest=b"", tail=b"\xde\xad"),
    "ARCOUNT past the end": query(counts=(1, 0, 0, 2)),
    "an answer record": query(counts=(1, 1, 0, 1), rest=_A_RR + opt()),
    "an authority record": query(counts=(1, 0, 1, 1), rest=_A_RR + opt()),
    "an additional A": query(counts=(1, 0, 0, 2), rest=_A_RR + opt()),
    # classes: forwarded as asked
    "class CH": query(qclass=3),
    "class CH TXT, no EDNS": query(qtype=16, qclass=3, rest=b""),
    "class HS": query(qclass=4),
    "class NONE": query(qclass=254),
    "class ANY": query(qclass=255),
    "class 0": query(qclass=0),
    # types
    "type ANY": query(qtype=255),
    "type MAILB": query(qtype=253),
    "type OPT": query(qtype=41),
    "type RRSIG": query(qtype=46),
    "type 0": query(qtype=0),
    "type 65280": query(qtype=65280),
    "type TSIG": query(qtype=250),
    # header bits
    "TC set": query(0x0300),
    "AA set": query(0x0500),
    "Z set": query(0x0140),
    "AD set": query(0x0120),
    "CD set": query(0x0110),
    "RA set": query(0x0180),
    "RD clear": query(0x0000),
    "RCODE 3 in a query": query(0x0103),
    "QR set": query(0x8100),
    "short header": b"\x42\x42\x01\x00\x00",
    # EDNS
    "EDNS version 1": query(rest=opt(version=1)),
    "EDNS version 1, DO, CD": query(0x0110, rest=opt(version=1, do=True)),
    "EDNS size 0": query(rest=opt(size=0)),
    "EDNS Z flags": query(rest=opt(zflags=0x4000)),
    "EDNS extended RCODE in a query": query(rest=opt(ext_rcode=1)),
    "EDNS unknown option": query(rest=opt(options=option(65001, b"abc"))),
    "EDNS client subnet": query(rest=opt(options=option(8, b"\x00\x01\x18\x00\xc0\x00\x02"))),
    "EDNS extended error": query(rest=opt(options=option(15, b"\x00\x00"))),
}


async def _differences(pair: Pair, rows: dict[str, bytes]) -> list[str]:
    found = []
    for label, data in rows.items():
        for tcp in (False, True):
            for attempt in (1, 2):
                timeout = DROP_WAIT if label in ("QR set", "short header") else 3.0
                ours, theirs = await pair.both_raw(data, tcp=tcp, timeout=timeout)
                assert theirs is not None or timeout == DROP_WAIT, f"node-cache: no reply to {label}"
                mine, reference = wire_view(ours), wire_view(theirs)
                if mine != reference:
                    found.append(f"{label} ({'tcp' if tcp else 'udp'}, query {attempt}):\n"
                                 f"  nodecache:  {mine}\n  node-cache: {reference}")
    return found


def block(zone: str, upstream: str) -> str:
    return f"{zone}:53 {{\n  bind 127.0.0.1\n  cache 30\n  forward . {upstream}\n}}\n"


async def test_unusual_queries(tmp_path: Path) -> None:
    async with Zone(ZONE, SOA) as up, Pair(block(".", up.spec), tmp_path) as pair:
        differences = await _differences(pair, ROWS)
    assert not differences, "\n".join(differences)


async def test_errors_of_our_own(tmp_path: Path) -> None:
    """REFUSED outside every zone, SERVFAIL when nothing upstream answers: RA clear."""
    rows = {
        "outside the zone": query(name=b"\x03www\x07example\x03com\x00"),
        "outside the zone, CD, no EDNS": query(0x0110, name=b"\x03www\x07example\x03com\x00",
                                               rest=b""),
        "upstream silent": query(),
        "upstream silent, DO": query(rest=opt(do=True)),
    }
    async with Pair(block("example.org", f"127.0.0.1:{closed_port()}"), tmp_path) as pair:
        differences = await _differences(pair, rows)
    assert not differences, "\n".join(differences)


async def test_a_chaos_template(tmp_path: Path) -> None:
    """A CH question reaches the plugins, as in node-cache: a ``template CH`` answers it."""
    corefile = (".:53 {\n  bind 127.0.0.1\n  template CH TXT version.bind {\n"
                "    answer \"version.bind. 0 CH TXT nodecache\"\n  }\n"
                f"  cache 30\n  forward . 127.0.0.1:{closed_port()}\n}}\n")
    rows = {"version.bind CH TXT": query(qtype=16, qclass=3, name=b"\x07version\x04bind\x00"),
            "version.bind CH TXT, no EDNS": query(qtype=16, qclass=3, rest=b"",
                                                  name=b"\x07version\x04bind\x00")}
    async with Pair(corefile, tmp_path) as pair:
        differences = await _differences(pair, rows)
    assert not differences, "\n".join(differences)
