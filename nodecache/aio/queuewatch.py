"""Watching the UDP receive queues for a backlog that lasts (the rules: core/overload.py).

The agent samples how full its listeners' queues are while its event loop
runs; the detector says when the samples mean overload, which turns miss
shedding on (``aio/resolver.py``). With no traffic the watch waits for a
datagram instead of sampling (rule 5).
"""
from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import struct
from collections.abc import Callable

from nodecache.core.overload import OverloadDetector

#: linux/socket.h SO_MEMINFO: the socket's memory counters; the first is the
#: receive queue (SK_MEMINFO_RMEM_ALLOC), the second the receive buffer, bytes.
_SO_MEMINFO = 55


def queue_fill(sock: socket.socket) -> float:
    """How full a socket's receive queue is, 0..1 (queries waiting to be read)."""
    try:
        queued, size = struct.unpack_from("2I", sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 36))
    except OSError:
        return 0.0
    return queued / size if size else 0.0


async def wait_datagram(watch: select.epoll, socks: list[socket.socket], timeout: float) -> bool:
    """Wait until a datagram waits on one of ``socks`` (True) or ``timeout`` s pass (False).

    The event loop already watches each socket for its transport, so the
    sockets go into ``watch``, an epoll set of our own that the loop watches
    instead, and out of it again after; nothing is read: the transports still
    get every datagram. The set holds no reference to a socket: one closed
    meanwhile leaves it (and its port).
    """
    loop = asyncio.get_running_loop()
    woken: asyncio.Future[bool] = loop.create_future()
    timer = loop.call_later(timeout, _wake, woken, False)
    registered: list[int] = []
    try:
        for sock in socks:
            watch.register(sock.fileno(), select.EPOLLIN)
            registered.append(sock.fileno())
        loop.add_reader(watch.fileno(), _wake, woken, True)
        return await woken
    finally:
        timer.cancel()
        loop.remove_reader(watch.fileno())
        for fd in registered:
            with contextlib.suppress(OSError):  # closed meanwhile: already out
                watch.unregister(fd)


def _wake(woken: asyncio.Future[bool], datagram: bool) -> None:
    if not woken.done():
        woken.set_result(datagram)


async def watch_queues(sockets: Callable[[], list[socket.socket]], detector: OverloadDetector,
                       changed: Callable[[bool], None]) -> None:
    """Sample the queues of ``sockets()`` (asked afresh each time: a reload changes them)
    for ever; call ``changed`` with the new state whenever ``detector`` changes it."""
    loop = asyncio.get_running_loop()
    # One epoll set for the watch's life, not one per wait: the agent's descriptors stay put.
    with select.epoll() as watch:
        while True:
            if not detector.parks():
                await asyncio.sleep(detector.next_sample())
            elif await wait_datagram(watch, sockets(), detector.park):
                detector.datagram_came()
                await asyncio.sleep(detector.next_sample())
            fill = max((queue_fill(sock) for sock in sockets()), default=0.0)
            if detector.sample(loop.time(), fill):
                changed(detector.overloaded)
