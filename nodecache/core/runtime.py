"""The core's objects for one Config: zones, their caches, and the query handlers.

Sans I/O: the agent (``nodecache.aio.agent``) adds forwarders, resolvers and
listeners around what :func:`build` returns.

Rules:

1. On reload, a zone whose block is unchanged is kept as it is; a zone whose
   cache settings are unchanged keeps its cache (the entries move to the new
   zone), so a reload never starts cold.
2. A cache adds and removes its entries in the look-up index of every handler
   that routes its zone, through one :class:`EntryIndex` shared by the running
   runtime and, during a reload, the pending one.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from nodecache.config.settings import Config, ServerBlock
from nodecache.core.cache import BlockCache, Entry, key_name
from nodecache.core.handler import LogQuery, QueryHandler, Zone
from nodecache.core.stats import CacheStats, ServerStats, server_index

#: Listener address -> the handler serving it.
Handlers = dict[tuple[str, int], QueryHandler]
#: A zone's counters, made for (block, zone name).
MakeStats = Callable[[ServerBlock, str], ServerStats]


class EntryIndex:
    """Cache -> the handlers whose look-up index holds that cache's entries.

    Keyed by the cache, not the zone: a reload that changes a block's
    ``forward`` makes a new zone that keeps the old zone's cache, and that
    cache's entries must reach the new handlers. Recomputed by :meth:`track`
    on every switch of runtimes, so a cache insert or eviction costs one dict
    look-up, not a search.
    """

    __slots__ = ("_handlers_of",)

    def __init__(self) -> None:
        #: None (an entry not in a cache) is never a key: such an entry is indexed nowhere.
        self._handlers_of: dict[BlockCache | None, list[QueryHandler]] = {}

    def add(self, entry: Entry) -> None:
        """Index ``entry`` (just stored: its ``cache`` says whose it is) where it is served."""
        for handler in self._handlers_of.get(entry.cache, ()):
            handler.index_add(entry)

    def remove(self, entry: Entry) -> None:
        for handler in self._handlers_of.get(entry.cache, ()):
            handler.index_remove(entry)

    def track(self, handlers: Iterable[QueryHandler]) -> None:
        """Serve these handlers from now on (those of the running and pending runtimes)."""
        handlers_of: dict[BlockCache | None, list[QueryHandler]] = {}
        for handler in {id(h): h for h in handlers}.values():
            for zone in {id(z): z for z in handler.zones.values()}.values():
                if zone.cache is not None:
                    handlers_of.setdefault(zone.cache, []).append(handler)
        self._handlers_of = handlers_of


def _cache_identity(block: ServerBlock, zone: str) -> tuple[object, ...]:
    """What must be equal for a zone's cache to survive a reload."""
    # Answers of the plugins the cache wraps are cached: new plugins, new cache.
    return (zone, block.port, block.cache, block.hosts, block.template, block.rewrite)


def _zone_identity(block: ServerBlock, zone: str) -> tuple[object, ...]:
    return (zone, block.port, block.cache, block.forward, block.loadbalance, block.hosts,
            block.template, block.rewrite, block.dns64, block.whoami)


def _plain_stats(block: ServerBlock, zone: str) -> ServerStats:
    return ServerStats(block.server, zone)


def build_zones(config: Config, previous: Sequence[Zone], index: EntryIndex, *,
                server_stats: MakeStats = _plain_stats) -> list[Zone]:
    """Every zone of every block, reusing ``previous`` zones and caches (rule 1)."""
    old_zones: dict[tuple[object, ...], Zone] = {}
    old_caches: dict[tuple[object, ...], Zone] = {}
    for zone in previous:
        old_zones[_zone_identity(zone.block, zone.name)] = zone
        old_caches[_cache_identity(zone.block, zone.name)] = zone
    zones: list[Zone] = []
    for block in config.blocks:
        for name in block.zones:
            reused = old_zones.get(_zone_identity(block, name))
            if reused is not None and reused.block == block:
                zones.append(reused)
                continue
            zone = Zone(name, block, server_stats(block, name), None, None)
            donor = None
            if block.cache is not None:
                donor = old_caches.get(_cache_identity(block, name))
                if donor is not None and donor.cache is not None:
                    zone.cache, zone.cache_stats = donor.cache, donor.cache_stats
                else:
                    zone.cache_stats = CacheStats(block.server, name)
                    zone.cache = BlockCache(block.cache, zone.cache_stats, (name,),
                                            index.add, index.remove)
            _split_servers(zone, donor.server_cache_stats
                           if donor is not None and donor.cache is not None else {})
            zones.append(zone)
    return zones


def _split_servers(zone: Zone, cache_donor: dict[int, CacheStats]) -> None:
    """Counters for each of the block's addresses: CoreDNS labels each with its own ``server``.

    The first address counts into the zone's own stats; the others get theirs,
    those of a reused cache keep counting.
    """
    first, *others = zone.block.servers
    zone.server_stats[server_index(first)] = zone.stats
    if zone.cache_stats is not None:
        zone.server_cache_stats[server_index(first)] = zone.cache_stats
    for label in others:
        index = server_index(label)
        zone.server_stats[index] = ServerStats(label, zone.name, plugins=zone.stats.plugins)
        if zone.cache_stats is not None:
            zone.server_cache_stats[index] = cache_donor.get(index) or CacheStats(label, zone.name)


def build(config: Config, previous: Sequence[Zone], index: EntryIndex, *,
          on_log: LogQuery | None = None,
          server_stats: MakeStats = _plain_stats) -> tuple[list[Zone], Handlers]:
    """The zones and one handler per set of blocks sharing a listener.

    Entries of reused caches are indexed in the new handlers at once; call
    ``index.track`` with the new handlers before the caches change.
    """
    zones = build_zones(config, previous, index, server_stats=server_stats)
    by_block: dict[int, list[Zone]] = {}
    at = iter(zones)
    for block in config.blocks:
        by_block[id(block)] = [next(at) for _ in block.zones]
    handlers: Handlers = {}
    by_blockset: dict[tuple[int, ...], QueryHandler] = {}
    for address, blocks in config.listeners().items():
        ident = tuple(id(b) for b in blocks)
        handler = by_blockset.get(ident)
        if handler is None:
            handler = by_blockset[ident] = QueryHandler(
                [z for b in blocks for z in by_block[id(b)]], on_log=on_log)
            _index_existing(handler)
        handlers[address] = handler
    return zones, handlers


def single_handler(config: Config, *, on_log: LogQuery | None = None) -> QueryHandler:
    """One handler over every zone of ``config``, whatever the listeners (tests, benchmarks)."""
    index = EntryIndex()
    handler = QueryHandler(build_zones(config, (), index), on_log=on_log)
    index.track([handler])
    return handler


def _index_existing(handler: QueryHandler) -> None:
    for zone in {id(z): z for z in handler.zones.values()}.values():
        if zone.cache is not None:
            for entry in zone.cache.entries():
                if handler.route(key_name(entry.key)) is zone:
                    handler.index_add(entry)
