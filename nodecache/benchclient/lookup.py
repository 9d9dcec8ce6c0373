"""Whole search-path lookups, timed as the application sees them.

One lookup is what ``getaddrinfo()`` does in glibc for a name: a new UDP
socket, then for each candidate from :func:`resolv.candidates` the query
types asked together (A and AAAA back to back for ``AF_UNSPEC``), waiting for
all of them before moving on. It succeeds at the first candidate with an
answer record, moves on after NXDOMAIN, NODATA or SERVFAIL, and fails on a
timeout (glibc would retry; here a timeout is what is being counted).
"""
from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from .loadgen import query_wire
from .resolv import ResolvConf, candidates

NOERROR, SERVFAIL, NXDOMAIN = 0, 2, 3


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


class _Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}

    def datagram_received(self, data: bytes, addr: object) -> None:
        fut = self.waiting.pop(data[0] << 8 | data[1], None) if len(data) >= 12 else None
        if fut is not None and not fut.done():
            fut.set_result(data)


async def _lookup(target: str, port: int, name: str, conf: ResolvConf, qtypes: Sequence[str],
                  timeout: float) -> tuple[str, int]:
    """("found" | "not_found" | "timeout", queries sent) for one lookup."""
    loop = asyncio.get_running_loop()
    tr, sock = await loop.create_datagram_endpoint(_Socket, remote_addr=(target, port))
    sent = 0
    try:
        for fqdn in candidates(name, conf):
            futs = []
            for qtype in qtypes:
                qid = random.randrange(0x10000)
                while qid in sock.waiting:
                    qid = random.randrange(0x10000)
                fut: asyncio.Future[bytes] = loop.create_future()
                sock.waiting[qid] = fut
                futs.append(fut)
                tr.sendto(qid.to_bytes(2, "big") + query_wire(fqdn, qtype, edns=conf.edns0)[2:])
                sent += 1
            done, _ = await asyncio.wait(futs, timeout=timeout)
            if len(done) < len(futs):
                return "timeout", sent
            answers = [f.result() for f in futs]
            if any(a[3] & 0x0F == NOERROR and int.from_bytes(a[6:8], "big") > 0 for a in answers):
                return "found", sent
            if not all(a[3] & 0x0F in (NOERROR, NXDOMAIN, SERVFAIL) for a in answers):
                return "not_found", sent  # REFUSED and the like end the search
        return "not_found", sent
    finally:
        tr.close()


async def run(target: str, names: Sequence[str], conf: ResolvConf, *, qtypes: Sequence[str],
              rate: float, timeout: float, max_seconds: float, stop: asyncio.Event,
              port: int = 53) -> LookupResults:
    """Look up each of *names* in turn, starting one at most every ``1 / rate`` seconds."""
    res = LookupResults()
    start = time.perf_counter()
    stopping = asyncio.ensure_future(stop.wait())
    try:
        for i, name in enumerate(names):
            if stop.is_set() or time.perf_counter() - start > max_seconds:
                break
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.wait([stopping], timeout=delay)
                if stop.is_set():
                    break
            t0 = time.perf_counter()
            one = asyncio.ensure_future(_lookup(target, port, name, conf, qtypes, timeout))
            await asyncio.wait([one, stopping], return_when=asyncio.FIRST_COMPLETED)
            if not one.done():  # stopped mid-lookup: drop it
                one.cancel()
                break
            elapsed = time.perf_counter() - t0
            _count(res, *one.result(), elapsed)
    finally:
        stopping.cancel()
    res.stopped = stop.is_set()
    return res


def _count(res: LookupResults, outcome: str, sent: int, elapsed: float) -> None:
    res.queries += sent
    if outcome == "timeout":
        res.timeouts += 1
        return
    res.times.append(elapsed)
    if outcome == "found":
        res.found += 1
    else:
        res.not_found += 1
