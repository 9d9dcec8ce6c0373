"""Which of a block's ``forward`` lines takes a query, and where an answer goes next.

CoreDNS makes each ``forward`` line of a block its own plugin, chained in the
order written (plugin/forward/setup.go). Rules:

1. A name goes to the first forward, in that order, whose FROM zone it is
   under and whose ``except`` zones it is not under (the FROM zone itself is
   never excepted). The order decides, not the longest FROM zone: a
   ``forward .`` written first takes every name.
2. No forward takes the name: the plugins after forward run (whoami), or the
   client gets SERVFAIL.
3. ``next RCODE...``: an answer with such an rcode goes to the following
   forwards, rule 1 applied to them only. The last forward keeps its answer
   (CoreDNS hands on only to another forward); when a following forward
   exists but none of them takes the name, the client gets SERVFAIL.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from nodecache.config.settings import ForwardSettings
from nodecache.core import wire


@dataclass(frozen=True, slots=True)
class ForwardRoute:
    """One ``forward`` line as routing sees it (names in lower-case wire form)."""

    zone: bytes
    except_zones: tuple[bytes, ...] = ()
    next_rcodes: frozenset[int] = frozenset()

    @classmethod
    def of(cls, settings: ForwardSettings) -> ForwardRoute:
        return cls(wire.zone_to_wire(settings.zone),
                   tuple(map(wire.zone_to_wire, settings.except_zones)),
                   frozenset(settings.next_rcodes))

    def takes(self, name: bytes) -> bool:
        """Rule 1 for this forward alone."""
        if not wire.is_subdomain(name, self.zone):
            return False
        return name == self.zone or not any(wire.is_subdomain(name, z) for z in self.except_zones)


#: :func:`hand_on`: no forward after this one takes the name (rule 3: SERVFAIL).
NONE_TAKES = -1


def routes_of(forwards: Sequence[ForwardSettings]) -> tuple[ForwardRoute, ...]:
    return tuple(ForwardRoute.of(f) for f in forwards)


def first_taker(routes: Sequence[ForwardRoute], name: bytes, start: int = 0) -> int | None:
    """The index of the forward that takes ``name`` (rule 1), from ``start`` on; None if none."""
    for index in range(start, len(routes)):
        if routes[index].takes(name):
            return index
    return None


def hand_on(routes: Sequence[ForwardRoute], index: int, name: bytes, rcode: int) -> int | None:
    """Forward ``index`` answered ``rcode`` for ``name``: None when the answer stands, else the
    index of the forward that gets the query (rule 3), or :data:`NONE_TAKES`."""
    if rcode not in routes[index].next_rcodes or index + 1 >= len(routes):
        return None
    taker = first_taker(routes, name, index + 1)
    return NONE_TAKES if taker is None else taker
