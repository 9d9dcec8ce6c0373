"""Resolve cache misses: coalesce identical ones, forward, hand replies back.

Rules of this module:

1. Identical misses in flight (same cache key) share one upstream query, as
   CoreDNS's singleflight does; the first is the *leader* and runs a task,
   the others wait in its list (no task of their own). Each client still gets
   a reply with its own ID, question case and EDNS.
2. Shedding: while the agent is ``overloaded`` (this process cannot keep up:
   the agent watches how full its UDP receive queues are), a client address
   that already has ``OVERLOAD_SHARE`` UDP misses in flight gets its new ones
   dropped unanswered; it retries, as a resolver does after a lost datagram.
   A slow upstream is not overload: its misses wait for an answer, a stale
   one or SERVFAIL within the budget (``max_concurrent`` bounds them).
   Only misses that would start an upstream query count: coalesced followers
   cost nothing and are never shed.
   One pod flooding unique names then costs a label walk per query, and the
   other pods' cache hits, waiting in the same socket queue, keep being
   answered. TCP misses are bounded per connection (``server.TCP_MAX_INFLIGHT``).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from nodecache.aio.errorlog import ErrorReporter
from nodecache.core import querylog, wire
from nodecache.core.handler import Miss, Outcome, QueryHandler, name_text
from nodecache.core.stats import AgentStats
from nodecache.errors import UpstreamError

log = logging.getLogger(__name__)

#: UDP misses in flight one client address keeps while the agent is overloaded
#: (a pod's search-path lookups, A and AAAA in parallel, stay within it).
OVERLOAD_SHARE = 4

Deliver = Callable[[bytes], None]


class Forwarding:
    """What the resolver needs from a forwarder (``nodecache.aio.forwarder.Forwarder``)."""

    async def query(self, request: bytes, *, tcp: bool) -> bytes:  # pragma: no cover
        raise NotImplementedError


class Resolver:
    """Runs misses for one handler; ``forwarders`` maps a Zone to its forwarder."""

    def __init__(self, handler: QueryHandler, forwarders: dict[object, Forwarding],
                 stats: AgentStats | None = None, errors: ErrorReporter | None = None) -> None:
        self.handler = handler
        #: Writes the ``errors`` plugin's lines.
        self.errors = errors or ErrorReporter()
        self.forwarders = forwarders
        self.stats = stats or AgentStats()
        #: key -> the followers waiting on the leader's answer.
        self.inflight: dict[bytes, list[tuple[Miss, Deliver, object]]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        #: UDP misses in flight per client address (only addresses with some).
        self.per_source: dict[object, int] = {}
        #: Set by the agent while queries queue up on its sockets (it cannot keep up).
        self.overloaded = False
        self._loop = asyncio.get_running_loop()
        handler.refresh = lambda miss: self.submit(miss, _discard, None)

    def submit(self, miss: Miss, deliver: Deliver, addr: object) -> None:
        followers = self.inflight.get(miss.key)
        if followers is not None:
            if miss.background:  # a refresh is already under way
                self.handler.fail(miss, UpstreamError("refresh in flight"), self._loop.time())
            else:
                followers.append((miss, deliver, addr))
            return
        source = addr[0] if miss.slot < 2 and isinstance(addr, tuple) else None
        if source is not None:
            held = self.per_source.get(source, 0)
            if held >= OVERLOAD_SHARE and self.overloaded:
                self.stats.dropped += 1
                return
            self.per_source[source] = held + 1
            deliver = self._releasing(source, deliver)
        self.inflight[miss.key] = []
        task = self._loop.create_task(self._lead(miss, deliver, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _releasing(self, source: object, deliver: Deliver) -> Deliver:
        def release_then_deliver(reply: bytes) -> None:
            held = self.per_source.pop(source, 1) - 1
            if held > 0:
                self.per_source[source] = held
            deliver(reply)
        return release_then_deliver

    async def _lead(self, miss: Miss, deliver: Deliver, addr: object) -> None:
        handler = self.handler
        outcome: Outcome | None = None
        error: Exception | None = None
        try:
            forwarder = self.forwarders[miss.zone]
            answer = await forwarder.query(handler.upstream_query(miss), tcp=miss.slot >= 2)
            outcome = handler.absorb(miss, answer, self._loop.time())
        except Exception as exc:  # every failure becomes SERVFAIL/REFUSED/stale for the waiters
            error = exc
            if miss.zone.block.errors is not None:
                self.errors.report(miss.zone.block, querylog.error_line(
                    wire.SERVFAIL, name_text(miss.qname), miss.qtype, exc), str(exc))
        finally:
            followers = self.inflight.pop(miss.key, [])
        now = self._loop.time()
        for waiter, send, where in [(miss, deliver, addr), *followers]:
            try:
                if outcome is not None:
                    send(handler.reply(waiter, outcome, now, where))
                else:
                    send(handler.fail(waiter, error or UpstreamError(), now, where))
            except Exception:  # one bad reply must not cost the other waiters theirs
                log.exception("answering %s failed", name_text(waiter.qname))

    def pending(self) -> int:
        """Misses in flight (leaders and their followers)."""
        return sum(1 + len(f) for f in self.inflight.values())

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _discard(reply: bytes) -> None:
    """Background refreshes have no client."""
