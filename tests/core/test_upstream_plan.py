"""nodecache.core.plan: classifying upstream failures and the tries of one query."""
from __future__ import annotations

import errno
import random

import pytest

from nodecache.core.plan import (
    FAILURES, MIN_TRY, ROUND_PAUSE, Failure, ForwardPlan, GiveUp, Try, Wait, classify_errno,
    first_try, plain_first_try,
)
from nodecache.core.policy import UpstreamHealth

T = 2.0  # s, try timeout
BUDGET = 3.5  # s


def healths(*down: bool) -> list[UpstreamHealth]:
    out = []
    for d in down:
        h = UpstreamHealth()
        h.fails = 10 if d else 0
        out.append(h)
    return out


def plan(order: list[int], health: list[UpstreamHealth], *, max_fails: int = 2,
         failfast: bool = False, seed: int = 1) -> ForwardPlan:
    return ForwardPlan(order, health, max_fails=max_fails, failfast=failfast, try_timeout=T,
                       start=0.0, budget=BUDGET, rng=random.Random(seed))


@pytest.mark.parametrize("code,failure", [
    (errno.ECONNREFUSED, Failure.REFUSED),      # TCP RST to SYN; ICMP port unreachable on UDP
    (errno.EHOSTUNREACH, Failure.UNREACHABLE),  # ICMP host unreachable
    (errno.ENETUNREACH, Failure.UNREACHABLE),
    (errno.ECONNRESET, Failure.RESET),
    (errno.EPIPE, Failure.RESET),
    (errno.ETIMEDOUT, Failure.TIMEOUT),
    (errno.EMFILE, Failure.LOCAL),
    (None, Failure.LOCAL),
])
def test_classify_errno(code: int | None, failure: Failure) -> None:
    assert classify_errno(code) is failure


# failure -> (health check started, upstream marked down at once, another pass allowed)
RULES = [
    (Failure.REFUSED, True, True, False),
    (Failure.UNREACHABLE, True, True, False),
    (Failure.RESET, False, False, True),
    (Failure.TIMEOUT, True, False, True),
    (Failure.PROTOCOL, True, False, True),
    (Failure.CLOSED, False, False, True),
    (Failure.BUSY, False, False, True),
    (Failure.BACKOFF, False, False, False),
    (Failure.LOCAL, False, False, True),
]


def test_every_failure_has_a_rule() -> None:
    assert set(FAILURES) == set(Failure) == {r[0] for r in RULES}


@pytest.mark.parametrize("failure,check,down,retry", RULES)
def test_failure_rules(failure: Failure, check: bool, down: bool, retry: bool) -> None:
    health = healths(False)
    p = plan([0], health)
    assert p.next_step(0.0) == Try(0, T, False)
    rule = p.failed(0, failure, "x")
    assert (rule.health_check, rule.mark_down, rule.retry) == (check, down, retry)
    assert health[0].is_down(2) is down
    step = p.next_step(0.001)
    if retry:  # a fast failure that may pass when repeated: pause, then once more
        assert step == Wait(ROUND_PAUSE)
        assert p.next_step(ROUND_PAUSE) == Try(0, ROUND_PAUSE + T, False)
    else:      # conclusive: give up at once, no timer left to wait out
        assert type(step) is GiveUp and failure.value in step.reason


# (down upstreams, failures in order of tries, expected steps: (index, broken) or "give up")
CASES = [
    # refused, then the next upstream answers (no failure for it)
    ((False, False), [Failure.REFUSED], [(0, False), (1, False)]),
    # all refuse: give up after one pass
    ((False, False, False), [Failure.REFUSED] * 3, [(0, False), (1, False), (2, False), "give up"]),
    # down ones are skipped
    ((False, True, False), [Failure.REFUSED, Failure.REFUSED], [(0, False), (2, False), "give up"]),
    # all down: one at random, then give up
    ((True, True), [Failure.TIMEOUT], [(0, True), "give up"]),  # seed 1 picks 0
]


@pytest.mark.parametrize("down,failures,expected", CASES)
def test_passes(down: tuple[bool, ...], failures: list[Failure], expected: list) -> None:
    p = plan(list(range(len(down))), healths(*down))
    got: list = []
    failures = list(failures)
    for _ in expected:
        step = p.next_step(0.0)
        if type(step) is GiveUp:
            got.append("give up")
            break
        assert type(step) is Try
        got.append((step.index, step.broken))
        if failures:
            p.failed(step.index, failures.pop(0))
    assert got == expected


def test_refused_marks_down_for_later_queries() -> None:
    health = healths(False, False)
    first = plan([0, 1], health)
    assert first.next_step(0.0) == Try(0, T, False)
    first.failed(0, Failure.REFUSED)
    second = plan([0, 1], health)   # a new query skips the refusing upstream
    assert second.next_step(0.0) == Try(1, T, False)


def test_failfast_all_unhealthy() -> None:
    step = plan([0, 1], healths(True, True), failfast=True).next_step(0.0)
    assert step == GiveUp("all upstreams unhealthy")


def test_silent_upstream_fits_the_budget() -> None:
    # one silent upstream: a full try, then the rest of the budget, then give up
    p = plan([0], healths(False))
    assert p.next_step(0.0) == Try(0, T, False)
    p.failed(0, Failure.TIMEOUT)
    assert p.next_step(T) == Try(0, BUDGET, False)
    p.failed(0, Failure.TIMEOUT)
    assert type(p.next_step(BUDGET)) is GiveUp


def test_no_try_shorter_than_min_try() -> None:
    p = plan([0], healths(False))
    p.next_step(0.0)
    p.failed(0, Failure.TIMEOUT)
    assert type(p.next_step(BUDGET - MIN_TRY / 2)) is GiveUp


def test_fast_soft_failures_back_off_without_spinning() -> None:
    p = plan([0], healths(False))
    now, tries, waits = 0.0, 0, []
    for _ in range(1000):
        step = p.next_step(now)
        if type(step) is GiveUp:
            break
        if type(step) is Wait:
            assert step.until > now
            waits.append(step.until - now)
            now = step.until
            continue
        tries += 1
        p.failed(0, Failure.CLOSED)
    assert now <= BUDGET and tries < 30
    assert waits == sorted(waits)   # the pause doubles up to its cap


def steps(p: ForwardPlan, failures: list[Failure]) -> list[Try | Wait | GiveUp]:
    """The steps after each failure in turn, the failed try being the one named last."""
    out: list[Try | Wait | GiveUp] = []
    index, now = 0, 0.0
    for failure in failures:
        p.failed(index, failure, "x")
        step = p.next_step(now)
        out.append(step)
        if type(step) is Try:
            index = step.index
        elif type(step) is Wait:
            now = step.until
        else:
            break
    return out


@pytest.mark.parametrize("failures", [
    [Failure.TIMEOUT, Failure.TIMEOUT, Failure.TIMEOUT],
    [Failure.REFUSED, Failure.REFUSED, Failure.REFUSED],
    [Failure.BUSY, Failure.RESET, Failure.CLOSED, Failure.LOCAL],
])
def test_plain_first_try_then_plan_decides_as_the_plan_alone(failures: list[Failure]) -> None:
    # Rule 7: the first try made without a plan, the plan built after it fails.
    order = [1, 0, 2]
    assert first_try(order, healths(False, False, False), max_fails=2) == 1
    full = plan(order, healths(False, False, False))
    assert full.next_step(0.0) == Try(1, T, False)
    resumed = plan(order, healths(False, False, False)).took_first()
    assert steps(resumed, failures) == steps(full, failures)


def test_first_try_leaves_a_down_first_upstream_to_the_plan() -> None:
    assert first_try([0, 1], healths(True, False), max_fails=2) == -1
    assert first_try([0, 1], healths(True, False), max_fails=0) == 0  # max_fails 0: never down


def test_plain_first_try_only_without_failover_and_with_budget() -> None:
    assert plain_first_try(BUDGET, frozenset())
    assert not plain_first_try(BUDGET, frozenset({2}))  # every answer goes through the plan
    assert not plain_first_try(MIN_TRY / 2, frozenset())
