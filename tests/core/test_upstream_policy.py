"""nodecache.core.policy: upstream order and health."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from nodecache.core.policy import (
    POLICIES, RandomPolicy, RoundRobinPolicy, SequentialPolicy, UpstreamHealth,
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


def test_mark_down_until_a_check_passes() -> None:
    h = UpstreamHealth()
    h.mark_down(2)
    assert h.is_down(2)
    h.check_succeeded()
    assert not h.is_down(2)
    h.mark_down(0)                      # max_fails 0: never down
    assert not h.is_down(0)
