"""Forwarder over UDP against FakeUpstream on loopback: transport choice,
ID handling, mismatched answers, TC retry, budget."""
from __future__ import annotations

import asyncio
import socket
import time

import dns.message
import dns.rcode
import pytest

from nodecache.config.settings import Upstream
from nodecache.errors import ClientProtocolError, UpstreamError
from tests.kit.fakeupstream import FakeUpstream, answer_from, loop_errors, make_answer  # noqa: F401
from tests.kit.forwarderkit import forwarder, quick
from tests.kit.queries import query_wire

RECORDS = {"a.example. A": "192.0.2.1", "big.example. TXT": ["x" * 200] * 5}


fast = quick(try_timeout=0.2, budget=0.6, health_check=0.05)


async def test_udp_answer_restores_id(loop_errors: list) -> None:
    async with FakeUpstream(records=RECORDS) as up:
        fwd, stats = await forwarder(fast(up.upstream))
        try:
            wire = await fwd.query(query_wire("a.example.", qid=0x1234), tcp=False)
            msg = dns.message.from_wire(wire)
            assert msg.id == 0x1234
            assert msg.answer[0][0].to_text() == "192.0.2.1"
            (got,) = up.queries
            assert got.proto == "udp"
            name = str(up.upstream)
            assert stats.requests[name] == 1
            assert stats.answer_durations()[(name, "NOERROR")].count == 1
        finally:
            await fwd.close()


async def test_udp_fresh_id_and_port_per_query(loop_errors: list) -> None:
    async with FakeUpstream(records=RECORDS) as up:
        fwd, _ = await forwarder(fast(up.upstream))
        try:
            for _ in range(8):
                await fwd.query(query_wire("a.example.", qid=1), tcp=False)
            assert len({q.message.id for q in up.queries}) >= 7
            assert len({q.peer[1] for q in up.queries}) >= 7
        finally:
            await fwd.close()


async def test_udp_rcode_counted(loop_errors: list) -> None:
    async with FakeUpstream(records=RECORDS) as up:
        fwd, stats = await forwarder(fast(up.upstream))
        try:
            msg = dns.message.from_wire(await fwd.query(query_wire("nope.example."), tcp=False))
            assert msg.rcode() == dns.rcode.NXDOMAIN
            assert stats.answer_durations()[(str(up.upstream), "NXDOMAIN")].count == 1
        finally:
            await fwd.close()


async def test_udp_mismatched_answers_discarded(loop_errors: list) -> None:
    def handler(query: dns.message.Message, proto: str) -> list:
        good = make_answer(query, ["192.0.2.7"])
        wrong_id = make_answer(query, ["203.0.113.66"])
        wrong_id.id = (query.id + 1) & 0xFFFF
        other = dns.message.make_query("evil.example.", "A")
        other.id = query.id
        wrong_q = make_answer(other, ["203.0.113.66"])
        wrong_type = dns.message.make_query("a.example.", "AAAA")
        wrong_type.id = query.id
        not_response = query.to_wire()  # QR=0
        return [wrong_id, wrong_q, make_answer(wrong_type), not_response, b"\x00\x01", good]

    async with FakeUpstream(handler) as up:
        fwd, _ = await forwarder(fast(up.upstream))
        try:
            msg = dns.message.from_wire(await fwd.query(query_wire("A.Example."), tcp=False))
            assert msg.answer[0][0].to_text() == "192.0.2.7"
        finally:
            await fwd.close()


async def test_udp_only_mismatches_times_out(loop_errors: list) -> None:
    def handler(query: dns.message.Message, proto: str) -> dns.message.Message:
        bad = make_answer(query, ["203.0.113.66"])
        bad.id ^= 0xFFFF
        return bad

    async with FakeUpstream(handler) as up:
        fwd, _ = await forwarder(fast(up.upstream, max_fails=0))
        try:
            with pytest.raises(UpstreamError):
                await fwd.query(query_wire("a.example."), tcp=False)
        finally:
            await fwd.close()


async def test_truncated_udp_retried_over_tcp(loop_errors: list) -> None:
    async with FakeUpstream(records=RECORDS, truncate_udp=True) as up:
        fwd, _ = await forwarder(fast(up.upstream))
        try:
            msg = dns.message.from_wire(await fwd.query(query_wire("big.example.", "TXT"), tcp=False))
            assert not msg.flags & dns.flags.TC
            assert len(msg.answer[0]) == 1 and len(list(msg.answer[0])[0].strings[0]) == 200
            assert [q.proto for q in up.queries] == ["udp", "tcp"]
        finally:
            await fwd.close()


# (force_tcp, prefer_udp, client tcp, protocol used upstream)
TRANSPORT_CASES = [
    (False, False, False, "udp"),
    (False, False, True, "tcp"),
    (True, False, False, "tcp"),
    (False, True, True, "udp"),
    (True, True, False, "tcp"),          # force_tcp wins
]


@pytest.mark.parametrize("force_tcp,prefer_udp,client_tcp,proto", TRANSPORT_CASES)
async def test_transport_choice(force_tcp: bool, prefer_udp: bool, client_tcp: bool, proto: str,
                                loop_errors: list) -> None:
    async with FakeUpstream(records=RECORDS) as up:
        fwd, _ = await forwarder(fast(up.upstream, force_tcp=force_tcp, prefer_udp=prefer_udp))
        try:
            await fwd.query(query_wire("a.example."), tcp=client_tcp)
            assert [q.proto for q in up.queries] == [proto]
        finally:
            await fwd.close()


async def test_budget_exhausted_raises(loop_errors: list) -> None:
    async with FakeUpstream(lambda q, p: None) as up:
        fwd, stats = await forwarder(fast(up.upstream, try_timeout=0.1, budget=0.35, max_fails=0))
        try:
            start = time.monotonic()
            with pytest.raises(UpstreamError):
                await fwd.query(query_wire("a.example."), tcp=False)
            took = time.monotonic() - start
            assert 0.3 <= took < 0.7
            assert 3 <= len(up.queries) <= 4      # one per try_timeout, within the budget
            assert stats.requests[str(up.upstream)] == len(up.queries)
        finally:
            await fwd.close()


async def test_refused_port_does_not_spin(loop_errors: list) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()                                   # nothing listens: ICMP port unreachable
    fwd, stats = await forwarder(fast(Upstream("127.0.0.1", port), budget=0.3, max_fails=0))
    try:
        with pytest.raises(UpstreamError):
            await fwd.query(query_wire("a.example."), tcp=False)
        assert stats.requests[f"127.0.0.1:{port}"] < 30
    finally:
        await fwd.close()


async def test_ipv6_upstream(loop_errors: list) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        up = await FakeUpstream(records=RECORDS, host="::1").start()
    except OSError:
        pytest.skip("no ::1")
    try:
        fwd, stats = await forwarder(fast(up.upstream))
        try:
            await fwd.query(query_wire("a.example."), tcp=False)
            await fwd.query(query_wire("a.example."), tcp=True)
            assert stats.requests[f"[::1]:{up.port}"] == 2
        finally:
            await fwd.close()
    finally:
        await up.close()


async def test_request_without_question(loop_errors: list) -> None:
    async with FakeUpstream(records=RECORDS) as up:
        fwd, _ = await forwarder(fast(up.upstream))
        try:
            with pytest.raises(ClientProtocolError):
                await fwd.query(query_wire("a.example.")[:12], tcp=False)
        finally:
            await fwd.close()


async def test_many_concurrent_udp(loop_errors: list) -> None:
    async with FakeUpstream(answer_from(RECORDS)) as up:
        fwd, stats = await forwarder(fast(up.upstream, budget=2.0, try_timeout=1.0))
        try:
            names = [f"n{i}.example." for i in range(200)]
            answers = await asyncio.gather(*(fwd.query(query_wire(n, qid=i), tcp=False)
                                             for i, n in enumerate(names)))
            for i, (n, wire) in enumerate(zip(names, answers)):
                msg = dns.message.from_wire(wire)
                assert msg.id == i and msg.question[0].name.to_text() == n
            assert fwd.in_flight == 0
        finally:
            await fwd.close()


async def test_answered_tries_leave_the_timeout_queue(loop_errors: list) -> None:
    # One queue of try deadlines per forwarder: answers, in order, empty it at once.
    async with FakeUpstream(answer_from(RECORDS)) as up:
        fwd, _ = await forwarder(fast(up.upstream, budget=2.0, try_timeout=1.0))
        try:
            for i in range(20):
                await fwd.query(query_wire(f"n{i}.example."), tcp=False)
            assert not fwd._expiry
        finally:
            await fwd.close()


async def test_try_cut_short_by_the_budget_times_out_before_later_tries(
        loop_errors: list) -> None:
    # A's second try ends with its budget, at 1.4 s, before B's first (0.8 + 1.0 s):
    # queued behind B's it would wait for 1.8 s.
    async with FakeUpstream(lambda q, p: None) as up:
        fwd, _ = await forwarder(fast(up.upstream, try_timeout=1.0, budget=1.4, max_fails=0))
        try:
            start = time.monotonic()
            a = asyncio.ensure_future(fwd.query(query_wire("a.example."), tcp=False))
            await asyncio.sleep(0.8)
            b = asyncio.ensure_future(fwd.query(query_wire("b.example."), tcp=False))
            with pytest.raises(UpstreamError):
                await a
            assert 1.3 <= time.monotonic() - start < 1.7
            assert not b.done()
            b.cancel()
        finally:
            await fwd.close()
