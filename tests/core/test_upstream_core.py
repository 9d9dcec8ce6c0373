"""nodecache.core.upstream without sockets: framing, matching, lifecycle, pool.

Connection tests join an ``UpstreamConnection`` to an in-memory server
(``MemoryServer``) with ``transfer()``, as aioquic's tests do.
"""
from __future__ import annotations

import itertools
import struct

import dns.message
import dns.rcode
import pytest

from nodecache.core.upstream import (
    EOF, NEED_DATA, AnswerReceived, Backoff, ConnectionPool, ConnectionTerminated, ConnEvent,
    ConnState, FrameDecoder, FrameError, IdSource, InFlight, TRANSITIONS, UpstreamConnection,
    frame, get_id, health_probe, is_response, is_truncated, question_key, rcode_of, same_question,
    set_id,
)
from tests.kit.queries import query_wire

# "example.com. A IN", ID 0x1234, RD
QUERY_HEX = "123401000001000000000000076578616d706c6503636f6d0000010001"
QUERY = bytes.fromhex(QUERY_HEX)


def answer_to(wire: bytes, *, name: str | None = None, rcode: int = 0) -> bytes:
    q = dns.message.from_wire(wire)
    if name is not None:
        q = dns.message.make_query(name, q.question[0].rdtype)
        q.id = get_id(wire)
    r = dns.message.make_response(q)
    r.set_rcode(rcode)
    return r.to_wire()


def counter(start: int = 1) -> object:
    it = itertools.count(start)
    return lambda: next(it) & 0xFFFF


# -- wire helpers -------------------------------------------------------------------

QUESTION_CASES = [
    # (wire, expected key)
    (QUERY, bytes.fromhex("076578616d706c6503636f6d0000010001")),
    (query_wire("ExAmPlE.CoM."), question_key(query_wire("example.com."))),
    (query_wire("."), b"\x00\x00\x01\x00\x01"),
    (QUERY[:12], None),                                     # header only
    (QUERY[:-1], None),                                     # cut inside QCLASS
    (QUERY[:20], None),                                     # cut inside QNAME
    (QUERY[:4] + b"\x00\x00" + QUERY[6:], None),            # QDCOUNT 0
    (QUERY[:4] + b"\x00\x02" + QUERY[6:], None),            # QDCOUNT 2
    (QUERY[:12] + b"\xc0\x0c\x00\x01\x00\x01", None),       # compression pointer
    (QUERY[:12] + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63 + b"\x3f" + b"a" * 63
     + b"\x3f" + b"a" * 63 + b"\x00\x00\x01\x00\x01", None),    # name of 257 octets
    (b"", None),
]


@pytest.mark.parametrize("wire,expected", QUESTION_CASES)
def test_question_key(wire: bytes, expected: bytes | None) -> None:
    assert question_key(wire) == expected


def test_question_key_lowercases_name_not_type() -> None:
    # type 0x41 (65, HTTPS) must not be touched by lower-casing
    a = question_key(query_wire("A.example.", "HTTPS"))
    b = question_key(query_wire("a.example.", "HTTPS"))
    assert a == b and a is not None and a.endswith(b"\x00\x41\x00\x01")


def test_header_helpers() -> None:
    assert get_id(QUERY) == 0x1234
    assert get_id(set_id(QUERY, 7)) == 7 and set_id(QUERY, 7)[2:] == QUERY[2:]
    ans = answer_to(QUERY, rcode=dns.rcode.NXDOMAIN)
    assert is_response(ans) and not is_response(QUERY)
    assert rcode_of(ans) == dns.rcode.NXDOMAIN
    assert not is_truncated(ans)
    assert is_truncated(ans[:2] + bytes([ans[2] | 0x02]) + ans[3:])


@pytest.mark.parametrize("domain,rd", [(".", True), (".", False), ("cluster.local.", True)])
def test_health_probe(domain: str, rd: bool) -> None:
    msg = dns.message.from_wire(health_probe(domain, recursion_desired=rd, qid=9))
    assert msg.id == 9
    assert msg.question[0].name.to_text() == domain
    assert dns.rdatatype.to_text(msg.question[0].rdtype) == "NS"
    assert bool(msg.flags & dns.flags.RD) is rd


def test_id_source_draws_blocks() -> None:
    calls = []

    def rnd(n: int) -> bytes:
        calls.append(n)
        return bytes(range(256)) * (n // 256) + bytes(n % 256)

    ids = IdSource(rnd)
    got = [ids() for _ in range(IdSource.BLOCK + 1)]
    assert got[0] == 0x0001 and got[1] == 0x0203
    assert len(calls) == 2


# -- framing ------------------------------------------------------------------------

FRAME_CASES = [
    # (chunks fed, expected results in order; "error" = FrameError)
    ([frame(QUERY)], [QUERY, NEED_DATA]),
    ([frame(QUERY) + frame(QUERY)], [QUERY, QUERY, NEED_DATA]),
    ([frame(QUERY)[:1], frame(QUERY)[1:]], [QUERY, NEED_DATA]),
    ([frame(QUERY)[:5]], [NEED_DATA]),
    ([frame(QUERY), b""], [QUERY, EOF]),
    ([b""], [EOF]),
    ([frame(QUERY)[:5], b""], ["error"]),                     # truncated at EOF
    ([b"\x00"], [NEED_DATA]),
    ([b"\x00\x03abc"], ["error"]),                             # shorter than a header
    ([b"\x00\x00"], ["error"]),                                # zero-length frame
]


@pytest.mark.parametrize("chunks,expected", FRAME_CASES)
def test_frame_decoder(chunks: list[bytes], expected: list[object]) -> None:
    dec = FrameDecoder()
    got: list[object] = []
    for chunk in chunks:
        dec.feed(chunk)
    for _ in expected:
        try:
            got.append(dec.next_frame())
        except FrameError:
            got.append("error")
            break
    assert got == expected


SPLIT_CASES = [
    # (reads, messages taken after each read, error left, bytes left buffered)
    ([frame(QUERY)], [[QUERY]], False, 0),                    # one whole frame
    ([frame(QUERY) * 3], [[QUERY] * 3], False, 0),
    ([frame(QUERY)[:1], frame(QUERY)[1:]], [[], [QUERY]], False, 0),
    ([frame(QUERY) + frame(QUERY)[:5], frame(QUERY)[5:] + frame(QUERY)],
     [[QUERY], [QUERY, QUERY]], False, 0),
    ([frame(QUERY)[:5]], [[]], False, 5),
    ([b"\x00\x03abc"], [[]], True, 5),                        # shorter than a header
    ([frame(QUERY) + b"\x00\x00"], [[QUERY]], True, 2),        # the query before it counts
    ([b"\x00\x00", frame(QUERY)], [[], []], True, 2 + len(frame(QUERY))),
]


@pytest.mark.parametrize("reads,taken,error,left", SPLIT_CASES)
def test_feed_frames(reads: list[bytes], taken: list[list[bytes]], error: bool,
                     left: int) -> None:
    dec = FrameDecoder()
    assert [dec.feed_frames(data) for data in reads] == taken
    assert (dec.error is not None) is error
    assert dec.buffered == left


def test_frame_decoder_byte_by_byte() -> None:
    stream = frame(QUERY) + frame(query_wire("b.example.")) + frame(QUERY)
    dec = FrameDecoder()
    out = []
    for i in range(len(stream)):
        dec.feed(stream[i:i + 1])
        while (msg := dec.next_frame()) is not NEED_DATA:
            out.append(msg)
    assert out == [QUERY, query_wire("b.example."), QUERY]
    assert dec.buffered == 0


# -- in-flight table ----------------------------------------------------------------

def test_in_flight_matches_id_and_question() -> None:
    table = InFlight(counter(100))
    q = query_wire("a.example.")
    qid = table.add(question_key(q), "tok")  # type: ignore[arg-type]
    assert qid == 100
    sent = set_id(q, qid)
    assert table.match(set_id(answer_to(sent), 101)) is None            # wrong ID
    assert table.match(answer_to(sent, name="b.example.")) is None      # wrong question
    assert table.match(sent) is None                                     # QR not set
    assert table.match(sent[:8]) is None                                 # short
    assert table.match(answer_to(sent, name="A.EXAMPLE.")) == "tok"      # case-insensitive
    assert len(table) == 0
    assert table.match(answer_to(sent)) is None                          # answered once


def test_in_flight_ids_unique() -> None:
    same = lambda: 5  # noqa: E731 - a terrible random source still yields unique IDs
    table = InFlight(same)
    ids = {table.add(b"q", i) for i in range(100)}
    assert len(ids) == 100


def test_in_flight_drain_and_discard() -> None:
    table = InFlight(counter())
    a = table.add(b"q", "a")
    table.add(b"q", "b")
    assert table.discard(a) == "a" and table.discard(a) is None
    assert table.drain() == ["b"] and len(table) == 0


# -- connection lifecycle ------------------------------------------------------------

# Every (state, event) pair: the state that follows (None: unchanged).
LIFECYCLE_CASES = [
    (ConnState.CONNECTING, ConnEvent.CONNECTED, ConnState.OPEN),
    (ConnState.CONNECTING, ConnEvent.CONNECT_FAILED, ConnState.CLOSED),
    (ConnState.CONNECTING, ConnEvent.CLOSE, ConnState.CLOSED),
    (ConnState.OPEN, ConnEvent.MAX_AGE, ConnState.DRAINING),
    (ConnState.OPEN, ConnEvent.QUERY_TIMEOUT, ConnState.DRAINING),
    (ConnState.OPEN, ConnEvent.IDLE, ConnState.CLOSED),
    (ConnState.OPEN, ConnEvent.PEER_CLOSED, ConnState.CLOSED),
    (ConnState.OPEN, ConnEvent.PROTOCOL_ERROR, ConnState.CLOSED),
    (ConnState.OPEN, ConnEvent.CONNECTED, None),
    (ConnState.DRAINING, ConnEvent.DRAINED, ConnState.CLOSED),
    (ConnState.DRAINING, ConnEvent.MAX_AGE, None),
    (ConnState.DRAINING, ConnEvent.PEER_CLOSED, ConnState.CLOSED),
    (ConnState.CLOSED, ConnEvent.CONNECTED, None),
]


@pytest.mark.parametrize("state,event,expected", LIFECYCLE_CASES)
def test_transition_table(state: ConnState, event: ConnEvent, expected: ConnState | None) -> None:
    assert TRANSITIONS.get((state, event)) == expected


def test_every_state_can_close() -> None:
    for state in (ConnState.CONNECTING, ConnState.OPEN, ConnState.DRAINING):
        assert TRANSITIONS[(state, ConnEvent.CLOSE)] is ConnState.CLOSED


class MemoryServer:
    """The upstream end of an in-memory link: decodes frames, queues queries."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder()
        self.received: list[bytes] = []

    def receive(self, data: bytes) -> None:
        self.decoder.feed(data)
        while (msg := self.decoder.next_frame()) is not NEED_DATA:
            self.received.append(msg)  # type: ignore[arg-type]


def transfer(conn: UpstreamConnection, server: MemoryServer) -> None:
    server.receive(conn.data_to_send())


def new_conn(now: float = 0.0, **kw: object) -> UpstreamConnection:
    opts: dict = dict(max_in_flight=8, max_age=0.0, expire=10.0, ids=counter())
    opts.update(kw)
    return UpstreamConnection(now=now, **opts)


def test_pipelined_roundtrip_out_of_order() -> None:
    conn, server = new_conn(), MemoryServer()
    names = ["a.example.", "b.example.", "c.example."]
    for name in names:
        q = query_wire(name, qid=0xAAAA)
        conn.send(q, question_key(q), name, now=0.0)
    assert conn.data_to_send() == b""          # nothing written while connecting
    conn.connected(0.1)
    transfer(conn, server)
    assert len(server.received) == 3
    assert len({get_id(m) for m in server.received}) == 3   # unique IDs on the connection
    assert all(get_id(m) != 0xAAAA for m in server.received)
    # answers come back in reverse order, in one read
    data = b"".join(frame(answer_to(m)) for m in reversed(server.received))
    events = conn.receive_data(data, now=0.2)
    assert [e.token for e in events] == list(reversed(names))
    assert all(isinstance(e, AnswerReceived) for e in events)
    assert len(conn.in_flight) == 0 and conn.state is ConnState.OPEN


def test_mismatched_answers_ignored() -> None:
    conn, server = new_conn(), MemoryServer()
    q = query_wire("a.example.")
    conn.send(q, question_key(q), "a", now=0.0)
    conn.connected(0.0)
    transfer(conn, server)
    sent = server.received[0]
    bad_id = set_id(answer_to(sent), (get_id(sent) + 1) & 0xFFFF)
    bad_q = answer_to(sent, name="evil.example.")
    assert conn.receive_data(frame(bad_id) + frame(bad_q), 0.1) == []
    assert conn.state is ConnState.OPEN
    events = conn.receive_data(frame(answer_to(sent)), 0.1)
    assert [e.token for e in events] == ["a"]


@pytest.mark.parametrize("garbage", [
    b"\x00\x05hello",                # frame shorter than a header
    b"\x00\x00",                     # empty frame
])
def test_garbage_closes_and_fails_in_flight(garbage: bytes) -> None:
    conn = new_conn()
    for name in ("a.", "b."):
        q = query_wire(name)
        conn.send(q, question_key(q), name, 0.0)
    conn.connected(0.0)
    conn.data_to_send()
    (ev,) = conn.receive_data(garbage, 0.1)
    assert isinstance(ev, ConnectionTerminated)
    assert ev.reason is ConnEvent.PROTOCOL_ERROR and set(ev.failed) == {"a.", "b."}
    assert conn.state is ConnState.CLOSED
    assert conn.receive_data(frame(QUERY), 0.2) == []     # nothing after close


def test_truncated_frame_at_eof() -> None:
    conn, server = new_conn(), MemoryServer()
    q = query_wire("a.")
    conn.send(q, question_key(q), "a", 0.0)
    conn.connected(0.0)
    transfer(conn, server)
    (ev,) = conn.receive_data(frame(answer_to(server.received[0]))[:10] + b"", 0.1) or [None]
    assert ev is None                                      # waiting for the rest
    (ev,) = conn.receive_data(b"", 0.1)
    assert isinstance(ev, ConnectionTerminated) and ev.reason is ConnEvent.PROTOCOL_ERROR
    assert ev.failed == ("a",)


def test_clean_eof_fails_in_flight() -> None:
    conn = new_conn()
    q = query_wire("a.")
    conn.send(q, question_key(q), "a", 0.0)
    conn.connected(0.0)
    (ev,) = conn.receive_data(b"", 0.1)
    assert ev.reason is ConnEvent.PEER_CLOSED and ev.failed == ("a",)


def test_connection_lost() -> None:
    conn = new_conn()
    conn.connected(0.0)
    q = query_wire("a.")
    conn.send(q, question_key(q), "a", 0.0)
    ev = conn.connection_lost("reset")
    assert ev is not None and ev.failed == ("a",)
    assert conn.connection_lost() is None


def test_in_flight_limit() -> None:
    conn = new_conn(max_in_flight=2)
    conn.connected(0.0)
    for name in ("a.", "b."):
        q = query_wire(name)
        conn.send(q, question_key(q), name, 0.0)
    assert not conn.accepting
    with pytest.raises(AssertionError):
        conn.send(QUERY, question_key(QUERY), "c", 0.0)


def test_idle_expire() -> None:
    conn = new_conn(expire=10.0)
    conn.connected(1.0)
    assert conn.get_timer() == 11.0
    assert conn.handle_timer(5.0) is None and conn.state is ConnState.OPEN
    q = query_wire("a.")
    conn.send(q, question_key(q), "a", 6.0)
    assert conn.get_timer() is None                  # busy: not idle
    assert conn.handle_timer(100.0) is None and conn.state is ConnState.OPEN
    conn.give_up(get_id(conn.data_to_send()[2:]), 100.0, timed_out=False)
    ev = conn.handle_timer(200.0)
    assert ev is not None and ev.reason is ConnEvent.IDLE and conn.state is ConnState.CLOSED


def test_max_age_drains_then_closes() -> None:
    conn, server = new_conn(max_age=30.0), MemoryServer()
    conn.connected(0.0)
    q = query_wire("a.")
    conn.send(q, question_key(q), "a", 1.0)
    transfer(conn, server)
    assert conn.get_timer() == 30.0
    conn.handle_timer(30.0)
    assert conn.state is ConnState.DRAINING and not conn.accepting
    (ev,) = conn.receive_data(frame(answer_to(server.received[0])), 31.0)
    assert ev.token == "a"                           # in-flight query still answered
    assert conn.state is ConnState.CLOSED


def test_max_age_idle_closes_at_once() -> None:
    conn = new_conn(max_age=5.0)
    conn.connected(0.0)
    conn.handle_timer(5.0)
    assert conn.state is ConnState.CLOSED


def test_query_timeout_drains() -> None:
    conn = new_conn()
    conn.connected(0.0)
    qa, qb = query_wire("a."), query_wire("b.")
    ida = conn.send(qa, question_key(qa), "a", 0.0)
    conn.send(qb, question_key(qb), "b", 0.0)
    conn.give_up(ida, 2.0, timed_out=True)
    assert conn.state is ConnState.DRAINING and len(conn.in_flight) == 1
    conn.give_up(ida, 2.0, timed_out=True)           # twice is harmless
    late = conn.receive_data(frame(answer_to(set_id(qa, ida))), 2.5)
    assert late == []                                # answer to a given-up query: dropped


def test_timed_out_query_still_takes_its_late_answer() -> None:
    conn = new_conn()
    conn.connected(0.0)
    qa, qb = query_wire("a."), query_wire("b.")
    ida = conn.send(qa, question_key(qa), "a", 0.0)
    idb = conn.send(qb, question_key(qb), "b", 0.0)
    assert conn.timed_out(ida) is None
    assert conn.state is ConnState.DRAINING and not conn.accepting and len(conn.in_flight) == 2
    (late,) = conn.receive_data(frame(answer_to(set_id(qa, ida))), 2.5)
    assert type(late) is AnswerReceived and late.token == "a"
    conn.give_up(idb, 3.0, timed_out=False)          # the last one: drained, closed
    assert conn.state is ConnState.CLOSED


def test_timed_out_while_connecting_closes() -> None:
    conn = new_conn()
    qa = query_wire("a.")
    ida = conn.send(qa, question_key(qa), "a", 0.0)
    ev = conn.timed_out(ida)
    assert ev is not None and ev.failed == ("a",) and conn.state is ConnState.CLOSED


# -- pool -----------------------------------------------------------------------------

def new_pool(**kw: object) -> ConnectionPool:
    opts: dict = dict(max_age=0.0, expire=10.0, ids=counter(), max_connections=2,
                      max_in_flight=3, spread=2, backoff_min=1.0, backoff_max=4.0)
    opts.update(kw)
    return ConnectionPool(**opts)


def fill(conn: UpstreamConnection, n: int) -> None:
    for i in range(n):
        q = query_wire(f"q{i}.")
        conn.send(q, question_key(q), object(), 0.0)


def test_pool_reuses_then_spreads_then_limits() -> None:
    pool = new_pool()                                 # 2 connections, 3 in flight, spread 2
    first, new = pool.choose(0.0)  # type: ignore[misc]
    assert new
    first.connected(0.0)
    fill(first, 1)
    first.data_to_send()                              # the loop iteration's write
    assert pool.choose(0.0) == (first, False)         # 1 in flight < spread: reuse
    fill(first, 1)
    first.data_to_send()
    second, new = pool.choose(0.0)  # type: ignore[misc]
    assert new and second is not first                # 2 in flight == spread: open another
    second.connected(0.0)
    fill(second, 3)
    assert pool.choose(0.0) == (first, False)         # at the limit: least busy with room
    fill(first, 1)
    assert pool.choose(0.0) is None                   # both full, at the connection limit


def test_pool_keeps_one_iterations_queries_on_one_connection() -> None:
    """Queries not yet written share the connection up to max_in_flight (one write
    for them all); once written, the spread picks the least busy connection again."""
    pool = new_pool(max_in_flight=4, spread=1)
    first, _ = pool.choose(0.0)  # type: ignore[misc]
    first.connected(0.0)
    for _ in range(4):
        assert pool.choose(0.0) == (first, False)     # over the spread, not yet written
        fill(first, 1)
    second, new = pool.choose(0.0)  # type: ignore[misc]
    assert new and second is not first               # first is full
    second.connected(0.0)
    fill(second, 1)
    second.data_to_send()
    third = pool.choose(0.0)
    assert third == (second, False)                   # least busy, below max_in_flight
    fill(second, 1)
    assert pool.choose(0.0) == (second, False)        # its query has not left yet


def test_pool_connecting_takes_burst() -> None:
    pool = new_pool(spread=1)
    conn, new = pool.choose(0.0)  # type: ignore[misc]
    fill(conn, 2)
    assert pool.choose(0.0) == (conn, False)


def test_pool_backoff_after_connect_failures() -> None:
    pool = new_pool()
    conn, _ = pool.choose(0.0)  # type: ignore[misc]
    fill(conn, 1)
    ev = pool.connect_failed(conn, 0.0, "refused")
    assert ev is not None and len(ev.failed) == 1
    pool.reap(0.0)
    assert pool.choose(0.5) == Backoff(1.0)
    conn, new = pool.choose(1.0)  # type: ignore[misc]
    assert new
    pool.connect_failed(conn, 1.0)
    assert pool.choose(2.5) == Backoff(3.0)          # doubled
    conn, _ = pool.choose(3.0)  # type: ignore[misc]
    pool.connect_succeeded()
    conn.connected(3.0)
    assert pool.choose(3.0) == (conn, False)


def test_pool_rotates_at_max_age() -> None:
    pool = new_pool(max_age=10.0)
    old, _ = pool.choose(0.0)  # type: ignore[misc]
    old.connected(0.0)
    fill(old, 1)
    fresh, new = pool.choose(10.0)  # type: ignore[misc]
    assert new and fresh is not old and old.state is ConnState.DRAINING


def test_pool_reap() -> None:
    pool = new_pool(expire=5.0)
    conn, _ = pool.choose(0.0)  # type: ignore[misc]
    conn.connected(0.0)
    assert pool.reap(1.0) == []
    (closed, ev), = pool.reap(6.0)
    assert closed is conn and ev.reason is ConnEvent.IDLE and pool.connections == []


def test_idle_timer_when_max_age() -> None:
    conn = new_conn(max_age=5.0, expire=10.0)
    conn.connected(0.0)
    assert conn.get_timer() == 5.0


def test_frame_prefix() -> None:
    assert frame(QUERY)[:2] == struct.pack("!H", len(QUERY))


def test_pool_fast_path_respects_in_flight_limit() -> None:
    pool = new_pool(spread=8, max_in_flight=2, max_connections=1)
    conn, _ = pool.choose(0.0)  # type: ignore[misc]
    conn.connected(0.0)
    fill(conn, 1)
    assert pool.choose(0.0) == (conn, False)
    fill(conn, 1)
    assert pool.choose(0.0) is None                   # full: the fast path must not pick it


def test_timeout_while_connecting_fails_queued_queries() -> None:
    conn = new_conn()
    qa, qb = query_wire("a."), query_wire("b.")
    ida = conn.send(qa, question_key(qa), "a", 0.0)
    conn.send(qb, question_key(qb), "b", 0.0)
    ev = conn.give_up(ida, 2.0, timed_out=True)
    assert ev is not None and ev.reason is ConnEvent.QUERY_TIMEOUT and ev.failed == ("b",)
    assert conn.state is ConnState.CLOSED


def test_cancel_does_not_drain() -> None:
    conn = new_conn()
    conn.connected(0.0)
    q = query_wire("a.")
    qid = conn.send(q, question_key(q), "a", 0.0)
    assert conn.give_up(qid, 1.0, timed_out=False) is None
    assert conn.state is ConnState.OPEN


@pytest.mark.parametrize("asked, answered, rdtype, same", [
    ("a.example.", "A.EXAMPLE.", "A", True),      # names compare case-insensitively
    ("a.example.", "b.example.", "A", False),
    ("a.example.", "a.example.", "AAAA", False),  # the type is part of the question
])
def test_same_question(asked: str, answered: str, rdtype: str, same: bool) -> None:
    query = dns.message.make_query(asked, "A").to_wire()
    answer = dns.message.make_response(dns.message.make_query(answered, rdtype)).to_wire()
    key = question_key(query)
    assert key is not None and same_question(answer, key) is same
