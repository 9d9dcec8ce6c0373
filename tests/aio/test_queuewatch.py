"""Watching the UDP receive queues (aio/queuewatch.py) on real loopback sockets, on
uvloop (as the agent runs) and on asyncio's own loop: with no traffic the watch waits
for a datagram instead of sampling ten times a second, and a flood that starts while
it waits is still seen at once."""
from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop

from nodecache.aio.queuewatch import queue_fill, wait_datagram, watch_queues
from nodecache.core.overload import OverloadDetector

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "uvloop": uvloop.new_event_loop, "asyncio": asyncio.new_event_loop}


def run(factory: Callable[[], asyncio.AbstractEventLoop], coro: Coroutine[Any, Any, None]) -> None:
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(coro, 20))


@contextlib.contextmanager
def udp_sockets(count: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
        yield socks
    finally:
        for sock in socks:
            sock.close()


class Collect(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.got.append(data)


@pytest.mark.parametrize("loop", LOOPS)
def test_the_wait_ends_on_a_datagram_the_transport_still_reads(loop: str) -> None:
    async def main() -> None:
        with udp_sockets(2) as socks, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client, \
                select.epoll() as watch:
            ev = asyncio.get_running_loop()
            collect = Collect()
            transport, _ = await ev.create_datagram_endpoint(lambda: collect, sock=socks[1])
            try:
                started = time.monotonic()
                assert not await wait_datagram(watch, socks, 0.2)  # nothing came: the timeout
                assert time.monotonic() - started >= 0.15
                waiting = asyncio.ensure_future(wait_datagram(watch, socks, 30.0))
                await asyncio.sleep(0.05)
                assert not waiting.done()
                client.sendto(b"query", socks[1].getsockname())
                assert await asyncio.wait_for(waiting, 5.0)
                for _ in range(100):
                    if collect.got:
                        break
                    await asyncio.sleep(0.01)
                assert collect.got == [b"query"]
                # The sockets left the set after each wait: it takes them again (a socket
                # still in it would raise FileExistsError), and holds nothing after.
                assert not await wait_datagram(watch, socks, 0.05)
                assert not watch.poll(0)
            finally:
                transport.close()
    run(LOOPS[loop], main())


@pytest.mark.parametrize("loop", LOOPS)
def test_idle_queues_are_sampled_once_a_park_and_a_flood_is_seen_at_once(loop: str) -> None:
    """Nobody reads the socket, so what the client sends stays queued: the backlog of a
    flood the agent cannot keep up with."""
    async def main() -> None:
        with udp_sockets(1) as socks, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            detector = OverloadDetector(quiet=5, park=0.5)
            samples: list[float] = []
            take = detector.sample

            def counted(now: float, fill: float) -> bool:
                samples.append(fill)
                return take(now, fill)

            detector.sample = counted  # type: ignore[method-assign]
            changes: list[bool] = []
            overloaded = asyncio.Event()

            def changed(state: bool) -> None:
                changes.append(state)
                overloaded.set()

            watch = asyncio.ensure_future(watch_queues(lambda: socks, detector, changed))
            try:
                await asyncio.sleep(2.0)
                # 5 samples 0.1 s apart, then one per 0.5 s wait: 8 (a loaded machine makes
                # fewer); sampling all along would have taken 20.
                assert 5 <= len(samples) <= 10, samples
                assert detector.parks() and changes == []
                # From now on only a datagram ends a wait soon (the one under way ends first).
                detector.park = 30.0
                await asyncio.sleep(0.7)
                taken = len(samples)
                for i in range(200):  # far more than 1/8 of the buffer, nobody reading
                    client.sendto(b"x" * 100, socks[0].getsockname())
                assert queue_fill(socks[0]) > detector.fill
                started = time.monotonic()
                await asyncio.wait_for(overloaded.wait(), 10.0)
                # Within rule 4's 0.14 s on an idle machine, not at the end of the 30 s wait.
                assert time.monotonic() - started < 5.0
                assert changes == [True] and len(samples) - taken == detector.sustain, samples
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
    run(LOOPS[loop], main())
