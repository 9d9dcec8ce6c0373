"""nodecache.core.forwards (which forward takes a name, where ``next`` sends an answer) and
the plan's ``failover`` and ``max_connect_attempts`` (nodecache.core.plan), table-driven."""
from __future__ import annotations

import random

import dns.rcode
import pytest

from nodecache.config.settings import ForwardSettings, Upstream
from nodecache.core import wire
from nodecache.core.forwards import NONE_TAKES, first_taker, hand_on, routes_of
from nodecache.core.plan import Failure, ForwardPlan, GiveUp, Try
from nodecache.core.policy import UpstreamHealth

NX, SF, OK, REF = dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL, dns.rcode.NOERROR, dns.rcode.REFUSED


def fwd(zone: str, *, except_zones: tuple[str, ...] = (), next_rcodes: tuple[int, ...] = ()
        ) -> ForwardSettings:
    return ForwardSettings(zone=zone, upstreams=(Upstream("127.0.0.1"),),
                           except_zones=except_zones, next_rcodes=next_rcodes)


def name(text: str) -> bytes:
    return wire.zone_to_wire(text)


# (forwards, name, index of the forward that takes it or None)
TAKERS = [
    ([fwd("example.org."), fwd(".")], "www.example.org.", 0),
    ([fwd("example.org."), fwd(".")], "www.example.net.", 1),
    ([fwd("."), fwd("example.org.")], "www.example.org.", 0),  # order, not the longest zone
    ([fwd("example.org."), fwd("example.net.")], "other.test.", None),
    ([fwd("example.org."), fwd("example.net.")], "www.example.net.", 1),
    ([fwd("example.org."), fwd("example.net.")], "notexample.org.", None),  # label boundary
    ([fwd(".", except_zones=("example.org.",)), fwd("example.org.")], "a.example.org.", 1),
    # the FROM zone itself is never excepted (CoreDNS's isAllowedDomain)
    ([fwd("example.org.", except_zones=("example.org.",))], "example.org.", 0),
    ([fwd("example.org.", except_zones=("example.org.",))], "a.example.org.", None),
    ([], "a.example.org.", None),
]


@pytest.mark.parametrize(("forwards", "qname", "taker"), TAKERS)
def test_first_taker(forwards: list[ForwardSettings], qname: str, taker: int | None) -> None:
    assert first_taker(routes_of(forwards), name(qname)) == taker


# (forwards, index that answered, name, rcode, where the answer goes)
HAND_ON = [
    ([fwd(".", next_rcodes=(NX,)), fwd(".")], 0, "a.example.org.", NX, 1),
    ([fwd(".", next_rcodes=(NX,)), fwd(".")], 0, "a.example.org.", OK, None),
    ([fwd(".", next_rcodes=(NX,)), fwd(".")], 0, "a.example.org.", SF, None),
    ([fwd(".", next_rcodes=(NX, SF)), fwd(".")], 0, "a.example.org.", SF, 1),
    # only the forwards after it count, rule 1 applied to them
    ([fwd(".", next_rcodes=(NX,)), fwd("example.net."), fwd(".")], 0, "a.example.org.", NX, 2),
    ([fwd(".", next_rcodes=(NX,)), fwd("example.net.")], 0, "a.example.org.", NX, NONE_TAKES),
    # the last forward keeps its answer
    ([fwd("example.net."), fwd(".", next_rcodes=(NX,))], 1, "a.example.org.", NX, None),
    ([fwd(".", next_rcodes=(NX,))], 0, "a.example.org.", NX, None),
    # chains on: the second forward's own next list decides for its answer
    ([fwd(".", next_rcodes=(NX,)), fwd(".", next_rcodes=(REF,)), fwd(".")], 1,
     "a.example.org.", REF, 2),
    ([fwd(".", next_rcodes=(NX,)), fwd(".", next_rcodes=(REF,)), fwd(".")], 1,
     "a.example.org.", NX, None),
]


@pytest.mark.parametrize(("forwards", "index", "qname", "rcode", "goes"), HAND_ON)
def test_hand_on(forwards: list[ForwardSettings], index: int, qname: str, rcode: int,
                 goes: int | None) -> None:
    assert hand_on(routes_of(forwards), index, name(qname), rcode) == goes


def answer(rcode: int) -> bytes:
    return bytes((0, 1, 0x81, 0x80 | rcode)) + bytes(8)


def plan(n: int, *, attempts: int = 0, failover: frozenset[int] = frozenset()) -> ForwardPlan:
    return ForwardPlan(list(range(n)), [UpstreamHealth() for _ in range(n)], max_fails=2,
                       failfast=False, try_timeout=2.0, start=0.0, budget=3.5,
                       rng=random.Random(1), max_connect_attempts=attempts, failover=failover)


# (upstreams, failover rcodes, answers' rcodes in turn, how many pass over, answer that stands)
FAILOVER = [
    (2, {SF}, [SF, OK], 1, OK),
    (3, {SF}, [SF, SF, SF], 2, SF),   # each upstream answered so: the last answer stands
    (2, {SF}, [NX], 0, NX),            # not a failover rcode
    (2, set(), [SF], 0, SF),           # no failover configured
    (1, {SF}, [SF], 0, SF),            # nothing to fail over to
    (3, {SF, REF}, [REF, SF, OK], 2, OK),
]


@pytest.mark.parametrize(("n", "rcodes", "answers", "passed", "stands"), FAILOVER)
def test_failover(n: int, rcodes: set[int], answers: list[int], passed: int, stands: int) -> None:
    p = plan(n, failover=frozenset(rcodes))
    tried = []
    for number, rcode in enumerate(answers):
        step = p.next_step(0.0)
        assert isinstance(step, Try)
        tried.append(step.index)
        if not p.fails_over(answer(rcode)):
            assert number == passed and rcode == stands
            break
    else:
        pytest.fail("every answer was passed over")
    assert tried == list(range(passed + 1))  # the next upstream each time, none twice


def test_failover_answer_stands_when_the_rest_fail() -> None:
    p = plan(2, failover=frozenset({SF}))
    assert isinstance(p.next_step(0.0), Try)
    assert p.fails_over(answer(SF))
    step = p.next_step(0.0)
    assert isinstance(step, Try) and step.index == 1
    p.failed(1, Failure.REFUSED)
    assert isinstance(p.next_step(0.0), GiveUp)
    assert p.fallback == answer(SF)  # the adapter answers with it, not SERVFAIL


# (upstreams, max_connect_attempts, failures in turn, tries made before giving up)
ATTEMPTS = [
    (3, 1, [Failure.TIMEOUT], 1),
    (3, 2, [Failure.TIMEOUT, Failure.RESET], 2),
    (1, 2, [Failure.LOCAL, Failure.LOCAL], 2),     # a second pass counts too
    (2, 0, [Failure.REFUSED, Failure.REFUSED], 2),  # no limit: the pass ends it
]


@pytest.mark.parametrize(("n", "attempts", "failures", "tries"), ATTEMPTS)
def test_max_connect_attempts(n: int, attempts: int, failures: list[Failure], tries: int) -> None:
    p = plan(n, attempts=attempts)
    made = 0
    now = 0.0
    for failure in failures:
        step = p.next_step(now)
        while not isinstance(step, (Try, GiveUp)):
            now = step.until
            step = p.next_step(now)
        assert isinstance(step, Try)
        made += 1
        p.failed(step.index, failure)
    step = p.next_step(now)
    assert isinstance(step, GiveUp) and made == tries
    if attempts:
        assert "max_connect_attempts" in step.reason
