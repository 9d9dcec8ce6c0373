"""Run a real :class:`~nodecache.aio.agent.Agent` on loopback and talk to it.

Usage::

    async with FakeUpstream(records={"a.example. A": "192.0.2.1"}) as up, \\
            AgentKit(f". {{ cache 30\\n forward . {up.address[0]}:{up.port} }}") as kit:
        reply = await kit.query("a.example.", "A")
        reply = await kit.query("a.example.", "A", tcp=True)

What it does:

* Parses the Corefile text in the test's event loop, then rewrites it for
  tests: every server block listens on 127.0.0.1 port 0 (the OS picks; the
  bound port is ``kit.port``), and every ``prometheus``/``health``/``ready``
  address gets port 0 too. ``forward`` settings that the Corefile cannot
  express (``try_timeout``, ``budget``) come from ``forward_overrides``, so
  that failure tests take a fraction of a second, not five.
* ``kit.corefile`` is what the loader returns next: change it, then
  ``await kit.agent.reload()``.
* Clients: :meth:`query` (a dnspython message back, or ``None`` when nothing
  came), :meth:`udp_raw` / :meth:`tcp_raw` for raw bytes, :meth:`tcp_client`
  for a connection to pipeline on, :meth:`http_get` and :meth:`metrics`.
"""
from __future__ import annotations

import asyncio
import dataclasses
import socket
import struct
from typing import Any

import dns.edns
import dns.flags
import dns.message
from prometheus_client.parser import text_string_to_metric_families

from nodecache.aio.agent import Agent
from nodecache.config import Config, parse_text
from tests.kit.queries import make_query

#: How long a client waits for an answer by default, s.
CLIENT_TIMEOUT = 3.0
LOOPBACK = "127.0.0.1"


def _zero_port(address: str | None) -> str | None:
    if not address:
        return address
    host = address.rpartition(":")[0] or LOOPBACK
    return f"{host}:0"


def for_tests(config: Config, forward_overrides: dict[str, Any], host: str = LOOPBACK) -> Config:
    """``config`` rebound to ``host`` (127.0.0.1) port 0, with forward overrides applied."""
    blocks = []
    for block in config.blocks:
        changes: dict[str, Any] = {"port": 0, "bind": (host,), "bind_lines": ()}
        if block.prometheus:
            changes["prometheus"] = _zero_port(block.prometheus)
        if block.health:
            changes["health"] = dataclasses.replace(block.health,
                                                    address=_zero_port(block.health.address))
        if block.ready:
            changes["ready"] = _zero_port(block.ready)
        if block.forward is not None and forward_overrides:
            changes["forward"] = dataclasses.replace(block.forward, **forward_overrides)
        blocks.append(dataclasses.replace(block, **changes))
    return dataclasses.replace(config, blocks=tuple(blocks))


class TcpClient:
    """One client TCP connection: send framed queries, read framed replies."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes | dns.message.Message) -> None:
        wire = data.to_wire() if isinstance(data, dns.message.Message) else data
        self.writer.write(struct.pack("!H", len(wire)) + wire)
        await self.writer.drain()

    async def recv_raw(self, timeout: float = CLIENT_TIMEOUT) -> bytes | None:
        """The next reply's bytes; None when the server closed the connection."""
        try:
            head = await asyncio.wait_for(self.reader.readexactly(2), timeout)
            return await asyncio.wait_for(self.reader.readexactly(struct.unpack("!H", head)[0]),
                                          timeout)
        except asyncio.IncompleteReadError:
            return None

    async def recv(self, timeout: float = CLIENT_TIMEOUT) -> dns.message.Message | None:
        raw = await self.recv_raw(timeout)
        return None if raw is None else dns.message.from_wire(raw)

    async def closed_by_peer(self, timeout: float) -> bool:
        """True if the server closes the connection within ``timeout`` s."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), timeout)
        except asyncio.TimeoutError:
            return False
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def udp_exchange(address: tuple[str, int], data: bytes,
                       timeout: float = CLIENT_TIMEOUT) -> bytes | None:
    """Send one datagram to ``address``; the reply's bytes, or None when none came in time."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.connect(address)
        await loop.sock_sendall(sock, data)
        try:
            return await asyncio.wait_for(loop.sock_recv(sock, 65535), timeout)
        except asyncio.TimeoutError:
            return None


async def tcp_exchange(address: tuple[str, int], data: bytes,
                       timeout: float = CLIENT_TIMEOUT) -> bytes | None:
    """One framed query to ``address`` on a fresh connection; the reply's bytes or None
    (closed); ``asyncio.TimeoutError`` when the server neither answers nor closes."""
    reader, writer = await asyncio.open_connection(*address)
    client = TcpClient(reader, writer)
    try:
        await client.send(data)
        return await client.recv_raw(timeout)
    finally:
        await client.close()


class AgentKit:
    """An Agent serving ``corefile`` on loopback; see the module docstring."""

    def __init__(self, corefile: str, *, forward_overrides: dict[str, Any] | None = None,
                 host: str = LOOPBACK, **agent_kwargs: Any) -> None:
        self.corefile = corefile
        #: The address every block listens on (``"::1"`` for IPv6 clients).
        self.host = host
        self.forward_overrides = {"try_timeout": 0.5, "budget": 1.0, **(forward_overrides or {})}
        self.agent = Agent(self.load, **agent_kwargs)
        #: How many times the loader ran (start + reloads).
        self.loads = 0

    def load(self) -> Config:
        self.loads += 1
        return for_tests(parse_text(self.corefile, path="Corefile"), self.forward_overrides,
                         self.host)

    async def start(self) -> AgentKit:
        await self.agent.start()
        return self

    async def close(self) -> None:
        await self.agent.shutdown()

    async def __aenter__(self) -> AgentKit:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- where ---------------------------------------------------------------

    @property
    def port(self) -> int:
        """The bound DNS port (the Corefile's port 0)."""
        return self.agent.listeners[(self.host, 0)].port

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    # -- DNS clients ---------------------------------------------------------

    async def udp_raw(self, data: bytes, timeout: float = CLIENT_TIMEOUT) -> bytes | None:
        """Send one datagram; the reply's bytes, or None when none came in ``timeout`` s."""
        return await udp_exchange(self.address, data, timeout)

    async def tcp_client(self) -> TcpClient:
        reader, writer = await asyncio.open_connection(*self.address)
        return TcpClient(reader, writer)

    async def tcp_raw(self, data: bytes, timeout: float = CLIENT_TIMEOUT) -> bytes | None:
        """One framed query on a fresh connection; the reply's bytes or None (closed)."""
        return await tcp_exchange(self.address, data, timeout)

    async def ask(self, message: dns.message.Message, *, tcp: bool = False,
                  timeout: float = CLIENT_TIMEOUT) -> dns.message.Message | None:
        wire = message.to_wire()
        raw = await (self.tcp_raw(wire, timeout) if tcp else self.udp_raw(wire, timeout))
        return None if raw is None else dns.message.from_wire(raw)

    async def query(self, name: str, rdtype: str | int = "A", *, tcp: bool = False,
                    timeout: float = CLIENT_TIMEOUT, **kwargs: Any) -> dns.message.Message:
        """Ask and return the reply; fails the test when nothing comes back."""
        reply = await self.ask(make_query(name, rdtype, **kwargs), tcp=tcp, timeout=timeout)
        assert reply is not None, f"no reply to {name} {rdtype} over {'tcp' if tcp else 'udp'}"
        return reply

    # -- HTTP ----------------------------------------------------------------

    async def http_get(self, path: str, timeout: float = CLIENT_TIMEOUT) -> tuple[int, bytes]:
        """GET ``path`` from whichever HTTP endpoint serves it: (status, body)."""
        last: tuple[int, bytes] = (404, b"")
        for host, port in self.agent.http.addresses():
            status, body = await http_get(host, port, path, timeout)
            if status != 404:
                return status, body
            last = (status, body)
        return last

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Scrape ``/metrics``: {(sample name, sorted labels): value}."""
        status, body = await self.http_get("/metrics")
        assert status == 200, status
        out = {}
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out


async def http_get(host: str, port: int, path: str,
                   timeout: float = CLIENT_TIMEOUT) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET: (status, body)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def total(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(value for (sample, have), value in samples.items()
               if sample == name and all((k, v) in have for k, v in labels.items()))


def handler_of(kit: AgentKit):  # type: ignore[no-untyped-def]
    """The QueryHandler behind the kit's listener (to drive with an injected ``now``)."""
    runtime = kit.agent.runtime
    assert runtime is not None
    return runtime.handlers[(LOOPBACK, 0)]


def hit_at(kit: AgentKit, data: bytes, now: float) -> object:
    """``handle`` a UDP query at loop time ``now`` as the listener does: the
    refreshes it queues (prefetch, stale refresh) go to the kit's resolver."""
    from nodecache.aio.server import submit_refreshes  # noqa: PLC0415

    handler = handler_of(kit)
    result = handler.handle(data, now, 0)
    runtime = kit.agent.runtime
    assert runtime is not None
    submit_refreshes(handler, runtime.resolvers[id(handler)].submit)
    return result
