"""Resolve cache misses: coalesce identical ones, forward, hand replies back.

Rules of this module:

1. Identical misses in flight (same cache key) share one upstream query, as
   CoreDNS's singleflight does; the first is the *leader*: its
   :class:`_Flight` record is the forwarder's callback, and the others wait
   in its list. No task or coroutine per miss. Each client still gets
   a reply with its own ID, question case and EDNS.
2. Shedding: while the agent is ``overloaded`` (this process cannot keep up:
   the agent watches how full its UDP receive queues are), a client address
   that already has ``OVERLOAD_SHARE`` UDP misses in flight gets its new ones
   dropped unanswered; it retries, as a resolver does after a lost datagram.
   A slow upstream is not overload: its misses wait for an answer, a stale
   one or SERVFAIL within the budget (``max_concurrent`` bounds them).
   Only misses that would start an upstream query count: coalesced followers
   cost nothing and are never shed. Misses are counted only while
   overloaded (a count kept at all times would cost every miss three dict
   operations): one that started before holds no share.
   One pod flooding unique names then costs a label walk per query, and the
   other pods' cache hits, waiting in the same socket queue, keep being
   answered. TCP misses are bounded per connection (``server.TCP_MAX_INFLIGHT``).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from nodecache.aio.errorlog import ErrorReporter
from nodecache.aio.forwarder import Query
from nodecache.core import querylog, wire
from nodecache.core.handler import Miss, Outcome, QueryHandler, Zone
from nodecache.core.stats import AgentStats
from nodecache.errors import UpstreamError

log = logging.getLogger(__name__)

#: UDP misses in flight one client address keeps while the agent is overloaded
#: (a pod's search-path lookups, A and AAAA in parallel, stay within it).
OVERLOAD_SHARE = 4

#: Sends a reply to the client address it was submitted with: (reply, address).
Deliver = Callable[[bytes, Any], None]

#: ``serve_stale ... verify``: a client with a stale answer waits this long for
#: the upstream, s; then it gets the stale answer while the refresh goes on.
#: RFC 8767 section 5 suggests 1.8 s (unbound's serve-expired-client-timeout).
CLIENT_RESPONSE_TIMER = 1.8
_STALE_TIMER_ERROR = UpstreamError(f"no answer within {CLIENT_RESPONSE_TIMER}s"
                                   " (client-response timer, RFC 8767 section 5)")


class Forwarding(Protocol):
    """What the resolver needs from a forwarder (``nodecache.aio.forwarder.Forwarder``)."""

    def submit(self, q: Query, request: bytes, *, tcp: bool,
               question: bytes | None = None) -> None: ...

    def cancel(self, query: Query) -> None: ...


#: A client waiting on another's upstream query: (its miss, its deliver, its address).
Follower = tuple[Miss, Deliver, object]


class _Flight(Query):
    """A miss from the client's datagram to its reply: the upstream query (the
    forwarder's record), its client, and the clients who asked the same since.

    Its :meth:`done` is the forwarder's call: the upstream answer is absorbed
    once and every waiter gets its reply from it.
    """

    __slots__ = ("resolver", "miss", "deliver", "addr", "followers", "stale_sent", "stale_timer",
                 "forwarder", "source")

    def __init__(self, resolver: Resolver, miss: Miss, deliver: Deliver, addr: object,
                 source: object) -> None:
        Query.__init__(self)
        self.resolver = resolver
        #: The leader: the miss whose query goes upstream, and where its reply goes
        #: (``deliver`` None: it already got one, a stale answer).
        self.miss = miss
        self.deliver: Deliver | None = deliver
        self.addr = addr
        #: Clients that asked the same while the query was in flight (None until one does).
        self.followers: list[Follower] | None = None
        #: The client-response timer fired: waiters got the stale answer.
        self.stale_sent = False
        self.stale_timer: asyncio.TimerHandle | None = None
        #: The forwarder of the upstream query (to cancel it at close).
        self.forwarder: Forwarding | None = None
        #: The client address whose per-source count the leader holds until it
        #: gets a reply (None: not counted).
        self.source = source

    def release(self) -> None:
        """The leader got its reply: it no longer counts against its client address."""
        source, self.source = self.source, None
        if source is not None:
            per_source = self.resolver.per_source
            held = per_source.pop(source, 1) - 1
            if held > 0:
                per_source[source] = held

    def done(self, answer: bytes | None, error: Exception | None) -> None:
        resolver = self.resolver
        handler = resolver.handler
        miss = self.miss
        if self.stale_timer is not None:
            self.stale_timer.cancel()
        if resolver.inflight.get(miss.key) is self:
            del resolver.inflight[miss.key]
        source = self.source
        if source is not None:  # release(), in line: nearly every miss has a source
            self.source = None
            per_source = resolver.per_source
            held = per_source.pop(source, 1) - 1
            if held > 0:
                per_source[source] = held
        now = resolver._loop.time()
        outcome: Outcome | None = None
        if answer is not None:
            try:
                outcome = handler.absorb(miss, answer, now)
            except Exception as exc:  # an answer we cannot store is the upstream's fault
                error = exc
        if outcome is None and miss.zone.block.errors is not None:
            resolver.errors.report(miss.zone.block, querylog.error_line(
                wire.SERVFAIL, wire.name_text(miss.qname), miss.qtype, error), str(error))
        deliver, self.deliver = self.deliver, None
        if deliver is not None:
            self._answer(miss, deliver, self.addr, outcome, error, now)
        followers, self.followers = self.followers, None
        for waiter, send, where in followers or ():
            self._answer(waiter, send, where, outcome, error, now)

    def _answer(self, waiter: Miss, send: Deliver, where: object, outcome: Outcome | None,
                error: Exception | None, now: float) -> None:
        """One waiter's reply from the upstream's ``outcome`` (None: it failed with ``error``)."""
        handler = self.resolver.handler
        try:
            if outcome is not None:
                reply = handler.reply(waiter, outcome, now, where)
                if isinstance(reply, Miss):  # dns64 needs the A records too
                    self.resolver.submit(reply, send, where)
                else:
                    send(reply, where)
            else:
                send(handler.fail(waiter, error or UpstreamError(), now, where), where)
        except Exception:  # one bad reply must not cost the other waiters theirs
            log.exception("answering %s failed", wire.name_text(waiter.qname))

    def serve_stale(self) -> None:
        """The upstream is slow: waiters with a stale answer get it; the query goes on."""
        self.stale_timer = None
        self.stale_sent = True
        handler = self.resolver.handler
        now = self.resolver._loop.time()
        if self.deliver is not None and self.miss.stale is not None:
            deliver, self.deliver = self.deliver, None
            self.release()
            self._stale(self.miss, deliver, self.addr, now)
        keep = []
        for waiter in self.followers or ():
            if waiter[0].stale is None:
                keep.append(waiter)
            else:
                self._stale(*waiter, now)
        self.followers = keep or None

    def _stale(self, miss: Miss, send: Deliver, where: object, now: float) -> None:
        try:
            send(self.resolver.handler.fail(miss, _STALE_TIMER_ERROR, now, where), where)
        except Exception:
            log.exception("answering %s failed", wire.name_text(miss.qname))


class Resolver:
    """Runs misses for one handler; ``forwarders`` maps a Zone to its forwarder."""

    def __init__(self, handler: QueryHandler, forwarders: Mapping[Zone, Forwarding],
                 stats: AgentStats | None = None, errors: ErrorReporter | None = None) -> None:
        self.handler = handler
        #: Writes the ``errors`` plugin's lines.
        self.errors = errors or ErrorReporter()
        self.forwarders = forwarders
        self.stats = stats or AgentStats()
        #: key -> the upstream query in flight for it.
        self.inflight: dict[bytes, _Flight] = {}
        #: UDP misses in flight per client address, of those started while overloaded
        #: (only addresses with some).
        self.per_source: dict[object, int] = {}
        #: Set by the agent while queries queue up on its sockets (it cannot keep up).
        self.overloaded = False
        self._loop = asyncio.get_running_loop()

    def submit(self, miss: Miss, deliver: Deliver, addr: object) -> None:
        flight = self.inflight.get(miss.key)
        if flight is not None:
            if miss.background:  # a refresh is already under way
                self.handler.fail(miss, UpstreamError("refresh in flight"), self._loop.time())
            elif flight.stale_sent and miss.stale is not None:
                deliver(self.handler.fail(miss, _STALE_TIMER_ERROR, self._loop.time(), addr), addr)
            elif flight.followers is None:
                flight.followers = [(miss, deliver, addr)]
            else:
                flight.followers.append((miss, deliver, addr))
            return
        source = None
        if self.overloaded and not miss.slot & 2 and isinstance(addr, tuple):
            source = addr[0]
            held = self.per_source.get(source, 0)
            if held >= OVERLOAD_SHARE:
                self.stats.dropped += 1
                return
            self.per_source[source] = held + 1
        flight = self.inflight[miss.key] = _Flight(self, miss, deliver, addr, source)
        if miss.stale is not None and not miss.background:
            # serve_stale ... verify: RFC 8767 section 5's client-response timer
            flight.stale_timer = self._loop.call_later(CLIENT_RESPONSE_TIMER, flight.serve_stale)
        try:
            forwarder = flight.forwarder = self.forwarders[miss.zone]
            # the question key is the cache key's first part (core.upstream.question_key),
            # unless rewrite changed the question (the forwarder then reads it)
            question = None if miss.resolution is not None and miss.resolution.rewritten \
                else miss.key[:miss.question_end - 12]
            forwarder.submit(flight, self.handler.upstream_query(miss),
                             tcp=bool(miss.slot & 2), question=question)
        except Exception as exc:  # refused at once: max_concurrent, closed
            flight.done(None, exc)

    def pending(self) -> int:
        """Misses in flight (leaders and their followers)."""
        return sum((f.deliver is not None) + len(f.followers or ())
                   for f in self.inflight.values())

    @property
    def busy(self) -> int:
        """Upstream queries in flight."""
        return len(self.inflight)

    async def close(self) -> None:
        """Stop every upstream query in flight; their clients get no reply."""
        for flight in list(self.inflight.values()):
            if flight.stale_timer is not None:
                flight.stale_timer.cancel()
            if flight.forwarder is not None:
                flight.forwarder.cancel(flight)
        self.inflight.clear()
