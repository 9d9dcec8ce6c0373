"""The Python floor for the hit path: the least a uvloop server can do per answer.

A measuring tool, not a cache: one UDP socket on uvloop, and a dict from a
query's bytes after its ID to the answer's bytes after its ID. A hit is one
slice, one dict look-up, one join and one ``sendto``; nothing is parsed, no TTL
counts down, nothing is counted. A miss is relayed once to the upstream over
UDP and its answer kept for good, so the bench warms it like the caches (a miss
pass, then hits). Whatever nodecache spends per hit above this server's figure
is spent in nodecache's own code; the rest belongs to Python, uvloop and the
kernel.

Run it as ``python -m nodebench.floor --listen IP --upstream IP``.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import socket

import uvloop


class FloorServer(asyncio.DatagramProtocol):
    """Answers from ``answers``; relays what is not there to ``upstream``."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.answers: dict[bytes, bytes] = {}
        self.upstream = upstream
        self.transport: asyncio.DatagramTransport | None = None
        self.relay: asyncio.DatagramTransport | None = None
        #: upstream ID -> (client's ID, client's address, the key to store under); a lost
        #: answer's slot is reused when the 16-bit IDs wrap, so this stays bounded.
        self.pending: dict[int, tuple[bytes, object, bytes]] = {}
        self._ids = itertools.cycle(range(1, 65536))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no DatagramTransport subclass

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        answer = self.answers.get(data[2:])
        if answer is not None:
            self.transport.sendto(data[:2] + answer, addr)  # type: ignore[union-attr]
            return
        if len(data) < 12 or data[2] & 0x80 or self.relay is None:
            return
        qid = next(self._ids)
        self.pending[qid] = (data[:2], addr, data[2:])
        self.relay.sendto(qid.to_bytes(2, "big") + data[2:])

    def upstream_answer(self, data: bytes) -> None:
        waiting = self.pending.pop(int.from_bytes(data[:2], "big"), None)
        if waiting is None or self.transport is None:
            return
        client_id, addr, key = waiting
        self.answers[key] = data[2:]
        self.transport.sendto(client_id + data[2:], addr)


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, server: FloorServer) -> None:
        self.server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.server.upstream_answer(data)


def udp_socket(listen: str, port: int) -> socket.socket:
    """The listening socket, with room for a burst of queries (4 MiB)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((listen, port))
    return sock


async def serve(listen: str, port: int, upstream: str, seconds: float,
                upstream_port: int = 53) -> None:
    loop = asyncio.get_running_loop()
    server = FloorServer((upstream, upstream_port))
    await loop.create_datagram_endpoint(lambda: server, sock=udp_socket(listen, port))
    relay, _ = await loop.create_datagram_endpoint(lambda: _Upstream(server),
                                                   remote_addr=(upstream, upstream_port))
    server.relay = relay
    await asyncio.sleep(seconds)  # the bench stops it long before


def arguments(prog: str, doc: str, transport: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line of a floor server: where it listens, where misses go."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    ap.add_argument("--listen", required=True, help="address to answer on (UDP)")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--upstream", required=True, help=f"where misses go ({transport})")
    ap.add_argument("--upstream-port", type=int, default=53)
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long, s")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = arguments("python -m nodebench.floor", __doc__, "UDP", argv)
    uvloop.run(serve(a.listen, a.port, a.upstream, a.max_seconds, a.upstream_port))


if __name__ == "__main__":
    main()
