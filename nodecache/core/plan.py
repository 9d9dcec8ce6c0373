"""The forwarding decision for one query: which upstream next, when to give up.

Sans I/O, like the rest of ``core/``: the adapter asks :meth:`ForwardPlan.next_step`
what to do at ``now``, runs the try it names, and reports how it ended with
:meth:`ForwardPlan.failed` (or stops on an answer).

Rules:

1. A failure is classified as it happens (:data:`FAILURES`): a refused
   connection (TCP RST to the SYN, ICMP port unreachable on UDP) or an
   unreachable host is conclusive, so the upstream is marked down at once
   (health checks bring it back) and the plan moves to the next upstream
   without waiting out any timer.
2. One pass walks the policy's order once, skipping upstreams that are down.
   If every one is down, CoreDNS's forward tries one at random
   (``healthcheck_broken``), or, with ``failfast_all_unhealthy_upstreams``,
   gives up at once; either way that pass is the last.
3. After a pass, another one starts only if some try of it may succeed when
   repeated (a timeout, a pooled connection that closed under the query, a
   full pool) and the budget has time left; a pass that ended only in
   conclusive failures gives up at once, so the client gets SERVFAIL (or a
   stale answer) in milliseconds instead of at the end of the budget.
4. A pass that failed fast and may be repeated waits ``ROUND_PAUSE`` first
   (doubling up to ``ROUND_PAUSE_MAX``): a retry loop never spins.
5. ``max_connect_attempts N``: after N failed tries the query gives up
   (CoreDNS counts failed connects only, not answers).
6. ``failover RCODE...``: an answer with such an rcode is kept and the next
   upstream tried, until every upstream has answered so; then that answer
   stands, as it does when the upstreams left fail without one. (CoreDNS 1.13
   starts the list over and retries until its 5 s deadline, then SERVFAILs;
   later releases return the answer, as here.)
7. The common first try needs no plan object: :func:`first_try` names it
   (the policy's first upstream, when it is up); only a query whose first
   try fails builds its :class:`ForwardPlan`, which :meth:`ForwardPlan.took_first`
   resumes after that try, so it decides exactly as if it had made it.
"""
from __future__ import annotations

import enum
import errno
import random as _random
from collections.abc import Sequence
from dataclasses import dataclass

from nodecache.core.policy import UpstreamHealth

#: Pause before repeating a pass that failed fast, s (doubles, capped).
ROUND_PAUSE, ROUND_PAUSE_MAX = 0.01, 0.25
#: A try shorter than this is not started at the end of the budget, s.
MIN_TRY = 0.05


class Failure(enum.Enum):
    """How one try against one upstream ended without an answer."""

    #: Connection refused: TCP RST to our SYN, or ICMP port unreachable on UDP.
    REFUSED = "refused"
    #: ICMP host/network unreachable (or no route): nothing answers at that address.
    UNREACHABLE = "unreachable"
    #: An established connection reset by the peer (an upstream restarting drops
    #: its pooled connections; a fresh one may well succeed).
    RESET = "reset"
    #: No answer within the try timeout (a silent upstream, or a lost datagram).
    TIMEOUT = "timeout"
    #: The upstream sent bytes that are not DNS (or a truncated TCP frame).
    PROTOCOL = "protocol error"
    #: The pooled TCP connection carrying the query closed (EOF, max_age, idle).
    CLOSED = "connection closed"
    #: Every pooled connection to it is full: our limit, not the upstream's fault.
    BUSY = "connection pool full"
    #: Our last connects to it failed; it is not dialled again until the backoff ends.
    BACKOFF = "reconnecting after failed connects"
    #: Some other local error (socket exhaustion and the like).
    LOCAL = "local error"


@dataclass(frozen=True, slots=True)
class FailureRule:
    """What one kind of failure means for the upstream and for the query."""

    #: Start health checks of the upstream (CoreDNS: after any forwarding error).
    health_check: bool
    #: Mark the upstream down now instead of after ``max_fails`` failed checks.
    mark_down: bool
    #: Repeating the try later may succeed: another pass is worth its time.
    retry: bool


_F, _R = Failure, FailureRule
#: Failure -> rule. The refused and unreachable cases are conclusive (rule 1).
FAILURES: dict[Failure, FailureRule] = {
    _F.REFUSED: _R(health_check=True, mark_down=True, retry=False),
    _F.UNREACHABLE: _R(health_check=True, mark_down=True, retry=False),
    _F.RESET: _R(health_check=False, mark_down=False, retry=True),
    _F.TIMEOUT: _R(health_check=True, mark_down=False, retry=True),
    _F.PROTOCOL: _R(health_check=True, mark_down=False, retry=True),
    _F.CLOSED: _R(health_check=False, mark_down=False, retry=True),
    _F.BUSY: _R(health_check=False, mark_down=False, retry=True),
    _F.BACKOFF: _R(health_check=False, mark_down=False, retry=False),
    _F.LOCAL: _R(health_check=False, mark_down=False, retry=True),
}

#: errno of a failed connect/send/recv -> Failure (Linux reports ICMP errors on
#: a connected UDP socket as these, RFC 1122 section 4.1.3.3).
ERRNO_FAILURES: dict[int, Failure] = {
    errno.ECONNREFUSED: Failure.REFUSED,
    errno.EHOSTUNREACH: Failure.UNREACHABLE,
    errno.ENETUNREACH: Failure.UNREACHABLE,
    errno.EHOSTDOWN: Failure.UNREACHABLE,
    errno.ENONET: Failure.UNREACHABLE,
    errno.EADDRNOTAVAIL: Failure.LOCAL,
    errno.ECONNRESET: Failure.RESET,
    errno.ECONNABORTED: Failure.RESET,
    errno.EPIPE: Failure.RESET,
    errno.ETIMEDOUT: Failure.TIMEOUT,
}


def classify_errno(code: int | None) -> Failure:
    """The Failure an OS error number stands for (LOCAL when it names none of ours)."""
    return ERRNO_FAILURES.get(code or 0, Failure.LOCAL)


@dataclass(frozen=True, slots=True)
class Try:
    """``next_step``: send the query to upstream ``index``; give up on it at ``deadline``."""

    index: int
    #: When this try times out, s.
    deadline: float
    #: Every upstream was down and this one was picked at random (healthcheck_broken).
    broken: bool


@dataclass(frozen=True, slots=True)
class Wait:
    """``next_step``: call again at ``until`` (a pause between passes)."""

    until: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """``next_step``: no upstream is left to try; answer stale or SERVFAIL now."""

    #: Why, for the log (the last failure, or "all upstreams unhealthy").
    reason: str


def plain_first_try(budget: float, failover: frozenset[int]) -> bool:
    """Whether a ``forward`` block's queries may start with :func:`first_try` (rule 7):
    not with ``failover`` (every answer goes through the plan) nor with a budget
    too short for any try."""
    return not failover and budget >= MIN_TRY


def first_try(order: Sequence[int], health: Sequence[UpstreamHealth], max_fails: int) -> int:
    """The upstream of a query's first try, made without a plan (rule 7): the
    first in ``order`` when it is up; -1 when a :class:`ForwardPlan` must decide.
    The try times out at ``start + min(try_timeout, budget)``."""
    idx = order[0]
    # UpstreamHealth.is_down, in line: this runs once per query
    return -1 if max_fails > 0 and health[idx].fails > max_fails else idx


class ForwardPlan:
    """The tries of one query, from ``start`` until ``start + budget``.

    :param order: Upstream indices in the policy's order for this query.
    :param health: Each upstream's health (shared by all queries; the plan
        marks an upstream down on a conclusive failure).
    :param max_fails: ``forward``'s ``max_fails`` (0: never down).
    :param failfast: ``failfast_all_unhealthy_upstreams``.
    :param try_timeout: One try's timeout, s.
    :param start: When the query arrived, s.
    :param budget: The whole query's budget, s.
    """

    __slots__ = ("_order", "_health", "_max_fails", "_failfast", "_rng", "_try_timeout",
                 "deadline", "_i", "_tried", "_pass_start", "_pause", "_retry", "_last_pass", "last",
                 "_attempts_left", "_failover", "_failovers", "fallback")

    def __init__(self, order: Sequence[int], health: Sequence[UpstreamHealth], *,
                 max_fails: int, failfast: bool, try_timeout: float, start: float,
                 budget: float, rng: _random.Random | None = None,
                 max_connect_attempts: int = 0, failover: frozenset[int] = frozenset()) -> None:
        self._order = order
        self._health = health
        self._max_fails = max_fails
        self._failfast = failfast
        self._rng = rng or _random
        self._try_timeout = try_timeout
        #: The query gives up at this time, s.
        self.deadline = start + budget
        self._i = 0
        self._tried = 0
        self._pass_start = start
        self._pause = ROUND_PAUSE
        self._retry = False
        self._last_pass = False
        #: The last failure, as text for the log.
        self.last = "no upstream tried"
        #: Failed tries left before giving up (rule 5); None: no limit.
        self._attempts_left = max_connect_attempts or None
        self._failover = failover
        self._failovers = 0
        #: The last answer passed over by ``failover`` (rule 6): the reply when
        #: the plan gives up.
        self.fallback: bytes | None = None

    def next_step(self, now: float) -> Try | Wait | GiveUp:
        """What to do now: the next try, a pause, or give up."""
        if self._attempts_left == 0:
            return GiveUp(f"max_connect_attempts reached: {self.last}")
        if now + MIN_TRY > self.deadline:
            # The last failure ends the text, as the last try's error does in CoreDNS.
            return GiveUp(f"no answer within the budget: {self.last}")
        order, n = self._order, len(self._order)
        max_fails, health = self._max_fails, self._health
        while True:
            if self._i >= n:  # a pass is over (rule 3)
                if self._last_pass or not self._retry:
                    return GiveUp(self.last)
                if now - self._pass_start < self._pause:
                    until = self._pass_start + self._pause
                    self._pause = min(self._pause * 2, ROUND_PAUSE_MAX)
                    if until + MIN_TRY > self.deadline:
                        return GiveUp(self.last)
                    # the next pass starts after the pause
                    self._i, self._retry, self._tried, self._pass_start = 0, False, 0, until
                    return Wait(until)
                self._i, self._retry, self._tried, self._pass_start = 0, False, 0, now
            while self._i < n:
                idx = order[self._i]
                self._i += 1
                if not health[idx].is_down(max_fails):
                    self._tried += 1
                    return Try(idx, min(now + self._try_timeout, self.deadline), False)
            if self._tried:
                continue  # the rest of this pass is down: end it
            # every upstream is down (rule 2)
            self._last_pass = True
            if self._failfast:
                self.last = "all upstreams unhealthy"
                return GiveUp(self.last)
            idx = order[self._rng.randrange(n)]
            return Try(idx, min(now + self._try_timeout, self.deadline), True)

    def took_first(self) -> ForwardPlan:
        """The adapter made the first try itself (:func:`first_try`): go on after it."""
        self._i = self._tried = 1
        return self

    def failed(self, index: int, failure: Failure, detail: str = "") -> FailureRule:
        """Record how a try ended; returns the rule (the adapter starts health checks)."""
        rule = FAILURES[failure]
        if self._attempts_left is not None:
            self._attempts_left -= 1
        if rule.mark_down:
            self._health[index].mark_down(self._max_fails)
        if rule.retry:
            self._retry = True
        self.last = f"{failure.value}: {detail}" if detail else failure.value
        return rule

    def fails_over(self, answer: bytes) -> bool:
        """An upstream answered: True to try the next upstream instead (rule 6)."""
        if not self._failover or answer[3] & 0x0F not in self._failover:
            return False
        self._failovers += 1
        if self._failovers >= len(self._order):
            return False
        self.fallback = answer
        self.last = f"failover on rcode {answer[3] & 0x0F}"
        return True
