"""A loopback fake DNS server for tests: UDP and TCP on one port of 127.0.0.1.

Usage::

    async with FakeUpstream(records={"example.com. A": "192.0.2.1"}) as up:
        settings = ForwardSettings(zone=".", upstreams=(up.upstream,))
        ...
        assert up.queries[0].proto == "udp"

What it does:

* Binds TCP and UDP on the same port (the OS picks it: port 0), on ``host``
  (``127.0.0.1`` by default, ``::1`` works too). ``up.port``, ``up.address``
  (``(host, port)``) and ``up.upstream`` (a settings ``Upstream``) say where.
* Every query that parses is recorded in ``up.queries`` as a
  :class:`ReceivedQuery` (message, wire bytes, ``"udp"``/``"tcp"``, connection
  id, peer address, receive time). Queries that do not parse are counted in
  ``up.unparsable`` and dropped.
* ``up.handler(query, proto)`` decides the answer. It may be a plain function
  or a coroutine function (``async def``), and it is an attribute, so tests
  can swap it at any time (for example to take an upstream "down" and back).
  It returns one of:

  - a ``dns.message.Message``: sent as wire (framed with the 2-byte length on TCP);
  - ``bytes``: sent as-is as the DNS payload (framed on TCP) - for garbage answers;
  - :class:`RawTCP` ``(data)``: written to the TCP stream with no framing, for
    truncated or bogus frames (on UDP the bytes are sent as a datagram);
  - :data:`RESET`: the TCP connection is aborted with an RST (on UDP: dropped);
  - :data:`CLOSE`: the TCP connection is closed cleanly (FIN; on UDP: dropped);
  - ``None``: no answer (the query is dropped);
  - a list of the above: each is sent in turn (stray answers before the real one).

  The default handler answers from ``records`` (see :func:`answer_from`).
* ``delay`` (s) is waited before each answer; ``delays={"udp": .., "tcp": ..}``
  sets it per protocol. On TCP each query is handled in its own task, so
  different delays let answers on one connection go out of order, as
  pipelining upstreams do. ``udp=False`` / ``tcp=False`` leave that protocol
  unanswered (UDP datagrams are ignored; TCP connections are accepted and
  closed at once). ``truncate_udp=True`` answers every UDP query with an empty
  TC=1 reply, so clients must retry over TCP.
* ``up.tcp_connections`` counts TCP connections accepted so far,
  ``up.open_tcp_connections`` those still open. :meth:`FakeUpstream.reset_tcp`
  aborts every open TCP connection (connection reset mid-stream).

Helpers: :func:`answer_from` builds a handler from a small dict of records,
:func:`make_answer` builds one answer, :func:`truncated` an empty TC=1 reply,
and the ``loop_errors`` fixture
(import it into a test module) fails a test when anything reaches the event
loop's exception handler.
"""
from __future__ import annotations

import asyncio
import inspect
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Mapping, Union

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from nodecache.config.settings import Upstream


@dataclass(frozen=True)
class RawTCP:
    """Bytes written to the TCP stream without a length prefix."""

    data: bytes


class _Reset:
    def __repr__(self) -> str:
        return "RESET"


class _Close:
    def __repr__(self) -> str:
        return "CLOSE"


#: Handler result: abort the TCP connection with an RST.
RESET = _Reset()
#: Handler result: close the TCP connection cleanly.
CLOSE = _Close()

Answer = Union[dns.message.Message, bytes, RawTCP, _Reset, _Close, None, list]
Handler = Callable[[dns.message.Message, str], Union[Answer, Awaitable[Answer]]]


@dataclass
class ReceivedQuery:
    """One query the fake received."""

    message: dns.message.Message
    #: The query exactly as received (without the TCP length prefix).
    wire: bytes
    #: ``"udp"`` or ``"tcp"``.
    proto: str
    #: TCP: the connection number (1, 2, ... in accept order); UDP: None.
    conn_id: int | None
    #: The client's (host, port).
    peer: Any
    #: ``time.monotonic()`` at receipt.
    at: float = field(default_factory=time.monotonic)

    @property
    def qname(self) -> str:
        return self.message.question[0].name.to_text() if self.message.question else ""

    @property
    def qtype(self) -> str:
        q = self.message.question
        return dns.rdatatype.to_text(q[0].rdtype) if q else ""


def _normalise_records(records: Mapping[Any, Any]) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for key, value in records.items():
        if isinstance(key, str):
            name, rdtype = key.split()
        else:
            name, rdtype = key
        name = name.lower() if name.endswith(".") else name.lower() + "."
        values = [value] if isinstance(value, str) else list(value)
        out[(name, dns.rdatatype.from_text(rdtype) if isinstance(rdtype, str) else rdtype)] = values
    return out


def make_answer(query: dns.message.Message, rdatas: Iterable[str] = (), *,
                rcode: int = dns.rcode.NOERROR, ttl: int = 300) -> dns.message.Message:
    """An answer to ``query`` holding ``rdatas`` (text form) of the question's type."""
    resp = dns.message.make_response(query)
    resp.set_rcode(rcode)
    rdatas = list(rdatas)
    if rdatas and query.question:
        q = query.question[0]
        resp.answer.append(dns.rrset.from_text_list(q.name, ttl, q.rdclass, q.rdtype, rdatas))
    return resp


def truncated(query: dns.message.Message) -> dns.message.Message:
    """An empty reply to ``query`` with TC=1."""
    resp = dns.message.make_response(query)
    resp.flags |= dns.flags.TC
    return resp


def answer_from(records: Mapping[Any, Any], *, ttl: int = 300) -> Handler:
    """A handler answering from ``records``.

    Keys are ``"name TYPE"`` strings or ``(name, type)`` tuples; values are one
    rdata in text form or a list of them: ``{"a.example. A": ["192.0.2.1"]}``.
    A known name with another type gets NODATA; an unknown name NXDOMAIN,
    except ``.`` which always gets an empty NOERROR (health checks).
    """
    table = _normalise_records(records)
    names = {name for name, _ in table}

    def handler(query: dns.message.Message, proto: str) -> dns.message.Message:
        if not query.question:
            return make_answer(query, rcode=dns.rcode.FORMERR)
        q = query.question[0]
        name = q.name.to_text().lower()
        values = table.get((name, q.rdtype))
        if values is not None:
            return make_answer(query, values, ttl=ttl)
        if name in names or name == ".":
            return make_answer(query)
        return make_answer(query, rcode=dns.rcode.NXDOMAIN)

    return handler


class _UDP(asyncio.DatagramProtocol):
    def __init__(self, owner: FakeUpstream) -> None:
        self.owner = owner
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._spawn(self.owner._serve_udp(self, data, addr))


class FakeUpstream:
    """A fake DNS server on loopback; see the module docstring."""

    def __init__(self, handler: Handler | None = None, *,
                 records: Mapping[Any, Any] | None = None,
                 delay: float = 0.0, delays: Mapping[str, float] | None = None,
                 udp: bool = True, tcp: bool = True, truncate_udp: bool = False,
                 host: str = "127.0.0.1") -> None:
        self.handler: Handler = handler or answer_from(records or {})
        self.delay = delay
        self.delays: dict[str, float] = dict(delays or {})
        self.udp = udp
        self.tcp = tcp
        self.truncate_udp = truncate_udp
        self.host = host
        self.port = 0
        self.queries: list[ReceivedQuery] = []
        self.unparsable = 0
        self.tcp_connections = 0
        self._writers: dict[int, asyncio.StreamWriter] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.base_events.Server | None = None
        self._udp: _UDP | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> FakeUpstream:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        last: OSError | None = None
        for _ in range(20):  # bounded: the UDP port of a fresh TCP port is nearly always free
            tsock = socket.socket(family, socket.SOCK_STREAM)
            tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tsock.bind((self.host, 0))
            port = tsock.getsockname()[1]
            usock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                usock.bind((self.host, port))
            except OSError as exc:
                last = exc
                tsock.close()
                usock.close()
                continue
            usock.setblocking(False)
            self._server = await asyncio.start_server(self._serve_tcp, sock=tsock)
            _, proto = await loop.create_datagram_endpoint(lambda: _UDP(self), sock=usock)
            self._udp = proto
            self.port = port
            return self
        raise OSError(f"no port free for both UDP and TCP: {last}")

    async def close(self) -> None:
        if self._udp is not None and self._udp.transport is not None:
            self._udp.transport.close()
        if self._server is not None:
            self._server.close()
        self.reset_tcp(rst=False)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FakeUpstream:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- accessors -----------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def upstream(self) -> Upstream:
        return Upstream(self.host, self.port)

    @property
    def open_tcp_connections(self) -> int:
        return len(self._writers)

    def queries_by(self, proto: str) -> list[ReceivedQuery]:
        return [q for q in self.queries if q.proto == proto]

    def reset_tcp(self, *, rst: bool = True) -> int:
        """Abort every open TCP connection (RST unless ``rst=False``); returns how many."""
        writers = list(self._writers.values())
        for w in writers:
            _abort(w, rst)
        self._writers.clear()
        return len(writers)

    # -- serving -------------------------------------------------------------

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _parse(self, wire: bytes, proto: str, conn_id: int | None,
               peer: Any) -> dns.message.Message | None:
        try:
            msg = dns.message.from_wire(wire)
        except Exception:
            self.unparsable += 1
            return None
        self.queries.append(ReceivedQuery(msg, wire, proto, conn_id, peer))
        return msg

    async def _answer(self, msg: dns.message.Message, proto: str) -> Answer:
        if proto == "udp" and self.truncate_udp:
            result: Any = truncated(msg)
        else:
            result = self.handler(msg, proto)
            if inspect.isawaitable(result):
                result = await result
        delay = self.delays.get(proto, self.delay)
        if delay:
            await asyncio.sleep(delay)
        return result

    async def _serve_udp(self, proto: _UDP, data: bytes, addr: Any) -> None:
        if not self.udp:
            return
        msg = self._parse(data, "udp", None, addr)
        if msg is None:
            return
        result = await self._answer(msg, "udp")
        for item in result if isinstance(result, list) else [result]:
            if item is None or item is RESET or item is CLOSE or proto.transport is None:
                continue
            if isinstance(item, dns.message.Message):
                out = item.to_wire()
            elif isinstance(item, RawTCP):
                out = item.data
            else:
                out = bytes(item)
            if not proto.transport.is_closing():
                proto.transport.sendto(out, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.tcp_connections += 1
        conn_id = self.tcp_connections
        if not self.tcp:
            writer.close()
            return
        self._writers[conn_id] = writer
        peer = writer.get_extra_info("peername")
        try:
            while True:
                head = await reader.readexactly(2)
                (length,) = struct.unpack("!H", head)
                wire = await reader.readexactly(length)
                msg = self._parse(wire, "tcp", conn_id, peer)
                if msg is not None:
                    self._spawn(self._reply_tcp(msg, conn_id, writer))
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            if self._writers.get(conn_id) is writer:
                del self._writers[conn_id]
                writer.close()

    async def _reply_tcp(self, msg: dns.message.Message, conn_id: int,
                         writer: asyncio.StreamWriter) -> None:
        result = await self._answer(msg, "tcp")
        for item in result if isinstance(result, list) else [result]:
            if item is None:
                continue
            if writer.is_closing():
                return
            if item is RESET or item is CLOSE:
                self._writers.pop(conn_id, None)
                if item is RESET:
                    _abort(writer, True)
                else:
                    writer.close()
                return
            if isinstance(item, RawTCP):
                out = item.data
            else:
                data = item.to_wire() if isinstance(item, dns.message.Message) else bytes(item)
                out = struct.pack("!H", len(data)) + data
            try:
                writer.write(out)
            except (ConnectionError, OSError):
                return


def _abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


@pytest.fixture
async def loop_errors() -> Any:
    """Fails the test if anything reached the event loop's exception handler."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    old = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, ctx: seen.append(ctx))
    yield seen
    loop.set_exception_handler(old)
    assert not seen, f"exceptions reached the event loop: {seen}"
