"""The ``loop`` plugin's start-up probe, against a real listener on loopback.

The "upstream" is what ``submit`` does with a miss: dropping it is a sound
upstream; re-sending the query to our own port is one that forwards back.
"""
from __future__ import annotations

import asyncio
import socket

import pytest

from nodecache.aio.loopcheck import LoopDetected, check_loops
from nodecache.aio.server import Listener
from nodecache.config import parse_text
from nodecache.core.handler import Miss
from nodecache.core.runtime import EntryIndex, build
from nodecache.core.stats import AgentStats

COREFILE = """
example:53 {
    bind 127.0.0.1
    %s
    forward . 127.0.0.1:1
}
"""


async def probe(corefile: str, *, forwards_back: bool) -> list[bytes]:
    """Run the check with one listener; the queries the "upstream" got."""
    config = parse_text(corefile)
    index = EntryIndex()
    zones, handlers = build(config, (), index)
    index.track(handlers.values())
    (address,) = handlers
    listener = Listener("127.0.0.1", 0)
    seen: list[bytes] = []

    def submit(miss: Miss, deliver: object, addr: object) -> None:
        seen.append(miss.query)
        if forwards_back:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.sendto(miss.query, ("127.0.0.1", listener.port))

    await listener.start(handlers[address], submit, AgentStats())
    try:
        await check_loops(zones, handlers, {address: listener.port})
    finally:
        await listener.close()
    return seen


async def test_a_probe_that_comes_back_is_a_loop() -> None:
    with pytest.raises(LoopDetected, match=r"Loop \(127\.0\.0\.1:\d+ -> upstream\) detected "
                                           r"for zone example\."):
        await probe(COREFILE % "loop", forwards_back=True)


async def test_a_sound_upstream_sees_one_hinfo_probe_under_the_zone() -> None:
    seen = await probe(COREFILE % "loop", forwards_back=False)
    assert len(seen) == 1
    query = seen[0]
    assert query[2:12] == b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"  # RD, one question, no OPT
    assert query.endswith(b"\x07example\x00\x00\x0d\x00\x01")  # HINFO IN


async def test_without_loop_nothing_is_probed() -> None:
    assert await asyncio.wait_for(probe(COREFILE % "", forwards_back=True), 1.0) == []
