"""EDNS and UDP size limits over real sockets: OPT echo, BADVERS, DO, TC and the TCP retry."""
from __future__ import annotations

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from nodecache.core.wire import OUR_UDP_PAYLOAD
from tests.kit.agentkit import AgentKit
from tests.kit.answers import rcode_text
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, answer_from, loop_errors, truncated
from tests.kit.queries import make_query

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")

#: Addresses for big.example.: 60 A records, about 1 kB on the wire.
BIG = [f"192.0.2.{i}" for i in range(1, 61)]
#: huge.example.: 300 A records, about 4.8 kB.
HUGE = [f"198.51.{i // 250}.{i % 250}" for i in range(300)]
RECORDS = {"small.example. A": "192.0.2.1", "big.example. A": BIG, "huge.example. A": HUGE}


def sized(query: dns.message.Message, proto: str) -> dns.message.Message | bytes:
    """Answers from RECORDS as a real server would: over UDP, TC=1 when it does not fit."""
    reply = answer_from(RECORDS)(query, proto)
    if proto == "udp":
        try:
            reply.to_wire(max_size=max(query.payload, 512) if query.edns >= 0 else 512)
        except dns.exception.TooBig:
            return truncated(query)
    return reply.to_wire(max_size=65535)  # over TCP: whole, whatever the query's payload


# (name, EDNS payload or None for no OPT, expect TC over UDP); every size limit is in
# tests/core/test_core_handler.py (bufsize), these are the socket paths: a cut reply,
# a reply the upstream cut (retried over TCP) and a datagram over 4 kB
SIZE_CASES = [
    ("big.example.", None, True),  # > 512 without EDNS
    ("huge.example.", 1232, True),
    ("huge.example.", 8192, False),
]


@pytest.mark.parametrize("name,payload,tc", SIZE_CASES)
@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
async def test_udp_answers_fit_the_client_buffer(name: str, payload: int | None, tc: bool,
                                                 warm: bool) -> None:
    async with FakeUpstream(sized) as up, AgentKit(corefile(up.port)) as kit:
        if warm:  # store it first (over TCP, so nothing is truncated on the way)
            await kit.query(name, tcp=True)
        kwargs = {"edns": 0, "payload": payload} if payload is not None else {}
        query = make_query(name, **kwargs)
        raw = await kit.udp_raw(query.to_wire())
        assert raw is not None
        limit = max(payload or 512, 512)
        assert len(raw) <= limit
        reply = dns.message.from_wire(raw)
        assert reply.id == query.id
        assert reply.question == query.question
        assert bool(reply.flags & dns.flags.TC) == tc
        if not warm and name == "huge.example.":  # over our UDP size: the forwarder asked again over TCP
            assert [q.proto for q in up.queries] == ["udp", "tcp"]
        if tc:
            # As many whole A records as fit after the question and OPT (16 bytes each,
            # the owner a pointer to the question), as node-cache sends.
            addresses = [r.address for r in reply.answer[0]]
            assert len(addresses) == (limit - len(query.to_wire())) // 16
            assert set(addresses) <= set(RECORDS[f"{name} A"])
            assert (reply.edns >= 0) == (payload is not None)
            assert payload is None or reply.payload == payload
            # The client's TCP retry gets everything.
            full = await kit.query(name, tcp=True, **kwargs)
            assert not full.flags & dns.flags.TC
            expected = len(RECORDS[f"{name} A"]) if isinstance(RECORDS[f"{name} A"], list) else 1
            assert len(full.answer[0]) == expected
        else:
            assert reply.answer
        # Whatever the client saw, the cache holds the full answer.
        again = await kit.query(name, tcp=True)
        assert not again.flags & dns.flags.TC


# (query kwargs, expected edns version in the reply (-1: no OPT), payload)
OPT_CASES = [
    ("no OPT, none back", {}, -1),
    ("OPT echoed", {"edns": 0, "payload": 4096}, 0),
    ("small payload", {"edns": 0, "payload": 512}, 0),
    ("with DO", {"dnssec": True}, 0),
]


@pytest.mark.parametrize("kwargs,version", [c[1:] for c in OPT_CASES],
                         ids=[c[0] for c in OPT_CASES])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_opt_echoes_the_clients_size(kwargs: dict, version: int, tcp: bool) -> None:
    async with FakeUpstream(sized) as up, AgentKit(corefile(up.port)) as kit:
        for _ in range(2):  # miss, then hit
            reply = await kit.query("small.example.", tcp=tcp, **kwargs)
            assert reply.rcode() == dns.rcode.NOERROR
            assert reply.edns == version
            if version >= 0:
                assert reply.payload == kwargs.get("payload", 1232)  # node-cache's echo
                assert bool(reply.ednsflags & dns.flags.DO) == bool(kwargs.get("dnssec"))
                assert len(reply.additional) == 0  # the OPT is not an additional RR
        assert len(up.queries) == 1


@pytest.mark.parametrize("version", [1, 2, 255])
async def test_unknown_edns_version_gets_badvers(version: int) -> None:
    async with FakeUpstream(sized) as up, AgentKit(corefile(up.port)) as kit:
        query = make_query("small.example.", edns=version)
        for tcp in (False, True):
            reply = await kit.ask(query, tcp=tcp)
            assert reply is not None
            assert reply.id == query.id
            assert reply.rcode() == dns.rcode.BADVERS
            assert rcode_text(reply) == "BADVERS"
            assert reply.edns == 0  # we answer with the version we speak
        assert not up.queries
        # Version 0 still works.
        assert (await kit.query("small.example.", edns=0)).rcode() == dns.rcode.NOERROR


async def test_client_edns_options_go_upstream_and_replies_keep_our_opt() -> None:
    # CoreDNS's forward passes the client's options on; the cache key ignores
    # them, and the reply's OPT is ours (the client's size, no options echoed back).
    subnet = dns.edns.ECSOption("192.0.2.0", 24)
    cookie = dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    async with FakeUpstream(sized) as up, AgentKit(corefile(up.port)) as kit:
        for name, options in (("small.example.", [subnet, cookie]), ("small.example.", [])):
            query = dns.message.make_query(name, "A", use_edns=0, payload=4096, options=options)
            reply = await kit.ask(query)
            assert reply is not None and reply.rcode() == dns.rcode.NOERROR
            assert not reply.options and reply.payload == 4096
        # strict parse: the slow path passes options on too
        query = dns.message.make_query("small.example.", "TXT", use_edns=0, options=[cookie])
        query.flags |= dns.flags.AD
        assert (await kit.ask(query)) is not None
        (first, txt) = up.queries
        assert [o.to_wire() for o in first.message.options] == [subnet.to_wire(), cookie.to_wire()]
        assert first.message.payload == OUR_UDP_PAYLOAD  # the buffer size is ours
        assert [o.otype for o in txt.message.options] == [10]


async def test_edns_options_in_query_do_not_break_hits() -> None:
    # A client sending an EDNS option (a cookie) still gets answered, miss and hit.
    async with FakeUpstream(sized) as up, AgentKit(corefile(up.port)) as kit:
        option = dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05\x06\x07\x08")
        for _ in range(2):
            query = dns.message.make_query("small.example.", "A", use_edns=0, options=[option])
            reply = await kit.ask(query)
            assert reply is not None and reply.rcode() == dns.rcode.NOERROR
            assert reply.answer[0][0].to_text() == "192.0.2.1"
            assert reply.id == query.id
        assert len(up.queries) == 1
        assert up.queries[0].message.question[0].rdtype == dns.rdatatype.A
