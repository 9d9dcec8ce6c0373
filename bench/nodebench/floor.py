"""The Python floor for the hit path: the least a uvloop server can do per answer.

A measuring tool, not a cache: one UDP socket on uvloop, and a dict from a
query's bytes after its ID to the answer's bytes after its ID. A hit is one
slice, one dict look-up, one join and one ``sendto``; nothing is parsed, no TTL
counts down, nothing is counted. A miss is relayed once to the upstream over
UDP and its answer kept for good, so the bench warms it like the caches (a miss
pass, then hits). Whatever nodecache spends per hit above this server's figure
is spent in nodecache's own code; the rest belongs to Python, uvloop and the
kernel.

``--io`` picks how datagrams reach the dict (each a candidate for the
listener, measured against the others in one run):

* ``protocol``: an asyncio DatagramProtocol (the transport reads until EAGAIN);
* ``reader``: ``add_reader`` on the bare non-blocking socket, ``recvfrom`` and
  ``sendto`` in a loop until EAGAIN (no transport, no protocol dispatch);
* ``mmsg``: ``add_reader``, then one ``recvmmsg`` for every datagram waiting
  and one ``sendmmsg`` for their answers (ctypes; the client's address stays
  raw ``sockaddr`` bytes);
* ``thread``: a thread blocking in ``recvfrom`` answers hits (no epoll); the
  loop only relays misses.

Run it as ``python -m nodebench.floor --listen IP --upstream IP``.
"""
from __future__ import annotations

import argparse
import asyncio
import itertools
import socket
import threading

import uvloop

from .mmsg import MessageBatch

#: Datagrams read per wake-up at most, so that the loop's other work still runs.
BATCH = 64


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


class _Reader:
    """``add_reader``'s callback: read and answer until the socket is dry."""

    def __init__(self, server: FloorServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock

    def readable(self) -> None:
        recvfrom, sendto = self.sock.recvfrom, self.sock.sendto
        get, relay = self.server.answers.get, self.server.datagram_received
        for _ in range(BATCH):
            try:
                data, addr = recvfrom(4096)
            except (BlockingIOError, InterruptedError):
                return
            answer = get(data[2:])
            if answer is not None:
                sendto(data[:2] + answer, addr)
            else:
                relay(data, addr)


class _Batched:
    """``add_reader``'s callback: one recvmmsg for what waits, one sendmmsg for the answers."""

    def __init__(self, server: FloorServer, sock: socket.socket) -> None:
        self.server = server
        self.sock = sock
        self.batch = MessageBatch(BATCH)

    def readable(self) -> None:
        batch, get = self.batch, self.server.answers.get
        replies = []
        for data, name in batch.receive(self.sock.fileno()):
            answer = get(data[2:])
            if answer is not None:
                replies.append((data[:2] + answer, name))
            else:
                self.server.datagram_received(data, batch.address(name))
        if replies:
            batch.send(self.sock.fileno(), replies)


def _blocking_reader(server: FloorServer, sock: socket.socket,
                     loop: asyncio.AbstractEventLoop) -> None:
    """A thread's loop: block in recvfrom, answer hits, hand misses to the event loop."""
    get = server.answers.get
    while True:
        data, addr = sock.recvfrom(4096)
        answer = get(data[2:])
        if answer is not None:
            sock.sendto(data[:2] + answer, addr)
        else:
            loop.call_soon_threadsafe(server.datagram_received, data, addr)


def udp_socket(listen: str, port: int) -> socket.socket:
    """The listening socket, with room for a burst of queries (4 MiB)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((listen, port))
    return sock


#: The ways of reading the listening socket (``--io``), the module docstring's list.
IO_MODES = ("protocol", "reader", "mmsg", "thread")


async def serve(listen: str, port: int, upstream: str, seconds: float,
                upstream_port: int = 53, io: str = "protocol") -> None:
    loop = asyncio.get_running_loop()
    server = FloorServer((upstream, upstream_port))
    sock = udp_socket(listen, port)
    if io == "protocol":
        await loop.create_datagram_endpoint(lambda: server, sock=sock)
    else:
        # Replies to relayed misses leave from the listening socket too.
        server.transport = _SocketSender(sock)  # type: ignore[assignment]
        if io == "thread":
            threading.Thread(target=_blocking_reader, args=(server, sock, loop), daemon=True).start()
        else:
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), (_Reader if io == "reader" else _Batched)(server, sock).readable)
    relay, _ = await loop.create_datagram_endpoint(lambda: _Upstream(server),
                                                   remote_addr=(upstream, upstream_port))
    server.relay = relay
    await asyncio.sleep(seconds)  # the bench stops it long before


class _SocketSender:
    """The one transport method the server calls, on a bare socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sendto = sock.sendto


def arguments(prog: str, doc: str, transport: str, argv: list[str] | None,
              io: tuple[str, ...] = ()) -> argparse.Namespace:
    """The command line of a floor server: where it listens, where misses go."""
    ap = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
    ap.add_argument("--listen", required=True, help="address to answer on (UDP)")
    ap.add_argument("--port", type=int, default=53)
    ap.add_argument("--upstream", required=True, help=f"where misses go ({transport})")
    ap.add_argument("--upstream-port", type=int, default=53)
    ap.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long, s")
    if io:
        ap.add_argument("--io", choices=io, default=io[0], help="how the listening socket is read")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    a = arguments("python -m nodebench.floor", __doc__, "UDP", argv, io=IO_MODES)
    uvloop.run(serve(a.listen, a.port, a.upstream, a.max_seconds, a.upstream_port, a.io))


if __name__ == "__main__":
    main()
