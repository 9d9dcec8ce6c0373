"""Forwarding cache misses to the upstreams: the asyncio side.

The decisions live in ``nodecache.core.upstream`` (framing, matching,
connection lifecycle, pool), ``nodecache.core.plan`` (which upstream next,
when to give up) and ``nodecache.core.policy`` (order, health); this module
only moves bytes and arms timers:

* a query is a :class:`Query` record driven by callbacks: its first try
  (``core.plan.first_try``; the full ``ForwardPlan`` only once a try fails),
  the answer or failure handed to its ``done`` method. The caller's own
  record is a subclass (the resolver's, with the clients waiting on it), so
  a miss is one object from the client's datagram to its reply. No task,
  coroutine or future per query; ``query()`` is an awaitable wrapper for
  callers that want one.
* try timeouts: every try of a ``forward`` block has the same timeout, so
  deadlines come in the order tries start. They queue in one deque behind
  one timer, re-armed at the earliest; an answered try leaves it lazily (no
  timer created and cancelled per try). Only a try cut short by the end of
  the budget, which would jump the queue, gets a timer of its own.
* UDP: one fresh connected socket per try (a fresh random source port,
  RFC 5452 section 9.2), read with ``add_reader`` - no transport object.
* TCP: :class:`_TCPProtocol` feeds a core ``UpstreamConnection``; queries
  queued in one loop iteration leave in one ``send``; every complete frame of
  a read is matched in one pass. Each pool arms one timer at its connections'
  ``get_timer()`` (idle expiry, ``max_age``).
* background tasks: dials and one health-check loop per failed upstream.

The per-query path never builds a ``dns.message``: the question key comes
from the caller (or is read from the request bytes) and the message ID is
patched once each way.
"""
from __future__ import annotations

import asyncio
import logging
import random
import socket
from bisect import bisect_left
from collections import deque
from collections.abc import Coroutine, Sequence
from typing import Any

from nodecache.aio.dot import client_context
from nodecache.config.settings import ForwardSettings, Upstream
from nodecache.core import plan as _plan
from nodecache.core import policy as _policy
from nodecache.core.plan import Failure, classify_errno
from nodecache.core.stats import (
    ANSWER_RCODE_SHIFT, ANSWER_UPSTREAM_SHIFT, TIME_BUCKETS, ForwardStats,
)
from nodecache.core.upstream import (
    MAX_CONNECTIONS, MAX_IN_FLIGHT, AnswerReceived, Backoff, ConnectionPool, ConnectionTerminated,
    ConnEvent, ConnState, IdSource, UpstreamConnection, frame, health_probe, is_truncated,
    question_key, same_question, set_id,
)
from nodecache.core.wire import HEADER_LEN
from nodecache.errors import ClientProtocolError, ConcurrencyLimitError, UpstreamError

log = logging.getLogger(__name__)

#: Largest UDP answer read, bytes (the largest DNS message, RFC 1035 + EDNS).
_UDP_MAX = 65535
#: Read timeout of one health check, s (CoreDNS proxy/health.go: 1 s).
_HEALTH_TIMEOUT = 1.0
#: A loop timer may fire this much before its time, s (uvloop counts in ms).
_TIMER_SLACK = 0.001


class _TryFailed(Exception):
    """One try against one upstream failed, as ``failure``."""

    def __init__(self, failure: Failure, detail: str = "") -> None:
        super().__init__(detail or failure.value)
        self.failure = failure


def _failure_of(exc: BaseException) -> Failure:
    if isinstance(exc, TimeoutError):
        return Failure.TIMEOUT
    if isinstance(exc, OSError):
        return classify_errno(exc.errno)
    return Failure.LOCAL


def _resolve(fut: asyncio.Future[Any], result: Any = None, exc: BaseException | None = None) -> None:
    if not fut.done():
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)


def _timeout(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


def _read_answer(sock: socket.socket, qid: int, question: bytes | None) -> bytes | OSError | None:
    """Read what is queued on ``sock``: the first answer to ``qid`` (and ``question``,
    unless None), the socket's error (an ICMP error, RFC 1122 section 4.1.3.3), or None."""
    hi, lo = qid >> 8, qid & 0xFF
    for _ in range(64):  # bounded per wake-up; what does not answer our query is dropped
        try:
            data = sock.recv(_UDP_MAX)
        except BlockingIOError:
            return None
        except OSError as exc:
            return exc
        if (len(data) >= HEADER_LEN and data[0] == hi and data[1] == lo and data[2] & 0x80
                and (question is None or same_question(data, question))):
            return data
    return None


#: linux/tcp.h TCP_QUICKACK (socket.TCP_QUICKACK where Python exposes it).
_TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)


class _TCPProtocol(asyncio.Protocol):
    """Pumps one pooled connection: bytes in -> core events -> futures."""

    def __init__(self, owner: _UpstreamState, conn: UpstreamConnection) -> None:
        self.owner = owner
        self.conn = conn
        self.transport: asyncio.Transport | None = None
        self._flush_pending = False
        #: A read left answers to come: ACK at the flush unless a write carries it.
        self._ack_due = False
        self._tls_noted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._sock = transport.get_extra_info("socket")
        self._quickack()

    def _quickack(self) -> None:
        # Acknowledge at once (Linux turns this back off after a while, and
        # setting it sends an ACK that is due): an upstream that leaves Nagle on
        # holds its next pipelined answer until our ACK, which delayed ACK would
        # hold for up to 40 ms.
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        except (OSError, AttributeError):
            pass

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if self.owner.tls is not None and not self._tls_noted:
            self._tls_noted = True
            self.owner.tls.note(self.transport.get_extra_info("ssl_object")
                                if self.transport is not None else None)
        self.owner.handle_events(self, conn.receive_data(data, self.owner.loop.time()))
        if conn.in_flight:
            # More answers to come: the ACK is due at the end of this loop
            # iteration, where a query leaving then carries it (under load, the
            # next client queries arrive in the same iteration) and only
            # otherwise costs a syscall.
            self._ack_due = True
            self.schedule_flush()

    def eof_received(self) -> bool | None:
        self.owner.handle_events(self, self.conn.receive_data(b"", self.owner.loop.time()))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        term = self.conn.connection_lost(str(exc) if exc else "")
        if term is not None and exc is not None:
            self.owner._terminated(self.conn, term, _failure_of(exc))  # reset, not a clean EOF
            term = None
        self.owner.handle_events(self, [term] if term else [])
        self.transport = None

    def flush(self) -> None:
        self._flush_pending = False
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self._ack_due = False
            self.transport.write(data)
        elif self._ack_due:
            self._ack_due = False
            if self.conn.in_flight:
                self._quickack()

    def schedule_flush(self) -> None:
        """Write at the end of this loop iteration: queries sent in one
        iteration share one ``send`` (measured: about 25x fewer syscalls at
        50 concurrent queries)."""
        if not self._flush_pending:
            self._flush_pending = True
            self.owner.loop.call_soon(self.flush)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
            self.transport = None


class _UpstreamState:
    """Everything the forwarder keeps per upstream."""

    def __init__(self, fwd: Forwarder, upstream: Upstream) -> None:
        self.fwd = fwd
        self.loop = fwd._loop
        self.upstream = upstream
        self.name = str(upstream)
        #: The upstream's index in ``ForwardStats``, and its part of its answers' tally keys.
        self.index = fwd.stats.upstream_index(self.name)
        self.answer_base = self.index << ANSWER_UPSTREAM_SHIFT
        self.addr = (upstream.host, upstream.port)
        self.family = socket.AF_INET6 if ":" in upstream.host else socket.AF_INET
        self.health = _policy.UpstreamHealth()
        s = fwd.settings
        self.pool = ConnectionPool(max_age=s.max_age, expire=s.expire, ids=fwd._ids,
                                   max_idle=s.max_idle_conns, **fwd._pool_limits)
        self.protocols: dict[UpstreamConnection, _TCPProtocol] = {}
        #: ``tls://``: the TLS client context (its session is resumed) and the name checked.
        self.tls = client_context(s) if upstream.tls else None
        self.tls_name = s.tls_servername or upstream.host
        #: The pool's timer (the earliest ``get_timer()`` of its connections).
        self._timer: asyncio.TimerHandle | None = None

    def handle_events(self, proto: _TCPProtocol,
                      events: list[AnswerReceived | ConnectionTerminated]) -> None:
        """A read's events: each answer's bookkeeping here, in one loop (a call per
        answer costs about what the bookkeeping does), then the query's ``done``."""
        fwd = self.fwd
        conn = proto.conn
        stats = fwd.stats
        answers, seconds = stats.answers, stats.seconds
        base = self.answer_base
        now = self.loop.time()
        answered = False
        for ev in events:
            if type(ev) is AnswerReceived:
                q: Query = ev.token  # type: ignore[assignment]
                if q.conn is not conn or not q.live or q.timer is not None or q.late \
                        or q.plan is not None:  # a late answer, a retry, failover: the long way
                    fwd._tcp_answered(q, ev.wire, conn)
                    continue
                # the try ends with its answer: the connection already forgot it, the
                # deadline queue drops it lazily (below), ForwardStats.answered inline
                # (a call per answer costs as much as the counting)
                q.conn = None
                q.expires = 0.0
                answer = ev.wire
                elapsed = now - q.sent
                key = base | (answer[3] & 0x0F) << ANSWER_RCODE_SHIFT | bisect_left(TIME_BUCKETS, elapsed)
                answers[key] = answers.get(key, 0) + 1
                seconds[key >> ANSWER_RCODE_SHIFT] += elapsed
                answered = True
                fwd._in_flight -= 1
                fwd._live.discard(q)
                q.live = False
                q.done(answer, None)
            else:
                self._terminated(conn, ev)  # type: ignore[arg-type]
        if answered:
            fwd._drop_answered()
        if conn.state is not ConnState.CLOSED and self.pool.surplus_idle(conn):
            conn.terminate(ConnEvent.IDLE, "max_idle_conns")
        if conn.state is ConnState.CLOSED:
            self._discard(conn)
        elif not conn.in_flight and self._timer is None:
            self.arm()

    def _terminated(self, conn: UpstreamConnection, ev: ConnectionTerminated,
                    failure: Failure | None = None) -> None:
        """Fail the queries ``ev`` lists; ``failure`` says why a dial failed."""
        if ev.reason is ConnEvent.PROTOCOL_ERROR:
            log.debug("upstream %s: closing connection: %s", self.name, ev.detail)
            failure, detail = Failure.PROTOCOL, ev.detail
        elif ev.reason is ConnEvent.CONNECT_FAILED:
            failure, detail = failure or Failure.LOCAL, f"connect: {ev.detail}"
        elif ev.reason is ConnEvent.PEER_CLOSED and failure is not None:
            detail = ev.detail
        else:
            failure, detail = Failure.CLOSED, f"{ev.reason.value}: {ev.detail}"
        fwd = self.fwd
        for q in ev.failed:
            fwd._try_failed(q, failure, detail)  # type: ignore[arg-type]

    def _discard(self, conn: UpstreamConnection) -> None:
        self.pool.forget(conn)
        proto = self.protocols.pop(conn, None)
        if proto is not None:
            proto.close()

    def arm(self) -> None:
        """Arm the pool's timer at the earliest connection timer, if none is armed."""
        if self._timer is not None or self.fwd._closed:
            return
        when = None
        for conn in self.pool.connections:
            at = conn.get_timer()
            if at is not None and (when is None or at < when):
                when = at
        if when is not None:
            self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        for conn, term in self.pool.reap(self.loop.time()):
            if term is not None:
                self._terminated(conn, term)
            self._discard(conn)
        self.arm()

    async def dial(self, conn: UpstreamConnection, proto: _TCPProtocol) -> None:
        fwd = self.fwd
        try:
            async with asyncio.timeout(fwd.settings.try_timeout):
                await self.loop.create_connection(lambda: proto, *self.addr, **self.tls_args())
        except (OSError, TimeoutError) as exc:
            term = self.pool.connect_failed(conn, self.loop.time(), repr(exc))
            self._discard(conn)
            if term is not None:
                self._terminated(conn, term, _failure_of(exc))
            return
        if conn.state is ConnState.CLOSED or fwd._closed:  # closed while dialling
            proto.close()
            self._discard(conn)
            return
        self.pool.connect_succeeded()
        conn.connected(self.loop.time())
        proto.flush()
        self.arm()

    def tls_args(self) -> dict[str, Any]:
        """Keyword arguments of a TCP connect: TLS and the name checked, for ``tls://``."""
        if self.tls is None:
            return {}
        return {"ssl": self.tls, "server_hostname": self.tls_name}

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for conn, proto in list(self.protocols.items()):
            conn.terminate(ConnEvent.CLOSE, "forwarder closed")
            proto.close()
        self.protocols.clear()
        self.pool.connections.clear()


class Query:
    """One query being forwarded: what it sends, its plan, and its current try.

    :meth:`Forwarder.submit` fills it in; a subclass's :meth:`done` gets the
    answer or the error, once, unless the query was cancelled.
    """

    __slots__ = ("request", "question", "order", "start", "plan", "live", "use_tcp", "up",
                 "index", "conn", "qid", "timer", "expires", "sock", "sent", "late")

    def __init__(self) -> None:
        self.request = b""
        #: The question key answers must match (RFC 5452 section 9.1).
        self.question = b""
        #: The policy's order of the upstreams for this query, and when it arrived (loop time).
        self.order: Sequence[int] = ()
        self.start = 0.0
        #: Built once a try fails (the first try needs none, core.plan rule 7).
        self.plan: _plan.ForwardPlan | None = None
        #: Submitted and neither answered, failed nor cancelled: ``done`` is still due.
        self.live = False
        self.use_tcp = False
        #: The upstream of the current try, and its index in the plan.
        self.up: _UpstreamState = None  # type: ignore[assignment]
        self.index = 0
        #: The TCP connection carrying the current try, and its ID there.
        self.conn: UpstreamConnection | None = None
        self.qid = 0
        #: The current try's deadline in the forwarder's queue of them; 0: none.
        self.expires = 0.0
        #: A timer of the query's own: the pause before the next pass, or a
        #: try deadline out of the queue's order.
        self.timer: asyncio.TimerHandle | None = None
        #: The current UDP try's socket.
        self.sock: socket.socket | None = None
        #: When the current try was sent, s (loop time).
        self.sent = 0.0
        #: Earlier tries that timed out but whose answer is still taken:
        #: (upstream, UDP socket or TCP connection, ID).
        #: None until a try times out (most queries never need the list).
        self.late: list[tuple[_UpstreamState, socket.socket | UpstreamConnection, int]] | None = None

    def done(self, answer: bytes | None, error: Exception | None) -> None:
        """The query's end: (the answer, with the upstream's ID, None) or (None, the error)."""
        raise NotImplementedError


class _Waiting(Query):
    """A query whose end resolves a future (:meth:`Forwarder.query`)."""

    __slots__ = ("future",)

    def __init__(self, future: asyncio.Future[bytes]) -> None:
        Query.__init__(self)
        self.future = future

    def done(self, answer: bytes | None, error: Exception | None) -> None:
        _resolve(self.future, answer, error)


class Forwarder:
    """Forwards DNS queries (wire form) to the upstreams of one ``forward`` block.

    :param settings: The ``forward`` settings (upstreams, policy, timeouts).
    :param stats: Counters to fill (``coredns_forward_*``, ``coredns_proxy_*``).
    :param max_connections: TCP connections per upstream at most
        (default ``MAX_CONNECTIONS``).
    :param max_in_flight: Queries in flight per TCP connection at most
        (default ``MAX_IN_FLIGHT``).
    """

    def __init__(self, settings: ForwardSettings, stats: ForwardStats, *,
                 max_connections: int = MAX_CONNECTIONS,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        assert settings.upstreams, "forward needs at least one upstream"
        self.settings = settings
        self.stats = stats
        self._pool_limits = {"max_connections": max_connections, "max_in_flight": max_in_flight}
        self._loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._ids = IdSource()
        self._rng = random.Random()
        self._policy = _policy.make_policy(settings.policy, rng=self._rng)
        self._failover = frozenset(settings.failover_rcodes)
        self._upstreams: list[_UpstreamState] = []
        self._healths: list[_policy.UpstreamHealth] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._udp_waiters: set[asyncio.Future[Any]] = set()
        #: Queries being forwarded (to fail them at close).
        self._live: set[Query] = set()
        self._in_flight = 0
        #: (deadline, query) of the tries in flight, earliest first, and the
        #: one timer armed at the first one.
        self._expiry: deque[tuple[float, Query]] = deque()
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._plain_first = _plan.plain_first_try(settings.budget, self._failover)
        self._first_timeout = min(settings.try_timeout, settings.budget)
        #: The order of a single upstream (None: the policy orders each query).
        self._order: Sequence[int] | None = (0,) if len(settings.upstreams) == 1 else None
        self._started = False
        self._closed = False
        self._probe = health_probe(settings.health_check_domain,
                                   recursion_desired=not settings.health_check_no_rec)

    # -- lifecycle ---------------------------------------------------------------

    def _ensure_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._upstreams = [_UpstreamState(self, u) for u in self.settings.upstreams]
            self._healths = [u.health for u in self._upstreams]

    async def start(self) -> None:
        """Bind to the running loop (health checks start on failures, pool timers on use)."""
        self._ensure_loop()
        self._started = True

    async def close(self) -> None:
        """Close every connection and task. Idempotent; later queries raise UpstreamError."""
        if self._closed:
            return
        self._closed = True
        if self._loop is None:
            return
        for fut in list(self._udp_waiters):
            _resolve(fut, exc=_TryFailed(Failure.LOCAL, "forwarder closed"))
        for up in self._upstreams:
            up.close()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        for q in list(self._live):
            self._stop_try(q)
            self._finish(q, None, UpstreamError("forwarder closed"))
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Forwarder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("forwarder task failed", exc_info=task.exception())

    @property
    def in_flight(self) -> int:
        """Queries being forwarded now."""
        return self._in_flight

    # -- query ---------------------------------------------------------------------

    async def query(self, request: bytes, *, tcp: bool) -> bytes:
        """Forward ``request`` (a DNS query, wire form) and return the answer.

        The answer carries ``request``'s ID. Raises UpstreamError when nothing
        answered within ``settings.budget``, ConcurrencyLimitError above
        ``settings.max_concurrent`` queries in flight, ClientProtocolError when
        ``request`` has no single question.
        """
        self._ensure_loop()
        fut: asyncio.Future[bytes] = self._loop.create_future()
        q = _Waiting(fut)
        self.submit(q, request, tcp=tcp)
        try:
            answer = await fut
        except asyncio.CancelledError:
            self.cancel(q)
            raise
        return request[:2] + answer[2:]

    def submit(self, q: Query, request: bytes, *, tcp: bool,
               question: bytes | None = None) -> None:
        """Start forwarding ``request`` as ``q`` (a new record, or one whose last
        query has ended); ``q.done`` gets the answer (upstream's ID) or the error.

        ``question`` is the request's question key when the caller has it
        (``core.upstream.question_key``). Raises at once (``done`` is then
        never called) for a closed forwarder, ``max_concurrent`` or a
        request without a single question.
        """
        if self._closed:
            raise UpstreamError("forwarder closed")
        if self._loop is None:
            self._ensure_loop()
        s = self.settings
        limit = s.max_concurrent
        if limit and self._in_flight >= limit:
            self.stats.max_concurrent_rejects += 1
            raise ConcurrencyLimitError(f"concurrent queries exceeded maximum {limit}")
        if question is None:
            question = question_key(request)
            if question is None:
                raise ClientProtocolError("query has no single well-formed question")
        now = self._loop.time()
        # every policy orders a single upstream alike
        order = self._policy.order(len(self._upstreams)) if self._order is None else self._order
        q.request, q.question, q.order, q.start = request, question, order, now
        q.plan = q.late = None
        q.use_tcp = s.force_tcp or (not s.prefer_udp and tcp)
        q.live = True
        self._in_flight += 1
        self._live.add(q)
        index = _plan.first_try(order, self._healths, s.max_fails) if self._plain_first else -1
        if index < 0:
            q.plan = self._new_plan(q)
            self._step(q)
        else:
            q.index = index
            up = q.up = self._upstreams[index]
            if q.use_tcp or up.tls is not None:
                self._try_tcp(q, now + self._first_timeout, now)
            else:
                self._try_udp(q, now + self._first_timeout)

    def _plan_of(self, q: Query) -> _plan.ForwardPlan:
        """``q``'s plan, built on first need: after a plain first try, resumed after it."""
        plan = q.plan
        if plan is None:
            plan = q.plan = self._new_plan(q)
            plan.took_first()
        return plan

    def _new_plan(self, q: Query) -> _plan.ForwardPlan:
        s = self.settings
        return _plan.ForwardPlan(
            q.order, self._healths, max_fails=s.max_fails, failfast=s.failfast_all_unhealthy,
            try_timeout=s.try_timeout, start=q.start, budget=s.budget, rng=self._rng,
            max_connect_attempts=s.max_connect_attempts, failover=self._failover)

    def cancel(self, q: Query) -> None:
        """Stop forwarding ``q``; its ``done`` is not called."""
        if q.live:
            q.live = False
            self._stop_try(q)
            self._finish(q, None, None)

    def _step(self, q: Query) -> None:
        """Run the plan's next step for ``q``."""
        q.timer = None
        if self._closed:
            self._finish(q, None, UpstreamError("forwarder closed"))
            return
        plan = self._plan_of(q)
        step = plan.next_step(self._loop.time())
        kind = type(step)
        if kind is _plan.Try:
            if step.broken:  # type: ignore[union-attr]
                self.stats.healthcheck_broken += 1
            q.index = step.index  # type: ignore[union-attr]
            q.up = self._upstreams[q.index]
            self._try(q, step.deadline)  # type: ignore[union-attr]
        elif kind is _plan.Wait:
            q.timer = self._loop.call_at(step.until, self._step, q)  # type: ignore[union-attr]
        elif plan.fallback is not None:  # failover passed over this answer
            self._finish(q, plan.fallback, None)
        else:
            self._finish(q, None, UpstreamError(step.reason))  # type: ignore[union-attr]

    def _try(self, q: Query, deadline: float) -> None:
        if q.use_tcp or q.up.tls is not None:
            self._try_tcp(q, deadline, self._loop.time())
        else:
            self._try_udp(q, deadline)

    def _expire_at(self, q: Query, deadline: float) -> None:
        """Time the current try of ``q`` out at ``deadline``."""
        queue = self._expiry
        if queue and deadline < queue[-1][0]:  # cut short by the budget's end
            q.timer = self._loop.call_at(deadline, self._timed_out, q)
            return
        q.expires = deadline
        queue.append((deadline, q))
        if self._expiry_timer is None:
            self._expiry_timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """The queue's timer: time out every try whose deadline has come, re-arm at the next."""
        self._expiry_timer = None
        queue = self._expiry
        now = self._loop.time() + _TIMER_SLACK
        while queue:
            at, q = queue[0]
            if at > now:
                if not self._closed:
                    self._expiry_timer = self._loop.call_at(at, self._expire)
                return
            queue.popleft()
            if q.expires == at:  # still that try's deadline: not answered, not failed
                self._timed_out(q)

    def _try_failed(self, q: Query, failure: Failure, detail: str) -> None:
        """The current try of ``q`` ended without an answer: record it, take the next step."""
        if not q.live:
            return
        self._stop_try(q)
        rule = self._plan_of(q).failed(q.index, failure, f"{q.up.name}: {detail}")
        if rule.health_check:
            self._start_health_check(q.up)
        self._step(q)

    def _stop_try(self, q: Query) -> None:
        """Release what the current try holds: its timer, socket, connection slot."""
        if q.expires:
            q.expires = 0.0
            self._drop_answered()
        if q.timer is not None:
            q.timer.cancel()
            q.timer = None
        if q.sock is not None:
            self._loop.remove_reader(q.sock.fileno())
            q.sock.close()
            q.sock = None
        conn = q.conn
        if conn is not None:
            q.conn = None
            conn.give_up(q.qid, self._loop.time(), timed_out=False)
            if conn.state is ConnState.CLOSED:  # the last query of a draining connection
                q.up._discard(conn)

    def _drop_answered(self) -> None:
        """Drop the deadlines of ended tries at the front of the queue (answers come
        mostly in order; the rest leave when the timer reaches them)."""
        queue = self._expiry
        while queue and queue[0][1].expires != queue[0][0]:
            queue.popleft()

    def _release_late(self, q: Query, answered: object = None) -> None:
        """Stop listening for the earlier tries' answers (``answered`` already gave one)."""
        now = self._loop.time()
        for up, where, qid in q.late or ():
            if where is answered:
                continue
            if isinstance(where, UpstreamConnection):
                where.give_up(qid, now, timed_out=False)
                if where.state is ConnState.CLOSED:
                    up._discard(where)
            else:
                self._loop.remove_reader(where.fileno())
                where.close()
        q.late = None

    def _finish(self, q: Query, answer: bytes | None, error: Exception | None) -> None:
        if q.late:
            self._release_late(q)
        self._in_flight -= 1
        self._live.discard(q)
        if q.live:
            q.live = False
            q.done(answer, error)

    def _answered(self, up: _UpstreamState, answer: bytes, sent: float) -> None:
        self.stats.answered(up.index, answer[3] & 0x0F, self._loop.time() - sent)

    # -- UDP -----------------------------------------------------------------------------

    def _try_udp(self, q: Query, deadline: float) -> None:
        up = q.up
        sock = socket.socket(up.family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(up.addr)  # the kernel picks a random ephemeral port
            qid = self._ids()
            sock.send(qid.to_bytes(2, "big") + q.request[2:])
        except OSError as exc:
            sock.close()
            self._try_failed(q, classify_errno(exc.errno), repr(exc))
            return
        loop = self._loop
        q.sock, q.qid, q.sent = sock, qid, loop.time()
        self.stats.requests[up.name] += 1
        loop.add_reader(sock.fileno(), self._udp_readable, q, sock, qid)
        self._expire_at(q, deadline)

    def _udp_readable(self, q: Query, sock: socket.socket, qid: int) -> None:
        data = _read_answer(sock, qid, q.question)
        if data is None or not q.live:
            return
        current = sock is q.sock
        if isinstance(data, OSError):  # ICMP port unreachable and the like
            if current:
                self._try_failed(q, classify_errno(data.errno), repr(data))
            return  # an earlier try's socket: the current try goes on
        up = q.up
        if not current:
            up = next(u for u, where, _ in q.late or () if where is sock)
        self._stop_try(q)
        self._answered(up, data, q.sent)
        if is_truncated(data):
            # TC=1: ask again over TCP (RFC 7766 section 5)
            q.up = up
            s = self.settings
            now = self._loop.time()
            self._try_tcp(q, min(now + s.try_timeout, q.start + s.budget), now)
        else:
            self._deliver(q, data)

    def _timed_out(self, q: Query) -> None:
        """The current try timed out: its answer is still taken while the next try runs
        (an upstream answering in just over the try timeout is not lost)."""
        q.timer = None
        q.expires = 0.0
        conn, sock = q.conn, q.sock
        if conn is not None:  # a timeout drains the connection (core.upstream)
            q.conn = None
            up = q.up
            term = conn.timed_out(q.qid)
            if conn.state is ConnState.CLOSED:
                up._discard(conn)
            elif q.qid in conn.in_flight:
                q.late = [*(q.late or ()), (up, conn, q.qid)]
            if term is not None:
                up._terminated(conn, term)
        elif sock is not None:
            q.sock = None
            q.late = [*(q.late or ()), (q.up, sock, q.qid)]
        # Go's words end the text: CoreDNS's consolidate patterns expect them (".* i/o timeout$").
        self._try_failed(q, Failure.TIMEOUT,
                         f"no answer within {self.settings.try_timeout}s: i/o timeout")

    async def _udp_wait(self, sock: socket.socket, qid: int, deadline: float) -> bytes:
        """The first datagram answering ``qid`` (health checks)."""
        loop = self._loop
        fut: asyncio.Future[bytes] = loop.create_future()
        fd = sock.fileno()

        def readable() -> None:
            data = _read_answer(sock, qid, None)
            if isinstance(data, OSError):
                _resolve(fut, exc=data)
            elif data is not None:
                _resolve(fut, data)

        loop.add_reader(fd, readable)
        timer = loop.call_at(deadline, _timeout, fut)
        self._udp_waiters.add(fut)
        try:
            return await fut
        finally:
            self._udp_waiters.discard(fut)
            timer.cancel()
            loop.remove_reader(fd)

    # -- TCP -------------------------------------------------------------------------------

    def _try_tcp(self, q: Query, deadline: float, now: float) -> None:
        up = q.up
        choice = up.pool.choose(now)
        if choice is None:  # every connection full: not the upstream's fault
            self._try_failed(q, Failure.BUSY, "")
            return
        if type(choice) is Backoff:
            self._try_failed(q, Failure.BACKOFF, "")
            return
        conn, new = choice  # type: ignore[misc]
        q.qid = conn.send(q.request, q.question, q, now)
        q.conn, q.sent = conn, now
        stats = self.stats
        if new:
            stats.conn_opened[up.name] += 1
            proto = _TCPProtocol(up, conn)
            up.protocols[conn] = proto
            self._spawn(up.dial(conn, proto))
        else:
            stats.conn_reused[up.name] += 1
            proto = up.protocols[conn]
            if not proto._flush_pending:  # the first query of this loop iteration on it
                proto.schedule_flush()
        stats.requests[up.name] += 1
        self._expire_at(q, deadline)

    def _tcp_answered(self, q: Query, answer: bytes, conn: UpstreamConnection) -> None:
        if not q.live:
            return
        up = q.up
        if conn is q.conn:
            q.conn = None  # the connection already forgot the query
        else:  # a late answer to an earlier try
            up = next((u for u, where, _ in q.late or () if where is conn), up)
        self._stop_try(q)
        if q.late:
            self._release_late(q, answered=conn)
        self._answered(up, answer, q.sent)
        self._deliver(q, answer)

    def _deliver(self, q: Query, answer: bytes) -> None:
        """An answer for ``q``: the client's, unless ``failover`` tries the next upstream."""
        if q.plan is not None and q.plan.fails_over(answer):
            self._step(q)
        else:
            self._finish(q, answer, None)

    # -- background ------------------------------------------------------------------------

    def _start_health_check(self, up: _UpstreamState) -> None:
        if self.settings.max_fails == 0 or up.health.checking or self._closed:
            return  # max_fails 0: never down, so never checked (CoreDNS)
        up.health.checking = True
        self._spawn(self._health_loop(up))

    async def _health_loop(self, up: _UpstreamState) -> None:
        s = self.settings
        try:
            while not self._closed:
                if await self._health_check(up):
                    up.health.check_succeeded()
                    return
                up.health.check_failed()
                self.stats.healthcheck_failures[up.name] += 1
                await asyncio.sleep(s.health_check)
        finally:
            up.health.checking = False

    async def _health_check(self, up: _UpstreamState) -> bool:
        """One probe; any answer with a header counts as healthy (CoreDNS up.go)."""
        loop = self._loop
        deadline = loop.time() + min(_HEALTH_TIMEOUT, self.settings.try_timeout)
        qid = self._ids()
        probe = set_id(self._probe, qid)
        try:
            if self.settings.force_tcp or up.tls is not None:
                async with asyncio.timeout_at(deadline):
                    reader, writer = await asyncio.open_connection(*up.addr, **up.tls_args())
                    try:
                        writer.write(frame(probe))
                        length = int.from_bytes(await reader.readexactly(2), "big")
                        data = await reader.readexactly(length)
                    finally:
                        writer.transport.abort()
                return len(data) >= HEADER_LEN and data[:2] == probe[:2]
            sock = socket.socket(up.family, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.connect(up.addr)
                sock.send(probe)
                await self._udp_wait(sock, qid, deadline)
                return True
            finally:
                sock.close()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, _TryFailed) as exc:
            log.debug("health check of %s failed: %r", up.name, exc)
            return False
