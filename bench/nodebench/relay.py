"""A delaying DNS relay (UDP and TCP) in front of the cluster DNS.

It models the hop from a node to a CoreDNS pod on another node. The kernel here
has no netem qdisc, so every packet crossing the relay, in either direction, is
held for ``--delay-ms`` before it is passed on; one thread drains a FIFO of
(deadline, packet) and sleeps until each deadline with a 1 ns timer slack.
Because the delay is constant the FIFO is also deadline order.

It also counts what crosses it, which is how the bench sees how many upstream
queries and TCP connections a cache used: ``SIGUSR1`` writes the counters as
JSON to ``--stats`` (with a ``seq`` that goes up by one per dump).

UDP queries are relayed on one upstream socket with the message ID rewritten
(and restored on the way back); TCP connections are relayed one to one, with
DNS messages counted from their 2-byte length prefixes (RFC 1035 section 4.2.2).

Run: ``python -m nodebench.relay --listen IP --upstream IP [--delay-ms 0.25]``.
It stops by itself after ``--max-seconds``.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import queue
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

_PR_SET_TIMERSLACK = 29
_SO_RCVBUFFORCE = 33
_SO_SNDBUFFORCE = 32
_BUF = 4 << 20  # bytes


#: linux/tcp.h TCP_QUICKACK.
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)

def _tight_timer() -> None:
    """Ask for 1 ns timer slack on this thread so sub-millisecond sleeps are precise."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _big_buffers(s: socket.socket) -> None:
    for opt in (_SO_RCVBUFFORCE, _SO_SNDBUFFORCE):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, _BUF)
        except OSError:
            pass


class Stats:
    """Counters, bumped from several threads under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.c: dict[str, int] = dict(
            udp_queries=0, udp_replies=0, tcp_connections=0, tcp_open=0, tcp_max_open=0,
            tcp_queries=0, tcp_replies=0, seq=0,
        )

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.c[key] += n
            if key == "tcp_open" and self.c["tcp_open"] > self.c["tcp_max_open"]:
                self.c["tcp_max_open"] = self.c["tcp_open"]

    def dump(self, path: str) -> None:
        with self.lock:
            self.c["seq"] += 1
            data = json.dumps(self.c)
            # the next dump reports the most connections open since this one
            self.c["tcp_max_open"] = self.c["tcp_open"]
        tmp = f"{path}.tmp"
        with open(tmp, "w") as f:
            f.write(data)
        os.replace(tmp, path)


class DelayLine:
    """Calls ``fn(*args)`` *delay* seconds after :meth:`put`, in put order."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self._q: queue.SimpleQueue[tuple[float, Callable[..., Any], tuple[Any, ...]]] = queue.SimpleQueue()
        if delay > 0:
            threading.Thread(target=self._run, daemon=True, name="delay").start()

    def put(self, fn: Callable[..., Any], *args: Any) -> None:
        if self.delay <= 0:
            _call(fn, args)
        else:
            self._q.put((time.monotonic() + self.delay, fn, args))

    def _run(self) -> None:
        _tight_timer()
        # How much earlier than the deadline to ask to wake up: sleep() wakes
        # late by a fairly steady amount, so track it and aim that much early.
        early = 0.0  # s
        while True:
            due, fn, args = self._q.get()
            wait = due - time.monotonic()
            if wait > early:
                time.sleep(wait - early)
            # Track the median lateness with fixed steps, so one long stall
            # (a busy machine) cannot throw the estimate off.
            late = time.monotonic() - due
            early = min(self.delay / 2, max(0.0, early + (2e-6 if late > 0 else -2e-6)))
            _call(fn, args)


def _call(fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        fn(*args)
    except OSError:
        pass  # the peer went away; the client will time out and count it


class UdpRelay:
    def __init__(self, listen: str, upstream: tuple[str, int], line: DelayLine, stats: Stats) -> None:
        self.front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.front.bind((listen, 53))
        self.back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.back.connect(upstream)
        for s in (self.front, self.back):
            _big_buffers(s)
        self.line, self.stats = line, stats
        # relayed ID -> (client address, client's ID bytes); reused after 65,536 queries
        self.pending: list[tuple[Any, bytes] | None] = [None] * 65536
        self.next_id = 0

    def start(self) -> None:
        threading.Thread(target=self._front, daemon=True, name="udp-front").start()
        threading.Thread(target=self._back, daemon=True, name="udp-back").start()

    def _front(self) -> None:
        _tight_timer()
        while True:
            data, addr = self.front.recvfrom(65535)
            if len(data) < 12:
                continue
            nid = self.next_id
            self.next_id = (nid + 1) & 0xFFFF
            self.pending[nid] = (addr, data[:2])
            self.stats.c["udp_queries"] += 1  # only this thread writes it
            self.line.put(self.back.send, struct.pack("!H", nid) + data[2:])

    def _back(self) -> None:
        _tight_timer()
        while True:
            try:
                data = self.back.recv(65535)
            except ConnectionRefusedError:
                continue
            if len(data) < 12:
                continue
            entry = self.pending[struct.unpack_from("!H", data)[0]]
            if entry is None:
                continue
            addr, oid = entry
            self.stats.c["udp_replies"] += 1
            self.line.put(self.front.sendto, oid + data[2:], addr)


class TcpRelay:
    def __init__(self, listen: str, upstream: tuple[str, int], line: DelayLine, stats: Stats) -> None:
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind((listen, 53))
        self.lsock.listen(1024)
        self.upstream, self.line, self.stats = upstream, line, stats

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="tcp-accept").start()

    def _accept(self) -> None:
        while True:
            client, _ = self.lsock.accept()
            self.stats.add("tcp_connections")
            self.stats.add("tcp_open")
            try:
                up = socket.create_connection(self.upstream, timeout=5)
                up.settimeout(None)
            except OSError:
                client.close()
                self.stats.add("tcp_open", -1)
                continue
            self._relay(client, up)

    def _relay(self, client: socket.socket, up: socket.socket) -> None:
        """Pump both directions of one connection; close both sockets when both are done."""
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        done = [0]
        lock = threading.Lock()

        def finish() -> None:
            with lock:
                done[0] += 1
                last = done[0] == 2
            if last:
                client.close()
                up.close()
                self.stats.add("tcp_open", -1)

        threading.Thread(target=self._pump, args=(client, up, "tcp_queries", finish), daemon=True).start()
        threading.Thread(target=self._pump, args=(up, client, "tcp_replies", finish), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, counter: str, finish: Callable[[], None]) -> None:
        _tight_timer()
        pending = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                # ACK at once, as a router in between would not delay anything:
                # a sender with Nagle on would otherwise wait for our delayed ACK.
                src.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
                pending += data
                n = 0
                while len(pending) >= 2:
                    size = struct.unpack_from("!H", pending)[0]
                    if len(pending) < 2 + size:
                        break
                    pending = pending[2 + size:]
                    n += 1
                if n:
                    self.stats.add(counter, n)
                self.line.put(dst.sendall, data)
            self.line.put(dst.shutdown, socket.SHUT_WR)
        except OSError:
            self.line.put(dst.shutdown, socket.SHUT_RDWR)
        finally:
            # Let the delayed shutdown go out before the sockets close.
            self.line.put(finish)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--upstream-port", type=int, default=53)
    ap.add_argument("--delay-ms", type=float, default=0.25, help="added each way, ms")
    ap.add_argument("--stats", required=True, help="where SIGUSR1 writes the counters")
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    args = ap.parse_args()
    import sys
    sys.setswitchinterval(0.0002)  # hand the GIL over quickly: every thread is I/O-bound

    stats = Stats()
    line = DelayLine(args.delay_ms / 1000.0)
    up = (args.upstream, args.upstream_port)
    UdpRelay(args.listen, up, line, stats).start()
    TcpRelay(args.listen, up, line, stats).start()
    signal.signal(signal.SIGUSR1, lambda *_: stats.dump(args.stats))
    stats.dump(args.stats)  # seq 1: ready
    deadline = time.monotonic() + args.max_seconds
    while time.monotonic() < deadline:
        time.sleep(0.5)


if __name__ == "__main__":
    main()
