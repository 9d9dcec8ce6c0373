"""Which upstream to try next, and whether an upstream is healthy.

Mirrors CoreDNS ``plugin/forward/policy.go`` and the loop in ``forward.go``
``ServeDNS`` (NODELOCAL.md section 4):

* a :class:`Policy` orders the upstreams for one query (``random``,
  ``round_robin``, ``sequential``);
* :class:`UpstreamHealth` counts consecutive failed health checks; an upstream
  is down once ``fails > max_fails`` (``max_fails`` 0: never down, never checked);
* ``nodecache.core.plan.ForwardPlan`` walks that order for one query.

No clock, no I/O: randomness comes from an injectable ``random.Random``.
"""
from __future__ import annotations

import abc
import random as _random
from collections.abc import Sequence
from typing import ClassVar


class Policy(abc.ABC):
    """Orders ``n`` upstreams for one query."""

    #: The Corefile's name for it (``policy NAME``); the class's, not each instance's.
    name: ClassVar[str]

    @abc.abstractmethod
    def order(self, n: int) -> Sequence[int]:
        """Indices of the upstreams, first to try first."""


class RandomPolicy(Policy):
    """A random order per query (CoreDNS ``random``, the default)."""

    name = "random"

    def __init__(self, rng: _random.Random | None = None) -> None:
        self._rng = rng or _random.Random()

    def order(self, n: int) -> Sequence[int]:
        if n == 1:
            return (0,)
        if n == 2:
            # policy.go: with two upstreams, a coin flip
            return (1, 0) if self._rng.getrandbits(1) else (0, 1)
        out = list(range(n))
        self._rng.shuffle(out)
        return out


class RoundRobinPolicy(Policy):
    """Each query starts one upstream further along (CoreDNS ``round_robin``)."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next = 0

    def order(self, n: int) -> Sequence[int]:
        start = self._next % n
        self._next = start + 1
        return [*range(start, n), *range(start)]


class SequentialPolicy(Policy):
    """Always in configured order (CoreDNS ``sequential``)."""

    name = "sequential"

    def order(self, n: int) -> Sequence[int]:
        return range(n)


#: ``policy NAME`` -> implementation.
POLICIES: dict[str, type[Policy]] = {
    cls.name: cls for cls in (RandomPolicy, RoundRobinPolicy, SequentialPolicy)
}


def make_policy(name: str, *, rng: _random.Random | None = None) -> Policy:
    """The policy called ``name``; raises ValueError for an unknown one."""
    try:
        cls = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; expected one of {sorted(POLICIES)}") from None
    return RandomPolicy(rng) if cls is RandomPolicy else cls()


class UpstreamHealth:
    """Health of one upstream: consecutive failed health checks."""

    __slots__ = ("fails", "checking")

    def __init__(self) -> None:
        #: Consecutive failed health checks (reset by one that is answered).
        self.fails = 0
        #: A health-check loop is running for it (at most one per upstream).
        self.checking = False

    def is_down(self, max_fails: int) -> bool:
        """Down after more than ``max_fails`` failed checks; ``max_fails`` 0 = never."""
        return max_fails > 0 and self.fails > max_fails

    def mark_down(self, max_fails: int) -> None:
        """Down now (a refused connection is conclusive); a passed health check lifts it."""
        if max_fails > 0:
            self.fails = max(self.fails, max_fails + 1)

    def check_failed(self) -> None:
        self.fails += 1

    def check_succeeded(self) -> None:
        self.fails = 0
