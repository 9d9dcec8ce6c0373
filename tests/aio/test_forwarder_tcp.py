"""Forwarder over pooled, pipelined TCP against FakeUpstream on loopback."""
from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import dns.message
import pytest

from nodecache.config.settings import Upstream
from nodecache.errors import UpstreamError
from tests.kit.fakeupstream import (
    CLOSE, RESET, FakeUpstream, RawTCP, answer_from, loop_errors, make_answer,  # noqa: F401
)
from tests.kit.forwarderkit import forwarder, quick
from tests.kit.queries import query_wire

RECORDS = {f"n{i}.example. A": f"192.0.2.{i}" for i in range(1, 60)}
ok = answer_from(RECORDS)


fast = quick(try_timeout=0.3, budget=1.0, health_check=0.05, force_tcp=True)


def address_of(wire: bytes) -> str:
    return dns.message.from_wire(wire).answer[0][0].to_text()


async def test_pipelined_out_of_order_on_one_connection(loop_errors: list) -> None:
    answered: list[str] = []

    async def handler(query: dns.message.Message, proto: str) -> dns.message.Message:
        name = query.question[0].name.to_text()
        i = int(name[1:name.index(".")])
        await asyncio.sleep(0.02 * (6 - i))       # n5 answers first, n1 last
        answered.append(name)
        return ok(query, proto)  # type: ignore[return-value]

    async with FakeUpstream(handler) as up:
        fwd, stats = await forwarder(fast(up.upstream), max_connections=1)
        try:
            names = [f"n{i}.example." for i in range(1, 6)]
            wires = await asyncio.gather(*(fwd.query(query_wire(n, qid=7), tcp=True) for n in names))
            assert [address_of(w) for w in wires] == [f"192.0.2.{i}" for i in range(1, 6)]
            assert all(dns.message.from_wire(w).id == 7 for w in wires)
            assert answered == list(reversed(names))           # really out of order
            assert up.tcp_connections == 1
            assert {q.conn_id for q in up.queries} == {1}
            assert len({q.message.id for q in up.queries}) == 5  # unique IDs on the connection
            assert stats.conn_opened[str(up.upstream)] == 1
            assert stats.conn_reused[str(up.upstream)] == 4
        finally:
            await fwd.close()


async def test_connection_reused(loop_errors: list) -> None:
    async with FakeUpstream(ok) as up:
        fwd, stats = await forwarder(fast(up.upstream))
        try:
            for i in range(1, 6):
                assert address_of(await fwd.query(query_wire(f"n{i}.example."), tcp=True)) \
                    == f"192.0.2.{i}"
            assert up.tcp_connections == 1
            assert stats.conn_opened[str(up.upstream)] == 1
            assert stats.conn_reused[str(up.upstream)] == 4
        finally:
            await fwd.close()


async def test_spreads_over_connections_under_load(loop_errors: list) -> None:
    async def handler(query: dns.message.Message, proto: str) -> Any:
        await asyncio.sleep(0.05)
        return ok(query, proto)

    async with FakeUpstream(handler) as up:
        fwd, _ = await forwarder(fast(up.upstream), max_connections=3, max_in_flight=4)
        try:
            await fwd.query(query_wire("n1.example."), tcp=True)   # one open connection
            await asyncio.gather(*(fwd.query(query_wire(f"n{i}.example."), tcp=True)
                                   for i in range(1, 13)))
            assert 1 < up.tcp_connections <= 3
        finally:
            await fwd.close()


async def test_tcp_mismatched_answers_discarded(loop_errors: list) -> None:
    def handler(query: dns.message.Message, proto: str) -> list:
        wrong_id = make_answer(query, ["203.0.113.66"])
        wrong_id.id ^= 0x8000
        other = dns.message.make_query("evil.example.", "A")
        other.id = query.id
        return [wrong_id, make_answer(other, ["203.0.113.66"]), make_answer(query, ["192.0.2.9"])]

    async with FakeUpstream(handler) as up:
        fwd, _ = await forwarder(fast(up.upstream))
        try:
            assert address_of(await fwd.query(query_wire("n1.example."), tcp=True)) == "192.0.2.9"
            assert up.tcp_connections == 1
        finally:
            await fwd.close()


BAD_STREAMS = [
    RawTCP(b"\x00\x05hello"),                     # frame too short for a header
    RawTCP(b"\x00\x00"),                          # empty frame
    [RawTCP(b"\x00\x40\x12\x34\x81\x80"), CLOSE],  # truncated frame, then EOF
    RESET,                                        # reset before answering
    CLOSE,                                        # clean close before answering
]


@pytest.mark.parametrize("bad", BAD_STREAMS, ids=["short", "empty", "truncated", "reset", "eof"])
async def test_bad_stream_closes_connection_and_retries(bad: Any, loop_errors: list) -> None:
    seen = 0

    def handler(query: dns.message.Message, proto: str) -> Any:
        nonlocal seen
        seen += 1
        return bad if seen == 1 else ok(query, proto)

    async with FakeUpstream(handler) as up:
        fwd, _ = await forwarder(fast(up.upstream))
        try:
            assert address_of(await fwd.query(query_wire("n3.example."), tcp=True)) == "192.0.2.3"
            # the bad connection was dropped; the answer came on a new one
            # (garbage also starts a health check: ". NS" over its own connection)
            assert len({q.conn_id for q in up.queries if q.qtype == "A"}) == 2
            await asyncio.sleep(0.05)
            assert up.open_tcp_connections == 1
        finally:
            await fwd.close()


async def test_reset_mid_stream_fails_only_in_flight_and_retries(loop_errors: list) -> None:
    """Three pipelined queries on one connection; it is reset once all arrived."""
    arrived = asyncio.Event()

    async def handler(query: dns.message.Message, proto: str) -> Any:
        conn1 = [q for q in up.queries if q.conn_id == 1]
        if up.queries[-1].conn_id == 1:
            if len(conn1) == 3:
                arrived.set()
                return RESET
            await arrived.wait()
            return None
        return ok(query, proto)

    async with FakeUpstream(handler) as up:
        fwd, stats = await forwarder(fast(up.upstream), max_connections=1)
        try:
            names = [f"n{i}.example." for i in (1, 2, 3)]
            wires = await asyncio.gather(*(fwd.query(query_wire(n), tcp=True) for n in names))
            assert [address_of(w) for w in wires] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
            assert up.tcp_connections == 2
            assert sorted(q.qname for q in up.queries if q.conn_id == 2) == names
            assert stats.healthcheck_failures == {}    # a reset is not a health failure
        finally:
            await fwd.close()


async def test_reset_fails_over_to_other_upstream(loop_errors: list) -> None:
    async with FakeUpstream(lambda q, p: RESET) as bad, FakeUpstream(ok) as good:
        fwd, _ = await forwarder(fast(bad.upstream, good.upstream, policy="sequential"))
        try:
            assert address_of(await fwd.query(query_wire("n4.example."), tcp=True)) == "192.0.2.4"
        finally:
            await fwd.close()


async def test_idle_connection_expires(loop_errors: list) -> None:
    async with FakeUpstream(ok) as up:
        fwd, stats = await forwarder(fast(up.upstream, expire=0.1))
        try:
            await fwd.query(query_wire("n1.example."), tcp=True)
            assert up.open_tcp_connections == 1
            for _ in range(50):
                await asyncio.sleep(0.02)
                if up.open_tcp_connections == 0:
                    break
            assert up.open_tcp_connections == 0
            await fwd.query(query_wire("n2.example."), tcp=True)
            assert stats.conn_opened[str(up.upstream)] == 2 and up.tcp_connections == 2
        finally:
            await fwd.close()


async def test_max_age_rotation_lets_in_flight_finish(loop_errors: list) -> None:
    async def handler(query: dns.message.Message, proto: str) -> Any:
        if query.question[0].name.to_text() == "n1.example.":
            await asyncio.sleep(0.3)
        return ok(query, proto)

    async with FakeUpstream(handler) as up:
        fwd, _ = await forwarder(fast(up.upstream, max_age=0.15, try_timeout=1.0, budget=2.0))
        try:
            slow = asyncio.ensure_future(fwd.query(query_wire("n1.example."), tcp=True))
            await asyncio.sleep(0.05)
            await fwd.query(query_wire("n2.example."), tcp=True)     # same, young connection
            await asyncio.sleep(0.15)
            await fwd.query(query_wire("n3.example."), tcp=True)     # old one: rotated
            conns = {q.qname: q.conn_id for q in up.queries}
            assert conns["n1.example."] == conns["n2.example."] == 1
            assert conns["n3.example."] == 2
            assert address_of(await slow) == "192.0.2.1"             # drained, not cut
            for _ in range(50):
                await asyncio.sleep(0.02)
                if up.open_tcp_connections == 1:
                    break
            assert up.open_tcp_connections == 1                      # the old one closed
        finally:
            await fwd.close()


async def test_connect_refused_backs_off(loop_errors: list) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()                                   # nothing listens there
    fwd, stats = await forwarder(fast(Upstream("127.0.0.1", port), budget=0.4, max_fails=0))
    try:
        with pytest.raises(UpstreamError):
            await fwd.query(query_wire("n1.example."), tcp=True)
        assert 1 <= stats.conn_opened[f"127.0.0.1:{port}"] <= 8
    finally:
        await fwd.close()


async def test_in_flight_limit_per_connection(loop_errors: list) -> None:
    async def handler(query: dns.message.Message, proto: str) -> Any:
        await asyncio.sleep(0.05)
        return ok(query, proto)

    async with FakeUpstream(handler) as up:
        fwd, _ = await forwarder(fast(up.upstream), max_connections=1, max_in_flight=2)
        try:
            wires = await asyncio.gather(*(fwd.query(query_wire(f"n{i}.example."), tcp=True)
                                           for i in range(1, 6)))
            assert len(wires) == 5 and up.tcp_connections == 1
            # never more than 2 outstanding: answers come 50 ms after each query
            times = sorted(q.at for q in up.queries)
            assert times[2] - times[0] >= 0.04
        finally:
            await fwd.close()


async def test_tcp_timeout_drains_connection(loop_errors: list) -> None:
    def handler(query: dns.message.Message, proto: str) -> Any:
        return None if query.question[0].name.to_text() == "n1.example." else ok(query, proto)

    async with FakeUpstream(handler) as up:
        fwd, _ = await forwarder(fast(up.upstream, try_timeout=0.1, budget=0.25, max_fails=0))
        try:
            with pytest.raises(UpstreamError):
                await fwd.query(query_wire("n1.example."), tcp=True)
            # the connection that timed out takes no new queries
            await fwd.query(query_wire("n2.example."), tcp=True)
            conn_of = {q.conn_id for q in up.queries if q.qname == "n2.example."}
            assert 1 not in conn_of
        finally:
            await fwd.close()


async def test_huge_answer_over_tcp(loop_errors: list) -> None:
    records = {"big.example. TXT": [f'"{i:04d}' + "x" * 250 + '"' for i in range(200)]}
    async with FakeUpstream(records=records) as up:
        fwd, _ = await forwarder(fast(up.upstream))
        try:
            wire = await fwd.query(query_wire("big.example.", "TXT"), tcp=True)
            assert len(wire) > 50000
            assert len(dns.message.from_wire(wire).answer[0]) == 200
        finally:
            await fwd.close()


async def test_many_concurrent_tcp(loop_errors: list) -> None:
    async with FakeUpstream(ok) as up:
        fwd, _ = await forwarder(fast(up.upstream, try_timeout=1.0, budget=3.0))
        try:
            wires = await asyncio.gather(*(fwd.query(query_wire(f"n{1 + i % 59}.example.", qid=i),
                                                     tcp=True) for i in range(500)))
            for i, w in enumerate(wires):
                assert struct.unpack("!H", w[:2])[0] == i
                assert address_of(w) == f"192.0.2.{1 + i % 59}"
            assert up.tcp_connections <= 8
        finally:
            await fwd.close()


async def test_pipelined_answers_behind_nagle_do_not_wait_for_delayed_ack(loop_errors: list) -> None:
    """An upstream with Nagle on (no TCP_NODELAY) writes each answer on its own:
    the second waits for our ACK of the first, which must come at once, not
    after the up-to-40 ms delayed ACK."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()
    rounds = 20

    async def serve() -> None:
        conn, _ = await loop.sock_accept(listener)
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 0)  # Nagle on
            buf = b""
            answered = 0
            while answered < 2 * rounds:
                data = await loop.sock_recv(conn, 65535)
                if not data:
                    return
                buf += data
                while len(buf) >= 2 and len(buf) >= 2 + int.from_bytes(buf[:2], "big"):
                    size = int.from_bytes(buf[:2], "big")
                    query, buf = dns.message.from_wire(buf[2:2 + size]), buf[2 + size:]
                    answer = ok(query, "tcp").to_wire()  # type: ignore[union-attr]
                    await loop.sock_sendall(conn, len(answer).to_bytes(2, "big") + answer)
                    answered += 1

    server = asyncio.ensure_future(serve())
    fwd, _ = await forwarder(fast(Upstream("127.0.0.1", listener.getsockname()[1]),
                                  try_timeout=2.0, budget=3.0), max_connections=1)
    try:
        began = loop.time()
        for r in range(rounds):  # two queries in flight each round
            await asyncio.gather(fwd.query(query_wire(f"n{1 + r % 50}.example."), tcp=True),
                                 fwd.query(query_wire(f"n{2 + r % 50}.example."), tcp=True))
        took = loop.time() - began
        # delayed ACK would cost up to 40 ms a round: 20 rounds, well under 0.4 s
        assert took < 0.4, f"{rounds} rounds took {took:.3f} s"
    finally:
        await fwd.close()
        server.cancel()
        listener.close()
