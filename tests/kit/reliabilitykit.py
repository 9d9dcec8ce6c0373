"""Pieces for the reliability tests: an upstream in a namespace, the agent as a
process, and a paced load client that counts every outcome.

The topology is ``netns.node_and_pod``: the agent and the load client run in
the "node" namespace (the client talks to 127.0.0.1), the upstream runs in the
other namespace at ``10.200.0.2`` and faults are injected there (iptables,
killing the server), so the path between agent and upstream is a real one.

Names and answers are fixed, so every reply can be checked:

* ``h<i>.example.`` (i < ``HOT``) -> ``10.1.0.<i>``: a hot set, mostly cache hits;
* anything else under ``example.`` -> ``10.9.9.9`` (a wildcard): unique names, misses.

Every answer has TTL :data:`TTL`, so hot names expire during a run and are
refreshed (or served stale) while a fault is on.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from nodecache.core import wire as dnswire
from tests.kit import corefiles, netns

HOT = 100
TTL = 5  # s
UPSTREAM_IP = "10.200.0.2"
BOGUS_IP = "6.6.6.6"


def expected_ip(name: str) -> str:
    label = name.split(".", 1)[0].lower()
    if label.startswith("h") and label[1:].isdigit() and int(label[1:]) < HOT:
        return f"10.1.0.{int(label[1:])}"
    return "10.9.9.9"


def name_for(k: int, hot_share: int = 8) -> str:
    """The k-th query's name: ``hot_share`` in 10 from the hot set, the rest unique."""
    if k % 10 < hot_share:
        return f"h{k % HOT}.example."
    return f"u{k}.example."


# -- upstreams ---------------------------------------------------------------

ZONE = "\n".join(
    ["$ORIGIN example.", f"$TTL {TTL}",
     "@ SOA ns.example. host.example. 1 3600 600 86400 5", "@ NS ns.example.",
     "ns A 10.200.0.2", "* A 10.9.9.9"]
    + [f"h{i} A 10.1.0.{i}" for i in range(HOT)]) + "\n"


@contextlib.contextmanager
def knot(ns: str, workdir: Path, zones: dict[str, str] | None = None,
         listen: tuple[str, ...] = (UPSTREAM_IP,), probe: str = "h1.example.",
         ) -> Iterator[KnotServer]:
    """Knot DNS in ``ns`` on port 53 of each ``listen`` address, authoritative for
    ``zones`` (origin -> zone file text; by default ``example.`` as above)."""
    workdir.mkdir(parents=True, exist_ok=True)
    zones = {"example.": ZONE} if zones is None else zones
    entries = ""
    for origin, text in zones.items():
        path = workdir / f"{origin}zone"
        path.write_text(text)
        entries += f"  - domain: {origin}\n    file: {path}\n    storage: {workdir}\n"
    listens = "".join(f"    listen: {ip}@53\n" for ip in listen)
    (workdir / "knot.conf").write_text(
        f"server:\n{listens}    rundir: {workdir}\n"
        f"    udp-workers: 2\n    tcp-workers: 2\n    tcp-idle-timeout: 60\n"
        f"database:\n    storage: {workdir}\n"
        f"log:\n  - target: stderr\n    any: error\n"
        f"zone:\n{entries}")
    server = KnotServer(ns, workdir, listen[0], probe)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@dataclass
class KnotServer:
    ns: str
    workdir: Path
    #: An address it listens on and a name it answers, to tell when it is up.
    ip: str = UPSTREAM_IP
    probe: str = "h1.example."
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.workdir / "knot.log", "ab")
        self.proc = netns.popen(self.ns, "knotd", "-c", str(self.workdir / "knot.conf"),
                                stdout=log, stderr=log)
        log.close()
        wait_answering(self.ns, self.ip, 53, self.probe)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def _fake_main(mode: str, host: str) -> None:
    """A FakeUpstream with a fault ``mode`` (``slow`` or ``hostile``); prints its port."""
    import dns.flags  # noqa: PLC0415

    from tests.kit.fakeupstream import FakeUpstream, RawTCP  # noqa: PLC0415

    rng = random.Random(7)

    def good(query: dns.message.Message) -> dns.message.Message:
        resp = dns.message.make_response(query)
        resp.flags |= dns.flags.AA
        q = query.question[0]
        if q.rdtype == dns.rdatatype.A:
            resp.answer.append(dns.rrset.from_text(q.name, TTL, "IN", "A",
                                                   expected_ip(q.name.to_text())))
        return resp

    def bogus(query: dns.message.Message) -> dns.message.Message:
        resp = good(query)
        resp.answer = [dns.rrset.from_text(query.question[0].name, 3600, "IN", "A", BOGUS_IP)]
        return resp

    def handler(query: dns.message.Message, proto: str) -> object:
        if not query.question:
            return None
        if mode == "slow" or query.question[0].name.to_text() == ".":
            return good(query)
        pick = rng.randrange(10)
        if pick == 0:  # wrong ID, then the real answer
            wrong = bogus(query)
            wrong.id = (query.id + 1) & 0xFFFF
            return [wrong, good(query)]
        if pick == 1:  # wrong question, same ID
            other = dns.message.make_query("evil.example.", "A")
            other.id = query.id
            return [bogus(other), good(query)]
        if pick == 2:  # garbage bytes with the right ID
            return [query.id.to_bytes(2, "big") + os.urandom(rng.randrange(0, 60)), good(query)]
        if pick == 3:  # a truncated message (half of a bogus answer), then the real one
            half = bogus(query).to_wire()
            return [half[:len(half) // 2], good(query)]
        if pick == 4:  # only bogus: the agent must not relay it (SERVFAIL or retry)
            wrong = bogus(query)
            wrong.id = (query.id + 7) & 0xFFFF
            return wrong
        if pick == 5 and proto == "tcp":  # a frame cut short: the stream is broken
            frame = bogus(query).to_wire()
            return RawTCP(len(frame).to_bytes(2, "big") + frame[:len(frame) // 3])
        return good(query)

    async def main() -> None:
        upstream = FakeUpstream(handler, host=host)
        await upstream.start()
        print(upstream.port, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        # SIGUSR1: every answer from now on takes 2 s; SIGUSR2: back to normal.
        loop.add_signal_handler(signal.SIGUSR1, lambda: setattr(upstream, "delay", 2.0))
        loop.add_signal_handler(signal.SIGUSR2, lambda: setattr(upstream, "delay", 0.0))
        await stop.wait()
        await upstream.close()

    asyncio.run(main())


@contextlib.contextmanager
def fake_upstream(ns: str, mode: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A fault-injecting FakeUpstream on 10.200.0.2 in ``ns``; yields its port and process."""
    proc = netns.python(ns, "-m", "tests.kit.reliabilitykit", "upstream", mode, UPSTREAM_IP,
                        background=True, stdout=subprocess.PIPE)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.strip(), "the fake upstream did not start"
        yield int(line), proc
    finally:
        stop(proc)


# -- the agent ---------------------------------------------------------------

def corefile(upstream: str, *plugins: str, forward_options: str = "", cache: str = f"cache {TTL} {{\n"
             " serve_stale 60s\n }", bind: str = "127.0.0.1", port: int = 53) -> str:
    """The agent's Corefile in these tests: serve_stale on, bound to ``bind``."""
    return corefiles.corefile(upstream, f"bind {bind}", *plugins, cache=cache, forward_options=forward_options,
                              server=f".:{port}")


def start_agent(ns: str, conf: Path, *args: str, log: Path,
                wait: bool = True, port: int = 53) -> subprocess.Popen[bytes]:
    """``nodecache run --conf conf`` in ``ns``; waits until it answers on 127.0.0.1."""
    out = open(log, "ab")
    proc = netns.python(ns, "-m", "nodecache", "run", "--conf", str(conf),
                        "--log-level", "info", *args, background=True, stdout=out,
                        stderr=subprocess.STDOUT)
    out.close()
    if wait:
        try:
            wait_answering(ns, "127.0.0.1", port, "h1.example.", proc=proc)
        except BaseException:
            stop(proc)
            raise
    return proc


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15) -> int:
    """Signal ``proc`` and wait for it (SIGKILL after ``timeout``); returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def wait_answering(ns: str, host: str, port: int, name: str, timeout: float = 15,
                   proc: subprocess.Popen[bytes] | None = None, tries_time: int = 1) -> None:
    """Until ``host`` answers ``name`` at all; each try waits ``tries_time`` s for a reply."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode} before answering")
        res = netns.run(ns, "dig", f"@{host}", "-p", str(port), "+tries=1",
                        f"+time={tries_time}", name, check=False)
        if res.returncode == 0 and "status:" in res.stdout:  # any reply, even SERVFAIL
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing answered {name} on {host}:{port} in {ns}")


def iptables(ns: str, *args: str) -> None:
    netns.run(ns, "iptables-legacy", "-w", "5", *args)


# -- the load client -----------------------------------------------------------

@dataclass
class Counts:
    sent: int = 0
    correct: int = 0
    #: Correct data with TTL 0: an answer served stale.
    stale: int = 0
    servfail: int = 0
    #: REFUSED (max_concurrent); counted apart from SERVFAIL.
    refused: int = 0
    #: Anything else: a wrong address, a wrong question, NXDOMAIN, FORMERR.
    wrong: int = 0
    lost: int = 0
    #: Slowest SERVFAIL, s.
    servfail_max: float = 0.0
    #: Per second of the run: [sent, correct+stale, servfail, wrong, lost].
    seconds: list[list[int]] = field(default_factory=list)
    wrong_samples: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"sent={self.sent} correct={self.correct} stale={self.stale} "
                f"servfail={self.servfail} refused={self.refused} wrong={self.wrong} "
                f"lost={self.lost} servfail_max={self.servfail_max:.2f}s")

    def ok_from(self, second: int) -> bool:
        """Every query sent from ``second`` on was answered correctly."""
        return all(s[0] == s[1] for s in self.seconds[second:])


def load(server: str, port: int, *, rate: int, duration: float, start_at: float,
         timeout: float = 6.0, hot_share: int = 8, tcp: bool = False) -> Counts:
    """Send ``rate`` queries/s for ``duration`` s from ``start_at`` (wall clock), then wait
    ``timeout`` s for stragglers; classify every reply. Runs in the caller's namespace."""
    return asyncio.run(_load(server, port, rate, duration, start_at, timeout, hot_share, tcp))


class _Client(asyncio.DatagramProtocol):
    def __init__(self, on_reply: object) -> None:
        self.on_reply = on_reply
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.on_reply(self, data)  # type: ignore[operator]


async def _load(server: str, port: int, rate: int, duration: float, start_at: float,
                timeout: float, hot_share: int, tcp: bool) -> Counts:
    loop = asyncio.get_running_loop()
    counts = Counts(seconds=[[0, 0, 0, 0, 0] for _ in range(int(duration + 0.999))])
    pending: dict[tuple[int, int], tuple[float, str, int]] = {}
    ids = list(range(0x10000))
    random.Random(1).shuffle(ids)

    def classify(key: tuple[int, int], data: bytes) -> None:
        item = pending.pop(key, None)
        if item is None:
            return
        sent, name, second = item
        bucket = counts.seconds[second]
        # Fast path: one question, one A record, NOERROR, the expected address.
        if len(data) > 28 and data[3] & 0x0F == 0 and data[4:8] == b"\x00\x01\x00\x01" \
                and data[-6:-4] == b"\x00\x04" \
                and data[-4:] == socket.inet_aton(expected_ip(name)) \
                and data[12:12 + len(name) + 1].lower() == dnswire.zone_to_wire(name) \
                and data[12 + len(name) + 1:12 + len(name) + 5] == b"\x00\x01\x00\x01" \
                and len(data) == 12 + len(name) + 5 + 16:
            if data[-10:-6] == b"\x00\x00\x00\x00":
                counts.stale += 1
            else:
                counts.correct += 1
            bucket[1] += 1
            return
        try:
            msg = dns.message.from_wire(data)
        except Exception as exc:  # noqa: BLE001
            counts.wrong += 1
            bucket[3] += 1
            counts.wrong_samples.append(f"{name}: unparsable {exc}")
            return
        rcode = msg.rcode()
        if rcode == dns.rcode.SERVFAIL:
            counts.servfail += 1
            bucket[2] += 1
            counts.servfail_max = max(counts.servfail_max, loop.time() - sent)
            return
        if rcode == dns.rcode.REFUSED:
            counts.refused += 1
            bucket[2] += 1
            return
        addresses = [r.address for rr in msg.answer for r in rr if rr.rdtype == dns.rdatatype.A]
        qname = msg.question[0].name.to_text() if msg.question else ""
        if rcode == dns.rcode.NOERROR and addresses == [expected_ip(name)] \
                and qname.lower() == name.lower():
            if msg.answer[0].ttl == 0:
                counts.stale += 1
            else:
                counts.correct += 1
            bucket[1] += 1
            return
        counts.wrong += 1
        bucket[3] += 1
        if len(counts.wrong_samples) < 10:
            counts.wrong_samples.append(f"{name}: {dns.rcode.to_text(rcode)} {addresses} {qname}")

    clients: list[object] = []
    if not tcp:
        for i in range(16):
            _, proto = await loop.create_datagram_endpoint(
                lambda: _Client(lambda c, d: classify((id(c), d[0] << 8 | d[1]), d)),
                remote_addr=(server, port))
            clients.append(proto)
    else:
        for i in range(8):
            reader, writer = await asyncio.open_connection(server, port)
            clients.append(writer)

            async def read(reader: asyncio.StreamReader = reader,
                           writer: asyncio.StreamWriter = writer) -> None:
                with contextlib.suppress(Exception):
                    while True:
                        head = await reader.readexactly(2)
                        data = await reader.readexactly(int.from_bytes(head, "big"))
                        classify((id(writer), data[0] << 8 | data[1]), data)
            loop.create_task(read())
    delay = start_at - time.time()
    if delay > 0:
        await asyncio.sleep(delay)
    begin = loop.time()
    total = int(rate * duration)
    tick = 0.01  # s
    k = 0
    while k < total:
        due = min(total, int((loop.time() - begin) * rate) + 1)
        while k < due:
            client = clients[k % len(clients)]
            qid = ids[k & 0xFFFF]
            name = name_for(k, hot_share)
            wire = dnswire.build_query(dnswire.zone_to_wire(name), dnswire.TYPE_A, dnswire.CLASS_IN,
                                       do=False, cd=False, qid=qid, edns=False)
            pending[(id(client), qid)] = (loop.time(), name, min(int(loop.time() - begin),
                                                                  len(counts.seconds) - 1))
            counts.seconds[pending[(id(client), qid)][2]][0] += 1
            if tcp:
                client.write(len(wire).to_bytes(2, "big") + wire)  # type: ignore[attr-defined]
            else:
                client.transport.sendto(wire)  # type: ignore[attr-defined]
            counts.sent += 1
            k += 1
        await asyncio.sleep(tick)
    deadline = loop.time() + timeout
    while pending and loop.time() < deadline:
        await asyncio.sleep(0.05)
    for (_, _, second) in pending.values():
        counts.seconds[second][4] += 1
    counts.lost = len(pending)
    for client in clients:
        if tcp:
            client.close()  # type: ignore[attr-defined]
        else:
            client.transport.close()  # type: ignore[attr-defined]
    return counts


def report(name: str, counts: Counts) -> None:
    """Print the counts (shown with ``pytest -s`` and in failure output)."""
    print(f"\n[{name}] {counts.summary()}\n  per second [sent, ok, servfail, wrong, lost]: "
          f"{counts.seconds}", file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1] == "upstream":
        _fake_main(sys.argv[2], sys.argv[3])
