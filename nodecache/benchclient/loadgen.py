"""An open-loop UDP load generator: queries leave on a schedule, whatever the answers do.

Query *i* is due at ``start + i / rate``. The sender wakes, sends every query
that is due (a burst when the loop fell behind) and sleeps until the next one;
so a slow answer never delays the next query, as with many independent pods,
and unlike a closed loop, which hides a server's stalls (coordinated
omission). Each query is timed from its own send to its answer, so the
schedule's jitter, reported as the send lag, does not enter its latency.

Queries are spread round-robin over a few connected sockets: through a
Service, kube-proxy's conntrack pins each source port to one cluster DNS
endpoint, and pods use many source ports.

An answer later than the timeout counts as a timeout, as a stub resolver
would have given up. The run ends after ``count`` queries or ``max_seconds``,
whichever comes first, or at once when ``stop`` is set.
"""
from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import dns.message
import dns.rdatatype

#: Sends per burst before yielding to the loop, so answers are read while catching up.
BURST = 64
#: How often the drain after the last send looks at the stop flag, s.
DRAIN_POLL = 0.01
#: Receive buffer per socket, bytes: answers wait here while the loop is busy sending a burst.
RCVBUF = 1 << 20


def query_wire(name: str, qtype: str, *, edns: bool = False) -> bytes:
    """A recursive query for *name* (absolute or not: taken as absolute), ID 0."""
    q = dns.message.make_query(name if name.endswith(".") else name + ".",
                               dns.rdatatype.from_text(qtype), use_edns=0 if edns else False)
    q.id = 0
    return q.to_wire()


@dataclass
class RunResult:
    """What one run measured; times in seconds."""

    rate: float
    sent: int = 0
    #: Latency of every query answered within the timeout.
    latencies: list[float] = field(default_factory=list)
    timeouts: int = 0
    #: Unanswered when the stop flag ended the run, before their timeout ran out.
    abandoned: int = 0
    #: Answers by RCODE name (NOERROR, NXDOMAIN, SERVFAIL, ...).
    rcodes: dict[str, int] = field(default_factory=dict)
    truncated: int = 0
    #: From the first send to the last.
    send_span: float = 0.0
    #: How late each send left against its schedule.
    send_lags: list[float] = field(default_factory=list)
    #: Answers the kernel dropped because our own sockets' buffers were full
    #: (/proc/net/udp): loss the client caused, not the target.
    client_drops: int = 0
    #: The stop flag ended the run early.
    stopped: bool = False
    #: The answer to each query, by index (only when asked to keep them).
    answers: list[bytes | None] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return len(self.latencies)


class _Receiver(asyncio.DatagramProtocol):
    """Matches answers to queries by ID on one connected socket."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        #: query ID -> query index
        self.pending: dict[int, int] = {}

    def datagram_received(self, data: bytes, addr: object) -> None:
        if len(data) < 12 or not data[2] & 0x80:  # too short, or not a response (QR)
            return
        index = self.pending.pop(data[0] << 8 | data[1], None)
        if index is not None:
            self.run.answered(index, data, time.perf_counter())

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and the like: the query stays pending and times out.
        pass


class _Run:
    def __init__(self, count: int, keep: bool) -> None:
        self.sent_at = [0.0] * count
        self.answer_at: list[float | None] = [None] * count
        self.rcode = [0] * count
        self.tc = [False] * count
        self.answers: list[bytes | None] = [None] * count if keep else []
        self.outstanding = 0

    def answered(self, index: int, data: bytes, now: float) -> None:
        self.answer_at[index] = now
        self.rcode[index] = data[3] & 0x0F
        self.tc[index] = bool(data[2] & 0x02)
        if self.answers:
            self.answers[index] = data
        self.outstanding -= 1


async def run(target: str, wires: Sequence[bytes], *, rate: float, count: int, timeout: float,
              max_seconds: float, stop: asyncio.Event, sockets: int = 8, port: int = 53,
              keep_answers: bool = False) -> RunResult:
    """Send *count* queries (cycling through *wires*) to *target* at *rate* per second.

    :param wires: Query templates from :func:`query_wire`; their ID is overwritten.
    :param timeout: Seconds an answer may take to count as answered.
    :param max_seconds: Sending stops after this long even if queries remain.
    :param stop: Set it to end the run at once (what is measured so far is kept).
    """
    assert rate > 0 and wires and sockets > 0
    loop = asyncio.get_running_loop()
    state = _Run(count, keep_answers)
    receivers: list[_Receiver] = []
    transports: list[asyncio.DatagramTransport] = []
    try:
        for _ in range(sockets):
            tr, proto = await loop.create_datagram_endpoint(lambda: _Receiver(state),
                                                            remote_addr=(target, port))
            tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            transports.append(tr)
            receivers.append(proto)
        ids = [random.randrange(0x10000) for _ in range(sockets)]
        start = time.perf_counter()
        deadline = start + max_seconds
        interval = 1.0 / rate
        i = 0
        while i < count and not stop.is_set():
            now = time.perf_counter()
            if now >= deadline:
                break
            due = start + i * interval
            if due > now:
                await asyncio.sleep(due - now)
                continue
            burst = 0
            while i < count and burst < BURST and start + i * interval <= now:
                k = i % sockets
                qid = ids[k] = (ids[k] + 1) & 0xFFFF
                if receivers[k].pending.pop(qid, None) is None:  # an ID wrapped: the old one timed out
                    state.outstanding += 1
                receivers[k].pending[qid] = i
                wire = wires[i % len(wires)]
                state.sent_at[i] = time.perf_counter()
                transports[k].sendto(qid.to_bytes(2, "big") + wire[2:])
                i += 1
                burst += 1
            if burst == BURST:
                await asyncio.sleep(0)
        sent = i
        last_send = state.sent_at[sent - 1] if sent else start
        # Wait for the stragglers, at most one timeout after the last send.
        while state.outstanding > 0 and not stop.is_set() and time.perf_counter() < last_send + timeout:
            await asyncio.sleep(DRAIN_POLL)
        drops = socket_drops([tr.get_extra_info("socket").fileno() for tr in transports])
    finally:
        for tr in transports:
            tr.close()
    res = _collect(state, sent, start, interval, rate, timeout, stopped=stop.is_set())
    res.client_drops = drops
    return res


def socket_drops(fds: Sequence[int]) -> int:
    """Datagrams the kernel dropped at these UDP sockets (the ``drops`` column of
    /proc/net/udp and udp6, matched by inode); 0 where that cannot be read."""
    inodes = {str(os.fstat(fd).st_ino) for fd in fds}
    total = 0
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path, encoding="ascii") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) >= 13 and fields[9] in inodes:
                total += int(fields[12])
    return total


def _collect(state: _Run, sent: int, start: float, interval: float, rate: float, timeout: float,
             *, stopped: bool) -> RunResult:
    from dns.rcode import Rcode, to_text  # noqa: PLC0415

    res = RunResult(rate=rate, sent=sent, stopped=stopped)
    now = time.perf_counter()
    for i in range(sent):
        t = state.answer_at[i]
        latency = None if t is None else t - state.sent_at[i]
        if latency is None and stopped and now - state.sent_at[i] < timeout:
            res.abandoned += 1
            continue
        if latency is None or latency > timeout:
            res.timeouts += 1
            continue
        res.latencies.append(latency)
        name = to_text(Rcode.make(state.rcode[i]))
        res.rcodes[name] = res.rcodes.get(name, 0) + 1
        res.truncated += state.tc[i]
    res.send_lags = [state.sent_at[i] - (start + i * interval) for i in range(sent)]
    res.send_span = state.sent_at[sent - 1] - state.sent_at[0] if sent > 1 else 0.0
    if state.answers:
        res.answers = state.answers[:sent]
    return res
