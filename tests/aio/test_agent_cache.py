"""The cache over real loopback sockets: TTLs, negative answers, keys, case echo.

Where waiting for a clock would be slow, the listener's handler is driven
directly with an injected ``now`` (loop time plus an offset); the entry it
reads was stored through the real socket path.
"""
from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from nodecache.core.handler import Miss
from tests.kit.agentkit import LOOPBACK, AgentKit, handler_of, negative, rcode_text, ttls
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, answer_from, loop_errors, make_answer, truncated
from tests.kit.queries import make_query

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")


def udp_ttl(reply: bytes) -> int:
    """The TTL of the first answer record, read from the wire."""
    msg = dns.message.from_wire(reply)
    return ttls(msg)[0]


# -- TTL countdown -------------------------------------------------------------


async def test_ttl_counts_down_in_real_time() -> None:
    async with FakeUpstream(answer_from({"a.example. A": "192.0.2.1"}, ttl=10)) as up, \
            AgentKit(corefile(up.port, cache="cache 30")) as kit:
        first = await kit.query("a.example.")
        assert ttls(first) == [10]
        await asyncio.sleep(1.1)
        second = await kit.query("a.example.")
        assert ttls(second) == [9]
        assert second.answer == first.answer  # rdata unchanged
        assert len(up.queries) == 1


# (seconds after storing, expected TTL or None for "a miss again")
COUNTDOWN = [(0.0, 10), (0.5, 10), (1.0, 9), (4.2, 6), (9.9, 1), (10.0, None), (60.0, None)]


async def test_ttl_countdown_with_injected_clock() -> None:
    async with FakeUpstream(answer_from({"a.example. A": "192.0.2.1"}, ttl=10)) as up, \
            AgentKit(corefile(up.port)) as kit:
        loop = asyncio.get_running_loop()
        before = loop.time()
        await kit.query("a.example.")
        after = loop.time()
        handler = handler_of(kit)
        entry = next(iter(handler.index.values()))
        assert before <= entry.stored <= after
        wire = make_query("a.example.", qid=7).to_wire()
        for offset, expected in COUNTDOWN:
            result = handler.handle(wire, entry.stored + offset, 0, (LOOPBACK, 1))
            if expected is None:
                assert isinstance(result, Miss), offset
            else:
                assert isinstance(result, bytes), offset
                assert result[:2] == b"\x00\x07"
                assert udp_ttl(result) == expected, offset


# -- what is stored, and for how long --------------------------------------------

SOA_ZONE = "example."


def _positive(ttl: int):
    return lambda q, proto: make_answer(q, ["192.0.2.1"], ttl=ttl)


def _neg(rcode: int, soa_ttl: int | None, minimum: int = 3600):
    return lambda q, proto: negative(q, rcode=rcode, zone=SOA_ZONE, soa_ttl=soa_ttl,
                                     minimum=minimum)


# (id, cache config, upstream handler, expected rcode, expected TTL on the first reply
#  or None when the answer is not cached)
STORE_CASES = [
    ("positive clamped to max", "cache 30", _positive(300), "NOERROR", 30),
    ("positive under max", "cache 30", _positive(20), "NOERROR", 20),
    ("positive raised to default min 5", "cache 30", _positive(2), "NOERROR", 5),
    ("positive with min 1", "cache {\n success 100 30 1\n }", _positive(2), "NOERROR", 2),
    ("nxdomain SOA minimum wins", "cache 300", _neg(dns.rcode.NXDOMAIN, 60, 10), "NXDOMAIN", 10),
    ("nxdomain SOA ttl wins", "cache 300", _neg(dns.rcode.NXDOMAIN, 8, 100), "NXDOMAIN", 8),
    ("nxdomain clamped to denial max", "cache {\n denial 100 15\n }",
     _neg(dns.rcode.NXDOMAIN, 60, 60), "NXDOMAIN", 15),
    ("nxdomain raised to denial min", "cache 300", _neg(dns.rcode.NXDOMAIN, 1, 1), "NXDOMAIN", 5),
    ("nodata SOA minimum wins", "cache 300", _neg(dns.rcode.NOERROR, 60, 20), "NOERROR", 20),
    ("nodata clamped to denial max", "cache {\n denial 100 15 2\n }",
     _neg(dns.rcode.NOERROR, 3600, 3600), "NOERROR", 15),
    ("nxdomain without SOA not cached", "cache 300", _neg(dns.rcode.NXDOMAIN, None),
     "NXDOMAIN", None),
    ("refused not cached", "cache 300",
     lambda q, proto: make_answer(q, rcode=dns.rcode.REFUSED), "REFUSED", None),
]


@pytest.mark.parametrize("cache,handler,rcode,ttl", [c[1:] for c in STORE_CASES],
                         ids=[c[0] for c in STORE_CASES])
async def test_store_and_ttl(cache: str, handler, rcode: str, ttl: int | None) -> None:
    async with FakeUpstream(handler) as up, AgentKit(corefile(up.port, cache=cache)) as kit:
        first = await kit.query("a.example.")
        second = await kit.query("a.example.")
        assert rcode_text(first) == rcode_text(second) == rcode
        if ttl is None:
            assert len(up.queries) == 2
            return
        assert len(up.queries) == 1
        # Every record carries the one clamped TTL (the SOA of a denial too).
        assert set(ttls(first)) == {ttl}
        assert set(ttls(second)) <= {ttl, ttl - 1}
        if rcode != "NOERROR" or not first.answer:
            assert first.authority and first.authority[0].rdtype == dns.rdatatype.SOA


async def test_servfail_cached_for_servfail_duration() -> None:
    async with FakeUpstream(lambda q, p: make_answer(q, rcode=dns.rcode.SERVFAIL)) as up, \
            AgentKit(corefile(up.port, cache="cache 30 {\n servfail 2s\n }")) as kit:
        first = await kit.query("a.example.")
        second = await kit.query("a.example.")
        assert rcode_text(first) == rcode_text(second) == "SERVFAIL"
        assert len(up.queries) == 1
        handler = handler_of(kit)
        entry = next(iter(handler.index.values()))
        wire = make_query("a.example.").to_wire()
        assert isinstance(handler.handle(wire, entry.stored + 1.9, 0), bytes)
        assert isinstance(handler.handle(wire, entry.stored + 2.0, 0), Miss)


async def test_servfail_zero_disables_caching() -> None:
    async with FakeUpstream(lambda q, p: make_answer(q, rcode=dns.rcode.SERVFAIL)) as up, \
            AgentKit(corefile(up.port, cache="cache 30 {\n servfail 0\n }")) as kit:
        for _ in range(2):
            assert rcode_text(await kit.query("a.example.")) == "SERVFAIL"
        assert len(up.queries) == 2


async def test_truncated_answers_are_never_cached() -> None:
    # An upstream that truncates even over TCP: the client sees TC=1, nothing is stored.
    async with FakeUpstream(lambda q, p: truncated(q)) as up, \
            AgentKit(corefile(up.port)) as kit:
        first = await kit.query("a.example.")
        assert first.flags & dns.flags.TC
        asked = len(up.queries)
        second = await kit.query("a.example.")
        assert second.flags & dns.flags.TC
        assert len(up.queries) > asked
        assert not handler_of(kit).index


# -- the key -------------------------------------------------------------------

# (first query kwargs, second query kwargs, shares the entry?)
KEY_CASES = [
    ("same name other case", dict(name="a.example."), dict(name="A.EXAMPLE."), True),
    ("other qtype", dict(name="a.example."), dict(name="a.example.", rdtype="AAAA"), False),
    ("DO bit", dict(name="a.example."), dict(name="a.example.", dnssec=True), False),
    ("CD bit", dict(name="a.example."), dict(name="a.example.", cd=True), False),
    ("EDNS without DO", dict(name="a.example."), dict(name="a.example.", edns=0), True),
    ("RD clear", dict(name="a.example."), dict(name="a.example.", rd=False), True),
    ("other name", dict(name="a.example."), dict(name="b.example."), False),
]


@pytest.mark.parametrize("first,second,shared", [c[1:] for c in KEY_CASES],
                         ids=[c[0] for c in KEY_CASES])
async def test_cache_key(first: dict, second: dict, shared: bool) -> None:
    records = {"a.example. A": "192.0.2.1", "a.example. AAAA": "2001:db8::1",
               "b.example. A": "192.0.2.2"}
    async with FakeUpstream(records=records) as up, AgentKit(corefile(up.port)) as kit:
        one = await kit.query(first.pop("name"), **first)
        two = await kit.query(second.pop("name"), **second)
        assert one.rcode() == two.rcode() == dns.rcode.NOERROR
        assert len(up.queries) == (1 if shared else 2)


async def test_do_bit_is_forwarded_and_echoed() -> None:
    async with FakeUpstream(records={"a.example. A": "192.0.2.1"}) as up, \
            AgentKit(corefile(up.port)) as kit:
        plain = await kit.query("a.example.")
        secure = await kit.query("a.example.", dnssec=True)
        assert plain.edns == -1
        assert secure.edns == 0 and secure.ednsflags & dns.flags.DO
        upstream_do = [bool(q.message.ednsflags & dns.flags.DO) for q in up.queries]
        assert upstream_do == [False, True]
        # And from the cache.
        again = await kit.query("a.example.", dnssec=True)
        assert again.ednsflags & dns.flags.DO and len(up.queries) == 2


# -- what is echoed --------------------------------------------------------------


def _question_bytes(wire: bytes) -> bytes:
    end = 12
    while wire[end]:
        end += 1 + wire[end]
    return wire[12:end + 5]


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_id_and_question_case_echoed_on_miss_and_hit(tcp: bool) -> None:
    async with FakeUpstream(records={"mixed.example. A": "192.0.2.1"}) as up, \
            AgentKit(corefile(up.port)) as kit:
        for qid, name in [(0x1234, "MiXeD.ExAmPlE."), (0xBEEF, "mIxEd.eXaMpLe."),
                          (0x0001, "mixed.example.")]:
            query = make_query(name, qid=qid).to_wire()
            raw = await (kit.tcp_raw(query) if tcp else kit.udp_raw(query))
            assert raw is not None
            assert raw[:2] == query[:2]
            assert _question_bytes(raw) == _question_bytes(query)
            reply = dns.message.from_wire(raw)
            assert reply.answer[0].name.to_text() == name  # compressed to the echoed question
            assert str(reply.answer[0][0]) == "192.0.2.1"
        assert len(up.queries) == 1


async def test_hit_sets_aa_and_clears_ad_without_do() -> None:
    def handler(q: dns.message.Message, proto: str) -> dns.message.Message:
        resp = make_answer(q, ["192.0.2.1"])
        resp.flags |= dns.flags.AD | dns.flags.RA
        return resp

    async with FakeUpstream(handler) as up, AgentKit(corefile(up.port)) as kit:
        for _ in range(2):
            reply = await kit.query("a.example.")
            assert reply.flags & dns.flags.AA
            assert reply.flags & dns.flags.RA
            assert not reply.flags & dns.flags.AD
        secure = await kit.query("a.example.", dnssec=True)
        assert secure.flags & dns.flags.AD


async def test_rd_echoed_from_client() -> None:
    async with FakeUpstream(records={"a.example. A": "192.0.2.1"}) as up, \
            AgentKit(corefile(up.port)) as kit:
        with_rd = await kit.query("a.example.")
        without = await kit.query("a.example.", rd=False)
        assert with_rd.flags & dns.flags.RD
        assert not without.flags & dns.flags.RD


async def test_capacity_evicts() -> None:
    records = {f"n{i}.example. A": f"192.0.2.{i}" for i in range(1, 6)}
    async with FakeUpstream(records=records) as up, \
            AgentKit(corefile(up.port, cache="cache 30 {\n success 2\n }")) as kit:
        for i in range(1, 6):
            await kit.query(f"n{i}.example.")
        index = handler_of(kit).index
        assert len(index) <= 2
        samples_before = len(up.queries)
        await kit.query("n1.example.")  # evicted first: back to the upstream
        assert len(up.queries) == samples_before + 1

