"""The cache over real loopback sockets: the TTL counting down in loop time, a
truncated upstream answer retried over TCP and never stored, DO forwarded, the ID,
question case, AA/AD and RD echoed on a miss and on a hit.

What is stored for how long, the TTL countdown and the key, table by table with
a fake clock, are in tests/core/test_core_cache.py.
"""
from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import pytest

from nodecache.core import wire
from tests.kit.agentkit import AgentKit, handler_of
from tests.kit.answers import ttls
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, answer_from, loop_errors, make_answer, truncated
from tests.kit.queries import make_query

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")


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


# -- truncation ------------------------------------------------------------------


async def test_truncated_answers_are_retried_over_tcp_and_never_cached() -> None:
    # An upstream that truncates even over TCP: the client sees TC=1, nothing is stored.
    async with FakeUpstream(lambda q, p: truncated(q)) as up, \
            AgentKit(corefile(up.port)) as kit:
        first = await kit.query("a.example.")
        assert first.flags & dns.flags.TC
        assert [q.proto for q in up.queries] == ["udp", "tcp"]
        second = await kit.query("a.example.")
        assert second.flags & dns.flags.TC
        assert [q.proto for q in up.queries] == ["udp", "tcp"] * 2
        assert not handler_of(kit).index


# -- DO --------------------------------------------------------------------------


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


def _question_bytes(data: bytes) -> bytes:
    return data[wire.HEADER_LEN:wire.read_qname(data, wire.HEADER_LEN) + 4]


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
        for hit in (False, True):
            reply = await kit.query("a.example.")
            # node-cache's cache passes the upstream's AA on with the miss, sets it on hits
            assert bool(reply.flags & dns.flags.AA) == hit
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
