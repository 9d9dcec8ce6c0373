"""The header and OPT record of replies, beside node-cache's (:mod:`tests.kit.diffkit`).

node-cache echoes the client's EDNS UDP size in its OPT, whatever it is (CoreDNS's
``SizeAndDo``), and passes an upstream answer's AA bit on while it stores it; what
it serves from store has AA set. Each question goes to both twice: the miss, then
the hit.
"""
from __future__ import annotations

from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import pytest

from tests.kit.diffkit import Pair, Zone, normalise
from tests.kit.fakeupstream import FakeUpstream
from tests.kit.refnodecache import closed_port

ZONE = {"www.example.org. A": ["www.example.org. 300 IN A 192.0.2.10"]}
SOA = "example.org. 60 IN SOA ns.example.org. hostmaster.example.org. 1 7200 3600 86400 60"


def block(upstream: str, *plugins: str) -> str:
    lines = "".join(f"  {plugin}\n" for plugin in plugins)
    return f".:53 {{\n  bind 127.0.0.1\n{lines}  cache 30\n  forward . {upstream}\n}}\n"


#: (UDP size the client sends, DO): below 512, our own 1232, larger.
SIZES = [(100, False), (700, True), (1232, False), (4096, True)]


async def test_opt_echoes_the_clients_size(tmp_path: Path) -> None:
    async with Zone(ZONE, SOA) as up, Pair(block(up.spec), tmp_path) as pair:
        for tcp in (False, True):
            for payload, dnssec in SIZES:
                for name in ("www.example.org.", "nx.example.org."):
                    reply = await pair.check(name, tcp=tcp, payload=payload, dnssec=dnssec)
                    assert reply is not None and reply.payload == payload
        # a version we do not speak: BADVERS (its OPT: size 0, DO clear)
        ours, theirs = await pair.both("www.example.org.", edns=1, payload=4096, dnssec=True)
        assert theirs is not None and theirs.rcode() == dns.rcode.BADVERS
        assert ours is not None and ours.rcode() == dns.rcode.BADVERS
        assert (ours.payload, ours.ednsflags & dns.flags.DO) == (theirs.payload, 0)


async def test_bufsize_lowers_the_size_echoed(tmp_path: Path) -> None:
    """CoreDNS's bufsize lowers the client's size in the query, so the echo is lowered too."""
    async with Zone(ZONE, SOA) as up, Pair(block(up.spec, "bufsize 1100"), tmp_path) as pair:
        for tcp in (False, True):
            for payload, dnssec in SIZES:
                reply = await pair.check("www.example.org.", tcp=tcp, payload=payload, dnssec=dnssec)
                assert reply is not None and reply.payload == min(payload, 1100)


async def test_servfail_without_upstream_opt_echoes_the_size(tmp_path: Path) -> None:
    """Nothing answers: the SERVFAIL both make carries the client's size, no AA."""
    async with Pair(block(f"127.0.0.1:{closed_port()}"), tmp_path) as pair:
        for payload, dnssec in SIZES[:2]:
            reply = await pair.check("www.example.org.", payload=payload, dnssec=dnssec)
            assert reply is not None and reply.rcode() == dns.rcode.SERVFAIL
            assert not reply.flags & dns.flags.AA


@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.SERVFAIL])
async def test_aa_of_an_upstream_answer_without_it(rcode: int, tmp_path: Path) -> None:
    """An upstream that is not authoritative (AA clear), as a recursive resolver."""
    def handler(query: dns.message.Message, proto: str) -> dns.message.Message:
        reply = dns.message.make_response(query)
        reply.set_rcode(rcode)
        return reply

    async with FakeUpstream(handler=handler) as up, \
            Pair(block(f"127.0.0.1:{up.port}"), tmp_path) as pair:
        for stored in (False, True):  # the miss, then the hit
            ours, theirs = await pair.both("x.example.org.", payload=700)
            assert ours is not None and normalise(ours) == normalise(theirs), f"{ours}\n{theirs}"
            assert ours.rcode() == rcode and bool(ours.flags & dns.flags.AA) == stored
