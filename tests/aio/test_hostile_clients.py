"""Hostile clients on real sockets (loopback): slow and idle TCP connections, broken
TCP frames, and a flood from one source next to a well-behaved client.

The TCP cases run the agent in the test's event loop (``AgentKit``). The flood
runs the agent and the flooder as separate processes, with dnsmasq as a fast
upstream, so the numbers are those of a real process under load.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest

from nodecache.aio import server
from tests.kit.agentkit import AgentKit
from tests.kit.corefiles import corefile
from tests.kit.dnsmasq import dnsmasq
from tests.kit.fakeupstream import FakeUpstream
from tests.kit.queries import make_query, plain_query
from tests.kit.servekit import serving_argv
from tests.kit.refnodecache import free_port

RECORDS = {f"n{i}.example. A": f"192.0.2.{i}" for i in range(1, 21)}


def frame(wire: bytes) -> bytes:
    return struct.pack("!H", len(wire)) + wire


def address_of(reply: bytes) -> str:
    return socket.inet_ntoa(reply[-4:])


# -- slow and idle TCP clients ------------------------------------------------------

@pytest.mark.asyncio
async def test_a_byte_at_a_time_is_answered_and_blocks_nobody() -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        reader, writer = await asyncio.open_connection(*kit.address)
        data = frame(make_query("n1.example.", "A", qid=7).to_wire())
        udp_latencies = []
        for byte in data:
            writer.write(bytes((byte,)))
            await writer.drain()
            started = time.monotonic()
            reply = await kit.udp_raw(make_query("n2.example.", "A").to_wire())
            udp_latencies.append(time.monotonic() - started)
            assert reply is not None and address_of(reply) == "192.0.2.2"
            await asyncio.sleep(0.01)
        head = await asyncio.wait_for(reader.readexactly(2), 2)
        reply = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), 2)
        assert reply[:2] == b"\x00\x07" and address_of(reply) == "192.0.2.1"
        writer.close()
        assert len(udp_latencies) == len(data) and max(udp_latencies) < 0.5


@pytest.mark.asyncio
async def test_a_dribbling_client_that_never_completes_a_query_is_closed(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server, "TCP_READ_TIMEOUT", 1.0)  # the first query's
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        reader, writer = await asyncio.open_connection(*kit.address)
        writer.write(b"\x01\x00")  # a 256-byte query is coming...
        started = time.monotonic()
        closed_after = None
        for _ in range(40):  # ...one byte every 0.1 s, never enough
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
            with contextlib.suppress(asyncio.TimeoutError):
                if await asyncio.wait_for(reader.read(1), 0.1) == b"":
                    closed_after = time.monotonic() - started
                    break
        writer.close()
        assert closed_after is not None and 0.9 <= closed_after < 2.0, closed_after
        assert len(kit.agent.listeners[("127.0.0.1", 0)].tcp.connections) == 0  # type: ignore


@pytest.mark.asyncio
async def test_idle_connections_beyond_the_limit_are_closed_the_rest_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    limit, extra = 50, 30
    monkeypatch.setattr(server, "TCP_MAX_CONNECTIONS", limit)
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        clients = [await kit.tcp_client() for _ in range(limit + extra)]
        try:
            closed = await asyncio.gather(*(c.closed_by_peer(0.5) for c in clients))
            assert closed.count(True) == extra
            assert closed[:limit] == [False] * limit  # the first ones in keep their place
            listener = kit.agent.listeners[("127.0.0.1", 0)]
            assert len(listener.tcp.connections) == limit  # type: ignore[union-attr]
            # Every open one is still served, pipelined.
            for i, client in enumerate(clients[:limit]):
                await client.send(make_query(f"n{i % 20 + 1}.example.", "A", qid=i))
            replies = await asyncio.gather(*(c.recv_raw(2) for c in clients[:limit]))
            assert [struct.unpack("!H", r[:2])[0] for r in replies if r] == list(range(limit))
            # UDP is unaffected.
            assert (await kit.query("n3.example.")).answer
            # Closing ten makes room for ten new ones (and no more).
            for client in clients[:10]:
                await client.close()
            await asyncio.sleep(0.1)
            fresh = [await kit.tcp_client() for _ in range(12)]
            clients += fresh
            closed = await asyncio.gather(*(c.closed_by_peer(0.5) for c in fresh))
            assert closed.count(True) == 2
        finally:
            await asyncio.gather(*(c.close() for c in clients))


# -- broken frames ---------------------------------------------------------------------

@pytest.mark.asyncio
@pytest.mark.parametrize("data, why", [
    (b"\xff\xff" + os.urandom(65535), "largest frame, garbage"),
    (frame(make_query("n1.example.").to_wire() + b"\0" * 60000), "valid query, 60 kB tail"),
    (b"\x00\x05abcde", "frame shorter than a header"),
    (b"\x00\x00", "empty frame"),
    (b"\x00\x40" + make_query("n1.example.").to_wire()[:20], "truncated frame, then EOF"),
    (b"\x00", "half a length, then EOF"),
])
async def test_broken_frames_cost_only_their_connection(data: bytes, why: str) -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        reader, writer = await asyncio.open_connection(*kit.address)
        writer.write(data)
        await writer.drain()
        writer.write_eof()
        got = b""
        with contextlib.suppress(ConnectionError, asyncio.TimeoutError):
            got = await asyncio.wait_for(reader.read(), 3)  # the server must end it
        writer.close()
        if got:  # whatever came back is a well-formed frame: a FORMERR (NOTIMP for a random
            # opcode), or an answer to the query before the tail (ignored, as by node-cache)
            assert len(got) == 2 + struct.unpack("!H", got[:2])[0], why
            assert got[5] & 0xF in ((0,) if "valid query" in why else (1, 4)), why
        # The agent is fine: TCP and UDP still answer, nothing panicked.
        assert (await kit.query("n2.example.", tcp=True)).answer, why
        assert (await kit.query("n2.example.")).answer, why
        assert kit.agent.stats.panics == 0, why


# -- a flood from one source -----------------------------------------------------------

FLOOD_RATE = 20_000  # q/s
FLOOD_SECONDS = 3.0
VICTIM_RATE = 200  # q/s
HOT_NAMES = 20


FLOODER = """
import socket, struct, sys, time
port, rate, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
s.connect(("127.0.0.1", port))
s.setblocking(False)
sent, start = 0, time.monotonic()
total = int(rate * seconds)
while sent < total:
    due = int((time.monotonic() - start) * rate) + 1
    while sent < min(due, total):
        name = b"\\x0bf%010d\\x07example\\x00" % sent
        try:
            s.send(struct.pack("!HHHHHH", sent & 0xFFFF, 0x0100, 1, 0, 0, 0) + name
                   + b"\\x00\\x01\\x00\\x01")
        except (BlockingIOError, ConnectionRefusedError):
            pass
        sent += 1
    try:
        while s.recv(4096):
            pass
    except (BlockingIOError, ConnectionRefusedError):
        pass
    time.sleep(0.0005)
print(sent, round(time.monotonic() - start, 2), flush=True)
"""


#: The agent with shedding off (no client address is ever over its share): the
#: reference a flood is measured against.
#: (The serving process itself: ``nodecache run`` would exec it, and the change would be lost.)
UNSHED = ("import sys; import nodecache.aio.resolver as r; r.OVERLOAD_SHARE = 1 << 30; "
          "from nodecache.serve import main; sys.exit(main(sys.argv[1:]))")


@contextlib.contextmanager
def agent_process(tmp: Path, upstream_port: int, extra: str = "",
                  shed: bool = True) -> Iterator[int]:
    port = free_port()
    (tmp / "Corefile").write_text(f".:{port} {{\n    bind 127.0.0.1\n    cache 30\n"
                                  f"    forward . 127.0.0.1:{upstream_port}\n{extra}}}\n")
    log = open(tmp / "agent.log", "ab")
    run = ["--conf", str(tmp / "Corefile"), "--log-level", "warning"]
    argv = [sys.executable, "-m", "nodecache", "run", *run] if shed else \
        [sys.executable, "-c", UNSHED, *serving_argv(*run)[3:]]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp / "agent.log").read_text()
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.2)
                s.sendto(plain_query(1, "n1.example."), ("127.0.0.1", port))
                with contextlib.suppress(OSError):
                    if s.recv(512):
                        break
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def victim(port: int, seconds: float, rate: int) -> tuple[int, int, list[float]]:
    """Cached names at ``rate`` q/s from another source: (sent, answered, latencies)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.2", 0))
    sock.settimeout(0.5)
    sent = answered = 0
    latencies = []
    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:
            qid = sent % 65536
            query = plain_query(qid, f"n{sent % HOT_NAMES + 1}.example.")
            t0 = time.monotonic()
            sock.sendto(query, ("127.0.0.1", port))
            sent += 1
            try:
                while True:
                    reply = sock.recv(512)
                    if reply[:2] == query[:2]:
                        answered += 1
                        latencies.append(time.monotonic() - t0)
                        break
            except socket.timeout:
                pass
            time.sleep(max(0.0, t0 + 1 / rate - time.monotonic()))
    finally:
        sock.close()
    return sent, answered, latencies


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("inf")


def flood(tmp: Path, upstream: int, shed: bool) -> dict[str, Any]:
    """The victim's cached names before, during and after a flood of unique names."""
    with agent_process(tmp, upstream, shed=shed) as port:
        # Warm the victim's names, and take a baseline.
        victim(port, 0.5, VICTIM_RATE)
        base = victim(port, 1.0, VICTIM_RATE)
        flooder = subprocess.Popen([sys.executable, "-c", FLOODER, str(port), str(FLOOD_RATE),
                                    str(FLOOD_SECONDS)], stdout=subprocess.PIPE, text=True)
        try:
            time.sleep(0.5)  # let the flood build up
            during = victim(port, FLOOD_SECONDS - 1.0, VICTIM_RATE)
            out, _ = flooder.communicate(timeout=30)
        finally:
            if flooder.poll() is None:
                flooder.kill()
                flooder.wait(10)
        flood_sent, flood_time = out.split()
        after = victim(port, 0.5, VICTIM_RATE)
    sent, answered, lat = during
    report = (f"shedding {'on' if shed else 'off'}: flood {flood_sent} unique names in "
              f"{flood_time}s from 127.0.0.1; victim baseline {base[1]}/{base[0]} "
              f"p50 {_pct(base[2], .5) * 1e3:.2f} ms; during {answered}/{sent} "
              f"p50 {_pct(lat, .5) * 1e3:.2f} ms p90 {_pct(lat, .9) * 1e3:.2f} ms "
              f"p99 {_pct(lat, .99) * 1e3:.2f} ms; after {after[1]}/{after[0]}")
    print("\n" + report)
    return {"flood_sent": int(flood_sent), "base": base, "after": after, "sent": sent,
            "answered": answered, "latencies": lat, "report": report}


#: A victim's query answered within this many seconds is not starved (unloaded: ~1 ms).
PROMPT = 0.25


def prompt(run: dict[str, Any]) -> float:
    """The share of the victim's queries during the flood answered within PROMPT."""
    return sum(1 for t in run["latencies"] if t < PROMPT) / max(1, run["sent"])


def test_a_flood_of_unique_names_from_one_source_does_not_starve_another(
        tmp_path: Path) -> None:
    """With shedding the victim's hits keep being answered, and fast, while the same
    flood on the same machine, shedding off, makes them wait in the socket queue."""
    with dnsmasq() as upstream:
        runs = {shed: flood(tmp_path, upstream, shed) for shed in (True, False)}
    report = "\n".join(run["report"] for run in runs.values())
    on, off = runs[True], runs[False]
    for run in (on, off):
        assert run["flood_sent"] == int(FLOOD_RATE * FLOOD_SECONDS), report
        assert run["base"][1] == run["base"][0], report
    # Counts, not times: on a loaded machine the victim's latency is its CPU share, but
    # a query lost, or answered later than PROMPT, is starvation. (A time bound here,
    # p99 < 0.1 s, failed 3 runs in 3 with two busy loops beside the test.)
    assert prompt(on) >= 0.8 and on["after"][1] == on["after"][0], report
    # The reference, same flood on the same machine: more than the agent answers, so
    # that without shedding the victim's queries wait behind it or are lost. On a busy
    # machine they come later than PROMPT; on a quiet one they may come within it
    # (131-250 ms), but the victim, one query at a time, gets a few through where with
    # shedding it gets hundreds (7 against 326).
    assert prompt(off) <= 0.5 or on["answered"] >= 5 * max(1, off["answered"]), report
