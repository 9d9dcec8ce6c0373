"""The answer cache: stored wire bytes, ready to patch and send.

Theory of operation
-------------------
An upstream answer is stored once as its *body*, the records after the
question, with the offsets of their 4-byte TTL fields. Every TTL field holds
the TTL left (all records carry one TTL, as CoreDNS does, so clients see no
jarring per-record TTLs); the body is rebuilt when that drops by a second,
not per hit. A hit prepends the client's ID, a pre-built header and the
client's own question bytes (exact case, RFC 4343). Compression pointers stay
valid because the client's question has the same length as the stored one.
Nothing on the hit path builds message objects.

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
from collections import deque
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


#: The kinds by number, as tags hold them: an Enum member's hash is a Python call,
#: and the hit path hashes its entry's tag.
KINDS = (SUCCESS, DENIAL, SERVFAIL)

#: Shared tags: entries that count alike share one tuple (few distinct ones).
Tag = tuple[int, int, bytes, int, int, bool]
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

    ``body`` is the records after the question as the last reply sent them,
    every TTL field (at the offsets ``cuts``) set to the TTL left then; it
    stays right until ``body_until`` (loop time, s), when the TTL clients see
    drops by one, so a hit compares one float and :meth:`renew` rebuilds it
    about once a second. Kind and rcode are the shared ``tag``'s.

    Fixed once built: key, tag, headers, cuts, ttl, stored, keep. The rest
    changes: the cache that holds it (set by :meth:`BlockCache.put`), the
    prefetch count, whether a refresh is in flight, the body.
    """

    __slots__ = ("key", "tag", "headers", "body", "body_until", "cuts", "ttl", "stored", "keep",
                 "cache", "prefetch", "refreshing")

    def __init__(self, key: bytes, tag: Tag, headers: tuple[bytes, ...], body: bytes,
                 cuts: tuple[int, ...], ttl: int, stored: float, keep: bool = False) -> None:
        self.key = key
        #: How a hit is tallied for metrics (see :func:`tag_of`).
        self.tag = tag
        self.headers = headers
        self.body = body
        #: ``body`` holds for loop times before this, s; -inf: rebuild before use.
        self.body_until = -math.inf
        #: Offsets of the TTL fields in ``body``.
        self.cuts = cuts
        #: The stored (clamped) TTL, s.
        self.ttl = ttl
        #: Loop time when stored, s.
        self.stored = stored
        #: keepttl: hits report the stored TTL.
        self.keep = keep
        #: The cache holding the entry (its hit tally, its prefetch settings).
        self.cache: BlockCache | None = None
        #: Hits counted for prefetch; None while the cache does not prefetch.
        self.prefetch: PrefetchCount | None = None
        #: True while a prefetch or stale refresh is in flight (one at a time).
        self.refreshing = False

    @classmethod
    def from_segments(cls, key: bytes, kind: Kind, rcode: int, headers: tuple[bytes, ...],
                      variants: tuple[tuple[bytes, ...], ...], ttl: int, stored: float,
                      keep: bool = False) -> Entry:
        """An entry from records cut at their TTL fields (:meth:`segments`, a snapshot's);
        more than one variant when loadbalance rotates A/AAAA."""
        records_length = len(b"\0\0\0\0".join(variants[0])) if variants else 0
        tag = tag_of(key, kind, rcode, records_length)
        if len(variants) > 1:
            return RotatingEntry(key, tag, headers, variants, ttl, stored, keep)
        segments = variants[0] if variants else (b"",)
        cuts, offset = [], 0
        for segment in segments[:-1]:
            offset += len(segment)
            cuts.append(offset)
            offset += 4
        return cls(key, tag, headers, b"\0\0\0\0".join(segments), tuple(cuts), ttl, stored, keep)

    @property
    def kind(self) -> Kind:
        return KINDS[self.tag[1]]

    @property
    def rcode(self) -> int:
        return self.tag[0]

    @property
    def expires(self) -> float:
        """Loop time when it expires, s."""
        return self.stored + self.ttl

    def remaining(self, now: float) -> int:
        """Whole seconds left, as clients see them (never negative)."""
        left = self.ttl - int(now - self.stored)
        return left if left > 0 else 0

    def renew(self, now: float) -> bool:
        """Bring ``body`` up to ``now``; False (and no change) once the entry has expired."""
        stored, ttl = self.stored, self.ttl
        if now >= stored + ttl:
            return False
        if self.keep:
            self.body_until = stored + ttl
        else:
            age = int(now - stored)
            if age > 0:
                ttl -= age
            self.body_until = stored + (age + 1)
        self.body = self.body_with(ttl)
        return True

    def body_with(self, ttl: int) -> bytes:
        """The records after the question, every TTL set to ``ttl``."""
        cuts = self.cuts
        if len(cuts) == 1:
            body, cut = self.body, cuts[0]
            return b"".join((body[:cut], _U32.pack(ttl), body[cut + 4:]))
        return _U32.pack(ttl).join(self._pieces())

    def segments(self) -> tuple[tuple[bytes, ...], ...]:
        """The records cut at their TTL fields, once per variant (see :meth:`from_segments`)."""
        return (tuple(self._pieces()),)

    def _pieces(self) -> list[bytes]:
        """``body`` cut at its TTL fields, the fields left out."""
        body, pieces, start = self.body, [], 0
        for cut in self.cuts:
            pieces.append(body[start:cut])
            start = cut + 4
        pieces.append(body[start:])
        return pieces


class RotatingEntry(Entry):
    """An entry whose A/AAAA records loadbalance rotates: each reply takes the next order."""

    __slots__ = ("variants", "turn")

    def __init__(self, key: bytes, tag: Tag, headers: tuple[bytes, ...],
                 variants: tuple[tuple[bytes, ...], ...], ttl: int, stored: float,
                 keep: bool = False) -> None:
        super().__init__(key, tag, headers, b"", (), ttl, stored, keep)
        #: The record orders, each cut at the TTL fields.
        self.variants = variants
        self.turn = 0

    def renew(self, now: float) -> bool:
        if now >= self.stored + self.ttl:
            return False
        self.body = self.body_with(self.ttl if self.keep else self.remaining(now))
        return True  # body_until stays -inf: every reply rotates

    def body_with(self, ttl: int) -> bytes:
        variants = self.variants
        self.turn = (self.turn + 1) % len(variants)
        return _U32.pack(ttl).join(variants[self.turn])

    def segments(self) -> tuple[tuple[bytes, ...], ...]:
        return self.variants


class PrefetchCount:
    """An entry's hits counted for prefetch (CoreDNS ``prefetch``)."""

    __slots__ = ("hits", "window_start", "refresh_at")

    def __init__(self, window_start: float, refresh_at: float) -> None:
        self.hits = 0
        #: Loop time of the last counted hit, s.
        self.window_start = window_start
        #: Loop time from which a counted hit triggers the prefetch, s.
        self.refresh_at = refresh_at


def tag_of(key: bytes, kind: Kind, rcode: int, records_length: int, name_end: int = -1) -> Tag:
    """How hits of an entry are tallied, shared by every entry that counts alike.

    (rcode, kind's index in KINDS, qtype as wire bytes, question length, records' length as
    sent; both in bytes, DNSSEC OK). With the query's length that gives the
    reply's (QueryHandler.sync_stats); DO is the key's (the byte after the
    question, bit 2), so the query's. ``name_end`` is the offset of the key's
    root label, when the caller knows it.
    """
    if name_end < 0:
        name_end = 0
        while name_end < len(key) and key[name_end]:
            name_end += 1 + key[name_end]
    tag = (rcode, 0 if kind is SUCCESS else 1 if kind is DENIAL else 2,
           key[name_end + 1:name_end + 3], name_end + 5,
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
                now: float, *, do: bool, cd: bool = False, loadbalance: bool = False,
                keep: bool = False, name_end: int = -1) -> Entry:
    """Make an Entry from an upstream answer already classified as cacheable.

    Its body is ready for a reply at ``now`` (every TTL field ``ttl``).
    ``name_end`` is the offset of the root label ending the question's name
    in ``key`` (the name's length - 1), when the caller knows it.
    """
    # RFC 4035 section 3.2.3: AD only for clients that asked; section 3.2.2: CD
    # is the client's (``cd``: the key's), whatever the upstream said.
    flags = (resp.flags | _QR_AA) & (_KEPT_DO if do else _KEPT) | (wire.CD if cd else 0)
    records = resp.records
    shape = (flags, resp.ancount, resp.nscount, len(records) - resp.ancount - resp.nscount)
    headers = _HEADER_SETS.get(shape) or _headers(*shape)
    rcode = resp.rcode
    tag = tag_of(key, kind, rcode, resp.records_length, name_end)
    if loadbalance:
        variants = tuple(_segments(data, order) for order in _rotations(data, resp))
        rotating = RotatingEntry(key, tag, headers, variants, ttl, now, keep)
        rotating.renew(now)
        return rotating
    ttl_bytes = _U32.pack(ttl)
    if len(records) == 1:
        record = records[0]  # most answers: one record
        start, cut = record.start, record.ttl_offset
        body = b"".join((data[start:cut], ttl_bytes, data[cut + 4:record.end]))
        cut -= start
        cuts = _ONE_CUT.get(cut) or _cuts((cut,))
    else:
        pieces: list[bytes] = []
        offsets: list[int] = []
        length = 0
        for record in records:
            start, cut, end = record.start, record.ttl_offset, record.end
            pieces += (data[start:cut], ttl_bytes, data[cut + 4:end])
            offsets.append(length + cut - start)
            length += end - start
        body = b"".join(pieces)
        cuts = _cuts(tuple(offsets))
    entry = Entry(key, tag, headers, body, cuts, ttl, now, keep)
    entry.body_until = now + ttl if keep else now + 1
    return entry


#: A stored answer's header flags: QR and AA set; TC, RD and CD (the client's) and, without DO,
#: AD clear.
_QR_AA = wire.QR | wire.AA
_KEPT_DO = 0xFFFF & ~(wire.TC | wire.RD | wire.CD)
_KEPT = _KEPT_DO & ~wire.AD
#: Shared TTL offsets of bodies, and those of one record by its offset.
_CUTS: dict[tuple[int, ...], tuple[int, ...]] = {}
_ONE_CUT: dict[int, tuple[int, ...]] = {}


def _cuts(offsets: tuple[int, ...]) -> tuple[int, ...]:
    known = _CUTS.get(offsets)
    if known is not None:
        return known
    if len(_CUTS) < _SHARED_LIMIT:
        _CUTS[offsets] = offsets
        if len(offsets) == 1:
            _ONE_CUT[offsets[0]] = offsets
    return offsets


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


class _Store(dict[bytes, Entry]):
    """A capacity-bounded store, first in first out (a replaced entry goes to the back).

    A plain dict, with the order also kept in a deque of the entries: popping
    a dict's oldest key again and again makes ``next(iter(d))`` skip ever more
    deleted slots (measured 4 us per eviction at 9,984 entries), and an
    OrderedDict holds a linked node per key (about 45 bytes more an entry). An
    entry replaced or removed stays in the deque until it comes up, then is
    skipped; the deque is rebuilt from the dict's order when such entries
    outnumber the live ones.
    """

    __slots__ = ("maxsize", "_on_evict", "order")

    def __init__(self, maxsize: int, on_evict: Callable[[bytes, Entry], None]) -> None:
        super().__init__()
        self.maxsize = maxsize
        self._on_evict = on_evict
        #: The entries in the order they were stored (and some no longer stored).
        self.order: deque[Entry] = deque()

    def add(self, key: bytes, entry: Entry) -> None:
        """Store ``entry`` (``key`` must be absent), evicting the oldest when full."""
        order = self.order
        while len(self) >= self.maxsize:
            oldest = order.popleft()
            if self.get(oldest.key) is oldest:
                del self[oldest.key]
                self._on_evict(oldest.key, oldest)
        self[key] = entry
        order.append(entry)

    def discard(self, key: bytes) -> Entry | None:
        """Take ``key``'s entry out, if stored; the order forgets it in time."""
        entry = self.pop(key, None)
        if entry is not None and len(self.order) > 2 * len(self) + 64:
            self.order = deque(self.values())
        return entry


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
        self.success = _Store(settings.success_capacity, self._evicted)
        self.denial = _Store(settings.denial_capacity, self._evicted)
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
            # so it happens at the latest 1 s before expiry); every hit is counted.
            left = math.ceil(entry.ttl * s.prefetch_percentage / 100)
            entry.prefetch = PrefetchCount(entry.stored, entry.expires - left)
        key = entry.key
        success, denial = self.success, self.denial
        if key in success or key in denial:
            self.remove(key)
        store = denial if entry.tag[1] else success  # kind 0: SUCCESS
        if len(store) < store.maxsize:
            store[key] = entry
            store.order.append(entry)
        else:
            store.add(key, entry)
        self._index_add(entry)
        self.stats.entries_success = len(success)
        self.stats.entries_denial = len(denial)

    def remove(self, key: bytes) -> None:
        for store in (self.success, self.denial):
            entry = store.discard(key)
            if entry is not None:
                self._index_remove(entry)
        self.stats.entries_success = len(self.success)
        self.stats.entries_denial = len(self.denial)

    def entries(self) -> list[Entry]:
        return list(self.success.values()) + list(self.denial.values())

    def note_hit(self, entry: Entry, now: float) -> bool:
        """Count a hit for prefetch; True when this hit should trigger one."""
        s = self.settings
        count = entry.prefetch
        if count is None:
            return False
        # Hits count while each comes within DURATION of the previous one (CoreDNS freq).
        if now - count.window_start > s.prefetch_duration:
            count.hits = 1
        else:
            count.hits += 1
        count.window_start = now
        return count.hits >= s.prefetch_amount and now >= count.refresh_at \
            and not entry.refreshing
