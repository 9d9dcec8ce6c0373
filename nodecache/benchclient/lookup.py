"""Whole search-path lookups, timed as the application sees them.

One lookup is what ``getaddrinfo()`` does in glibc for a name: a new UDP
socket, then for each candidate from :func:`resolv.candidates` the query
types asked together (A and AAAA back to back for ``AF_UNSPEC``; one after
the other with ``options single-request``), waiting for all of them before
moving on. It succeeds at the first candidate with an
answer record, moves on after NXDOMAIN, NODATA or SERVFAIL, and fails on a
timeout (glibc would retry; here a timeout is what is being counted).

Like the application, the lookups block: they run one after another in a
thread of their own, with poll() and recv() on the socket as glibc's
``send_dg`` does, so no event loop turn sits between a query's answer and
the next query (on a busy two-core machine a loop turn costs tens of
microseconds, four of them per lookup).
"""
from __future__ import annotations

import asyncio
import random
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .loadgen import query_wire
from .resolv import ResolvConf, candidates

NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3
#: How often a blocked receive looks at the stop flag, s.
POLL = 0.05


@dataclass
class LookupResults:
    """Lookups of many names, one after another."""

    #: Whole-lookup times of the lookups that ended with an answer or with NXDOMAIN everywhere, s.
    times: list[float] = field(default_factory=list)
    found: int = 0
    not_found: int = 0
    #: Lookups ended by a query that was not answered in time.
    timeouts: int = 0
    queries: int = 0
    stopped: bool = False

    @property
    def lookups(self) -> int:
        return self.found + self.not_found + self.timeouts


def _wires(name: str, conf: ResolvConf, qtypes: Sequence[str]) -> list[list[list[bytes]]]:
    """Per candidate name, its queries (ID 0) in the groups sent together: all types at
    once, or one at a time with ``options single-request`` (resolv.conf(5))."""
    sequential = any(o.startswith("single-request") for o in conf.other_options)
    out = []
    for fqdn in candidates(name, conf):
        wires = [query_wire(fqdn, t, edns=conf.edns0) for t in qtypes]
        out.append([[w] for w in wires] if sequential else [wires])
    return out


def _ask(sock: socket.socket, queries: list[bytes], timeout: float, halt: threading.Event) -> list[bytes] | None:
    """Send *queries* together and wait for every answer; None on a timeout or a stop."""
    ids = random.sample(range(0x10000), len(queries))
    for qid, wire in zip(ids, queries):
        sock.send(qid.to_bytes(2, "big") + wire[2:])
    slots = {qid: i for i, qid in enumerate(ids)}
    answers: list[bytes | None] = [None] * len(ids)
    deadline = time.perf_counter() + timeout
    while slots:
        left = deadline - time.perf_counter()
        if left <= 0 or halt.is_set():
            return None
        sock.settimeout(min(left, POLL))
        try:
            data = sock.recv(65535)
        except TimeoutError:
            continue
        except OSError:  # ICMP unreachable: as glibc, give up on this server
            return None
        slot = slots.pop(data[0] << 8 | data[1], None) if len(data) >= 12 else None
        if slot is not None:
            answers[slot] = data
    return [a for a in answers if a is not None]


def _lookup(target: str, port: int, wires: list[list[list[bytes]]], timeout: float,
            halt: threading.Event) -> tuple[str, int]:
    """("found" | "not_found" | "timeout", queries sent) for one lookup."""
    sent = 0
    family = socket.AF_INET6 if ":" in target else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect((target, port))
        for groups in wires:
            answers = []
            for queries in groups:
                sent += len(queries)
                got = _ask(sock, queries, timeout, halt)
                if got is None:
                    return "timeout", sent
                answers += got
            if any(a[3] & 0x0F == NOERROR and int.from_bytes(a[6:8], "big") > 0 for a in answers):
                return "found", sent
            if not all(a[3] & 0x0F in (NOERROR, NXDOMAIN, SERVFAIL) for a in answers):
                return "not_found", sent  # REFUSED and the like end the search
    return "not_found", sent


def _run_blocking(target: str, port: int, prepared: list[list[list[list[bytes]]]], rate: float, timeout: float,
                  max_seconds: float, halt: threading.Event) -> LookupResults:
    res = LookupResults()
    start = time.perf_counter()
    for i, wires in enumerate(prepared):
        if halt.is_set() or time.perf_counter() - start > max_seconds:
            break
        delay = start + i / rate - time.perf_counter()
        if delay > 0 and halt.wait(delay):
            break
        t0 = time.perf_counter()
        outcome, sent = _lookup(target, port, wires, timeout, halt)
        elapsed = time.perf_counter() - t0
        if halt.is_set():  # stopped mid-lookup: not counted
            break
        res.queries += sent
        if outcome == "timeout":
            res.timeouts += 1
            continue
        res.times.append(elapsed)
        if outcome == "found":
            res.found += 1
        else:
            res.not_found += 1
    return res


async def run(target: str, names: Sequence[str], conf: ResolvConf, *, qtypes: Sequence[str],
              rate: float, timeout: float, max_seconds: float, stop: asyncio.Event,
              port: int = 53) -> LookupResults:
    """Look up each of *names* in turn, starting one at most every ``1 / rate`` seconds."""
    prepared = [_wires(n, conf, qtypes) for n in names]
    halt = threading.Event()
    relay = asyncio.ensure_future(stop.wait())
    relay.add_done_callback(lambda _: halt.set())
    try:
        res = await asyncio.to_thread(_run_blocking, target, port, prepared, rate, timeout, max_seconds, halt)
    finally:
        relay.cancel()
    res.stopped = stop.is_set()
    return res
