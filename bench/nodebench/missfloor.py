"""The Python floor for a miss: the least a uvloop server can do to forward a query.

A measuring tool, not a cache: one UDP socket on uvloop and one pipelined TCP
connection to the upstream (RFC 7766 section 6.2.1.1: many queries in flight on
one connection, answered in any order). A query's ID is swapped for one of ours
(a dict from our ID to the client's ID and address), its frame (the 2-byte
length, RFC 1035 section 4.2.2) appended to a buffer, and the buffer written
once per event-loop iteration, whatever number of queries arrived in it. Every
complete answer in a read is framed in one pass and sent back with the client's
ID. Nothing is cached, nothing is parsed beyond the length and the ID, nothing
is counted. Whatever nodecache spends per miss above this server's figure is
spent in nodecache's own code; the rest belongs to Python, uvloop and the
kernel.

Run it as ``python -m nodebench.missfloor --listen IP --upstream IP``.
"""
from __future__ import annotations

import asyncio
import itertools
import struct

import uvloop

from .floor import arguments, udp_socket

#: A frame's head: the length (RFC 1035 section 4.2.2), then our ID.
_HEAD = struct.Struct(">HH")


class MissFloor(asyncio.DatagramProtocol):
    """Forwards every query to ``upstream`` over one TCP connection, made on demand."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.DatagramTransport | None = None
        self.connection: asyncio.Transport | None = None
        self.connecting: asyncio.Task[None] | None = None
        #: our ID -> (client's ID, client's address); a lost answer's slot is reused when
        #: the 16-bit IDs wrap, so this stays bounded.
        self.pending: dict[int, tuple[bytes, tuple[str, int]]] = {}
        self._ids = itertools.cycle(range(1, 65536))
        #: frames queued in this loop iteration, written together by :meth:`flush`
        self.out = bytearray()
        self._rest = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no DatagramTransport subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12 or data[2] & 0x80:
            return
        qid = next(self._ids)
        self.pending[qid] = (data[:2], addr)
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out += _HEAD.pack(len(data), qid)
        self.out += memoryview(data)[2:]

    def flush(self) -> None:
        if self.connection is None:
            if self.connecting is None:
                self.connecting = self.loop.create_task(self._connect())
            return
        self.connection.write(self.out)
        self.out = bytearray()

    async def _connect(self) -> None:
        try:
            await self.loop.create_connection(lambda: _Upstream(self), *self.upstream)
        except OSError:
            self.pending.clear()
            self.out = bytearray()
        finally:
            self.connecting = None

    def answers(self, data: bytes) -> None:
        """Every complete answer in what the connection has read so far, back to its client."""
        buf = self._rest + data if self._rest else data
        end, pos = len(buf), 0
        pending, sendto = self.pending, self.transport.sendto  # type: ignore[union-attr]
        while end - pos >= 4:
            size = (buf[pos] << 8 | buf[pos + 1]) + 2
            if end - pos < size:
                break
            waiting = pending.pop(buf[pos + 2] << 8 | buf[pos + 3], None)
            if waiting is not None:
                sendto(waiting[0] + buf[pos + 4:pos + size], waiting[1])
            pos += size
        self._rest = buf[pos:]

    def lost(self) -> None:
        """The connection is gone: its queries are lost; the next query makes a new one."""
        self.connection = None
        self.pending.clear()
        self._rest = b""


class _Upstream(asyncio.Protocol):
    def __init__(self, server: MissFloor) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.server.connection = transport  # type: ignore[assignment]
        if self.server.out:
            self.server.flush()

    def data_received(self, data: bytes) -> None:
        self.server.answers(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.lost()


async def serve(listen: str, port: int, upstream: str, seconds: float, upstream_port: int = 53) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_datagram_endpoint(lambda: MissFloor((upstream, upstream_port)), sock=udp_socket(listen, port))
    await asyncio.sleep(seconds)  # the bench stops it long before


def main(argv: list[str] | None = None) -> None:
    a = arguments("python -m nodebench.missfloor", __doc__, "TCP", argv)
    uvloop.run(serve(a.listen, a.port, a.upstream, a.max_seconds, a.upstream_port))


if __name__ == "__main__":
    main()
