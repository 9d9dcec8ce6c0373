"""The per-query decision, written once for UDP, TCP and tests (sans I/O).

Drive it like this (``nodecache.aio.server`` does):

1. ``handle(data, now, slot, addr)`` returns the reply bytes (a cache hit, a
   local answer of the plugin chain, or an error), ``None`` (drop), or a
   :class:`Miss` to resolve upstream;
2. for a Miss, send ``upstream_query(miss)`` through the block's forwarder,
   then ``absorb(miss, answer, now)`` once per upstream answer (it stores it)
   and ``reply(miss, outcome, now)`` once per waiting client. ``reply`` may
   return another Miss (dns64's A look-up, a template CNAME's target): resolve
   it for the same client, whose reply it then gives;
3. on an upstream failure, ``fail(miss, error, now)`` gives a stale answer,
   SERVFAIL or REFUSED.

On a cache miss, the block's plugin chain (:mod:`nodecache.core.chain`)
answers, rewrites the question, or hands it to forward; all of that happens
in ``_run_chain``, after the cache look-up, so a hit never pays for it.

Rules of the hit path (``handle``'s first branch): it slices bytes, does one
dict look-up and joins pre-cut segments; no message objects, no logging, no
Prometheus calls. Anything unusual falls through to the strict slow path, so
a shortcut can never answer a query the slow path would refuse.
"""
from __future__ import annotations

import struct
import time
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nodecache.config.settings import ServerBlock
from nodecache.core import wire
from nodecache.core.chain import Chain, Request, Resolution, append_answers
from nodecache.core.forwards import ForwardRoute, first_taker, routes_of
from nodecache.core.cache import (SERVFAIL as SERVFAIL_KIND, BlockCache, Entry, Tally, build_entry,
                                  cache_key, classify, has_expired_rrsig, key_name)
from nodecache.core.stages import chain_for, dns64_for
from nodecache.core.stats import TIME_BUCKETS, CacheStats, ServerStats
from nodecache.core.truncate import truncate
from nodecache.errors import ClientProtocolError, ConcurrencyLimitError

if TYPE_CHECKING:
    from nodecache.core.stages.dns64 import DNS64

#: Listener slots: (server index << 8) | (tcp << 1) | ipv6. They label metrics:
#: proto, family, and server (``stats.SERVER_LABELS``; index 0: the zone's own).
SLOT_UDP4, SLOT_UDP6, SLOT_TCP4, SLOT_TCP6 = 0, 1, 2, 3
SLOT_SERVER_SHIFT = 8
SLOT_PROTO = ("udp", "udp", "tcp", "tcp")
SLOT_FAMILY = ("1", "2", "1", "2")

_TTL = struct.Struct("!I").pack
_perf = time.perf_counter
_OPT_LEN = len(wire.opt_record(False))  # bytes, our OPT without options
#: Our OPT after the client's owner, type and size (CoreDNS's ``SizeAndDo`` echoes the
#: size): extended rcode, version 0, the DO bit or not, no options (RFC 6891 6.1.2-3).
_OPT_TAIL_PLAIN, _OPT_TAIL_DO = b"\x00\x00\x00\x00\x00\x00", b"\x00\x00\x80\x00\x00\x00"
_QTYPE_AXFR, _QTYPE_IXFR = 252, 251
_FIRST_BUCKET = TIME_BUCKETS[0]
_MAX_PLAIN = wire.MAX_UDP_PLAIN
_MAX_MESSAGE = wire.MAX_MESSAGE
#: A stale answer's TTL, s (CoreDNS answers 0; RFC 8767 section 4 suggests 30).
STALE_TTL = 0


def _opt(edns: tuple[int, int, bool]) -> bytes:
    """Our OPT for a client's EDNS (:attr:`wire.Question.edns`): its size and DO bit."""
    return wire.opt_record(edns[2], edns[0])


def _client_limit(data: bytes, end: int, slot: int) -> int:
    """The largest reply the client takes, bytes, from a query the hit path checked:
    TCP's, or over UDP its OPT's size (RFC 6891 section 6.2.5) but never under 512."""
    if slot & 2:
        return _MAX_MESSAGE
    return max(data[end + 3] << 8 | data[end + 4], _MAX_PLAIN) if data[11] else _MAX_PLAIN


zone_wire = wire.zone_to_wire
@dataclass(eq=False)
class Zone:
    """One zone of one server block, with its runtime state."""

    name: str
    block: ServerBlock
    stats: ServerStats
    cache: BlockCache | None
    cache_stats: CacheStats | None
    #: The block's ``forward`` lines, in order (empty without forward).
    forward_routes: tuple[ForwardRoute, ...] = field(init=False)
    #: The block's answering plugins, run on a cache miss; None without any.
    chain: Chain | None = field(init=False)
    dns64: DNS64 | None = field(init=False)
    #: Largest UDP reply, bytes, whatever the client's EDNS size says (``bufsize``).
    udp_cap: int = field(init=False)
    #: The first ``forward`` takes every name of the zone (no need to ask it per query).
    forwards_all: bool = field(init=False)
    #: Replies to misses made from the entry just stored, counted like the hit
    #: path's (``BlockCache.tally``) but without the cache hit; sync_stats folds them.
    replies: Tally = field(init=False)
    #: Seconds those replies took, by server index (the slot's bits 8 and up).
    reply_seconds: dict[int, float] = field(init=False)

    #: Each listener address's counters, by server index (the slot's bits 8 and
    #: up); a slot not listed here counts into ``stats`` and ``cache_stats``.
    server_stats: dict[int, ServerStats] = field(init=False)
    server_cache_stats: dict[int, CacheStats] = field(init=False)

    def stats_for(self, slot: int) -> ServerStats:
        return self.server_stats.get(slot >> SLOT_SERVER_SHIFT, self.stats)

    def cache_stats_for(self, slot: int) -> CacheStats | None:
        return self.server_cache_stats.get(slot >> SLOT_SERVER_SHIFT, self.cache_stats)

    def all_stats(self) -> tuple[list[ServerStats], list[CacheStats]]:
        """Every stats object of the zone, once each (to export)."""
        servers = {id(s): s for s in (self.stats, *self.server_stats.values())}
        caches = {id(c): c for c in (self.cache_stats, *self.server_cache_stats.values())
                  if c is not None}
        return list(servers.values()), list(caches.values())

    def store(self, entry: Entry, now: float, slot: int) -> None:
        """Put ``entry`` in the cache, for a query that came in through ``slot``.

        CoreDNS sets an address's ``coredns_cache_entries`` when a reply is stored
        through it, to the cache's size then, and counts the evictions the store
        makes under it: the cache keeps the first address's counts, the others'
        are moved here and do not change the first's.
        """
        assert self.cache is not None and self.cache_stats is not None
        first = self.cache_stats
        own = self.server_cache_stats.get(slot >> SLOT_SERVER_SHIFT, first)
        if own is first or own is None:
            self.cache.put(entry, now)
            return
        before = (first.entries_success, first.entries_denial, first.evictions_success,
                  first.evictions_denial)
        self.cache.put(entry, now)
        own.entries_success, own.entries_denial = first.entries_success, first.entries_denial
        own.evictions_success += first.evictions_success - before[2]
        own.evictions_denial += first.evictions_denial - before[3]
        (first.entries_success, first.entries_denial, first.evictions_success,
         first.evictions_denial) = before

    def __post_init__(self) -> None:
        # Every init=False field is set here, none by a field default: compiled
        # dataclasses (mypyc) do not apply those defaults.
        self.chain = chain_for(self.block) or None
        self.dns64 = dns64_for(self.block)
        bufsize = self.block.bufsize
        self.udp_cap = wire.MAX_MESSAGE if bufsize is None else bufsize
        self.replies, self.reply_seconds = {}, {}
        self.server_stats, self.server_cache_stats = {}, {}
        self.forward_routes, self.forwards_all = (), False
        forward = self.block.forward
        if forward is not None:
            self.forward_routes = routes_of((forward, *self.block.later_forwards))
            first = self.forward_routes[0]
            self.forwards_all = not first.except_zones \
                and wire.is_subdomain(zone_wire(self.name), first.zone)


#: A query-log writer: (zone, client address, query, reply, slot, duration in s).
LogQuery = Callable[["Zone", object, bytes, bytes, int, float], None]


@dataclass(slots=True, eq=False)
class Miss:
    """A query that needs the upstream; carries what the reply must echo."""

    zone: Zone
    key: bytes
    query: bytes
    qname: bytes
    qtype: int
    qclass: int
    question_end: int
    edns: tuple[int, int, bool] | None
    cd: bool
    #: Largest reply the client accepts, bytes.
    limit: int
    slot: int
    started: float
    #: An expired entry that may be served if the upstream fails (serve_stale).
    stale: Entry | None = None
    #: A background refresh (prefetch or stale refresh): no client waits.
    background: bool = False
    #: The client's EDNS options (its OPT RDATA), forwarded upstream.
    options: bytes = b""
    #: What the plugin chain made of it (rewrites to undo); None without a chain.
    resolution: Resolution | None = None
    #: An AAAA question dns64 may answer (it looks at the reply first).
    dns64: bool = False
    #: This is a look-up another client's reply waits for (CoreDNS's upstream.Lookup).
    follow_up: FollowUp | None = None


@dataclass(slots=True, eq=False)
class FollowUp:
    """What a look-up made on behalf of one client does with its reply.

    dns64 looks the A records up for an AAAA question; template looks up the
    target of a CNAME it answered. Both go through the whole server (cache,
    chain, forward), as CoreDNS's ``upstream.Lookup`` does.
    """

    #: The look-up's reply and ``now`` -> the client's reply (or another look-up).
    done: Callable[[bytes, float], bytes | Miss]
    #: The client's reply when the look-up failed.
    failed: Callable[[float], bytes]


@dataclass(slots=True)
class Outcome:
    """What one upstream answer became; shared by every coalesced waiter."""

    data: bytes
    response: wire.Response | None
    entry: Entry | None


class QueryHandler:
    """Answers queries for one set of server blocks (those on one listener set)."""

    def __init__(self, zones: Sequence[Zone], *, on_log: LogQuery | None = None) -> None:
        #: key -> Entry for every block: the hit path's only look-up.
        self.index: dict[bytes, Entry] = {}
        #: AAAA entries of blocks with dns64, kept out of the hit path: dns64 runs
        #: before the cache, so their replies depend on the client and the A records.
        self.aside: dict[bytes, Entry] = {}
        self.zones = {zone_wire(z.name): z for z in zones}
        #: Lengths of the zones' wire names: a suffix of another length is no zone.
        self._zone_lengths = frozenset(map(len, self.zones))
        #: Background Misses to refresh (prefetch, stale refresh), queued by
        #: ``handle``: whoever calls ``handle`` takes them out and resolves them
        #: (``take_refreshes``), as it does a Miss ``handle`` returns.
        self.refreshes: list[Miss] = []
        #: Caches of zones with dns64: their AAAA entries go into ``aside``.
        self._dns64_caches = {id(z.cache) for z in zones if z.dns64 is not None
                              and z.cache is not None}
        #: The smallest ``bufsize`` of the zones: a UDP hit larger than this
        #: looks its zone's own up (rare), a smaller one never needs to.
        self._least_udp_cap = min((z.udp_cap for z in zones), default=wire.MAX_MESSAGE)
        #: Called for blocks with ``log``: (zone, addr, query, reply, slot, duration).
        self.on_log = on_log if any(z.block.log is not None for z in zones) else None
        #: Loop-detection probe names (lower wire) -> times seen.
        self.loop_probes: dict[bytes, int] = {}
        self._logging = any(z.block.log is not None for z in zones)
        #: Look-ups made for other queries now on the stack (see MAX_FOLLOW_UPS).
        self._following = 0

    # -- cache bookkeeping ---------------------------------------------------

    def index_add(self, entry: Entry) -> None:
        if self._dns64_caches:
            self._index_of(entry)[entry.key] = entry
        else:
            self.index[entry.key] = entry

    def index_remove(self, entry: Entry) -> None:
        index = self._index_of(entry)
        if index.get(entry.key) is entry:
            del index[entry.key]

    def _index_of(self, entry: Entry) -> dict[bytes, Entry]:
        key = entry.key
        if self._dns64_caches and id(entry.cache) in self._dns64_caches \
                and key[len(key_name(key)):][:2] == b"\x00\x1c":
            return self.aside
        return self.index

    def watch_probe(self, name: bytes) -> None:
        """Count the queries for wire name ``name`` (lower-case) from now on (the loop check)."""
        self.loop_probes[name] = 0

    def probe_seen(self, name: bytes) -> int:
        """How often ``name`` was asked since :meth:`watch_probe`; stops counting it."""
        return self.loop_probes.pop(name, 0)

    def take_refreshes(self) -> list[Miss]:
        """The background refreshes queued since the last call (resolve each like a Miss)."""
        refreshes = self.refreshes
        if not refreshes:
            return []
        taken = refreshes[:]
        refreshes.clear()
        return taken

    def route(self, qname_lower: bytes) -> Zone | None:
        """The zone whose name is the longest suffix of ``qname_lower``."""
        zones = self.zones
        offset = 0
        while True:
            zone = zones.get(qname_lower[offset:])
            if zone is not None:
                return zone
            length = qname_lower[offset]
            if length == 0:
                return None
            offset += 1 + length

    # -- the query path ------------------------------------------------------

    def handle(self, data: bytes, now: float, slot: int, addr: object = None) -> bytes | Miss | None:
        """Answer ``data`` from the cache, or say what to do instead."""
        started = _perf()
        size = len(data)
        # Hit path: a plain QUERY with one question, nothing else but maybe an OPT
        # (bytes 4..11: QDCOUNT 1, ANCOUNT and NSCOUNT 0, ARCOUNT's high byte 0).
        if size > 16 and not data[2] & 0xF8 and data[4:11] == b"\x00\x01\x00\x00\x00\x00\x00" \
                and not self._logging:
            end = data.find(0, 12) + 5
            arcount = data[11]
            if arcount == 0 and size == end:
                opt_head = opt_tail = b""
                header = data[2] & 1
                do = 0
            elif arcount == 1 and size >= end + 11 \
                    and size == end + 11 + (data[end + 9] << 8 | data[end + 10]) \
                    and data[end:end + 3] == b"\x00\x00\x29" and not data[end + 6]:
                do = data[end + 7] & 0x80
                # Our OPT: the client's owner, type and size, then our own fields.
                opt_head = data[end:end + 5]
                opt_tail = _OPT_TAIL_DO if do else _OPT_TAIL_PLAIN
                if (data[end + 3] << 8 | data[end + 4]) > self._least_udp_cap:
                    opt_head = self._bufsize_head(data, end)  # a bufsize may lower it
                header = (data[2] & 1) | 2
            else:
                return self._slow(data, now, slot, addr, started)
            # cache_key's bytes, inline: a call would cost more than building them.
            key = data[12:end - 4].lower() + data[end - 4:end]
            if do or data[3] & 0x10:
                key += b"\x02" if not data[3] & 0x10 else (b"\x03" if do else b"\x01")
            entry = self.index.get(key)
            # The body changes once a second (its TTL): renew builds it then, and
            # says False once the entry has expired.
            if entry is not None and (now < entry.body_until or entry.renew(now)):
                reply = b"".join((data[:2], entry.headers[header], data[12:end], entry.body,
                                  opt_head, opt_tail))
                cache = entry.cache
                # Both limits are at least 512 (RFC 1035, bufsize's minimum): a smaller
                # reply, nearly every one, costs a single compare with a constant.
                rsize = len(reply)
                if rsize > 512:
                    limit = _client_limit(data, end, slot)
                    if rsize > limit or not slot & 2 and rsize > self._least_udp_cap:
                        cap = limit if slot & 2 else min(limit, self._udp_cap(entry))
                        if rsize > cap:
                            reply = truncate(reply, cap, opt_head + opt_tail)
                            size = -(size << 16 | len(reply))  # both sizes given (see sync_stats)
                if entry.prefetch is not None:
                    self._prefetch(entry, data, now, slot)
                # One dict update counts the request, the response, the cache
                # hit, the DO bit, the duration bucket and both sizes, by
                # listener; sync_stats() unpacks it (the entry gives the type,
                # the rcode, DO and the reply's size, the slot the server label).
                elapsed = _perf() - started
                tally = cache.tally  # type: ignore[union-attr]
                mark = (slot, entry.tag,
                        0 if elapsed < _FIRST_BUCKET else bisect_left(TIME_BUCKETS, elapsed), size)
                tally[mark] = tally.get(mark, 0) + 1
                cache.hit_seconds += elapsed  # type: ignore[union-attr]
                return reply
            if entry is None:
                return self._fast_miss(data, end, key, now, slot, addr, started,
                                       _client_limit(data, end, slot), do)
        return self._slow(data, now, slot, addr, started)

    def _slow(self, data: bytes, now: float, slot: int, addr: object,
              started: float) -> bytes | Miss | None:
        """Everything that is not a plain hit: strict parsing, errors, misses, stale."""
        if len(data) < wire.HEADER_LEN or data[2] & 0x80:
            return None  # no header to answer, or a response: never reply (no loops)
        rcode = wire.header_rcode(data)
        if rcode:
            return wire.reject_response(data, rcode)
        try:
            question = wire.parse_query(data)
        except ClientProtocolError as exc:
            # RFC 1035 section 4.1.1: FORMERR, echoing the question when it was readable.
            return wire.reject_response(data, wire.FORMERR, exc.question_end)
        if data[2] & 0x78:
            # NOTIFY (RFC 1996): we are no secondary (node-cache passes it on upstream).
            return wire.reject_response(data, wire.NOTIMP)
        edns = question.edns
        if edns is not None and edns[1] != 0:
            # RFC 6891 section 6.1.3: an unknown EDNS version gets BADVERS.
            # node-cache's BADVERS carries an OPT of size 0, DO clear.
            return wire.error_response(data, wire.BADVERS, question.end, (0, 0, False))
        if question.qtype == _QTYPE_AXFR or question.qtype == _QTYPE_IXFR:
            # A zone transfer is a stream of messages: neither the cache nor a
            # pipelined upstream connection carries one (node-cache forwards it).
            return wire.error_response(data, wire.REFUSED, question.end, edns)
        lower = question.key_name
        zone = self.route(lower)
        if zone is None:
            return wire.error_response(data, wire.REFUSED, question.end, edns)
        if edns is not None and edns[0] > zone.udp_cap:
            edns = (zone.udp_cap, edns[1], edns[2])  # bufsize lowers it, as in CoreDNS
        if lower in self.loop_probes:
            self.loop_probes[lower] += 1
        do = bool(edns and edns[2])
        cd = bool(question.flags & wire.CD)
        key = cache_key(lower, data[question.end - 4:question.end], do=do, cd=cd)
        limit = wire.MAX_MESSAGE if slot & 2 else min(max(edns[0], _MAX_PLAIN) if edns
                                                        else _MAX_PLAIN, zone.udp_cap)
        miss = Miss(zone, key, data, question.qname, question.qtype, question.qclass,
                    question.end, edns, cd, limit, slot, started, options=question.options)
        return self._decide(miss, lower, now, addr)

    def _decide(self, miss: Miss, lower: bytes, now: float, addr: object,
                looked_up: bool = False) -> bytes | Miss:
        """A parsed, routable query: answer from the cache, serve stale, run the chain,
        refuse, or miss; dns64 first looks at what that gives an AAAA question.
        ``looked_up``: the hit path found nothing in ``index`` for the key."""
        zone = miss.zone
        entry = None if looked_up else self.index.get(miss.key)
        dns64 = zone.dns64
        if dns64 is not None:
            if not miss.dns64 and not miss.background \
                    and dns64.intercepts(miss.qtype, miss.qclass, 2 if miss.slot & 1 else 1):
                miss.dns64 = True
                result = self._decide(miss, lower, now, addr)
                return result if isinstance(result, Miss) \
                    else self._dns64_step(miss, result, now, addr)
            if entry is None:
                entry = self.aside.get(miss.key)
        if entry is not None:
            if now < entry.expires:
                return self._finish(miss, self._from_entry(miss, entry, now), addr, entry.rcode,
                                    "cache", hit=entry)
            cache = zone.cache
            if cache is not None and cache.settings.serve_stale \
                    and now < entry.expires + cache.settings.serve_stale:
                if cache.settings.serve_stale_mode == "immediate":
                    cache_stats = zone.cache_stats_for(miss.slot)
                    assert cache_stats is not None
                    cache_stats.served_stale += 1
                    reply = self._from_entry(miss, entry, now, stale=True)
                    if not entry.refreshing:
                        entry.refreshing = True
                        self._refresh(_background(miss, entry), now)
                    return self._finish(miss, reply, addr, entry.rcode, "cache")
                miss.stale = entry
        cache_stats = zone.cache_stats_for(miss.slot)
        if cache_stats is not None:
            cache_stats.misses += 1
        if zone.chain is not None:
            return self._run_chain(miss, now, addr)
        if not zone.forwards_all and first_taker(zone.forward_routes, lower) is None:
            # CoreDNS's NextOrFailure: no plugin takes the name (node-cache: SERVFAIL).
            reply = wire.error_response(miss.query, wire.SERVFAIL, miss.question_end, miss.edns)
            return self._finish(miss, reply, addr, wire.SERVFAIL, "")
        return miss

    def _fast_miss(self, data: bytes, end: int, key: bytes, now: float, slot: int, addr: object,
                   started: float, limit: int, do: int) -> bytes | Miss | None:
        """A plain query the cache does not hold: a Miss without the strict parse.

        The hit path already checked the header, the counts and the OPT record;
        what is left is the name's label structure (RFC 1035 section 3.1) and
        the checks ``_slow`` makes before a miss. Anything unusual goes to
        ``_slow``, so both paths answer alike; a flood of unique names then
        costs a label walk per query instead of a full parse.
        """
        name_end = end - 4
        zones = self.zones
        lengths = self._zone_lengths
        zone = None
        offset = 12
        length = data[offset]
        while length:
            if length > 63:
                return self._slow(data, now, slot, addr, started)
            if zone is None and name_end - offset in lengths:
                # the longest zone suffix (``route``), found on the way
                zone = zones.get(key[offset - 12:name_end - 12])
            offset += length + 1
            if offset >= name_end:
                return self._slow(data, now, slot, addr, started)
            length = data[offset]
        if offset != name_end - 1 or name_end - 12 > 255 or data[name_end + 2:end] != b"\x00\x01" \
                or data[name_end:name_end + 2] in (b"\x00\xfc", b"\x00\xfb") or self.loop_probes:
            return self._slow(data, now, slot, addr, started)
        if zone is None:
            zone = zones.get(b"\x00")
            if zone is None:
                return self._slow(data, now, slot, addr, started)
        edns = (min(data[end + 3] << 8 | data[end + 4], zone.udp_cap), 0, bool(do)) \
            if data[11] else None
        if not slot & 2:
            limit = min(limit, zone.udp_cap)
        miss = Miss(zone, key, data, data[12:name_end], data[name_end] << 8 | data[name_end + 1],
                    wire.CLASS_IN, end, edns, bool(data[3] & 0x10), limit, slot, started,
                    options=data[end + 11:])
        return self._decide(miss, key[:name_end - 12], now, addr, True)

    def _bufsize_head(self, data: bytes, end: int) -> bytes:
        """The hit path's OPT head (owner, type, size) with the size ``bufsize`` lowers
        the client's to (CoreDNS's bufsize rewrites the query before the cache sees it)."""
        zone = self.route(data[12:end - 4].lower())
        size = data[end + 3] << 8 | data[end + 4]
        if zone is None or size <= zone.udp_cap:
            return data[end:end + 5]
        return data[end:end + 3] + struct.pack("!H", zone.udp_cap)

    def _udp_cap(self, entry: Entry) -> int:
        """The largest UDP reply of the zone serving ``entry``, bytes (``bufsize``)."""
        zone = self.route(key_name(entry.key))
        return wire.MAX_MESSAGE if zone is None else zone.udp_cap

    def _prefetch(self, entry: Entry, data: bytes, now: float, slot: int) -> None:
        cache = entry.cache
        if cache is None or not cache.note_hit(entry, now):
            return
        zone = self.route(key_name(entry.key))  # the zone of the entry, looked up when it fires
        if zone is None or zone.cache is not cache:
            return
        try:
            question = wire.parse_query(data)
        except ClientProtocolError:
            return
        entry.refreshing = True
        cache_stats = zone.cache_stats_for(slot)
        assert cache_stats is not None
        cache_stats.prefetch += 1
        miss = Miss(zone, entry.key, data, question.qname, question.qtype, question.qclass,
                    question.end, question.edns, bool(question.flags & wire.CD),
                    wire.MAX_MESSAGE, slot, _perf(), options=question.options)
        self._refresh(_background(miss, entry), now)

    # -- the plugin chain ----------------------------------------------------

    def _run_chain(self, miss: Miss, now: float, addr: object) -> bytes | Miss:
        """A miss in a block with answering plugins: answer locally, or forward (rewritten)."""
        zone = miss.zone
        chain = zone.chain
        assert chain is not None
        resolution = chain.resolve(_request(miss, addr))
        if resolution.answer is None and resolution.rcode is None:
            if self._forwards(miss, resolution):
                miss.resolution = resolution
                return miss
            resolution = chain.after_forward(resolution)
        if resolution.answer is not None:
            if resolution.targets:
                return self._with_targets(miss, resolution, resolution.answer,
                                          list(resolution.targets), now, addr)
            outcome = self.absorb(miss, resolution.answer, now)
            return self.reply(miss, outcome, now, addr, resolution.plugin)
        rcode = wire.SERVFAIL if resolution.rcode is None else resolution.rcode
        reply = wire.error_response(miss.query, rcode, miss.question_end, miss.edns)
        return self._finish(miss, reply, addr, rcode, resolution.plugin)

    @staticmethod
    def _forwards(miss: Miss, resolution: Resolution) -> bool:
        """Whether forward takes the (possibly rewritten) name."""
        routes = miss.zone.forward_routes
        if not routes:
            return False
        name = zone_wire(resolution.request.name) if resolution.rewritten else key_name(miss.key)
        return first_taker(routes, name) is not None

    def _refresh(self, miss: Miss, now: float) -> None:
        """Refresh an entry in the background, through the chain when the block has one."""
        zone = miss.zone
        if zone.chain is None:
            self.refreshes.append(miss)
            return
        resolution = zone.chain.resolve(_request(miss, None))
        if resolution.answer is None and resolution.rcode is None \
                and self._forwards(miss, resolution):
            miss.resolution = resolution
            self.refreshes.append(miss)
            return
        if resolution.answer is not None and not resolution.targets:
            self.absorb(miss, resolution.answer, now)
        elif miss.stale is not None:
            miss.stale.refreshing = False

    # -- after the upstream --------------------------------------------------

    def upstream_query(self, miss: Miss) -> bytes:
        """The query to send upstream (ID 0: the forwarder picks one).

        It carries the client's EDNS options, as CoreDNS's forward does; the
        cache key does not include them (as CoreDNS's does not), so clients
        asking the same question with different options share one entry and
        one upstream query (the first one's options go upstream).
        """
        resolution = miss.resolution
        if resolution is not None and resolution.rewritten:
            request = resolution.request
            return wire.build_query(zone_wire(request.name), request.qtype, request.qclass,
                                    do=bool(miss.edns and miss.edns[2]), cd=miss.cd,
                                    options=request.options,
                                    payload=miss.zone.block.bufsize or wire.OUR_UDP_PAYLOAD)
        # The client's question as it sent it (RFC 1035 section 4.1.2), behind our header.
        return wire.query_from(miss.query[12:miss.question_end],
                               do=bool(miss.edns and miss.edns[2]), cd=miss.cd,
                               options=miss.options,
                               payload=miss.zone.block.bufsize or wire.OUR_UDP_PAYLOAD)

    def absorb(self, miss: Miss, data: bytes, now: float, wall: float | None = None) -> Outcome:
        """Index (and, when cacheable, store) one upstream answer.

        The answer is walked once: when its question is the miss's (as the
        forwarder has checked, RFC 5452 section 9.1), the index starts after it.
        """
        zone = miss.zone
        if miss.resolution is not None:
            try:  # rewrite: the answer as the client must see it (its question, names, TTLs)
                data = miss.resolution.revert(data)
            except (ValueError, struct.error):
                return Outcome(data, None, None)
        end = miss.question_end
        key = miss.key
        # The question as asked, name compared without case (type and class bytes
        # that look like letters only cost a second walk of the question).
        same = data[12:end].lower() == key[:end - 12]
        try:
            response = wire.index_response(data, end if same else 0)
        except (ValueError, struct.error):
            return Outcome(data, None, None)
        cache = zone.cache
        entry = None
        if cache is not None:
            kind, ttl = classify(response, data)
            do = bool(miss.edns and miss.edns[2])
            if kind is not None and (cache.stores_all or cache.may_store(key_name(key), kind)):
                stored_ttl = cache.ttl_for(kind, ttl)
                expired_sig = do and has_expired_rrsig(response, data,
                                                       time.time() if wall is None else wall)
                keep_stale = kind is SERVFAIL_KIND and miss.stale is not None
                if stored_ttl > 0 and not expired_sig and not keep_stale:
                    entry = build_entry(key, data, response, kind, stored_ttl, now, do=do,
                                        cd=miss.cd,
                                        loadbalance=zone.block.loadbalance,
                                        keep=cache.settings.keepttl, name_end=end - 17)
                    zone.store(entry, now, miss.slot)
        if miss.stale is not None:
            miss.stale.refreshing = False
        return Outcome(data, response, entry)

    def reply(self, miss: Miss, outcome: Outcome, now: float, addr: object = None,
              plugin: str = "forward") -> bytes | Miss:
        """The reply to one waiting client from an upstream outcome.

        A Miss instead of bytes: dns64 needs the A records first; resolve it
        for the same client.
        """
        reply = self._reply(miss, outcome, now, addr, plugin)
        if miss.follow_up is not None:
            return miss.follow_up.done(reply, now)
        if miss.dns64:
            return self._dns64_step(miss, reply, now, addr)
        return reply

    def _dns64_step(self, miss: Miss, reply: bytes, now: float, addr: object) -> bytes | Miss:
        """The AAAA reply is in: keep it, or look the A records up and synthesize."""
        dns64 = miss.zone.dns64
        assert dns64 is not None
        try:
            response = wire.index_response(reply)
        except (ValueError, struct.error):
            return reply
        if not dns64.wants(response):
            return reply
        # dns64's A look-up failing leaves the AAAA question with SERVFAIL.
        return self._follow(miss, miss.qname, wire.TYPE_A, now, addr, FollowUp(
            lambda found, _now: dns64.synthesize(reply, found),
            lambda _now: wire.error_response(miss.query, wire.SERVFAIL, miss.question_end,
                                             miss.edns)))

    def _with_targets(self, miss: Miss, resolution: Resolution, answer: bytes,
                      targets: list[str], now: float, addr: object) -> bytes | Miss:
        """A template answer with CNAMEs: append each target's records, then map the
        answer back (rewrite), cache it and reply."""
        plugin = resolution.plugin

        def finish(merged: bytes, at: float) -> bytes | Miss:
            if targets:
                return self._with_targets(miss, resolution, merged, targets, at, addr)
            outcome = self.absorb(miss, resolution.revert(merged), at)
            return self.reply(miss, outcome, at, addr, plugin)

        def unmerged(at: float) -> bytes:  # CoreDNS ignores a failed look-up
            outcome = self.absorb(miss, resolution.revert(answer), at)
            return _bytes(self.reply(miss, outcome, at, addr, plugin), miss)

        target = targets.pop(0)
        return self._follow(miss, zone_wire(target), miss.qtype, now, addr, FollowUp(
            lambda found, at: finish(append_answers(answer, found), at), unmerged))

    def _follow(self, miss: Miss, qname: bytes, qtype: int, now: float, addr: object,
                follow_up: FollowUp) -> bytes | Miss:
        """Ask ``qname``/``qtype`` for ``miss``'s client (its ID, flags and EDNS) through the
        whole server; ``follow_up`` makes the client's reply from the answer."""
        if self._following >= MAX_FOLLOW_UPS:
            return follow_up.failed(now)
        query = miss.query
        lookup = query[:12] + qname + struct.pack("!HH", qtype, wire.CLASS_IN) \
            + query[miss.question_end:]
        self._following += 1
        try:
            result = self.handle(lookup, now, miss.slot, addr)
        finally:
            self._following -= 1
        if isinstance(result, Miss):
            result.follow_up = follow_up
            return result
        if result is None:
            return follow_up.failed(now)
        return follow_up.done(result, now)

    def _reply(self, miss: Miss, outcome: Outcome, now: float, addr: object,
               plugin: str) -> bytes:
        response = outcome.response
        if response is None:
            return self.fail(miss, ValueError("malformed upstream answer"), now, addr)
        entry = outcome.entry
        if entry is not None and miss.zone.cache is not None:
            # the common miss: counted as the hit path counts, in one dict update
            reply = self._from_entry(miss, entry, now)
            if not response.flags & wire.AA:
                # CoreDNS's cache sets AA on what it serves from store, not on the
                # upstream answer it passes on while storing it.
                reply = reply[:2] + bytes((reply[2] & ~(wire.AA >> 8),)) + reply[3:]
            return self._finish(miss, reply, addr, response.rcode, "cache", stored=entry)
        if entry is not None:
            reply = self._from_entry(miss, entry, now)
        elif response.rcode == wire.SERVFAIL and miss.stale is not None:
            return self.fail(miss, ValueError("upstream SERVFAIL"), now, addr)
        else:
            reply = self._passthrough(miss, outcome.data, response)
        # CoreDNS labels a reply with the plugin that wrote it; with cache in the
        # block that is cache's writer even when forward (or hosts, template...)
        # found the answer.
        if miss.zone.cache is not None:
            plugin = "cache"
        return self._finish(miss, reply, addr, response.rcode, plugin)

    def fail(self, miss: Miss, error: Exception, now: float, addr: object = None) -> bytes:
        """The reply when the upstream did not answer usefully."""
        if miss.follow_up is not None:
            return miss.follow_up.failed(now)
        if miss.background:
            if miss.stale is not None:
                miss.stale.refreshing = False
            return b""
        if isinstance(error, ConcurrencyLimitError):
            rcode = wire.REFUSED
        else:
            stale = miss.stale
            zone = miss.zone
            if stale is not None and zone.cache is not None \
                    and now < stale.expires + zone.cache.settings.serve_stale:
                stale.refreshing = False
                cache_stats = zone.cache_stats_for(miss.slot)
                assert cache_stats is not None
                cache_stats.served_stale += 1
                return self._finish(miss, self._from_entry(miss, stale, now, stale=True), addr,
                                    stale.rcode, "cache")
            rcode = wire.SERVFAIL
        reply = wire.error_response(miss.query, rcode, miss.question_end, miss.edns)
        return self._finish(miss, reply, addr, rcode, "")

    # -- building replies ----------------------------------------------------

    def _from_entry(self, miss: Miss, entry: Entry, now: float, stale: bool = False) -> bytes:
        data = miss.query
        if stale:
            body = entry.body_with(STALE_TTL)
        elif now < entry.body_until or entry.renew(now):
            body = entry.body  # as on the hit path: built once per TTL value
        else:
            body = entry.body_with(0)
        if miss.edns:
            opt = _opt(miss.edns)
            header = (data[2] & 1) | 2
        else:
            opt = b""
            header = data[2] & 1
        reply = data[:2] + entry.headers[header] + data[12:miss.question_end] + body + opt
        if len(reply) > miss.limit:
            reply = truncate(reply, miss.limit, opt)
        return reply

    def _passthrough(self, miss: Miss, data: bytes, response: wire.Response) -> bytes:
        """An uncached upstream answer, re-headed for this client (own ID, case, OPT)."""
        query = miss.query
        records = response.records
        flags = wire.QR | (response.flags & ~(wire.RD | wire.AD)) \
            | (struct.unpack_from("!H", query, 2)[0] & wire.RD)
        if miss.edns and miss.edns[2]:
            flags |= response.flags & wire.AD
        opt = b""
        if miss.edns:
            opt = _opt(miss.edns)
        header = struct.pack("!HHHHH", flags & 0xFFFF, 1, response.ancount, response.nscount,
                             response.arcount + (1 if opt else 0))
        body = b"".join(data[r.start:r.end] for r in records)
        reply = query[:2] + header + query[12:miss.question_end] + body + opt
        if len(reply) > miss.limit:
            reply = truncate(reply, miss.limit, opt)
        return reply

    def _finish(self, miss: Miss, reply: bytes, addr: object, rcode: int, plugin: str,
                hit: Entry | None = None, stored: Entry | None = None) -> bytes:
        """Count and log one reply from the slow path (``plugin`` labels the response).

        ``hit``: the reply is that entry's, a cache hit; ``stored``: it is the
        entry this miss just stored (its tag says what the counters need).
        """
        zone = miss.zone
        elapsed = _perf() - miss.started
        if stored is not None:
            mark = (miss.slot, stored.tag,
                    0 if elapsed < _FIRST_BUCKET else bisect_left(TIME_BUCKETS, elapsed),
                    -(len(miss.query) << 16 | len(reply)))
            replies = zone.replies
            replies[mark] = replies.get(mark, 0) + 1
            server = miss.slot >> SLOT_SERVER_SHIFT
            zone.reply_seconds[server] = zone.reply_seconds.get(server, 0.0) + elapsed
            if self.on_log is not None and zone.block.log is not None and not miss.background:
                self.on_log(zone, addr, miss.query, reply, miss.slot, elapsed)
            return reply
        stats = zone.stats_for(miss.slot)
        qtype = miss.query[miss.question_end - 4:miss.question_end - 2]
        if hit is not None and hit.cache is not None:
            mark = (miss.slot, hit.tag, bisect_left(TIME_BUCKETS, elapsed),
                    -(len(miss.query) << 16 | len(reply)))
            hit.cache.tally[mark] = hit.cache.tally.get(mark, 0) + 1
            hit.cache.hit_seconds += elapsed
        else:
            stats.requests[(SLOT_PROTO[miss.slot & 3], SLOT_FAMILY[miss.slot & 3],
                            _type_name(qtype))] += 1
            stats.responses[(wire.rcode_name(rcode), plugin)] += 1
            stats.duration.observe(elapsed)
            proto = SLOT_PROTO[miss.slot & 3]
            stats.request_size[proto].observe(len(miss.query))
            # CoreDNS counts what the plugin chain wrote: nothing when the
            # server itself answers an error (plugin ""), so 0 bytes then.
            stats.response_size[proto].observe(len(reply) if plugin else 0)
        if hit is None and miss.edns and miss.edns[2]:  # a hit's is its tag's
            stats.do_requests += 1
        if self.on_log is not None and zone.block.log is not None and not miss.background:
            self.on_log(zone, addr, miss.query, reply, miss.slot, elapsed)
        return reply

    def sync_stats(self) -> None:
        """Fold the hit path's tallies, and the stored misses' replies, into the
        exported counters (at scrape time)."""
        for zone in {id(z): z for z in self.zones.values()}.values():
            cache = zone.cache
            if cache is not None and cache.tally:
                tally, cache.tally = cache.tally, {}
                seconds, cache.hit_seconds = cache.hit_seconds, 0.0
                # The hit path sums its time per zone: each address gets its share by hits.
                counted = _fold(zone, tally, True)
                total = sum(n for _, n in counted.values())
                for stats, n in counted.values():
                    stats.duration.sum += seconds * n / total
            if zone.replies:
                replies, zone.replies = zone.replies, {}
                seconds_by, zone.reply_seconds = zone.reply_seconds, {}
                _fold(zone, replies, False)
                for server, spent in seconds_by.items():
                    zone.server_stats.get(server, zone.stats).duration.sum += spent


def _fold(zone: Zone, tally: Tally, hits: bool) -> dict[int, tuple[ServerStats, int]]:
    """Add ``tally``'s answers to ``zone``'s counters (``hits``: and to the cache hits);
    the answers counted per stats object, by id."""
    counted: dict[int, tuple[ServerStats, int]] = {}
    for (slot, tag, bucket, sizes), count in tally.items():
        stats = zone.stats_for(slot)
        counted[id(stats)] = stats, counted.get(id(stats), (stats, 0))[1] + count
        proto = SLOT_PROTO[slot & 3]
        rcode, kind, qtype, question, records, do = tag
        stats.requests[(proto, SLOT_FAMILY[slot & 3], _type_name(qtype))] += count
        stats.responses[(wire.rcode_name(rcode), "cache")] += count
        stats.duration.counts[bucket] += count
        stats.duration.count += count
        if do:
            stats.do_requests += count
        if sizes < 0:
            request, response = -sizes >> 16, -sizes & 0xFFFF
        else:
            # The hit path's reply: header, the question as asked, the
            # stored records, and our OPT if the query had one.
            request = sizes
            response = 12 + question + records \
                + (_OPT_LEN if sizes > 12 + question else 0)
        stats.request_size[proto].observe(request, count)
        stats.response_size[proto].observe(response, count)
        cache_stats = zone.cache_stats_for(slot)
        if hits and cache_stats is not None:
            if not kind:  # SUCCESS, in KINDS
                cache_stats.hits_success += count
            else:
                cache_stats.hits_denial += count
    return counted


#: Look-ups nested inside one another (a template CNAME whose target a template
#: answers with a CNAME...); CoreDNS has no bound and overflows its stack.
MAX_FOLLOW_UPS = 8


def _bytes(result: bytes | Miss, miss: Miss) -> bytes:
    """A failed look-up's reply may not wait for another one: SERVFAIL then."""
    if isinstance(result, bytes):
        return result
    return wire.error_response(miss.query, wire.SERVFAIL, miss.question_end, miss.edns)


def _request(miss: Miss, addr: object) -> Request:
    """The chain's view of a miss: the question, and who asked over what."""
    remote, port = (str(addr[0]), int(addr[1])) if isinstance(addr, tuple) else ("", 0)
    qname = wire.name_text(miss.qname)
    return Request(qname.lower(), miss.qtype, miss.qclass, qname, remote, port,
                   SLOT_PROTO[miss.slot & 3], 2 if miss.slot & 1 else 1,
                   miss.query[12:miss.question_end], miss.options, miss.edns is not None)


def _background(miss: Miss, origin: Entry) -> Miss:
    miss.background = True
    miss.stale = origin
    miss.limit = wire.MAX_MESSAGE
    return miss


#: The query types CoreDNS's metrics name (``plugin/metrics/vars``); every other
#: type is counted as "other", which keeps the label's cardinality bounded.
_MONITORED_TYPES = frozenset({"A", "AAAA", "MX", "SOA", "CNAME", "PTR", "TXT", "NS", "SRV",
                              "DS", "DNSKEY", "RRSIG", "NSEC", "NSEC3", "HTTPS", "IXFR",
                              "AXFR", "ANY"})


def _type_name(qtype: bytes) -> str:
    """The ``type`` label of a query type, as CoreDNS's metrics spell it."""
    name = wire.type_name(int.from_bytes(qtype, "big"))
    return name if name in _MONITORED_TYPES else "other"
