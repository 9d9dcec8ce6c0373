"""nodecache.core.policy: upstream order, health, and the attempts loop."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from nodecache.core.policy import (
    POLICIES, Attempts, RandomPolicy, RoundRobinPolicy, SequentialPolicy, UpstreamHealth,
    make_policy,
)


def test_registry() -> None:
    assert set(POLICIES) == {"random", "round_robin", "sequential"}
    assert isinstance(make_policy("round_robin"), RoundRobinPolicy)
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        make_policy("fastest")


def test_sequential() -> None:
    p = SequentialPolicy()
    assert list(p.order(3)) == [0, 1, 2] == list(p.order(3))


def test_round_robin() -> None:
    p = RoundRobinPolicy()
    assert [list(p.order(3)) for _ in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_random_is_a_permutation_and_spreads(n: int) -> None:
    p = RandomPolicy(random.Random(1))
    firsts: Counter[int] = Counter()
    for _ in range(400):
        order = list(p.order(n))
        assert sorted(order) == list(range(n))
        firsts[order[0]] += 1
    assert set(firsts) == set(range(n))
    assert min(firsts.values()) > 400 / n / 2


# (max_fails, failed checks, down?)
HEALTH_CASES = [
    (2, 0, False), (2, 2, False), (2, 3, True),       # down after MORE than max_fails
    (1, 1, False), (1, 2, True),
    (0, 100, False),                                  # 0: never down
]


@pytest.mark.parametrize("max_fails,fails,down", HEALTH_CASES)
def test_health(max_fails: int, fails: int, down: bool) -> None:
    h = UpstreamHealth()
    for _ in range(fails):
        h.check_failed()
    assert h.is_down(max_fails) is down
    h.check_succeeded()
    assert not h.is_down(max_fails)


def healths(*down: bool) -> list[UpstreamHealth]:
    out = []
    for d in down:
        h = UpstreamHealth()
        h.fails = 10 if d else 0
        out.append(h)
    return out


# (order, which are down, expected (index, broken) sequence)
ATTEMPT_CASES = [
    ([0, 1, 2], (False, False, False), [(0, False), (1, False), (2, False), (0, False)]),
    ([2, 0, 1], (False, False, False), [(2, False), (0, False), (1, False), (2, False)]),
    ([0, 1, 2], (False, True, False), [(0, False), (2, False), (0, False), (2, False)]),
    ([0, 1, 2], (True, True, False), [(2, False), (2, False)]),
]


@pytest.mark.parametrize("order,down,expected", ATTEMPT_CASES)
def test_attempts(order: list[int], down: tuple[bool, ...], expected: list[tuple[int, bool]]) -> None:
    a = Attempts(order, healths(*down), max_fails=2)
    assert [a.next() for _ in expected] == expected


def test_attempts_all_down_picks_at_random() -> None:
    a = Attempts([0, 1, 2], healths(True, True, True), max_fails=2, rng=random.Random(3))
    picks = [a.next() for _ in range(60)]
    assert all(broken for _, broken in picks)
    assert {i for i, _ in picks} == {0, 1, 2}


def test_attempts_counts_passes() -> None:
    a = Attempts([0, 1], healths(False, False), max_fails=2)
    seen = []
    for _ in range(5):
        a.next()
        seen.append(a.passes)
    assert seen == [0, 0, 1, 1, 2]


def test_attempts_max_fails_zero_ignores_fails() -> None:
    a = Attempts([0, 1], healths(True, True), max_fails=0)
    assert a.next() == (0, False)
