"""The per-query decision without sockets: an injected clock and a fake upstream function."""
from __future__ import annotations

import struct
from bisect import bisect_left

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from nodecache.core import wire
from nodecache.core.handler import SLOT_SERVER_SHIFT, SLOT_TCP4, Miss
from nodecache.core.stats import SIZE_BUCKETS, server_index
from nodecache.metrics import StatsCollector, StatsSources
from nodecache.errors import ConcurrencyLimitError, UpstreamError
from tests.kit.coredriver import Driver, Upstream, answer_a, make_handler, negative
from tests.kit.queries import make_query

#: The name most queries here ask for.
SVC = "svc.cluster.local."
CLUSTER = """cluster.local:53 {
    cache {
        success 100 30
        denial 100 20
    }
    forward . 127.0.0.1
}
"""


def test_hit_sizes_follow_the_reply_sent() -> None:
    """EDNS hits carry our OPT, truncated hits their short form: sizes as sent."""
    many = [f"10.0.0.{i}" for i in range(1, 41)]  # 40 A records: over 512 bytes
    d = Driver(CLUSTER, answer_a(30, *many))
    big = make_query(SVC, edns=0, payload=4096).to_wire()
    plain = make_query(SVC).to_wire()
    d.ask(big)  # the miss that stores the entry
    replies = [d.handler.handle(query, d.now, 0) for query in (big, plain, big)]
    assert all(isinstance(r, bytes) for r in replies)
    assert dns.message.from_wire(replies[1]).flags & dns.flags.TC  # truncated for plain UDP
    zone = next(iter(d.handler.zones.values()))
    d.handler.sync_stats()
    request, response = zone.stats.request_size["udp"], zone.stats.response_size["udp"]
    assert request.count == response.count == 4
    assert request.sum == 3 * len(big) + len(plain)
    assert response.sum == len(replies[0]) * 2 + len(replies[1]) + len(replies[2])
    assert response.counts[bisect_left(SIZE_BUCKETS, len(replies[0]))] == 3
    assert response.counts[bisect_left(SIZE_BUCKETS, len(replies[1]))] == 1


def test_reply_echoes_id_and_exact_case() -> None:
    d = Driver(CLUSTER, answer_a())
    d.ask(make_query("svc.cluster.local."))
    mixed = make_query("SvC.ClUsTeR.LoCaL.")
    reply = d.ask(mixed)
    assert reply.id == mixed.id
    assert str(reply.question[0].name) == "SvC.ClUsTeR.LoCaL."
    assert reply.answer[0][0].address == "10.0.0.1"
    assert len(d.upstream_queries) == 1


# (payload the client sends, DO, over TCP): node-cache echoes the size as sent, below
# 512 and over TCP too (CoreDNS's SizeAndDo); the limit of a reply stays >= 512.
EDNS_ECHO_CASES = [(4096, False, False), (700, True, False), (100, False, False),
                   (1232, True, True), (100, False, True)]


@pytest.mark.parametrize("payload,do,tcp", EDNS_ECHO_CASES)
def test_edns_reply_echoes_the_clients_size_and_do(payload: int, do: bool, tcp: bool) -> None:
    d = Driver(CLUSTER, answer_a())
    query = make_query(SVC, edns=0, payload=payload, dnssec=do)
    with_option = make_query(SVC, edns=0, payload=payload, dnssec=do)
    with_option.use_edns(0, query.ednsflags, payload, options=[dns.edns.GenericOption(65001, b"x")])
    outside = make_query("svc.example.", edns=0, payload=payload, dnssec=do)
    # the miss, the hit path's hit, the strict parse's hit (an option), a failure, a refusal
    replies = [d.ask(query, tcp=tcp), d.ask(query, tcp=tcp), d.ask(with_option, tcp=tcp),
               d.ask(make_query("down." + SVC, edns=0, payload=payload, dnssec=do), tcp=tcp,
                     fail=UpstreamError("down")),
               d.ask(outside, tcp=tcp)]
    rcodes = [r.rcode() if r else None for r in replies]
    assert rcodes == [0, 0, 0, dns.rcode.SERVFAIL, dns.rcode.REFUSED]
    for reply in replies:
        assert reply is not None and reply.edns == 0 and reply.payload == payload
        assert bool(reply.ednsflags & dns.flags.DO) == do and not reply.options
    assert d.ask(make_query(SVC), tcp=tcp).edns == -1


@pytest.mark.parametrize("payload", [700, 4096])
def test_bufsize_lowers_the_size_echoed(payload: int) -> None:
    d = Driver(CLUSTER.replace("    forward", "    bufsize 1100\n    forward"), answer_a())
    query = make_query(SVC, edns=0, payload=payload)
    for reply in (d.ask(query), d.ask(query), d.ask(query, tcp=True)):  # miss, hit, TCP hit
        assert reply is not None and reply.payload == min(payload, 1100)


def test_badvers_opt_has_size_0_and_no_do() -> None:
    """As node-cache's: the OPT of a BADVERS reply says size 0, DO clear."""
    reply = Driver(CLUSTER, answer_a()).ask(make_query(SVC, edns=1, payload=4096, dnssec=True))
    assert reply is not None and reply.rcode() == dns.rcode.BADVERS
    assert reply.payload == 0 and not reply.ednsflags & dns.flags.DO


@pytest.mark.parametrize("rcode", [dns.rcode.NOERROR, dns.rcode.SERVFAIL])
@pytest.mark.parametrize("upstream_aa", [False, True])
def test_aa_is_the_upstreams_on_the_miss_and_set_on_hits(rcode: int, upstream_aa: bool) -> None:
    """CoreDNS's cache passes the upstream's header on while storing, and sets AA on
    what it serves from store."""
    def upstream(q: dns.message.Message) -> dns.message.Message:
        r = answer_a()(q) if rcode == dns.rcode.NOERROR else dns.message.make_response(q)
        r.set_rcode(rcode)
        r.flags = r.flags & ~dns.flags.AA | (dns.flags.AA if upstream_aa else 0)
        return r
    d = Driver(CLUSTER, upstream)
    miss, hit = d.ask(make_query(SVC)), d.ask(make_query(SVC))
    assert miss is not None and hit is not None and miss.rcode() == hit.rcode() == rcode
    assert bool(miss.flags & dns.flags.AA) == upstream_aa and hit.flags & dns.flags.AA
    assert len(d.upstream_queries) == 1  # the second was a hit


def test_udp_truncation_and_tcp_full_answer() -> None:
    many = [f"10.0.{i // 250}.{i % 250}" for i in range(60)]  # 60 A records: > 512 bytes
    d = Driver(CLUSTER, answer_a(30, *many))
    fit = (512 - len(make_query(SVC).to_wire())) // 16  # whole A records after header and question
    for _ in range(2):  # from the upstream answer, then from the cache's hit path
        udp = d.ask(make_query(SVC))
        addresses = [r.address for r in udp.answer[0]]
        assert udp.flags & dns.flags.TC and len(addresses) == fit and set(addresses) <= set(many)
    tcp = d.ask(make_query(SVC), tcp=True)
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 60
    big = d.ask(make_query(SVC, edns=0, payload=4096))
    assert not big.flags & dns.flags.TC and len(big.answer[0]) == 60
    assert len(d.upstream_queries) == 1


@pytest.mark.parametrize("payload, limit", [(300, 512), (512, 512), (700, 700), (4096, None)])
def test_hit_fits_the_clients_edns_size(payload: int, limit: int | None) -> None:
    """A hit over 512 bytes is cut to the OPT's size (never under 512), as the miss was."""
    many = [f"10.0.{i // 250}.{i % 250}" for i in range(60)]  # 60 A records: about 1,000 bytes
    d = Driver(CLUSTER, answer_a(30, *many))
    query = make_query(SVC, edns=0, payload=payload).to_wire()
    first = d.ask(query)
    hit = d.handler.handle(query, d.now, 0)
    assert isinstance(hit, bytes) and first is not None
    assert dns.message.from_wire(hit).answer == first.answer
    if limit is None:
        assert len(first.answer[0]) == 60 and not dns.message.from_wire(hit).flags & dns.flags.TC
    else:
        assert len(hit) <= limit < len(hit) + 16  # as many whole A records as fit
        assert dns.message.from_wire(hit).flags & dns.flags.TC
    tcp = d.handler.handle(query, d.now, SLOT_TCP4)
    assert isinstance(tcp, bytes) and len(dns.message.from_wire(tcp).answer[0]) == 60
    assert len(d.upstream_queries) == 1


def _query(flags: int = 0x0100, counts: tuple[int, int, int, int] = (1, 0, 0, 1),
           question: bytes = b"\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01",
           rest: bytes = wire.opt_record(False, 1232)) -> bytes:
    """A query as bytes: ID 0x1234, ``flags``, the four counts, then ``question`` and ``rest``."""
    return struct.pack("!HH4H", 0x1234, flags, *counts) + question + rest


_SVC_A = _query(counts=(1, 0, 0, 0), rest=b"")
_A_RR = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x0a\x00\x00\x01"

#: Queries the handler answers itself, as node-cache does (miekg/dns's header checks,
#: then CoreDNS's): (query, RCODE, flags of the reply, QDCOUNT, ARCOUNT).
SELF_MADE = {
    # opcodes other than QUERY and NOTIFY: the header back, no question, no OPT
    "IQUERY": (_query(0x0900), dns.rcode.NOTIMP, 0x8900, 0, 0),
    "STATUS, TC AD CD": (_query(0x1230), dns.rcode.NOTIMP, 0x9230, 0, 0),
    "UPDATE": (_query(0x2800), dns.rcode.NOTIMP, 0xA800, 0, 0),
    "opcode 15, AA Z": (_query(0x7D40), dns.rcode.NOTIMP, 0xF900, 0, 0),
    # NOTIFY: we are no secondary (node-cache forwards it)
    "NOTIFY": (_query(0x2400), dns.rcode.NOTIMP, 0xA000, 0, 0),
    # counts no query has: FORMERR with opcode QUERY, the query's RD RA AD CD
    "QDCOUNT 0": (_query(counts=(0, 0, 0, 0), question=b"", rest=b""), dns.rcode.FORMERR,
                  0x8100, 0, 0),
    "QDCOUNT 2": (_query(0x01B0, counts=(2, 0, 0, 0), rest=b""), dns.rcode.FORMERR, 0x81B0, 0, 0),
    "NOTIFY, ANCOUNT 2": (_query(0x2000, counts=(1, 2, 0, 0), rest=_A_RR * 2),
                          dns.rcode.FORMERR, 0x8000, 0, 0),
    "ARCOUNT 3": (_query(counts=(1, 0, 0, 3), rest=_A_RR * 3), dns.rcode.FORMERR, 0x8100, 0, 0),
    # a question that does not read: no question echoed
    "label of 64": (_query(question=b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"),
                    dns.rcode.FORMERR, 0x8100, 0, 0),
    "question cut": (_SVC_A[:-2], dns.rcode.FORMERR, 0x8100, 0, 0),
    # a record after the question that does not read: the question echoed
    "record cut": (_query(counts=(1, 1, 0, 0), rest=_A_RR[:-1]), dns.rcode.FORMERR, 0x8100, 1, 0),
    "two OPT": (_query(counts=(1, 0, 0, 2), rest=wire.opt_record(False) * 2),
                dns.rcode.FORMERR, 0x8100, 1, 0),
    # errors of a question read: RD and CD echoed, RA clear (the error is ours), the OPT echoed
    "EDNS version 1": (_query(0x0130, rest=wire.opt_record(True, 1232)[:5] + b"\x00\x01\x80"
                              + bytes(3)), dns.rcode.BADVERS, 0x8110, 1, 1),
    "AXFR": (_query(question=b"\x07cluster\x05local\x00\x00\xfc\x00\x01"),
             dns.rcode.REFUSED, 0x8100, 1, 1),
    "IXFR, RD clear": (_query(0, question=b"\x07cluster\x05local\x00\x00\xfb\x00\x01"),
                       dns.rcode.REFUSED, 0x8000, 1, 1),
    "outside every zone": (_query(question=b"\x03www\x07example\x00\x00\x01\x00\x01"),
                           dns.rcode.REFUSED, 0x8100, 1, 1),
}


@pytest.mark.parametrize("case", SELF_MADE)
def test_self_made_replies(case: str) -> None:
    query, rcode, flags, qdcount, arcount = SELF_MADE[case]
    d = Driver(CLUSTER, answer_a())
    reply = d.handler.handle(query, d.now, 0)
    assert isinstance(reply, bytes) and not d.upstream_queries
    qid, got_flags, got_qd, an, ns, ar = struct.unpack_from("!HHHHHH", reply)
    assert (qid, got_flags & 0xFFF0, got_qd, an, ns, ar) == (0x1234, flags, qdcount, 0, 0, arcount)
    assert dns.message.from_wire(reply).rcode() == rcode
    if qdcount:
        assert reply[12:].startswith(query[12:12 + len(reply) - 12 - (11 if arcount else 0)])


#: Queries miekg/dns reads without complaint, so node-cache answers them: the
#: handler forwards them too, and answers with RD, CD and the OPT echoed.
LENIENT = {
    "trailing bytes": _SVC_A + b"\xde\xad",
    "trailing bytes after the OPT": _query() + b"\x00",
    "ARCOUNT past the end": _query(counts=(1, 0, 0, 2)),
    "ANCOUNT past the end": _query(counts=(1, 1, 0, 0), rest=b""),
    "an answer record": _query(counts=(1, 1, 0, 0), rest=_A_RR),
    "CHAOS class": _query(question=b"\x03svc\x07cluster\x05local\x00\x00\x01\x00\x03"),
    "class ANY": _query(question=b"\x03svc\x07cluster\x05local\x00\x00\x01\x00\xff"),
    "TC, Z and AA set": _query(0x0740),
    "CD set": _query(0x0110),
}


@pytest.mark.parametrize("case", LENIENT)
def test_lenient_queries_are_answered(case: str) -> None:
    query = LENIENT[case]
    d = Driver(CLUSTER, answer_a())
    for _ in range(2):  # the miss, then the hit
        reply = d.ask(query)
        assert reply is not None and reply.rcode() == dns.rcode.NOERROR and reply.answer
        assert reply.flags & (dns.flags.RD | dns.flags.CD) == query[2] << 8 & 0x0100 | query[3] & 0x10
    qclass = struct.unpack_from("!H", query, 33)[0]  # after the 19 bytes of svc.cluster.local
    assert [(q.question[0].name.to_text(), q.question[0].rdtype, q.question[0].rdclass)
            for q in d.upstream_queries] == [(SVC, dns.rdatatype.A, qclass)]


@pytest.mark.parametrize("data", [b"", b"\x12\x34", bytes(11),
                                  # a response (QR set) is never answered
                                  dns.message.make_response(make_query(SVC)).to_wire()])
def test_unanswerable_is_dropped(data: bytes) -> None:
    assert make_handler(CLUSTER).handle(data, 0.0, 0) is None


def test_routing_longest_suffix_and_refused_outside() -> None:
    corefile = CLUSTER + """svc.cluster.local:53 {
    forward . 127.0.0.2
}
"""
    h = make_handler(corefile)
    for name, zone in [("a.svc.cluster.local.", "svc.cluster.local."),
                       ("svc.cluster.local.", "svc.cluster.local."),
                       ("pod.cluster.local.", "cluster.local.")]:
        result = h.handle(make_query(name).to_wire(), 0.0, 0)
        assert isinstance(result, Miss) and result.zone.name == zone
    refused = dns.message.from_wire(h.handle(make_query("example.com.").to_wire(), 0.0, 0))  # type: ignore
    assert refused.rcode() == dns.rcode.REFUSED


def test_forward_except_is_servfail() -> None:
    # forward hands the name on and nothing follows (CoreDNS's NextOrFailure).
    d = Driver("cluster.local:53 {\n cache 30\n forward . 127.0.0.1 {\n"
               "  except internal.cluster.local\n }\n}\n", answer_a())
    assert d.ask(make_query("x.internal.cluster.local.")).rcode() == dns.rcode.SERVFAIL
    assert d.ask(make_query("x.other.cluster.local.")).rcode() == dns.rcode.NOERROR


def test_upstream_failure_servfail_and_concurrency_refused() -> None:
    d = Driver(CLUSTER, answer_a())
    assert d.ask(make_query(SVC), fail=UpstreamError("timeout")).rcode() == dns.rcode.SERVFAIL
    assert d.ask(make_query(SVC), fail=ConcurrencyLimitError()).rcode() == dns.rcode.REFUSED


STALE = """cluster.local:53 {
    cache 10 {
        serve_stale 60s %s
    }
    forward . 127.0.0.1
}
"""


def test_serve_stale_immediate_answers_ttl0_and_refreshes() -> None:
    d = Driver(STALE % "immediate", answer_a(10))
    d.ask(make_query(SVC))
    d.now += 15
    stale = d.ask(make_query(SVC))
    assert stale.answer[0].ttl == 0 and len(d.upstream_queries) == 1
    assert len(d.refreshes) == 1
    d.ask(make_query(SVC))  # a refresh is already in flight: no second one
    assert len(d.refreshes) == 1
    d.resolve(d.refreshes[0])
    assert d.ask(make_query(SVC)).answer[0].ttl == 10
    d.now += 61 + 10
    d.ask(make_query(SVC))  # beyond the stale window: a plain miss
    assert len(d.upstream_queries) == 3


def test_serve_stale_verify_asks_first_then_falls_back() -> None:
    d = Driver(STALE % "verify", answer_a(10))
    d.ask(make_query(SVC))
    d.now += 15
    assert d.ask(make_query(SVC)).answer[0].ttl == 10  # upstream answered: fresh
    d.now += 15
    reply = d.ask(make_query(SVC), fail=UpstreamError("down"))
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer[0].ttl == 0


def test_prefetch_after_enough_hits_near_expiry() -> None:
    corefile = """cluster.local:53 {
    cache 100 {
        prefetch 3 1m 20%
    }
    forward . 127.0.0.1
}
"""
    d = Driver(corefile, answer_a(100))
    d.ask(make_query(SVC))
    d.now += 50
    d.ask(make_query(SVC))
    d.ask(make_query(SVC))
    d.ask(make_query(SVC))
    assert not d.refreshes  # 3 hits, but 50 s left of 100 (> 20%)
    d.now += 31
    d.ask(make_query(SVC))
    assert len(d.refreshes) == 1
    d.ask(make_query(SVC))
    assert len(d.refreshes) == 1  # one prefetch in flight per entry
    d.resolve(d.refreshes[0])
    assert d.ask(make_query(SVC)).answer[0].ttl == 100


def test_refreshes_wait_in_the_handler_until_taken() -> None:
    """A hit calling for a prefetch queues it; whoever calls ``handle`` takes it, once."""
    corefile = "cluster.local:53 {\n cache 100 {\n prefetch 1 1m 50%\n }\n forward . 127.0.0.1\n}\n"
    d = Driver(corefile, answer_a(100))
    d.ask(make_query(SVC))
    entry = next(iter(d.handler.index.values()))
    assert d.handler.take_refreshes() == []
    reply = d.handler.handle(make_query(SVC).to_wire(), d.now + 60, 0)
    assert isinstance(reply, bytes)  # the client is answered from the cache at once
    (refresh,) = d.handler.take_refreshes()
    assert refresh.background and refresh.stale is entry and refresh.key == entry.key
    assert refresh.zone is d.handler.route(wire.zone_to_wire(SVC))  # looked up when it fired
    assert d.handler.take_refreshes() == [] and entry.refreshing


def test_prefetch_needs_amount_hits() -> None:
    corefile = "cluster.local:53 {\n cache 30 {\n  prefetch 3 1m 50%\n }\n forward . 127.0.0.1\n}\n"
    d = Driver(corefile, answer_a(10))
    d.ask(make_query(SVC))
    stored = d.now
    for offset in (6.0, 7.0):  # half the TTL gone, but hits 1 and 2 of 3
        d.now = stored + offset
        d.ask(make_query(SVC))
    assert not d.refreshes
    d.now = stored + 8.0
    d.ask(make_query(SVC))
    assert len(d.refreshes) == 1


def test_loadbalance_rotates_addresses() -> None:
    corefile = "cluster.local:53 {\n cache 30\n loadbalance\n forward . 127.0.0.1\n}\n"
    d = Driver(corefile, answer_a(30, "10.0.0.1", "10.0.0.2", "10.0.0.3"))
    firsts = set()
    for _ in range(6):
        reply = d.ask(make_query(SVC))
        firsts.add(next(iter(reply.answer[0])).address)
        assert sorted(r.address for r in reply.answer[0]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert len(firsts) == 3


def test_capacity_evicts_and_counts() -> None:
    corefile = "cluster.local:53 {\n cache {\n success 4\n }\n forward . 127.0.0.1\n}\n"
    d = Driver(corefile, answer_a())
    for i in range(10):
        d.ask(make_query(f"s{i}.cluster.local."))
    assert len(d.handler.index) == 4
    stats = next(iter(d.handler.zones.values())).cache_stats
    assert stats.evictions_success == 6 and stats.entries_success == 4


def test_hits_are_counted_at_sync() -> None:
    d = Driver(CLUSTER, answer_a())
    for _ in range(5):
        d.ask(make_query(SVC))
    zone = next(iter(d.handler.zones.values()))
    d.handler.sync_stats()
    assert zone.cache_stats.hits_success == 4 and zone.cache_stats.misses == 1
    assert zone.stats.requests[("udp", "1", "A")] == 5
    # The miss too: as in CoreDNS, the reply is written through the cache.
    assert zone.stats.responses[("NOERROR", "cache")] == 5
    # Sizes: the hit path's tally is bucketed at sync, so is the stored miss's reply.
    query_size = len(make_query(SVC).to_wire())
    reply_size = len(d.handler.handle(make_query(SVC).to_wire(), d.now, 0))  # type: ignore[arg-type]
    request, response = zone.stats.request_size["udp"], zone.stats.response_size["udp"]
    assert (request.count, request.sum) == (5, 5 * query_size)
    assert (response.count, response.sum) == (5, 5 * reply_size)
    assert request.counts[bisect_left(SIZE_BUCKETS, query_size)] == 5
    assert ("NOERROR", "forward") not in zone.stats.responses


# -- bufsize -------------------------------------------------------------------

def _records(count: int) -> Upstream:
    """``count`` A records for any name: 16 bytes each on the wire, plus the header and question."""
    make = answer_a(30, *(f"10.0.{i // 250}.{i % 250}" for i in range(count)))

    def upstream(q: dns.message.Message) -> dns.message.Message:
        reply = make(q)
        reply.request_payload = wire.MAX_MESSAGE  # whole, as over TCP
        return reply
    return upstream


# (bufsize line, records in the answer, client EDNS size or None, TCP, expect TC)
BUFSIZE_CASES = [
    ("bufsize 1100", 60, 4096, False, False),  # about 1 kB: fits 1100
    ("bufsize 1100", 80, 4096, False, True),  # about 1.3 kB: over 1100, under the client's 4096
    ("bufsize 1100", 80, 1000, False, True),  # the client's smaller size still counts
    ("bufsize 1100", 60, 1000, False, False),
    ("bufsize 1100", 80, 4096, True, False),  # TCP: no limit
    ("bufsize 512", 30, 4096, False, True),  # about 520 bytes
    ("bufsize 512", 20, None, False, False),  # no EDNS: 512 as always
    ("", 80, 4096, False, False),  # without bufsize the client's size rules
    ("", 60, None, False, True),  # about 1 kB: over 512 without EDNS
    ("", 60, 256, False, True),  # EDNS sizes below 512 count as 512
    ("", 60, 1232, False, False),
    ("", 300, 1232, False, True),  # about 4.8 kB
    ("", 300, 4096, False, True),
    ("", 300, 8192, False, False),
]


@pytest.mark.parametrize("line,count,payload,tcp,tc", BUFSIZE_CASES)
@pytest.mark.parametrize("warm", [False, True], ids=["miss", "hit"])
def test_bufsize_caps_udp_answers(line: str, count: int, payload: int | None, tcp: bool,
                                  tc: bool, warm: bool) -> None:
    driver = Driver(f". {{\n cache 30\n {line}\n forward . 127.0.0.1\n}}", _records(count))
    query = dns.message.make_query("big.example.", "A", use_edns=payload is not None,
                                   payload=payload or 0)
    if warm:
        assert driver.ask(query, tcp=True) is not None
    result = driver.handler.handle(query.to_wire(), driver.now, 2 if tcp else 0)
    raw = driver.resolve(result) if isinstance(result, Miss) else result
    assert isinstance(raw, bytes)
    reply = dns.message.from_wire(raw)
    assert bool(reply.flags & dns.flags.TC) is tc
    answers = len(reply.answer[0]) if reply.answer else 0
    if tc:  # as many whole leading A records (16 bytes each) as fit, as node-cache sends
        limit = min(int(line.split()[1]) if line else wire.MAX_MESSAGE, max(payload or 512, 512))
        assert len(raw) <= limit
        assert answers == (limit - len(query.to_wire())) // 16
        assert (reply.edns >= 0) == (payload is not None)  # the OPT stays
    else:
        assert answers == count


def test_bufsize_is_each_zones_own_on_a_shared_handler() -> None:
    """Two blocks on one listener, one with bufsize: only its answers are cut."""
    driver = Driver(". {\n cache 30\n forward . 127.0.0.1\n}\n"
                    "small.example {\n cache 30\n bufsize 1100\n forward . 127.0.0.1\n}\n",
                    _records(80))
    for name, cut in (("big.example.", False), ("a.small.example.", True)):
        query = dns.message.make_query(name, "A", use_edns=0, payload=4096)
        assert driver.ask(query, tcp=True) is not None  # stored whole
        raw = driver.handler.handle(query.to_wire(), driver.now, 0)  # a UDP hit
        assert isinstance(raw, bytes)
        assert bool(dns.message.from_wire(raw).flags & dns.flags.TC) is cut
        assert len(raw) <= 1100 if cut else len(raw) > 1100


@pytest.mark.parametrize("line,payload", [("bufsize 1100", 1100), ("bufsize 4096", 4096),
                                          ("", wire.OUR_UDP_PAYLOAD)])
def test_bufsize_is_the_size_asked_upstream(line: str, payload: int) -> None:
    driver = Driver(f". {{\n {line}\n forward . 127.0.0.1\n}}", _records(1))
    driver.ask(dns.message.make_query("a.example.", "A", use_edns=0, payload=4096))
    assert [q.payload for q in driver.upstream_queries] == [payload]


TWO_ADDRESSES = """cluster.local:53 {
    bind 10.0.0.1 10.0.0.2
    cache 30
    forward . 127.0.0.1
}
"""


def test_counts_per_bound_address_by_slot() -> None:
    """The slot names the address a query came in on; each address counts its own."""
    d = Driver(TWO_ADDRESSES, answer_a())
    first, second = (server_index(f"dns://10.0.0.{i}:53") << SLOT_SERVER_SHIFT for i in (1, 2))
    query, do = make_query(SVC).to_wire(), make_query(SVC, dnssec=True).to_wire()
    for data, slot in ((query, first), (do, first), (query, second), (do, second),
                       (query, second | SLOT_TCP4), (make_query("b.cluster.local.").to_wire(), second)):
        result = d.handler.handle(data, d.now, slot)
        if isinstance(result, Miss):
            d.resolve(result)
    d.handler.sync_stats()
    zone = next(iter(d.handler.zones.values()))
    one, two = zone.stats_for(first), zone.stats_for(second)
    assert (one.server, two.server) == ("dns://10.0.0.1:53", "dns://10.0.0.2:53")
    assert dict(one.requests) == {("udp", "1", "A"): 2}
    assert dict(two.requests) == {("udp", "1", "A"): 3, ("tcp", "1", "A"): 1}
    assert (one.do_requests, two.do_requests) == (1, 1)
    assert (one.duration.count, two.duration.count) == (2, 4)
    hits_one, hits_two = zone.cache_stats_for(first), zone.cache_stats_for(second)
    assert hits_one is not None and hits_two is not None
    # Two misses through the first address, three hits and one miss through the second.
    assert (hits_one.misses, hits_one.hits_success) == (2, 0)
    assert (hits_two.misses, hits_two.hits_success) == (1, 3)
    # Each address's entries gauge is the cache's size at its last store (CoreDNS's).
    assert (hits_one.entries_success, hits_two.entries_success) == (2, 3)
    servers, caches = zone.all_stats()
    families = {f.name: f for f in StatsCollector(StatsSources(tuple(servers), tuple(caches)))
                .collect()}
    labelled = {(s.labels["server"], s.value) for s in families["coredns_dns_requests"].samples}
    assert labelled == {("dns://10.0.0.1:53", 2), ("dns://10.0.0.2:53", 3),
                        ("dns://10.0.0.2:53", 1)}


def test_evictions_count_under_the_address_that_stored() -> None:
    """A store through the second address that evicts counts the eviction there."""
    d = Driver(TWO_ADDRESSES.replace("cache 30", "cache 30 {\n        success 1\n    }"),
               answer_a())
    first, second = (server_index(f"dns://10.0.0.{i}:53") << SLOT_SERVER_SHIFT for i in (1, 2))
    for name, slot in (("a.cluster.local.", first), ("b.cluster.local.", second),
                       ("c.cluster.local.", second)):
        result = d.handler.handle(make_query(name).to_wire(), d.now, slot)
        assert isinstance(result, Miss)
        d.resolve(result)
    zone = next(iter(d.handler.zones.values()))
    one, two = zone.cache_stats_for(first), zone.cache_stats_for(second)
    assert one is not None and two is not None
    assert (one.evictions_success, two.evictions_success) == (0, 2)
    assert (one.entries_success, two.entries_success) == (1, 1)
