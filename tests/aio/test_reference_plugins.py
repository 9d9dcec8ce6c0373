"""bufsize and timeouts side by side with node-cache: same Corefile, same clients, same answers.

Each test runs the reference binary (tests.refnodecache) and
an in-process agent in front of one fake upstream, then compares what a
client sees: TC bits, answer counts, the EDNS size asked upstream, and when
the server closes a TCP connection.
"""
from __future__ import annotations

import asyncio
import logging
import re
import socket
import struct
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import pytest

from tests.kit.agentkit import AgentKit
from tests.kit.answers import negative
from tests.kit.fakeupstream import FakeUpstream, answer_from, loop_errors, truncated
from tests.kit.refnodecache import free_port, node_cache

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")

#: n60: about 1 kB on the wire; n80: about 1.3 kB; n20: about 350 bytes.
RECORDS = {f"n{n}.example. A": [f"10.0.{i // 250}.{i % 250}" for i in range(n)]
           for n in (20, 60, 80)}


class Reference:
    """node-cache serving one server block's ``body`` on 127.0.0.1, as an async context."""

    def __init__(self, body: str, workdir: Path) -> None:
        port = free_port()
        self.address = ("127.0.0.1", port)
        self.log = workdir / "node-cache.log"
        self._serving = node_cache(f".:{port} {{\n    bind 127.0.0.1\n{body}\n}}\n", workdir,
                                   port=port)

    async def __aenter__(self) -> Reference:
        await asyncio.to_thread(self._serving.__enter__)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._serving.__exit__, None, None, None)


def _udp_ask(address: tuple[str, int], wire: bytes, timeout: float) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, address)
        try:
            return sock.recv(65535)
        except OSError:
            return None


async def ask(address: tuple[str, int], query: dns.message.Message, *, tcp: bool = False,
              timeout: float = 3.0) -> dns.message.Message | None:
    """One query over UDP or a fresh TCP connection; None when nothing came back."""
    wire = query.to_wire()
    if not tcp:
        raw = await asyncio.to_thread(_udp_ask, address, wire, timeout)
        return None if raw is None else dns.message.from_wire(raw)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        head = await asyncio.wait_for(reader.readexactly(2), timeout)
        data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), timeout)
        return dns.message.from_wire(data)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()


def sized(query: dns.message.Message, proto: str) -> dns.message.Message | bytes:
    """A real server's answers: over UDP, TC=1 when they do not fit the query's size."""
    reply = answer_from(RECORDS)(query, proto)
    if proto == "udp":
        try:
            reply.to_wire(max_size=max(query.payload, 512) if query.edns >= 0 else 512)
        except dns.exception.TooBig:
            return truncated(query)
    return reply.to_wire(max_size=65535)


def seen(reply: dns.message.Message | None) -> tuple[str, bool, int | None]:
    """What a client sees: rcode, TC, number of answer records.

    A truncated reply's records are left out: when the upstream truncates,
    node-cache passes its empty TC answer on while nodecache asks again over
    TCP and sends the records that fit; either way the client retries over
    TCP. What bufsize decides is whether TC is set.
    """
    assert reply is not None
    tc = bool(reply.flags & dns.flags.TC)
    return (dns.rcode.to_text(reply.rcode()), tc,
            None if tc else sum(len(r) for r in reply.answer))


# (query name, client EDNS size or None, over TCP)
BUFSIZE_QUERIES = [
    ("n60.example.", 4096, False),
    ("n80.example.", 4096, False),  # over bufsize, under the client's size: TC
    ("n80.example.", 1232, False),
    ("n60.example.", 1000, False),  # the client's own smaller size
    ("n20.example.", None, False),  # no EDNS: 512
    ("n80.example.", 4096, True),
]


@pytest.mark.parametrize("cache", ["", "cache 30"], ids=["nocache", "cache"])
async def test_bufsize_answers_match_node_cache(cache: str, tmp_path: Path) -> None:
    async with FakeUpstream(sized) as up:
        body = f"    bufsize 1100\n    {cache}\n    forward . 127.0.0.1:{up.port}"
        async with Reference(body, tmp_path) as ref, AgentKit(f". {{\n{body}\n}}") as kit:
            for _round in range(2):  # the second round comes from the cache, if any
                for name, payload, tcp in BUFSIZE_QUERIES:
                    query = dns.message.make_query(name, "A", use_edns=payload is not None,
                                                   payload=payload or 0)
                    theirs = seen(await ask(ref.address, query, tcp=tcp))
                    ours = seen(await ask(kit.address, query, tcp=tcp))
                    assert ours == theirs, (name, payload, tcp, ours, theirs)
        # Both ask upstream for at most 1100 bytes when the client offers 4096.
        asked = {q.message.payload for q in up.queries
                 if q.qname == "n60.example." and q.proto == "udp"}
        assert asked and max(asked) == 1100, asked


async def _closed_after(address: tuple[str, int], *, query: bool) -> float:
    """Seconds until the server closes a TCP connection (after the reply, with ``query``)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        started = time.monotonic()
        if query:
            wire = dns.message.make_query("n20.example.", "A").to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
            head = await asyncio.wait_for(reader.readexactly(2), 3)
            await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), 3)
            started = time.monotonic()
        try:
            while await asyncio.wait_for(reader.read(4096), 15):
                pass
        except ConnectionError:
            pass
        return time.monotonic() - started
    finally:
        writer.close()


async def test_timeouts_close_connections_as_node_cache_does(tmp_path: Path) -> None:
    async with FakeUpstream(sized) as up:
        body = (f"    timeouts {{\n        read 1s\n        idle 2\n    }}\n"
                f"    forward . 127.0.0.1:{up.port}")
        async with Reference(body, tmp_path) as ref, AgentKit(f". {{\n{body}\n}}") as kit:
            for address in (ref.address, kit.address):
                silent, after_query = await asyncio.gather(
                    _closed_after(address, query=False), _closed_after(address, query=True))
                # read 1s for a connection that never sends; idle 2s after an answer.
                # Wide margins: the machine is shared (our idle check may run 0.5 s late).
                assert 0.9 <= silent < 1.8, (address, silent)
                assert 1.9 <= after_query < 3.0, (address, after_query)


async def test_default_tcp_timeouts_match_node_cache(tmp_path: Path) -> None:
    """Without the plugin: CoreDNS's 3 s for the first query."""
    async with FakeUpstream(sized) as up:
        body = f"    forward . 127.0.0.1:{up.port}"
        async with Reference(body, tmp_path) as ref, AgentKit(f". {{\n{body}\n}}") as kit:
            closed = await asyncio.gather(_closed_after(ref.address, query=False),
                                          _closed_after(kit.address, query=False))
            for value in closed:
                assert 2.9 <= value < 4.0, closed


#: Queries a stalled client sends: over 1.3 kB of answer each, more than 10 MB in all,
#: more than any socket buffers hold.
STALLED_QUERIES = 8000


def stalled_client(address: tuple[str, int]) -> tuple[int, bool]:
    """Send many queries, read nothing for 3 s, then read: (bytes read, the server ended it)."""
    wire = dns.message.make_query("n80.example.", "A").to_wire()
    framed = struct.pack("!H", len(wire)) + wire
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(3)
        sock.connect(address)
        try:
            sock.sendall(framed * STALLED_QUERIES)
        except OSError:
            pass  # the server stopped reading: that is the point
        time.sleep(3)  # longer than the write timeout
        received = 0
        sock.settimeout(5)
        try:
            while chunk := sock.recv(65536):
                received += len(chunk)
        except socket.timeout:
            return received, False  # still open, nothing more coming
        except OSError:
            pass  # reset
        return received, True


async def test_write_timeout_drops_a_client_that_does_not_read() -> None:
    """A client that leaves answers unread loses its connection after ``write``.

    Ours only: node-cache accepts ``write`` but miekg/dns (v1.1.69) never sets
    a write deadline; it serves one query at a time, so such a client stalls
    only itself. nodecache reads ahead and answers hits at once, so without
    the timeout the unread answers would pile up in its memory.
    """
    async with FakeUpstream(sized) as up, \
            AgentKit(f". {{\n cache 30\n timeouts {{\n  write 1s\n  idle 30s\n }}\n"
                     f" forward . 127.0.0.1:{up.port}\n}}") as kit:
        await kit.query("n80.example.", tcp=True)  # cached: answered at once from now on
        received, ended = await asyncio.to_thread(stalled_client, kit.address)
        assert ended and received < STALLED_QUERIES * 1300, received
        listener = kit.agent.listeners[("127.0.0.1", 0)]
        assert listener.tcp is not None and not listener.tcp.connections


async def test_without_write_timeout_a_slow_reader_gets_every_answer() -> None:
    """The default write timeout (5 s) is longer than the client's pause: nothing is lost."""
    async with FakeUpstream(sized) as up, \
            AgentKit(f". {{\n cache 30\n forward . 127.0.0.1:{up.port}\n}}") as kit:
        await kit.query("n80.example.", tcp=True)
        received, ended = await asyncio.to_thread(stalled_client, kit.address)
        assert not ended and received > STALLED_QUERIES * 1300, received


async def test_errors_consolidate_logs_the_line_node_cache_logs(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    """Three upstream timeouts within the period: one line, the same text, no single lines.

    The pattern is the one CoreDNS's README suggests; our failure text ends as Go's does.
    """
    caplog.set_level(logging.INFO)
    async with FakeUpstream(lambda q, p: None) as up:
        body = (f'    errors {{\n        consolidate 3s ".* i/o timeout$" warning\n    }}\n'
                f"    forward . 127.0.0.1:{up.port}")
        async with Reference(body, tmp_path) as ref, AgentKit(f". {{\n{body}\n}}") as kit:
            queries = [dns.message.make_query(f"n{i}.example.", "A") for i in range(3)]
            replies = await asyncio.gather(*(ask(a, q, timeout=8) for q in queries
                                             for a in (ref.address, kit.address)))
            assert all(r is not None and r.rcode() == dns.rcode.SERVFAIL for r in replies)
            ours: list[str] = []
            for _ in range(80):  # the period ends 3 s after the first failure
                ours = [r.getMessage() for r in caplog.records if "plugin/errors" in r.getMessage()]
                theirs = [line for line in ref.log.read_text().splitlines()
                          if "plugin/errors" in line]
                if ours and theirs:
                    break
                await asyncio.sleep(0.1)
            expected = ("[WARNING] plugin/errors: 3 errors like '.* i/o timeout$' occurred"
                        " in last 3s")
            assert theirs == [expected]
            assert ours == [expected]
            assert [r.levelno for r in caplog.records if "plugin/errors" in r.getMessage()] \
                == [logging.WARNING]


def classified(query: dns.message.Message, proto: str) -> dns.message.Message:
    """One name per kind of answer ``log { class }`` tells apart."""
    name = query.question[0].name.to_text()
    if name.startswith("nx-soa."):
        return negative(query)
    if name.startswith("nx."):
        return negative(query, soa_ttl=None)
    if name.startswith("nodata-soa."):
        return negative(query, rcode=dns.rcode.NOERROR)
    if name.startswith("nodata."):
        return negative(query, rcode=dns.rcode.NOERROR, soa_ttl=None)
    if name.startswith("refused."):
        return negative(query, rcode=dns.rcode.REFUSED, soa_ttl=None)
    if name.startswith("fail."):
        return negative(query, rcode=dns.rcode.SERVFAIL, soa_ttl=None)
    return answer_from({f"{name} A": "192.0.2.1"})(query, proto)  # type: ignore[return-value]


CLASSIFIED = ["ok.example.", "nx-soa.example.", "nx.example.", "nodata-soa.example.",
              "nodata.example.", "refused.example.", "fail.example."]
_LOGGED_NAME = re.compile(r'"A IN (\S+) udp')


@pytest.mark.parametrize("classes", ["success", "denial", "error", "denial error", "all"])
async def test_log_classes_log_the_names_node_cache_logs(
        classes: str, caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    caplog.set_level(logging.INFO, logger="nodecache.query")
    async with FakeUpstream(classified) as up:
        body = (f"    log . {{\n        class {classes}\n    }}\n"
                f"    forward . 127.0.0.1:{up.port}")
        async with Reference(body, tmp_path) as ref, AgentKit(f". {{\n{body}\n}}") as kit:
            for name in CLASSIFIED:
                for address in (ref.address, kit.address):
                    assert await ask(address, dns.message.make_query(name, "A")) is not None
            theirs: set[str] = set()
            for _ in range(30):  # node-cache writes its log lines as it answers
                theirs = set(_LOGGED_NAME.findall(ref.log.read_text()))
                if theirs:
                    break
                await asyncio.sleep(0.1)
    ours = {m for r in caplog.records for m in _LOGGED_NAME.findall(r.getMessage())}
    assert ours == theirs, (classes, sorted(ours), sorted(theirs))
