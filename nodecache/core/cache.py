"""The answer cache: stored wire bytes, ready to patch and send.

Theory of operation
-------------------
An upstream answer is stored once as *segments*: the message body after the
question, cut at every record's 4-byte TTL field. A hit joins the segments
with the remaining TTL (all records carry one TTL, as CoreDNS does, so clients
see no jarring per-record TTLs), and prepends the client's ID, a pre-built
header and the client's own question bytes (exact case, RFC 4343). Compression
pointers stay valid because the client's question has the same length as the
stored one. Nothing on the hit path builds message objects.

Entries are not swept when they expire: an expired entry stays until evicted
or refreshed, which is what lets serve_stale answer with it (RFC 8767).
Capacity is bounded per class (success/denial); eviction is
first-in-first-out, and a refreshed entry moves to the back.

TTL rules (RFC 2308, CoreDNS ``cache``):

* positive answers: the minimum TTL over all records (OPT excluded), clamped
  to [success MINTTL, success TTL];
* NXDOMAIN / NODATA with an SOA in authority: min(SOA TTL, SOA MINIMUM)
  (RFC 2308 section 5), clamped to [denial MINTTL, denial TTL]; without an SOA
  they are not cached (RFC 2308 section 5, "SHOULD NOT");
* SERVFAIL / NOTIMP from upstream: ``servfail`` seconds (RFC 2308 section 7.1);
* never cached: TC=1 answers, other RCODEs, a TTL of 0 after clamping, and
  (with DO) answers carrying an expired RRSIG.
"""
from __future__ import annotations

import math
import struct
from collections import OrderedDict
from collections.abc import Callable
from enum import Enum

from nodecache.config.settings import CacheSettings
from nodecache.core import wire
from nodecache.core.stats import CacheStats

#: TTL used when a message has no records to take one from, s (CoreDNS).
FALLBACK_TTL = 5
_U32 = struct.Struct("!I")
_COUNTS = struct.Struct("!HHHH")


class Kind(Enum):
    SUCCESS = "success"
    DENIAL = "denial"
    SERVFAIL = "servfail"  # stored with the denials, as CoreDNS does


#: The kinds as plain names: a member looked up on its Enum class costs about
#: 0.15 us (Python 3.11), several times per miss.
SUCCESS, DENIAL, SERVFAIL = Kind.SUCCESS, Kind.DENIAL, Kind.SERVFAIL


#: Shared tags: entries that count alike share one tuple (few distinct ones).
Tag = tuple[int, bool, bytes, int, int, bool]
_TAGS: dict[Tag, Tag] = {}
#: A cache key's last byte, DO (2) | CD (1); none when both are clear.
_KEY_FLAGS = (b"", b"\x01", b"\x02", b"\x03")


def cache_key(qname_lower: bytes, qtype_class: bytes, *, do: bool, cd: bool) -> bytes:
    """The key a question's answer is cached under.

    The lower-case wire name (RFC 4343), QTYPE and QCLASS as sent, then one
    byte with DO (2) and CD (1) when either is set: answers with RRSIGs
    (RFC 3225) or unchecked (RFC 4035 section 3.2.2) are kept apart.
    ``QueryHandler.handle``'s hit path builds the same bytes inline.
    """
    return qname_lower + qtype_class + _KEY_FLAGS[(2 if do else 0) | (1 if cd else 0)]


def key_name(key: bytes) -> bytes:
    """The lower-case wire name at the start of a cache key."""
    return key[:wire.skip_name(key, 0)]
#: Hits counted by the hit path: (slot, entry tag, duration bucket, sizes) -> answers;
#: sizes is the query's length (the reply's follows from the tag) or, negated,
#: query length << 16 | reply length when the reply is not the plain one.
Tally = dict[tuple[int, Tag, int, int], int]


class Entry:
    """One cached answer. ``headers[rd | has_opt << 1]`` is bytes 2..12 of the reply.

    Fixed once built: key, kind, rcode, tag, headers, variants, ttl, stored,
    expires, keep. The rest changes: the cache that holds it (set by
    :meth:`BlockCache.put`), the loadbalance turn, the prefetch counters and
    the last body built.
    """

    __slots__ = ("key", "kind", "rcode", "tag", "headers", "variants", "ttl", "stored", "expires",
                 "keep", "cache", "turn", "prefetch_at", "refresh_at", "hits", "window_start",
                 "refreshing", "body_ttl", "last_body")

    def __init__(self, key: bytes, kind: Kind, rcode: int, headers: tuple[bytes, ...],
                 variants: tuple[tuple[bytes, ...], ...], ttl: int, stored: float,
                 keep: bool = False, tag: Tag | None = None) -> None:
        self.key = key
        self.kind = kind
        self.rcode = rcode
        #: How a hit is tallied for metrics (see :func:`tag_of`).
        self.tag = tag or tag_of(key, kind, rcode,
                                 len(b"\0\0\0\0".join(variants[0])) if variants else 0)
        self.headers = headers
        #: One or more segment lists; more than one when loadbalance rotates A/AAAA.
        self.variants = variants
        #: The stored (clamped) TTL, s.
        self.ttl = ttl
        #: Loop time when stored, s.
        self.stored = stored
        self.expires = stored + ttl
        #: keepttl: hits report the stored TTL.
        self.keep = keep
        #: The cache holding the entry (its hit tally, its prefetch settings).
        self.cache: BlockCache | None = None
        self.turn = 0
        #: Loop time from which hits are counted for prefetch; inf when prefetch is off.
        self.prefetch_at = math.inf
        #: Loop time from which a counted hit triggers the prefetch.
        self.refresh_at = math.inf
        self.hits = 0
        self.window_start = stored
        #: True while a prefetch or stale refresh is in flight (one at a time).
        self.refreshing = False
        #: The last body built and its TTL; -1 means none (or loadbalance, which rotates).
        self.body_ttl = -1
        self.last_body = b""

    def remaining(self, now: float) -> int:
        """Whole seconds left, as clients see them (never negative)."""
        left = self.ttl - int(now - self.stored)
        return left if left > 0 else 0

    def body(self, ttl: int) -> bytes:
        """The records after the question, every TTL set to ``ttl``."""
        variants = self.variants
        if len(variants) == 1:
            body = self.last_body = _U32.pack(ttl).join(variants[0])
            self.body_ttl = ttl
            return body
        self.turn = (self.turn + 1) % len(variants)
        return _U32.pack(ttl).join(variants[self.turn])


def tag_of(key: bytes, kind: Kind, rcode: int, records_length: int, name_end: int = -1) -> Tag:
    """How hits of an entry are tallied, shared by every entry that counts alike.

    (rcode, positive, qtype as wire bytes, question length, records' length as
    sent; both in bytes, DNSSEC OK). With the query's length that gives the
    reply's (QueryHandler.sync_stats); DO is the key's (the byte after the
    question, bit 2), so the query's. ``name_end`` is the offset of the key's
    root label, when the caller knows it.
    """
    if name_end < 0:
        name_end = 0
        while name_end < len(key) and key[name_end]:
            name_end += 1 + key[name_end]
    tag = (rcode, kind is SUCCESS, key[name_end + 1:name_end + 3], name_end + 5,
           records_length, len(key) > name_end + 5 and bool(key[name_end + 5] & 2))
    return _TAGS.get(tag) or _TAGS.setdefault(tag, tag)


def _in_zones(name: bytes, zones: tuple[bytes, ...]) -> bool:
    return any(wire.is_subdomain(name, zone) for zone in zones)


def classify(resp: wire.Response, data: bytes) -> tuple[Kind | None, int | None]:
    """Decide how an upstream answer is cached: (kind, unclamped TTL) or (None, None)."""
    if resp.flags & wire.TC:
        return None, None  # truncated answers are never stored
    rcode = resp.rcode
    if rcode == wire.NOERROR and resp.ancount:
        return SUCCESS, resp.min_ttl
    if rcode in (wire.SERVFAIL, wire.NOTIMP):
        return SERVFAIL, None
    if rcode not in (wire.NOERROR, wire.NXDOMAIN):
        return None, None
    soa = resp.soa
    if soa is None:
        if rcode == wire.NXDOMAIN:
            return None, None
        # NOERROR, no answer, no SOA: a referral or an odd reply. Keep it briefly.
        return SUCCESS, FALLBACK_TTL
    minimum = _U32.unpack_from(data, soa.end - 4)[0]  # SOA MINIMUM, the last field
    return DENIAL, min(soa.ttl, minimum)


def has_expired_rrsig(resp: wire.Response, data: bytes, wall: float) -> bool:
    """True if an answer RRSIG's expiration (RFC 4034 section 3.1.5) is in the past."""
    now = int(wall) & 0xFFFFFFFF
    for record in resp.answers:
        if record.rtype == wire.TYPE_RRSIG and record.end - record.ttl_offset >= 18:
            expiration = _U32.unpack_from(data, record.ttl_offset + 6 + 8)[0]
            # Serial number arithmetic (RFC 1982): expired if now is "after" it.
            if 0 < ((now - expiration) & 0xFFFFFFFF) < 0x80000000:
                return True
    return False


def _rotations(data: bytes, resp: wire.Response) -> list[list[wire.Record]]:
    """Record orders for loadbalance: the A/AAAA run of the answer section rotated.

    Only runs whose owner names are compression pointers to bytes before the
    run are rotated, so that moving records cannot break a pointer.
    """
    answers = resp.answers
    addresses = [i for i, r in enumerate(answers) if r.rtype in (wire.TYPE_A, wire.TYPE_AAAA)]
    rest = resp.authority + resp.additional
    if len(addresses) < 2 or addresses != list(range(addresses[0], addresses[-1] + 1)):
        return [answers + rest]
    first, last = addresses[0], addresses[-1] + 1
    run = answers[first:last]
    for record in run:
        if record.ttl_offset - record.start != 6 or data[record.start] & 0xC0 != 0xC0 \
                or wire.read_u16(data, record.start) & 0x3FFF >= run[0].start:
            return [answers + rest]
    head, tail = answers[:first], answers[last:]
    return [head + run[i:] + run[:i] + tail + rest for i in range(len(run))]


def build_entry(key: bytes, data: bytes, resp: wire.Response, kind: Kind, ttl: int,
                now: float, *, do: bool, loadbalance: bool = False, keep: bool = False,
                name_end: int = -1) -> Entry:
    """Make an Entry from an upstream answer already classified as cacheable.

    ``name_end`` is the offset of the root label ending the question's name
    in ``key`` (the name's length - 1), when the caller knows it.
    """
    flags = (resp.flags | wire.QR | wire.AA) & ~(wire.TC | wire.RD)
    if not do:
        flags &= ~wire.AD  # RFC 4035 section 3.2.3: AD only for clients that asked
    records = resp.records
    shape = (flags, resp.ancount, resp.nscount, len(records) - resp.ancount - resp.nscount)
    headers = _HEADER_SETS.get(shape) or _headers(*shape)
    if loadbalance:
        variants = tuple(_segments(data, order) for order in _rotations(data, resp))
    elif len(records) == 1:
        record = records[0]  # most answers: one record, cut once
        variants = ((_shared(data[record.start:record.ttl_offset]),
                     data[record.ttl_offset + 4:record.end]),)
    else:
        variants = (_segments(data, records),)
    rcode = resp.rcode
    return Entry(key, kind, rcode, headers, variants, ttl, now, keep,
                 tag_of(key, kind, rcode, resp.records_length, name_end))


#: Shared header sets: a handful of (flags, counts) combinations cover most
#: answers, so entries share them instead of holding four small bytes each.
_HEADER_SETS: dict[tuple[int, int, int, int], tuple[bytes, ...]] = {}
#: Shared record prefixes (owner pointer, type, class: 6 bytes for most answers).
_PREFIXES: dict[bytes, bytes] = {}
_SHARED_LIMIT = 4096  # distinct values kept, so odd traffic cannot grow the tables


def _headers(flags: int, an: int, ns: int, ar: int) -> tuple[bytes, ...]:
    """Bytes 2..12 of the reply for each (RD, has OPT) combination, shared between entries."""
    shape = (flags, an, ns, ar)
    headers = _HEADER_SETS.get(shape)
    if headers is None:
        headers = tuple(struct.pack("!H", flags | (wire.RD if rd else 0))
                        + _COUNTS.pack(1, an, ns, ar + opt) for opt in (0, 1) for rd in (0, 1))
        if len(_HEADER_SETS) < _SHARED_LIMIT:
            _HEADER_SETS[shape] = headers
    return headers


def _shared(prefix: bytes) -> bytes:
    if len(prefix) > 8:
        return prefix
    known = _PREFIXES.get(prefix)
    if known is None:
        if len(_PREFIXES) < _SHARED_LIMIT:
            _PREFIXES[prefix] = prefix
        return prefix
    return known


def _segments(data: bytes, records: list[wire.Record]) -> tuple[bytes, ...]:
    """Cut the records (in the given order, OPT left out) at each TTL field.

    Reordering is safe for the loadbalance rotation: answers to A/AAAA queries
    compress against the question (offset 12), which never moves.
    """
    cuts: list[bytes] = []
    pending = b""
    for record in records:
        cuts.append(_shared(pending + data[record.start:record.ttl_offset]))
        pending = data[record.ttl_offset + 4:record.end]
    cuts.append(pending)
    return tuple(cuts)


class BlockCache:
    """The cache of one server block: TTL policy plus capacity.

    Lookups on the hit path do not come here: the handler keeps one flat
    ``index`` dict of every block's entries. This class keeps that index in
    step (``index_add``/``index_remove`` callbacks) as entries come and go.
    Each entry it holds points at it: a hit counts itself in the cache's
    ``tally`` and asks it about prefetch, without knowing any zone.
    """

    def __init__(self, settings: CacheSettings, stats: CacheStats, block_zones: tuple[str, ...],
                 index_add: Callable[[Entry], None],
                 index_remove: Callable[[Entry], None]) -> None:
        self.settings = settings
        self.stats = stats
        #: Zones whose names are cached, and the disabled ones, in wire form.
        self.zones = tuple(map(wire.zone_to_wire, settings.zones or block_zones))
        self._no_success = tuple(map(wire.zone_to_wire, settings.disable_success))
        self._no_denial = tuple(map(wire.zone_to_wire, settings.disable_denial))
        #: Every name routed to this block is cached (no zones of its own, nothing
        #: disabled): ``may_store`` need not be asked.
        self.stores_all = not settings.zones and not self._no_success and not self._no_denial
        self._index_add = index_add
        self._index_remove = index_remove
        # OrderedDicts, not dicts: popping a dict's oldest key again and again
        # makes ``next(iter(d))`` skip ever more deleted slots (measured 4 us per
        # eviction at 9,984 entries; OrderedDict 0.5 us). First in, first out.
        self.success: OrderedDict[bytes, Entry] = OrderedDict()
        self.denial: OrderedDict[bytes, Entry] = OrderedDict()
        #: The hit path's count of answers from this cache, and the seconds they
        #: took (the duration histogram's sum); the handler folds both into the
        #: exported stats (QueryHandler.sync_stats) and empties them.
        self.tally: Tally = {}
        self.hit_seconds = 0.0

    def _evicted(self, key: bytes, entry: Entry) -> None:
        if entry.kind is SUCCESS:
            self.stats.evictions_success += 1
        else:
            self.stats.evictions_denial += 1
        self._index_remove(entry)

    def get(self, key: bytes) -> Entry | None:
        entry: Entry | None = self.denial.get(key)
        if entry is None:
            entry = self.success.get(key)
        return entry

    def ttl_for(self, kind: Kind, ttl: int | None) -> int:
        """Clamp a TTL to the configured bounds for its kind, s."""
        s = self.settings
        if kind is SERVFAIL:
            return s.servfail_ttl
        if ttl is None:
            ttl = FALLBACK_TTL
        if kind is SUCCESS:
            low, high = s.success_min_ttl, s.success_max_ttl
        else:
            low, high = s.denial_min_ttl, s.denial_max_ttl
        if ttl > high:
            ttl = high
        return low if ttl < low else ttl

    def may_store(self, name: bytes, kind: Kind) -> bool:
        """Whether answers for wire name ``name`` (lower-case) of this kind are cached."""
        if not _in_zones(name, self.zones):
            return False
        if kind is SUCCESS:
            return not _in_zones(name, self._no_success)
        return not _in_zones(name, self._no_denial)

    def put(self, entry: Entry, now: float) -> None:
        """Store ``entry``, replacing any entry with its key; the cache holds it from now on."""
        s = self.settings
        entry.cache = self
        if s.prefetch_amount:
            # Prefetch when at most PERCENTAGE of the TTL is left (rounded up,
            # so it happens at the latest 1 s before expiry).
            left = math.ceil(entry.ttl * s.prefetch_percentage / 100)
            entry.refresh_at = entry.expires - left
            entry.prefetch_at = entry.stored  # every hit is counted
        key = entry.key
        if key in self.success or key in self.denial:
            self.remove(key)
        if entry.kind is SUCCESS:
            store, capacity = self.success, s.success_capacity
        else:
            store, capacity = self.denial, s.denial_capacity
        while len(store) >= capacity:
            self._evicted(*store.popitem(last=False))
        store[key] = entry
        self._index_add(entry)
        self.stats.entries_success = len(self.success)
        self.stats.entries_denial = len(self.denial)

    def remove(self, key: bytes) -> None:
        for store in (self.success, self.denial):
            entry = store.pop(key, None)
            if entry is not None:
                self._index_remove(entry)
        self.stats.entries_success = len(self.success)
        self.stats.entries_denial = len(self.denial)

    def entries(self) -> list[Entry]:
        return list(self.success.values()) + list(self.denial.values())

    def note_hit(self, entry: Entry, now: float) -> bool:
        """Count a hit for prefetch; True when this hit should trigger one."""
        s = self.settings
        # Hits count while each comes within DURATION of the previous one (CoreDNS freq).
        if now - entry.window_start > s.prefetch_duration:
            entry.hits = 1
        else:
            entry.hits += 1
        entry.window_start = now
        return entry.hits >= s.prefetch_amount and now >= entry.refresh_at \
            and not entry.refreshing
