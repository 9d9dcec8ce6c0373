"""nodecache.core.cache.BlockCache: capacity, FIFO eviction, the index callbacks, entries' cache."""
from __future__ import annotations

import pytest

from nodecache.config.settings import CacheSettings
from nodecache.core.cache import BlockCache, Entry, Kind
from nodecache.core.stats import CacheStats
from tests.kit.coredriver import Driver, answer_a
from tests.kit.queries import make_query


def entry(key: str, kind: Kind = Kind.SUCCESS) -> Entry:
    return Entry(key.encode(), kind, 0, (b"",) * 4, ((b"",),), 30, 0.0)


# puts in order (key, kind) -> keys left in the success store, in the denial store,
# and the evictions counted (success, denial)
CASES = [
    ([("a", Kind.SUCCESS), ("b", Kind.SUCCESS), ("c", Kind.SUCCESS)], "bc", "", (1, 0)),
    # a refreshed entry moves to the back: c is the oldest when d comes
    ([("a", Kind.SUCCESS), ("b", Kind.SUCCESS), ("a", Kind.SUCCESS), ("d", Kind.SUCCESS)],
     "ad", "", (1, 0)),
    # the classes have their own capacity
    ([("a", Kind.DENIAL), ("b", Kind.SUCCESS), ("c", Kind.DENIAL), ("d", Kind.DENIAL)],
     "b", "cd", (0, 1)),
    # a key changing class leaves the other store
    ([("a", Kind.SUCCESS), ("a", Kind.DENIAL)], "", "a", (0, 0)),
]


@pytest.mark.parametrize("puts,success,denial,evictions", CASES)
def test_capacity_and_eviction(puts: list[tuple[str, Kind]], success: str, denial: str,
                               evictions: tuple[int, int]) -> None:
    index: dict[bytes, Entry] = {}
    stats = CacheStats("dns://:53", ".")
    cache = BlockCache(CacheSettings(success_capacity=2, denial_capacity=2), stats, (".",),
                       lambda e: index.__setitem__(e.key, e),
                       lambda e: index.pop(e.key) if index.get(e.key) is e else None)
    for key, kind in puts:
        cache.put(entry(key, kind), 0.0)
    assert "".join(k.decode() for k in cache.success) == success
    assert "".join(k.decode() for k in cache.denial) == denial
    assert (stats.evictions_success, stats.evictions_denial) == evictions
    assert sorted(index) == sorted(k.encode() for k in success + denial)
    assert (stats.entries_success, stats.entries_denial) == (len(success), len(denial))
    assert all(e.cache is cache for e in index.values())  # the cache holds what it stores


def test_entries_know_their_cache_not_a_zone() -> None:
    """What a hit needs (the tally, prefetch) is on the cache holding the entry."""
    d = Driver("cluster.local:53 {\n cache 30\n forward . 127.0.0.1\n}\n", answer_a())
    d.ask(make_query("svc.cluster.local."))
    (entry,) = d.handler.index.values()
    (zone,) = d.handler.zones.values()
    assert entry.cache is zone.cache and not hasattr(entry, "owner")
    d.ask(make_query("svc.cluster.local."))  # a hit: counted in its cache's tally
    assert sum(zone.cache.tally.values()) == 1
    d.handler.sync_stats()
    assert zone.cache.tally == {} and zone.cache_stats.hits_success == 1
