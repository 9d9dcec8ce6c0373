"""Misses over real sockets: upstream failure and recovery, bogus answers, coalescing,
max_concurrent, prefetch and serve_stale."""
from __future__ import annotations

import asyncio

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.kit.agentkit import AgentKit, handler_of, hit_at, total
from tests.kit.answers import rcode_text, ttls
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, answer_from, loop_errors, make_answer
from tests.kit.queries import make_query

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")

RECORDS = {"a.example. A": "192.0.2.1", "b.example. A": "192.0.2.2"}


async def wait_for(predicate, timeout: float = 2.0) -> None:
    """Poll ``predicate`` every 10 ms until it holds (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# -- failure and recovery ----------------------------------------------------------


@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_upstream_silent_then_back(tcp: bool) -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        good = up.handler
        up.handler = lambda q, p: None  # drop everything
        loop = asyncio.get_running_loop()
        began = loop.time()
        reply = await kit.query("a.example.", tcp=tcp)
        assert rcode_text(reply) == "SERVFAIL"
        assert loop.time() - began < kit.forward_overrides["budget"] + 0.5
        assert not handler_of(kit).index  # a synthesised SERVFAIL is not cached
        up.handler = good
        reply = await kit.query("a.example.", tcp=tcp)
        assert rcode_text(reply) == "NOERROR"
        assert str(reply.answer[0][0]) == "192.0.2.1"


async def test_upstream_gone_then_back() -> None:
    up = await FakeUpstream(records=RECORDS).start()
    port = up.port
    async with AgentKit(corefile(port)) as kit:
        assert rcode_text(await kit.query("a.example.")) == "NOERROR"
        await up.close()
        assert rcode_text(await kit.query("b.example.")) == "SERVFAIL"
        assert rcode_text(await kit.query("a.example.")) == "NOERROR"  # still cached
        # The same port again (bounded retries: another test may have taken it).
        back = None
        for _ in range(20):
            candidate = FakeUpstream(records=RECORDS)
            try:
                candidate.port = 0
                back = await _start_on(candidate, port)
                break
            except OSError:
                await asyncio.sleep(0.05)
        if back is None:
            pytest.skip("the upstream's port was taken meanwhile")
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 3.0
            while True:  # health checks may hold it down briefly; the agent tries anyway
                reply = await kit.query("b.example.")
                if rcode_text(reply) == "NOERROR" or loop.time() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert rcode_text(reply) == "NOERROR"
        finally:
            await back.close()


async def _start_on(fake: FakeUpstream, port: int) -> FakeUpstream:
    """Start ``fake`` on a given port (UDP and TCP) of 127.0.0.1."""
    import socket
    loop = asyncio.get_running_loop()
    tsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    usock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        tsock.bind(("127.0.0.1", port))
        usock.bind(("127.0.0.1", port))
    except OSError:
        tsock.close()
        usock.close()
        raise
    usock.setblocking(False)
    from tests.kit import fakeupstream
    fake._server = await asyncio.start_server(fake._serve_tcp, sock=tsock)
    _, fake._udp = await loop.create_datagram_endpoint(lambda: fakeupstream._UDP(fake), sock=usock)
    fake.port = port
    return fake


async def test_failover_to_second_upstream() -> None:
    async with FakeUpstream(lambda q, p: None) as dead, \
            FakeUpstream(records=RECORDS) as alive:
        text = (f". {{\n cache 30\n forward . 127.0.0.1:{dead.port} 127.0.0.1:{alive.port} "
                f"{{\n policy sequential\n }}\n}}\n")
        async with AgentKit(text, forward_overrides={"try_timeout": 0.2, "budget": 1.5}) as kit:
            reply = await kit.query("a.example.")
            assert rcode_text(reply) == "NOERROR"
            assert dead.queries and alive.queries


# -- answers that do not answer ----------------------------------------------------


def _wrong_id(q: dns.message.Message) -> dns.message.Message:
    reply = make_answer(q, ["203.0.113.66"])
    reply.id = (q.id + 1) & 0xFFFF
    return reply


def _wrong_name(q: dns.message.Message) -> dns.message.Message:
    other = dns.message.make_query("evil.example.", "A")
    other.id = q.id
    return make_answer(other, ["203.0.113.66"])


def _wrong_type(q: dns.message.Message) -> dns.message.Message:
    other = dns.message.make_query(q.question[0].name, "AAAA")
    other.id = q.id
    return make_answer(other, ["2001:db8::66"])


def _not_a_response(q: dns.message.Message) -> bytes:
    wire = bytearray(make_answer(q, ["203.0.113.66"]).to_wire())
    wire[2] &= 0x7F  # QR clear
    return bytes(wire)


BOGUS = [("wrong id", _wrong_id), ("wrong name", _wrong_name), ("wrong type", _wrong_type),
         ("QR clear", _not_a_response), ("garbage header", lambda q: q.id.to_bytes(2, "big") + b"\xff" * 20)]


@pytest.mark.parametrize("bogus", [b[1] for b in BOGUS], ids=[b[0] for b in BOGUS])
@pytest.mark.parametrize("force_tcp", [False, True], ids=["udp", "tcp"])
async def test_mismatched_answers_are_discarded(bogus, force_tcp: bool) -> None:
    good = answer_from(RECORDS)

    def handler(q: dns.message.Message, proto: str) -> list:
        if q.question[0].rdtype != dns.rdatatype.A:
            return good(q, proto)  # health checks
        return [bogus(q), good(q, proto)]  # the stray answer first

    options = "force_tcp" if force_tcp else ""
    async with FakeUpstream(handler) as up, AgentKit(corefile(up.port, forward_options=options)) as kit:
        for name, address in [("a.example.", "192.0.2.1"), ("b.example.", "192.0.2.2")]:
            reply = await kit.query(name)
            assert rcode_text(reply) == "NOERROR"
            assert [str(r) for r in reply.answer[0]] == [address]
        # The cache holds the right answers only.
        again = await kit.query("a.example.")
        assert [str(r) for r in again.answer[0]] == ["192.0.2.1"]


@pytest.mark.parametrize("bogus", [b[1] for b in BOGUS], ids=[b[0] for b in BOGUS])
async def test_only_mismatched_answers_give_servfail(bogus) -> None:
    good = answer_from(RECORDS)

    def handler(q: dns.message.Message, proto: str):  # type: ignore[no-untyped-def]
        return bogus(q) if q.question[0].rdtype == dns.rdatatype.A else good(q, proto)

    async with FakeUpstream(handler) as up, AgentKit(corefile(up.port)) as kit:
        reply = await kit.query("a.example.")
        assert rcode_text(reply) == "SERVFAIL"
        assert not reply.answer


# -- coalescing ----------------------------------------------------------------------


async def test_identical_concurrent_misses_coalesce() -> None:
    async with FakeUpstream(records=RECORDS, delay=0.2) as up, AgentKit(corefile(up.port)) as kit:
        names = ["a.example.", "A.example.", "a.EXAMPLE.", "A.EXAMPLE."] * 5
        queries = [make_query(name, qid=i) for i, name in enumerate(names)]
        replies = await asyncio.gather(*(kit.ask(q, tcp=i % 2 == 1) for i, q in enumerate(queries)))
        assert len(up.queries) == 1
        for query, reply in zip(queries, replies):
            assert reply is not None
            assert reply.id == query.id
            assert reply.question[0].name.to_text() == query.question[0].name.to_text()
            assert str(reply.answer[0][0]) == "192.0.2.1"


async def test_coalesced_failure_reaches_every_waiter() -> None:
    async with FakeUpstream(lambda q, p: None) as up, AgentKit(corefile(up.port)) as kit:
        replies = await asyncio.gather(*(kit.query("a.example.", qid=i) for i in range(10)))
        assert {rcode_text(r) for r in replies} == {"SERVFAIL"}
        assert sorted(r.id for r in replies) == list(range(10))
        asked = [q for q in up.queries if q.qname == "a.example."]
        assert len(asked) <= 2  # one query (and at most one retry), not one per client


async def test_different_keys_do_not_coalesce() -> None:
    async with FakeUpstream(records=RECORDS, delay=0.1) as up, AgentKit(corefile(up.port)) as kit:
        await asyncio.gather(kit.query("a.example."), kit.query("a.example.", dnssec=True),
                             kit.query("a.example.", "AAAA"), kit.query("b.example."))
        assert len(up.queries) == 4


# -- max_concurrent -----------------------------------------------------------------


async def test_max_concurrent_refuses_the_excess() -> None:
    names = [f"n{i}.example." for i in range(8)]
    records = {f"{n} A": "192.0.2.9" for n in names}
    async with FakeUpstream(records=records, delay=0.3) as up, \
            AgentKit(corefile(up.port, "prometheus 127.0.0.1:9153",
                              forward_options="max_concurrent 3")) as kit:
        replies = await asyncio.gather(*(kit.query(n) for n in names))
        codes = [rcode_text(r) for r in replies]
        assert codes.count("NOERROR") == 3
        assert codes.count("REFUSED") == 5
        assert len(up.queries) == 3
        samples = await kit.metrics()
        assert total(samples, "coredns_forward_max_concurrent_rejects_total") == 5
        # Once they are done, there is room again.
        assert rcode_text(await kit.query(names[-1])) == "NOERROR"


# -- prefetch -------------------------------------------------------------------------


async def test_prefetch_refreshes_before_expiry() -> None:
    # prefetch 1 1m 50%: any hit with half the TTL or less left refreshes in the background.
    counter = iter(range(1, 100))

    def handler(q: dns.message.Message, proto: str) -> dns.message.Message:
        return make_answer(q, [f"192.0.2.{next(counter)}"], ttl=10)

    async with FakeUpstream(handler) as up, \
            AgentKit(corefile(up.port, "prometheus 127.0.0.1:9153",
                              cache="cache 30 {\n prefetch 1 1m 50%\n }")) as kit:
        first = await kit.query("a.example.")
        assert str(first.answer[0][0]) == "192.0.2.1"
        handler = handler_of(kit)
        entry = next(iter(handler.index.values()))
        wire = make_query("a.example.").to_wire()
        up.delay = 0.2
        # With more than half the TTL left: a plain hit.
        assert isinstance(hit_at(kit, wire, entry.stored + 4.9), bytes)
        await asyncio.sleep(0.05)
        assert len(up.queries) == 1
        # Half or less left: the hit is answered from the cache and a refresh goes out.
        reply = hit_at(kit, wire, entry.stored + 5.0)
        assert isinstance(reply, bytes)
        assert ttls(dns.message.from_wire(reply)) == [5]
        await wait_for(lambda: len(up.queries) == 2)
        # Only one refresh at a time (the upstream is slow now: it is still in flight).
        hit_at(kit, wire, entry.stored + 5.1)
        await wait_for(lambda: next(iter(handler.index.values())) is not entry)
        fresh = next(iter(handler.index.values()))
        assert fresh.stored > entry.stored
        assert len(up.queries) == 2
        reply = await kit.query("a.example.")
        assert str(reply.answer[0][0]) == "192.0.2.2"
        assert ttls(reply) == [10]
        assert up.queries[-1].proto == "udp" or up.queries[-1].proto == "tcp"
        samples = await kit.metrics()
        assert total(samples, "coredns_cache_prefetch_total") == 1


# -- serve_stale ----------------------------------------------------------------------


def _numbered(ttl: int = 1):
    counter = iter(range(1, 100))

    def handler(q: dns.message.Message, proto: str) -> dns.message.Message:
        return make_answer(q, [f"192.0.2.{next(counter)}"], ttl=ttl)

    return handler


SHORT = "cache 30 {{\n success 100 30 1\n serve_stale 1h {mode}\n }}"


async def _expire(kit: AgentKit) -> None:
    """Wait until the one cached entry has expired (its TTL is 1 s)."""
    entry = next(iter(handler_of(kit).index.values()))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(max(entry.expires - loop.time(), 0) + 0.02)


async def test_serve_stale_immediate() -> None:
    async with FakeUpstream(_numbered()) as up, \
            AgentKit(corefile(up.port, "prometheus 127.0.0.1:9153",
                              cache=SHORT.format(mode="immediate"))) as kit:
        first = await kit.query("a.example.")
        assert ttls(first) == [1]
        await _expire(kit)
        up.delay = 0.3  # the refresh is slow: the stale answer must not wait for it
        loop = asyncio.get_running_loop()
        began = loop.time()
        stale = await kit.query("a.example.")
        assert loop.time() - began < 0.2
        assert str(stale.answer[0][0]) == "192.0.2.1"
        assert ttls(stale) == [0]
        await wait_for(lambda: len(up.queries) == 2)
        await wait_for(lambda: next(iter(handler_of(kit).index.values())).expires > loop.time())
        fresh = await kit.query("a.example.")
        assert str(fresh.answer[0][0]) == "192.0.2.2"
        samples = await kit.metrics()
        assert total(samples, "coredns_cache_served_stale_total") == 1


async def test_serve_stale_immediate_with_upstream_down() -> None:
    async with FakeUpstream(_numbered()) as up, \
            AgentKit(corefile(up.port, cache=SHORT.format(mode="immediate"))) as kit:
        await kit.query("a.example.")
        await _expire(kit)
        up.handler = lambda q, p: None
        for _ in range(3):
            stale = await kit.query("a.example.")
            assert str(stale.answer[0][0]) == "192.0.2.1"
            assert ttls(stale) == [0]
        # One refresh in flight at a time, not one per stale answer.
        await asyncio.sleep(0.05)
        assert len({q.at for q in up.queries[1:]}) <= 2


@pytest.mark.parametrize("failure", ["silent", "servfail"])
async def test_serve_stale_verify_falls_back_to_stale(failure: str) -> None:
    async with FakeUpstream(_numbered()) as up, \
            AgentKit(corefile(up.port, cache=SHORT.format(mode="verify")),
                     forward_overrides={"try_timeout": 0.2, "budget": 0.4}) as kit:
        await kit.query("a.example.")
        await _expire(kit)
        if failure == "silent":
            up.handler = lambda q, p: None
        else:
            up.handler = lambda q, p: make_answer(q, rcode=dns.rcode.SERVFAIL)
        reply = await kit.query("a.example.")
        assert rcode_text(reply) == "NOERROR"
        assert str(reply.answer[0][0]) == "192.0.2.1"
        assert ttls(reply) == [0]
        # The stale entry is still there for the next client.
        again = await kit.query("a.example.")
        assert str(again.answer[0][0]) == "192.0.2.1"


async def test_serve_stale_verify_client_timer_with_slow_upstream() -> None:
    """RFC 8767 section 5: stale after the 1.8 s client-response timer; the refresh goes on."""
    numbered = _numbered(ttl=30)

    async def slow(q: dns.message.Message, proto: str) -> dns.message.Message:
        await asyncio.sleep(2.6)
        return numbered(q, proto)

    async with FakeUpstream(_numbered()) as up, \
            AgentKit(corefile(up.port, cache=SHORT.format(mode="verify")),
                     forward_overrides={"try_timeout": 3.0, "budget": 3.5}) as kit:
        await kit.query("a.example.")
        await _expire(kit)
        up.handler = slow
        loop = asyncio.get_running_loop()
        began = loop.time()
        first, second = await asyncio.gather(kit.query("a.example."), kit.query("a.example."))
        took = loop.time() - began
        assert 1.7 <= took < 2.4                    # the timer, not the upstream's 2.6 s
        for reply in (first, second):               # the coalesced follower too
            assert str(reply.answer[0][0]) == "192.0.2.1" and ttls(reply) == [0]
        # the refresh lands in the cache once the upstream answers
        await wait_for(lambda: next(iter(handler_of(kit).index.values())).expires
                       > loop.time() + 10, timeout=3.0)
        fresh = await kit.query("a.example.")
        assert str(fresh.answer[0][0]) == "192.0.2.1" and ttls(fresh)[0] > 1
        assert len(up.queries) == 2
