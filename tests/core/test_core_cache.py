"""The cache, table by table: BlockCache's capacity, FIFO eviction, index callbacks and
its hold on its entries; through the handler with a fake clock, what is stored for how
long, the TTL countdown and the key."""
from __future__ import annotations

from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from nodecache.config.settings import CacheSettings
from nodecache.core import wire
from nodecache.core.cache import BlockCache, Entry, Kind
from nodecache.core.handler import Miss
from nodecache.core.stats import CacheStats
from tests.kit.answers import ttls
from tests.kit.coredriver import Driver, Upstream, answer_a, negative
from tests.kit.queries import make_query


def entry(key: str, kind: Kind = Kind.SUCCESS) -> Entry:
    return Entry.from_segments(key.encode(), kind, 0, (b"",) * 4, ((b"",),), 30, 0.0)


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
    # replaced again and again: the older copies are no entries to evict
    ([("a", Kind.SUCCESS), ("b", Kind.SUCCESS), ("a", Kind.SUCCESS), ("a", Kind.SUCCESS),
      ("b", Kind.SUCCESS), ("a", Kind.SUCCESS), ("c", Kind.SUCCESS)], "ac", "", (1, 0)),
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


def test_replaced_entries_do_not_pile_up() -> None:
    """The store's eviction order forgets replaced entries: memory follows the capacity."""
    cache = BlockCache(CacheSettings(success_capacity=2), CacheStats("dns://:53", "."), (".",),
                       lambda e: None, lambda e: None)
    for n in range(1000):
        cache.put(entry("ab"[n % 2]), 0.0)
    assert len(cache.success.order) < 100
    cache.put(entry("c"), 0.0)  # b was put last: a goes
    assert list(cache.success) == [b"b", b"c"]


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


# -- through the handler: what is stored, for how long, under which key ----------

SVC = "svc.cluster.local."


def _block(cache: str) -> str:
    return f"cluster.local:53 {{\n    {cache}\n    forward . 127.0.0.1\n}}\n"


def _rcode(rcode: int, *, tc: bool = False) -> Upstream:
    def upstream(q: dns.message.Message) -> dns.message.Message:
        r = answer_a()(q) if tc else dns.message.make_response(q)
        r.set_rcode(rcode)
        if tc:
            r.flags |= dns.flags.TC
        return r
    return upstream


# (id, cache directive, upstream, rcode, TTL of every record in the first reply (None: not
#  checked), seconds the answer is kept (None: not cached))
STORE_CASES = [
    ("positive clamped to max", "cache 30", answer_a(300), "NOERROR", 30, 30),
    ("positive under max", "cache 30", answer_a(20), "NOERROR", 20, 20),
    ("positive raised to default min 5", "cache 30", answer_a(2), "NOERROR", 5, 5),
    ("positive with min 1", "cache {\n success 100 30 1\n }", answer_a(2), "NOERROR", 2, 2),
    # RFC 2308 section 5: a denial lives min(SOA TTL, SOA MINIMUM)
    ("nxdomain SOA minimum wins", "cache 300", negative(dns.rcode.NXDOMAIN, 60, 10), "NXDOMAIN", 10, 10),
    ("nxdomain SOA ttl wins", "cache 300", negative(dns.rcode.NXDOMAIN, 8, 100), "NXDOMAIN", 8, 8),
    ("nxdomain clamped to denial max", "cache {\n denial 100 15\n }",
     negative(dns.rcode.NXDOMAIN, 60, 60), "NXDOMAIN", 15, 15),
    ("nxdomain raised to denial min", "cache 300", negative(dns.rcode.NXDOMAIN, 1, 1), "NXDOMAIN", 5, 5),
    ("nodata SOA minimum wins", "cache 300", negative(dns.rcode.NOERROR, 60, 20), "NOERROR", 20, 20),
    ("nodata clamped to denial max", "cache {\n denial 100 15 2\n }",
     negative(dns.rcode.NOERROR, 3600, 3600), "NOERROR", 15, 15),
    ("nxdomain without SOA not cached", "cache 300", negative(dns.rcode.NXDOMAIN, None), "NXDOMAIN", None, None),
    ("servfail kept 5 s by default", "cache 30", _rcode(dns.rcode.SERVFAIL), "SERVFAIL", None, 5),
    ("servfail kept its duration", "cache 30 {\n servfail 2s\n }", _rcode(dns.rcode.SERVFAIL),
     "SERVFAIL", None, 2),
    ("servfail 0 not cached", "cache 30 {\n servfail 0\n }", _rcode(dns.rcode.SERVFAIL), "SERVFAIL", None, None),
    ("refused not cached", "cache 300", _rcode(dns.rcode.REFUSED), "REFUSED", None, None),
    ("formerr not cached", "cache 300", _rcode(dns.rcode.FORMERR), "FORMERR", None, None),
    ("truncated not cached", "cache 300", _rcode(dns.rcode.NOERROR, tc=True), "NOERROR", None, None),
]


@pytest.mark.parametrize("cache,upstream,rcode,ttl,kept", [c[1:] for c in STORE_CASES],
                         ids=[c[0] for c in STORE_CASES])
def test_store_and_ttl(cache: str, upstream: Upstream, rcode: str, ttl: int | None,
                       kept: int | None) -> None:
    d = Driver(_block(cache), upstream)
    first = d.ask(make_query(SVC))
    assert first is not None and dns.rcode.to_text(first.rcode()) == rcode
    if ttl is not None:
        assert set(ttls(first)) == {ttl}  # the SOA of a denial carries it too
        if rcode != "NOERROR" or not first.answer:
            assert first.authority and first.authority[0].rdtype == dns.rdatatype.SOA
    if kept is None:
        d.ask(make_query(SVC))
        assert len(d.upstream_queries) == 2
        return
    d.now += kept - 0.1
    second = d.ask(make_query(SVC))
    assert second is not None and second.rcode() == first.rcode()
    assert len(d.upstream_queries) == 1
    d.now += 0.1  # expired at exactly its TTL
    d.ask(make_query(SVC))
    assert len(d.upstream_queries) == 2


# (seconds after storing a 10 s answer, the TTL a hit carries, or None for a miss)
COUNTDOWN = [(0.0, 10), (0.5, 10), (1.0, 9), (4.2, 6), (9.9, 1), (10.0, None), (60.0, None)]


@pytest.mark.parametrize("offset,expected", COUNTDOWN)
def test_ttl_counts_down(offset: float, expected: int | None) -> None:
    d = Driver(_block("cache 30"), answer_a(10))
    d.ask(make_query(SVC))
    stored = d.now
    result = d.handler.handle(make_query(SVC, qid=7).to_wire(), stored + offset, 0)
    if expected is None:
        assert isinstance(result, Miss)
        return
    assert isinstance(result, bytes) and result[:2] == b"\x00\x07"
    assert ttls(dns.message.from_wire(result)) == [expected]


@pytest.mark.parametrize("cache,addresses,expected", [
    ("cache 30", ("10.0.0.1",), [10, 10, 9, 9, 6, 1]),
    ("cache 30", ("10.0.0.1", "10.0.0.2", "10.0.0.3"), [10, 10, 9, 9, 6, 1]),
    ("cache 30 {\n keepttl\n }", ("10.0.0.1", "10.0.0.2"), [10] * 6),
])
def test_ttl_counts_down_hit_after_hit(cache: str, addresses: tuple[str, ...],
                                       expected: list[int]) -> None:
    """One entry asked again and again: the body built for one second is rebuilt for the next."""
    d = Driver(_block(cache), answer_a(10, *addresses))
    d.ask(make_query(SVC))
    stored = d.now
    seen = []
    for offset in (0.2, 0.9, 1.0, 1.7, 4.2, 9.9):
        reply = d.handler.handle(make_query(SVC).to_wire(), stored + offset, 0)
        assert isinstance(reply, bytes)
        message = dns.message.from_wire(reply)
        assert sorted(r.address for r in message.answer[0]) == sorted(addresses)
        (ttl,) = {r.ttl for r in wire.index_response(reply).records}  # each record's own
        seen.append(ttl)
    assert seen == expected
    assert isinstance(d.handler.handle(make_query(SVC).to_wire(), stored + 10.0, 0), Miss)


# (first query, second query, share one entry?): the key is the lower-cased name,
# the type and the DO and CD bits; EDNS alone and RD are not in it
KEY_CASES = [
    ("same name other case", dict(name=SVC), dict(name=SVC.upper()), True),
    ("other qtype", dict(name=SVC), dict(name=SVC, rdtype="AAAA"), False),
    ("DO bit", dict(name=SVC), dict(name=SVC, dnssec=True), False),
    ("DO bit, both EDNS", dict(name=SVC, edns=0), dict(name=SVC, edns=0, dnssec=True), False),
    ("CD bit", dict(name=SVC), dict(name=SVC, cd=True), False),
    ("EDNS without DO", dict(name=SVC), dict(name=SVC, edns=0), True),
    ("RD clear", dict(name=SVC), dict(name=SVC, rd=False), True),
    ("other name", dict(name=SVC), dict(name="other.cluster.local."), False),
]


@pytest.mark.parametrize("first,second,shared", [c[1:] for c in KEY_CASES], ids=[c[0] for c in KEY_CASES])
def test_cache_key(first: dict[str, Any], second: dict[str, Any], shared: bool) -> None:
    d = Driver(_block("cache 30"), answer_a())
    for kwargs in (first, second):
        kwargs = dict(kwargs)
        reply = d.ask(make_query(kwargs.pop("name"), **kwargs))
        assert reply is not None and reply.rcode() == dns.rcode.NOERROR
    assert len(d.upstream_queries) == (1 if shared else 2)
