"""The wire fuzzer's engine: a handler built as the agent builds it, the soundness
checks, byte-level mutations and hypothesis strategies for DNS messages.

Used by ``tests/core/test_fuzz_wire.py`` (the default run) and
``tests/core/test_fuzz_long.py`` (marked ``slow``).
"""
from __future__ import annotations

import random
import struct

import dns.message
import dns.rcode
import dns.rrset
from hypothesis import strategies as st

from nodecache.config import parse_text
from nodecache.core import wire
from nodecache.core.handler import Miss, QueryHandler
from nodecache.core.runtime import EntryIndex, build
from nodecache.errors import ClientProtocolError, UpstreamError

COREFILE = """
cluster.local:53 {
    cache 30 {
        success 64
        denial 64
        serve_stale 60s
    }
    forward . 127.0.0.1:1
}
.:53 {
    cache 30 {
        success 64
        denial 64
    }
    forward . 127.0.0.1:1
}
"""

NAMES = ["kubernetes.default.svc.cluster.local.", "a.example.", "x.y.z.example.org.",
         "nx.cluster.local.", "."]
NOW = 1000.0


def make_handler() -> QueryHandler:
    """A handler built exactly as the agent builds it, with a few cached answers."""
    index = EntryIndex()
    _, handlers = build(parse_text(COREFILE), (), index)
    index.track(handlers.values())
    (handler,) = set(handlers.values())
    for name in NAMES:
        for rdtype in ("A", "AAAA", "MX"):
            query = dns.message.make_query(name, rdtype, use_edns=0, want_dnssec=name == ".")
            result = handler.handle(query.to_wire(), NOW, 0)
            assert isinstance(result, Miss), (name, rdtype)
            response = dns.message.make_response(query)
            if name.startswith("nx"):
                response.set_rcode(dns.rcode.NXDOMAIN)
                response.authority.append(dns.rrset.from_text(
                    "cluster.local.", 30, "IN", "SOA", "ns. host. 1 2 3 4 30"))
            elif rdtype == "A":
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "10.0.0.1",
                                                            "10.0.0.2"))
            elif rdtype == "MX":
                response.answer.append(dns.rrset.from_text(name, 60, "IN", "MX", f"10 {name}"))
            outcome = handler.absorb(result, response.to_wire(), NOW)
            handler.reply(result, outcome, NOW)
    assert handler.index, "the cache should hold entries"
    return handler


HANDLER = make_handler()


def seeds() -> list[bytes]:
    """Valid queries of every shape the hit path and the slow path know."""
    out = []
    for i, name in enumerate(NAMES + ["KuBeRnEtEs.default.SVC.cluster.local."]):
        for rdtype in ("A", "AAAA", "MX", "TXT", "AXFR"):
            out.append(dns.message.make_query(name, rdtype).to_wire())
            q = dns.message.make_query(name, rdtype, use_edns=0, payload=1232 + i,
                                       want_dnssec=bool(i & 1))
            if i & 2:
                q.flags |= 0x0010  # CD
            out.append(q.to_wire())
    return out


SEEDS = seeds()


def check_reply(query: bytes, result: object) -> None:
    """The properties every handler result must have.

    A reply must be a well-framed DNS message: header, question, records with
    in-bounds, backward-pointing names (``wire.index_response``, which also
    checks the names inside NS/CNAME/PTR/MX/SRV/SOA RDATA). Replies we build
    ourselves (errors, no records) must also satisfy dnspython. Records relayed
    from an upstream are framed but not re-validated type by type (a cache
    relays RDATA; it does not decode every type), so dnspython is not the
    oracle for them.
    """
    if result is None or isinstance(result, Miss):
        return
    assert isinstance(result, bytes), type(result)
    assert len(result) >= wire.HEADER_LEN
    assert result[:2] == query[:2], "reply ID differs from the query's"
    assert result[2] & 0x80, "reply without QR"
    qd, an, ns, ar = struct.unpack_from("!HHHH", result, 4)
    assert qd in (0, 1)
    question_end = wire.HEADER_LEN
    if qd:
        # Raises ValueError on a broken frame or pointer.
        question_end = wire.index_response(result).question_end
    tail = result[question_end:]
    if an == 0 and ns == 0 and (not tail or (len(tail) == 11 and tail[:3] == b"\x00\x00\x29")):
        # Only the question and at most our OPT: built here, so dnspython must accept it.
        # dnspython adds UPDATE's semantic checks for opcode 5; look at structure only.
        structural = result[:2] + bytes((result[2] & 0x87,)) + result[3:]
        dns.message.from_wire(structural)  # raises on anything malformed


def exercise(data: bytes, *, slot: int = 0, upstream: bytes | None = None) -> None:
    """Feed ``data`` everywhere a stranger's bytes go and check the results."""
    try:
        wire.parse_query(data)
    except ClientProtocolError:
        pass
    try:
        wire.index_response(data)
    except ValueError:
        pass
    result = HANDLER.handle(data, NOW + 5, slot, ("192.0.2.9", 5353))
    check_reply(data, result)
    if isinstance(result, Miss):
        answer = upstream if upstream is not None else data
        # As the forwarder hands it over: the ID patched to the client query's.
        if len(answer) >= 2:
            answer = data[:2] + answer[2:]
        outcome = HANDLER.absorb(result, answer, NOW + 5)
        check_reply(data, HANDLER.reply(result, outcome, NOW + 5))
        check_reply(data, HANDLER.fail(result, UpstreamError("down"), NOW + 100))
    # Keep the cache bounded in size during long runs (absorb may store answers).
    for zone in {id(z): z for z in HANDLER.zones.values()}.values():
        assert zone.cache is not None
        assert len(zone.cache.success) <= 64 and len(zone.cache.denial) <= 64


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four byte-level mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2:  # truncate
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 3:  # append garbage
            buf += bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 4 and len(buf) >= 12:  # set a count field
            field = rng.choice((4, 6, 8, 10))
            buf[field:field + 2] = struct.pack("!H", rng.choice((0, 1, 2, 255, 0xFFFF)))
        elif op == 5 and len(buf) > 12:  # a compression pointer somewhere
            i = rng.randrange(12, len(buf))
            buf[i:i + 2] = bytes((0xC0 | rng.randrange(64), rng.randrange(256)))
        elif op == 6:  # splice another seed in
            other = rng.choice(SEEDS)
            i = rng.randrange(len(buf) + 1)
            buf[i:] = other[rng.randrange(len(other)):]
        elif op == 7 and len(buf) > 13:  # a long label length
            buf[rng.randrange(12, len(buf))] = rng.choice((63, 64, 0x40, 0x80, 0xFF))
    return bytes(buf)


def answer_for(query: bytes) -> bytes:
    """A valid upstream answer for a valid query (echoing its question)."""
    msg = dns.message.from_wire(query)
    response = dns.message.make_response(msg)
    if msg.question:
        q = msg.question[0]
        if q.rdtype == 1:
            response.answer.append(dns.rrset.from_text(q.name, 30, "IN", "A", "10.1.2.3"))
    return response.to_wire()


def run_mutations(cases: int, seed: int) -> int:
    """``cases`` mutated queries (and mutated upstream answers); returns cases run."""
    rng = random.Random(seed)
    for _ in range(cases):
        base = rng.choice(SEEDS)
        query = mutate(rng, base)
        upstream = None
        if rng.random() < 0.5:
            upstream = mutate(rng, answer_for(base))
        exercise(query, slot=rng.randrange(4), upstream=upstream)
    return cases


# -- hypothesis -----------------------------------------------------------

labels = st.binary(min_size=0, max_size=70)
names = st.lists(labels, max_size=6).map(
    lambda ls: b"".join(bytes((len(x) & 0xFF,)) + x for x in ls) + b"\x00")
headers = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 3),
                    st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)).map(
    lambda t: struct.pack("!HHHHHH", *t))
records = st.tuples(names, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                    st.integers(0, 0xFFFFFFFF), st.binary(max_size=40)).map(
    lambda r: r[0] + struct.pack("!HHIH", r[1], r[2], r[3], len(r[4])) + r[4])
opt = st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0xFF),
                st.integers(0, 0xFFFF), st.binary(max_size=12)).map(
    lambda o: b"\x00" + struct.pack("!HHBBHH", 41, o[0], o[1], o[2], o[3], len(o[4])) + o[4])
messages = st.tuples(headers, names, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF),
                     st.lists(st.one_of(records, opt), max_size=3)).map(
    lambda m: m[0] + m[1] + struct.pack("!HH", m[2], m[3]) + b"".join(m[4]))
plain_queries = st.tuples(st.integers(0, 0xFFFF), st.sampled_from(NAMES),
                          st.sampled_from([1, 28, 15, 16, 255, 0, 0xFFFF]),
                          st.booleans(), st.integers(0, 0xFFFF), st.booleans()).map(
    lambda q: struct.pack("!HHHHHH", q[0], 0x0100, 1, 0, 0, 1 if q[3] else 0)
    + dns.message.make_query(q[1], "A").to_wire()[12:-4] + struct.pack("!HH", q[2], 1)
    + (b"\x00" + struct.pack("!HHIH", 41, q[4], 0x8000 if q[5] else 0, 0) if q[3] else b""))
