"""``max_idle_conns``: a pool keeps at most N idle TCP connections per upstream.

The pool's rule (core, table-driven) and the forwarder against a real TCP
upstream on loopback: a burst opens several connections, and once it is
answered the ones beyond the cap are closed (the upstream sees them close).
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

import dns.message
import pytest

from nodecache.core.upstream import (
    ConnectionPool, ConnEvent, ConnState, UpstreamConnection, question_key,
)
from tests.kit.fakeupstream import FakeUpstream, answer_from
from tests.kit.queries import query_wire
from tests.kit.forwarderkit import forwarder, quick

RECORDS = {f"n{i}.example. A": f"192.0.2.{i}" for i in range(1, 20)}


def _ids() -> int:
    return 1


def pool_with(max_idle: int, in_flight: list[int | None]) -> tuple[ConnectionPool, list[UpstreamConnection]]:
    """A pool whose connections have these many queries in flight (None: still dialling)."""
    pool = ConnectionPool(max_age=0.0, expire=10.0, ids=_ids, max_idle=max_idle)
    conns = []
    for count in in_flight:
        conn = UpstreamConnection(now=0.0, max_in_flight=8, max_age=0.0, expire=10.0,
                                  ids=iter(range(1, 100)).__next__)
        if count is not None:
            conn.connected(0.0)
        for i in range(count or 0):
            wire = query_wire(f"q{i}.example.")
            conn.send(wire, question_key(wire), object(), 0.0)  # type: ignore[arg-type]
        pool.connections.append(conn)
        conns.append(conn)
    return pool, conns


# (max_idle_conns, queries in flight per connection, the connection asked about, surplus?)
SURPLUS = [
    (0, [0, 0, 0], 0, False),      # no limit
    (1, [0, 0], 0, True),          # another idle one is kept already
    (1, [0, 3], 0, False),         # the other is busy: this is the one idle kept
    (2, [0, 0, 0], 0, True),
    (2, [0, 0, 1], 0, False),
    (1, [2, 0], 0, False),         # busy itself: not idle
    (1, [None, 0], 0, False),      # still dialling: not idle
    (1, [0, None], 0, False),      # a dialling connection is not an idle one
]


@pytest.mark.parametrize(("cap", "loads", "which", "surplus"), SURPLUS)
def test_surplus_idle(cap: int, loads: list[int | None], which: int, surplus: bool) -> None:
    pool, conns = pool_with(cap, loads)
    assert pool.surplus_idle(conns[which]) is surplus


def test_closed_connection_is_never_surplus() -> None:
    pool, conns = pool_with(1, [0, 0])
    conns[0].terminate(ConnEvent.CLOSE)
    assert conns[0].state is ConnState.CLOSED
    assert not pool.surplus_idle(conns[0])


@pytest.mark.parametrize("cap", [1, 0])
async def test_idle_connections_beyond_the_cap_close(cap: int) -> None:
    ok = answer_from(RECORDS)

    async def slow(query: dns.message.Message, proto: str) -> Any:
        await asyncio.sleep(0.05)  # keeps the burst's queries in flight together
        return ok(query, proto)

    async with FakeUpstream(slow) as up:
        conf = quick(try_timeout=2.0, budget=3.0, force_tcp=True)(up.upstream, max_idle_conns=cap)
        fwd, _ = await forwarder(conf, max_connections=4, max_in_flight=2)
        try:
            await asyncio.gather(*(fwd.query(query_wire(f"n{i}.example."), tcp=True)
                                   for i in range(1, 13)))
            assert up.tcp_connections > 1  # the burst needed several connections
            deadline = time.monotonic() + 5.0
            want = cap or up.tcp_connections
            while up.open_tcp_connections != want and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert up.open_tcp_connections == want
            # the kept connection still carries queries
            await fwd.query(query_wire("n1.example."), tcp=True)
        finally:
            await fwd.close()
