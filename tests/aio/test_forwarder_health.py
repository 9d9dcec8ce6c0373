"""Forwarder health checks, policies, max_concurrent and shutdown, on loopback."""
from __future__ import annotations

import asyncio
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest

from nodecache.aio.forwarder import Forwarder
from nodecache.config.settings import Upstream
from nodecache.core.stats import ForwardStats
from nodecache.errors import ConcurrencyLimitError, UpstreamError
from tests.kit.fakeupstream import FakeUpstream, answer_from, loop_errors, make_answer  # noqa: F401
from tests.kit.forwarderkit import forwarder, quick
from tests.kit.queries import query_wire

ok = answer_from({"a.example. A": "192.0.2.1"})


fast = quick(try_timeout=0.1, budget=0.25, health_check=0.03)


async def until(cond: Any, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    assert cond()


def probes(up: FakeUpstream) -> list:
    return [q for q in up.queries if q.qtype == "NS"]


class Switch:
    """A handler that drops everything while ``down``."""

    def __init__(self, down: bool = False) -> None:
        self.down = down

    def __call__(self, query: dns.message.Message, proto: str) -> Any:
        return None if self.down else ok(query, proto)


async def test_down_then_back(loop_errors: list) -> None:
    switch = Switch(down=True)
    async with FakeUpstream(switch) as up:
        fwd, stats = await forwarder(fast(up.upstream, max_fails=2))
        health = fwd._upstreams[0].health if fwd._upstreams else None
        try:
            with pytest.raises(UpstreamError):
                await fwd.query(query_wire("a.example."), tcp=False)
            health = fwd._upstreams[0].health
            await until(lambda: health.is_down(2))          # more than 2 failed checks
            name = str(up.upstream)
            assert stats.healthcheck_failures[name] >= 3
            switch.down = False
            await until(lambda: health.fails == 0 and not health.checking)
            msg = dns.message.from_wire(await fwd.query(query_wire("a.example."), tcp=False))
            assert msg.answer[0][0].to_text() == "192.0.2.1"
            failures = stats.healthcheck_failures[name]
            await asyncio.sleep(0.1)
            assert stats.healthcheck_failures[name] == failures   # checks stopped
        finally:
            await fwd.close()


# (settings, expected RD, expected name, expected proto)
PROBE_CASES = [
    ({}, True, ".", "udp"),
    ({"health_check_no_rec": True}, False, ".", "udp"),
    ({"health_check_domain": "cluster.local."}, True, "cluster.local.", "udp"),
    ({"force_tcp": True}, True, ".", "tcp"),
]


@pytest.mark.parametrize("opts,rd,name,proto", PROBE_CASES)
async def test_probe_shape(opts: dict, rd: bool, name: str, proto: str, loop_errors: list) -> None:
    async with FakeUpstream(lambda q, p: None if q.question[0].rdtype == 1 else ok(q, p)) as up:
        fwd, _ = await forwarder(fast(up.upstream, **opts))
        try:
            with pytest.raises(UpstreamError):
                await fwd.query(query_wire("a.example."), tcp=False)
            await until(lambda: probes(up))
            probe = probes(up)[0]
            assert probe.qname == name and probe.proto == proto
            assert bool(probe.message.flags & dns.flags.RD) is rd
        finally:
            await fwd.close()


async def test_any_rcode_is_healthy(loop_errors: list) -> None:
    def handler(query: dns.message.Message, proto: str) -> Any:
        if query.question[0].rdtype == dns.rdatatype.NS:
            return make_answer(query, rcode=dns.rcode.REFUSED)
        return None

    async with FakeUpstream(handler) as up:
        fwd, stats = await forwarder(fast(up.upstream))
        try:
            with pytest.raises(UpstreamError):
                await fwd.query(query_wire("a.example."), tcp=False)
            await until(lambda: probes(up) and not fwd._upstreams[0].health.checking)
            assert stats.healthcheck_failures == {}
        finally:
            await fwd.close()


async def test_max_fails_zero_never_checks(loop_errors: list) -> None:
    async with FakeUpstream(lambda q, p: None) as up:
        fwd, stats = await forwarder(fast(up.upstream, max_fails=0))
        try:
            for _ in range(2):
                with pytest.raises(UpstreamError):
                    await fwd.query(query_wire("a.example."), tcp=False)
            await asyncio.sleep(0.1)
            assert probes(up) == [] and stats.healthcheck_failures == {}
            assert stats.healthcheck_broken == 0
        finally:
            await fwd.close()


async def test_down_upstream_skipped(loop_errors: list) -> None:
    async with FakeUpstream(lambda q, p: None) as bad, FakeUpstream(ok) as good:
        fwd, stats = await forwarder(fast(bad.upstream, good.upstream, policy="sequential",
                                          max_fails=1, budget=1.0))
        try:
            await fwd.query(query_wire("a.example."), tcp=False)     # bad times out, good answers
            await until(lambda: fwd._upstreams[0].health.is_down(1))
            before = len(bad.queries_by("udp"))
            for _ in range(5):
                await fwd.query(query_wire("a.example."), tcp=False)
            tried = [q for q in bad.queries[before:] if q.qtype == "A"]
            assert tried == []                                       # skipped while down
            assert stats.healthcheck_broken == 0
        finally:
            await fwd.close()


async def test_all_down_failfast(loop_errors: list) -> None:
    """failfast_all_unhealthy_upstreams: SERVFAIL at once, nothing sent upstream."""
    switch = Switch(down=True)
    async with FakeUpstream(switch) as a, FakeUpstream(switch) as b:
        fwd, stats = await forwarder(fast(a.upstream, b.upstream, max_fails=1,
                                          failfast_all_unhealthy=True))
        try:
            with pytest.raises(UpstreamError):
                await fwd.query(query_wire("a.example."), tcp=False)
            await until(lambda: all(u.health.is_down(1) for u in fwd._upstreams))
            sent = len(a.queries) + len(b.queries)
            loop = asyncio.get_running_loop()
            began = loop.time()
            with pytest.raises(UpstreamError, match="all upstreams unhealthy"):
                await fwd.query(query_wire("b.example."), tcp=False)
            assert loop.time() - began < 0.05
            assert not [q for q in a.queries + b.queries if q.qname == "b.example."]
            assert stats.healthcheck_broken == 0 and len(a.queries) + len(b.queries) - sent < 4
        finally:
            await fwd.close()


async def test_all_down_tries_one_anyway(loop_errors: list) -> None:
    switch = Switch(down=True)
    async with FakeUpstream(switch) as a, FakeUpstream(switch) as b:
        fwd, stats = await forwarder(fast(a.upstream, b.upstream, max_fails=1))
        try:
            with pytest.raises(UpstreamError):
                await fwd.query(query_wire("a.example."), tcp=False)
            await until(lambda: all(u.health.is_down(1) for u in fwd._upstreams))
            switch.down = False     # answers again, but the probes have not noticed yet
            msg = dns.message.from_wire(await fwd.query(query_wire("a.example."), tcp=False))
            assert msg.rcode() == dns.rcode.NOERROR
            assert stats.healthcheck_broken >= 1
        finally:
            await fwd.close()


@pytest.mark.parametrize("policy", ["round_robin", "sequential", "random"])
async def test_policies(policy: str, loop_errors: list) -> None:
    async with FakeUpstream(ok) as a, FakeUpstream(ok) as b, FakeUpstream(ok) as c:
        fwd, _ = await forwarder(fast(a.upstream, b.upstream, c.upstream, policy=policy))
        try:
            for _ in range(30):
                await fwd.query(query_wire("a.example."), tcp=False)
            counts = [len(u.queries) for u in (a, b, c)]
            if policy == "round_robin":
                assert counts == [10, 10, 10]
            elif policy == "sequential":
                assert counts == [30, 0, 0]
            else:
                assert all(n > 0 for n in counts) and sum(counts) == 30
        finally:
            await fwd.close()


async def test_failover_to_next_upstream(loop_errors: list) -> None:
    async with FakeUpstream(lambda q, p: None) as bad, FakeUpstream(ok) as good:
        fwd, stats = await forwarder(fast(bad.upstream, good.upstream, policy="sequential",
                                          budget=1.0))
        try:
            await fwd.query(query_wire("a.example."), tcp=False)
            assert stats.requests[str(bad.upstream)] == 1
            assert stats.answer_durations()[(str(good.upstream), "NOERROR")].count == 1
        finally:
            await fwd.close()


async def test_max_concurrent(loop_errors: list) -> None:
    gate = asyncio.Event()

    async def handler(query: dns.message.Message, proto: str) -> Any:
        await gate.wait()
        return ok(query, proto)

    async with FakeUpstream(handler) as up:
        fwd, stats = await forwarder(fast(up.upstream, max_concurrent=2, try_timeout=1.0,
                                          budget=2.0))
        try:
            first = [asyncio.ensure_future(fwd.query(query_wire("a.example."), tcp=False))
                     for _ in range(2)]
            await until(lambda: len(up.queries) == 2)
            with pytest.raises(ConcurrencyLimitError):
                await fwd.query(query_wire("a.example."), tcp=False)
            assert stats.max_concurrent_rejects == 1
            gate.set()
            await asyncio.gather(*first)
            await fwd.query(query_wire("a.example."), tcp=False)    # room again
            assert stats.healthcheck_failures == {} and not probes(up)
        finally:
            await fwd.close()


async def test_close_leaves_nothing_behind(loop_errors: list) -> None:
    def handler(query: dns.message.Message, proto: str) -> Any:
        return None if query.question[0].name.to_text() == "stuck." else ok(query, proto)

    async with FakeUpstream(handler) as up:
        before = asyncio.all_tasks()
        fwd, _ = await forwarder(fast(up.upstream, budget=5.0, try_timeout=2.0))
        await fwd.query(query_wire("a.example."), tcp=True)        # a pooled connection
        pending = [asyncio.ensure_future(fwd.query(query_wire("stuck."), tcp=t))
                   for t in (False, True)]
        await until(lambda: len(up.queries) >= 3)
        await fwd.close()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 1.0)
        assert all(isinstance(r, UpstreamError) for r in results)
        await fwd.close()                                          # idempotent
        await asyncio.sleep(0.05)
        assert asyncio.all_tasks() - before - {asyncio.current_task()} == set()
        assert fwd._tasks == set()
        assert all(not u.protocols and not u.pool.connections for u in fwd._upstreams)
        await until(lambda: up.open_tcp_connections == 0)
        with pytest.raises(UpstreamError):
            await fwd.query(query_wire("a.example."), tcp=False)


async def test_close_without_start() -> None:
    fwd = Forwarder(fast(Upstream("127.0.0.1", 53)), ForwardStats("s", "."))
    await fwd.close()
    await fwd.close()


async def test_context_manager(loop_errors: list) -> None:
    async with FakeUpstream(ok) as up:
        async with Forwarder(fast(up.upstream), ForwardStats("s", ".")) as fwd:
            await fwd.query(query_wire("a.example."), tcp=True)
        assert fwd._tasks == set()
