"""TCP from clients (RFC 7766: pipelining, idle close, half-close) and to upstreams (pooling)."""
from __future__ import annotations

import asyncio

import dns.message
import dns.rcode
import pytest

from nodecache.aio import agent as agent_module
from nodecache.aio import server
from tests.kit.agentkit import AgentKit
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, answer_from, loop_errors
from tests.kit.queries import make_query

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")

RECORDS = {f"n{i}.example. A": f"192.0.2.{i}" for i in range(1, 21)}
RECORDS["slow.example. A"] = "198.51.100.1"
#: How long the upstream sits on slow.example., s.
SLOW = 0.3


def slow_for(names: set[str], delay: float = SLOW):
    """A handler that answers ``names`` after ``delay`` and everything else at once."""
    plain = answer_from(RECORDS)

    async def handler(query: dns.message.Message, proto: str) -> dns.message.Message:
        if query.question[0].name.to_text().lower() in names:
            await asyncio.sleep(delay)
        return plain(query, proto)

    return handler


async def test_slow_miss_does_not_block_later_hit_on_one_connection() -> None:
    async with FakeUpstream(slow_for({"slow.example."})) as up, \
            AgentKit(corefile(up.port)) as kit:
        await kit.query("n1.example.")  # cached
        client = await kit.tcp_client()
        try:
            slow = make_query("slow.example.", qid=1)
            fast = make_query("n1.example.", qid=2)
            loop = asyncio.get_running_loop()
            began = loop.time()
            await client.send(slow)
            await client.send(fast)
            first = await client.recv()
            first_at = loop.time() - began
            second = await client.recv()
            assert first is not None and second is not None
            assert (first.id, second.id) == (2, 1)
            assert first_at < SLOW / 2
            assert str(second.answer[0][0]) == "198.51.100.1"
        finally:
            await client.close()


async def test_pipelined_misses_answered_as_each_completes() -> None:
    names = [f"n{i}.example." for i in range(1, 11)]
    async with FakeUpstream(slow_for({"n1.example.", "n2.example."}, 0.4)) as up, \
            AgentKit(corefile(up.port)) as kit:
        client = await kit.tcp_client()
        try:
            # All in one write, as a pipelining client does.
            wires = [make_query(n, qid=i).to_wire() for i, n in enumerate(names)]
            client.writer.write(b"".join(len(w).to_bytes(2, "big") + w for w in wires))
            await client.writer.drain()
            replies = [await client.recv() for _ in names]
            ids = [r.id for r in replies if r is not None]
            assert sorted(ids) == list(range(len(names)))
            assert set(ids[-2:]) == {0, 1}  # the slow two come last
            for reply in replies:
                assert reply is not None and reply.rcode() == dns.rcode.NOERROR
                assert reply.answer[0].name.to_text() == names[reply.id]
        finally:
            await client.close()


async def test_split_frames_are_reassembled() -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        client = await kit.tcp_client()
        try:
            wire = make_query("n3.example.", qid=9).to_wire()
            framed = len(wire).to_bytes(2, "big") + wire
            for i in range(0, len(framed), 5):  # dribbled in 5-byte pieces
                client.writer.write(framed[i:i + 5])
                await client.writer.drain()
                await asyncio.sleep(0.01)
            reply = await client.recv()
            assert reply is not None and reply.id == 9
        finally:
            await client.close()


async def test_idle_connection_closed_after_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "TCP_IDLE_TIMEOUT", 0.3)
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        client = await kit.tcp_client()
        try:
            await client.send(make_query("n1.example."))
            assert await client.recv() is not None
            assert await client.closed_by_peer(2.0)
        finally:
            await client.close()
        # Our FIN came first; the socket goes once the client's close arrives.
        listener = kit.agent.listeners[("127.0.0.1", 0)]
        assert listener.tcp is not None
        for _ in range(100):
            if not listener.tcp.connections:
                break
            await asyncio.sleep(0.01)
        assert not listener.tcp.connections


async def test_connection_with_query_in_flight_is_not_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "TCP_IDLE_TIMEOUT", 0.2)
    async with FakeUpstream(slow_for({"slow.example."})) as up, \
            AgentKit(corefile(up.port)) as kit:
        client = await kit.tcp_client()
        try:
            await client.send(make_query("slow.example.", qid=5))
            reply = await client.recv()  # SLOW > idle timeout: still delivered
            assert reply is not None and reply.id == 5
            assert await client.closed_by_peer(2.0)
        finally:
            await client.close()


async def test_active_connection_stays_open(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "TCP_IDLE_TIMEOUT", 0.4)
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        client = await kit.tcp_client()
        try:
            for i in range(6):  # one query every 0.15 s for 0.9 s
                await client.send(make_query("n1.example.", qid=i))
                reply = await client.recv()
                assert reply is not None and reply.id == i
                await asyncio.sleep(0.15)
        finally:
            await client.close()


async def test_half_close_still_gets_answers() -> None:
    async with FakeUpstream(slow_for({"slow.example."}, 0.2)) as up, \
            AgentKit(corefile(up.port)) as kit:
        client = await kit.tcp_client()
        try:
            await client.send(make_query("slow.example.", qid=1))
            await client.send(make_query("n2.example.", qid=2))
            client.writer.write_eof()
            got = {(await client.recv()).id, (await client.recv()).id}  # type: ignore[union-attr]
            assert got == {1, 2}
            assert await client.closed_by_peer(2.0)
        finally:
            await client.close()


async def test_connection_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "TCP_MAX_CONNECTIONS", 2)
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        clients = [await kit.tcp_client() for _ in range(3)]
        try:
            await asyncio.sleep(0.05)
            assert await clients[2].closed_by_peer(1.0)
            for i, client in enumerate(clients[:2]):
                await client.send(make_query("n1.example.", qid=i))
                reply = await client.recv()
                assert reply is not None and reply.id == i
        finally:
            for client in clients:
                await client.close()


# -- to the upstream -------------------------------------------------------------


async def test_misses_pipelined_on_pooled_upstream_connections() -> None:
    names = [f"n{i}.example." for i in range(1, 11)]
    async with FakeUpstream(records=RECORDS, delay=0.2) as up, \
            AgentKit(corefile(up.port, forward_options="force_tcp")) as kit:
        replies = await asyncio.gather(*(kit.query(n) for n in names))
        assert all(r.rcode() == dns.rcode.NOERROR for r in replies)
        assert [q.proto for q in up.queries] == ["tcp"] * len(names)
        conns = {q.conn_id for q in up.queries}
        # Several queries in flight on one connection, not one connection per query.
        assert len(conns) < len(names)
        # The connection outlives the queries and is reused by the next miss.
        await kit.query("n11.example.")
        assert up.queries[-1].conn_id in conns
        assert up.tcp_connections == len(conns)


async def test_tcp_client_miss_goes_upstream_over_tcp() -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        await kit.query("n1.example.", tcp=True)
        await kit.query("n2.example.")
        assert [q.proto for q in up.queries] == ["tcp", "udp"]


async def test_upstream_connection_reset_mid_stream_recovers() -> None:
    async with FakeUpstream(records=RECORDS) as up, \
            AgentKit(corefile(up.port, forward_options="force_tcp")) as kit:
        await kit.query("n1.example.")
        assert up.reset_tcp() >= 1
        await asyncio.sleep(0.05)
        reply = await kit.query("n2.example.")
        assert reply.rcode() == dns.rcode.NOERROR
        assert up.tcp_connections >= 2


async def _pipeline_until_eof(kit: AgentKit, names: list[str], first_id: int,
                              interval: float) -> tuple[list[int], set[int], bool]:
    """Send queries for ``names`` round-robin until the server's FIN arrives.

    Returns the IDs in sending order, the IDs answered, and whether the
    connection ended with a clean EOF (not a reset).
    """
    client = await kit.tcp_client()
    sent: list[int] = []
    answered: set[int] = set()
    done = asyncio.Event()

    async def write() -> None:
        qid = first_id
        while not done.is_set() and len(sent) < 5000:
            try:
                await client.send(make_query(names[qid % len(names)], qid=qid))
            except ConnectionError:
                return
            sent.append(qid)
            qid += 1
            await asyncio.sleep(interval)

    writer = asyncio.ensure_future(write())
    clean = False
    try:
        while True:
            reply = await client.recv(timeout=5.0)
            if reply is None:
                clean = True  # EOF after the last answer
                break
            answered.add(reply.id)
    except ConnectionError:
        clean = False
    finally:
        done.set()
        await writer
        await client.close()
    return sent, answered, clean


async def test_shutdown_ends_pipelined_connections_between_answers(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No query read from a connection is dropped; the client sees EOF where answers stop.

    Busy connections are served on through the drain and ended TCP_DRAIN_FORCE
    before its deadline; an idle one is ended at once.
    """
    monkeypatch.setattr(agent_module, "SHUTDOWN_GRACE", 2.0)
    async with FakeUpstream(slow_for({"slow.example."})) as up:
        kit = await AgentKit(corefile(up.port)).start()
        stopped = False
        try:
            names = [f"n{i}.example." for i in range(1, 21)]
            for name in names:
                await kit.query(name)  # cached: the load is mostly hits
            idle = await kit.tcp_client()
            await idle.send(make_query("n1.example.", qid=7))
            assert (await idle.recv()) is not None
            clients = [asyncio.ensure_future(
                _pipeline_until_eof(kit, names + ["slow.example."], 1000 * (k + 1), 0.002))
                for k in range(4)]
            await asyncio.sleep(0.5)  # a slow miss is in flight on each connection by now
            loop = asyncio.get_running_loop()
            began = loop.time()
            stopping = asyncio.ensure_future(kit.close())
            assert await idle.closed_by_peer(1.0)
            idle_ended = loop.time() - began
            await idle.close()
            results = await asyncio.wait_for(asyncio.gather(*clients), 15)
            busy_ended = loop.time() - began
            await stopping
            stopped = True
        finally:
            if not stopped:
                await kit.close()
    assert idle_ended < 0.8, idle_ended
    # The busy ones were served until about a second before the 2 s deadline.
    assert 0.7 < busy_ended < 2.5, busy_ended
    for sent, answered, clean in results:
        assert clean, "the connection was reset instead of ended with FIN"
        assert len(answered) > 50
        # The server read a prefix of what was sent and answered all of it: the
        # answered IDs are exactly the first len(answered) sent, with no holes.
        assert answered == set(sent[:len(answered)]), sorted(set(sent[:len(answered)]) - answered)
        # What was left unanswered was still on its way when our FIN went out.
        assert len(sent) - len(answered) < 50
