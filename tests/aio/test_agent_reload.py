"""Reload: the loader returns new Corefile text; new settings apply, broken text keeps the old."""
from __future__ import annotations

import asyncio
import gc
import logging

import dns.rcode
import pytest

from nodecache.aio.agent import collect_garbage
from nodecache.core.cache import BlockCache
from tests.kit.agentkit import AgentKit, handler_of, total
from tests.kit.answers import rcode_text, ttls
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, loop_errors
from tests.kit.queries import make_query

METRICS = "prometheus 127.0.0.1:9153"

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")

RECORDS_A = {"a.example. A": "192.0.2.1", "b.example. A": "192.0.2.1"}
RECORDS_B = {"a.example. A": "192.0.2.2", "b.example. A": "192.0.2.2"}


async def test_new_upstream_applies_and_port_stays() -> None:
    async with FakeUpstream(records=RECORDS_A) as one, FakeUpstream(records=RECORDS_B) as two, \
            AgentKit(corefile(one.port, METRICS)) as kit:
        port = kit.port
        assert str((await kit.query("a.example.")).answer[0][0]) == "192.0.2.1"
        kit.corefile = corefile(two.port, METRICS)
        assert await kit.agent.reload()
        assert kit.port == port
        assert str((await kit.query("b.example.")).answer[0][0]) == "192.0.2.2"
        assert [q.qname for q in two.queries] == ["b.example."]
        assert [q.qname for q in one.queries] == ["a.example."]


# (id, Corefile text or a function of the upstream port)
BROKEN = [
    ("syntax", lambda port: ". {\n cache 30\n"),
    ("unknown plugin", lambda port: f". {{\n cache 30\n forward . 127.0.0.1:{port}\n rewrite x\n}}\n"),
    ("bad value", lambda port: f". {{\n cache 0\n forward . 127.0.0.1:{port}\n}}\n"),
    ("unsupported option", lambda port: f". {{\n forward . 127.0.0.1:{port} {{\n tls a b c\n }}\n}}\n"),
    ("empty", lambda port: ""),
]


@pytest.mark.parametrize("broken", [b[1] for b in BROKEN], ids=[b[0] for b in BROKEN])
async def test_broken_corefile_keeps_the_running_config(broken, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    async with FakeUpstream(records=RECORDS_A) as up, AgentKit(corefile(up.port, METRICS)) as kit:
        await kit.query("a.example.")
        runtime = kit.agent.runtime
        kit.corefile = broken(up.port)
        assert not await kit.agent.reload()
        assert kit.agent.runtime is runtime
        assert "keeping the running configuration" in caplog.text
        # Still serving: from the cache and through the old forwarder.
        assert rcode_text(await kit.query("a.example.")) == "NOERROR"
        assert rcode_text(await kit.query("b.example.")) == "NOERROR"
        assert len(up.queries) == 2
        samples = await kit.metrics()
        assert total(samples, "coredns_reload_failed_total") == 1


@pytest.mark.parametrize("change", ["log", "errors", "forward option"])
async def test_cache_survives_when_cache_settings_unchanged(change: str) -> None:
    async with FakeUpstream(records=RECORDS_A) as up, AgentKit(corefile(up.port, METRICS)) as kit:
        await kit.query("a.example.")
        if change == "forward option":
            kit.corefile = corefile(up.port, METRICS).replace(
                f"forward . 127.0.0.1:{up.port}", f"forward . 127.0.0.1:{up.port} {{\n max_fails 5\n }}")
        else:
            kit.corefile = corefile(up.port, METRICS, change)
        assert await kit.agent.reload()
        reply = await kit.query("a.example.")
        assert rcode_text(reply) == "NOERROR"
        assert len(up.queries) == 1  # answered from the kept cache
        assert handler_of(kit).index
        # answers stored after the reload are hits too (the kept cache fills the new index)
        for _ in range(2):
            assert rcode_text(await kit.query("b.example.")) == "NOERROR"
        assert [q.qname for q in up.queries] == ["a.example.", "b.example."]


async def test_cache_dropped_when_cache_settings_change() -> None:
    async with FakeUpstream(records=RECORDS_A) as up, AgentKit(corefile(up.port, METRICS)) as kit:
        assert ttls(await kit.query("a.example.")) == [30]
        kit.corefile = corefile(up.port, METRICS, cache="cache 10")
        assert await kit.agent.reload()
        reply = await kit.query("a.example.")
        assert ttls(reply) == [10]  # the new maximum applies
        assert len(up.queries) == 2


def live_caches() -> int:
    """The BlockCaches alive, frozen ones included. Compiled, they take no weak references:
    counted among the collector's objects, thawed for the count (which frees nothing)."""
    gc.unfreeze()
    try:
        return sum(type(o) is BlockCache for o in gc.get_objects())
    finally:
        gc.freeze()


async def test_a_dropped_cache_is_freed_though_frozen() -> None:
    # A dropped cache and its entries point at each other: only a collection frees them,
    # and the collector's pass froze them while they were alive.
    async with FakeUpstream(records=RECORDS_A) as up, \
            AgentKit(corefile(up.port, "reload 2s"), watch_interval=0.05) as kit:
        await kit.query("a.example.")
        runtime = kit.agent.runtime
        assert runtime is not None
        old = id(runtime)
        del runtime
        collect_garbage(False)  # a periodic pass, with the answer stored
        alive = live_caches()  # the running one (and any of other tests, alive or frozen)
        kit.corefile = corefile(up.port, "reload 2s", cache="cache 10")
        for _ in range(100):  # the reload loop picks the change up within 0.05 s
            await asyncio.sleep(0.05)
            if id(kit.agent.runtime) != old and live_caches() == alive:
                break
        assert id(kit.agent.runtime) != old
        assert live_caches() == alive  # the new cache in, the dropped one freed
        assert ttls(await kit.query("a.example.")) == [10]  # served by the new cache


async def test_unchanged_text_is_a_no_op() -> None:
    async with FakeUpstream(records=RECORDS_A) as up, AgentKit(corefile(up.port, METRICS)) as kit:
        runtime = kit.agent.runtime
        assert await kit.agent.reload()
        assert kit.agent.runtime is runtime


async def test_new_block_served_after_reload() -> None:
    async with FakeUpstream(records=RECORDS_A) as up, \
            FakeUpstream(records={"x.cluster.local. A": "10.0.0.1"}) as cluster, \
            AgentKit(corefile(up.port, METRICS)) as kit:
        text = corefile(up.port, METRICS).replace(". {", "example {")
        kit.corefile = text
        assert await kit.agent.reload()
        assert rcode_text(await kit.query("x.cluster.local.")) == "REFUSED"
        kit.corefile = text + f"cluster.local {{\n forward . 127.0.0.1:{cluster.port}\n}}\n"
        assert await kit.agent.reload()
        reply = await kit.query("x.cluster.local.")
        assert reply.rcode() == dns.rcode.NOERROR
        assert str(reply.answer[0][0]) == "10.0.0.1"


async def test_reload_then_broken_then_good() -> None:
    async with FakeUpstream(records=RECORDS_A) as one, FakeUpstream(records=RECORDS_B) as two, \
            AgentKit(corefile(one.port, METRICS)) as kit:
        kit.corefile = "garbage {"
        assert not await kit.agent.reload()
        kit.corefile = corefile(two.port, METRICS)
        assert await kit.agent.reload()
        assert str((await kit.query("a.example.")).answer[0][0]) == "192.0.2.2"


async def test_failure_after_switching_listeners_switches_back() -> None:
    # The new config parses, but its metrics address cannot be bound: the listeners were
    # already pointed at the new handlers and must be pointed back at the old ones.
    async with FakeUpstream(records=RECORDS_A) as one, FakeUpstream(records=RECORDS_B) as two, \
            AgentKit(corefile(one.port, METRICS)) as kit:
        runtime = kit.agent.runtime
        kit.corefile = corefile(two.port, METRICS).replace("prometheus 127.0.0.1:9153",
                                                  "prometheus 192.0.2.55:9153")
        assert not await kit.agent.reload()
        assert kit.agent.runtime is runtime
        reply = await kit.query("b.example.")
        assert rcode_text(reply) == "NOERROR"
        assert str(reply.answer[0][0]) == "192.0.2.1"
        assert not two.queries
        assert (await kit.http_get("/metrics"))[0] == 200


async def test_debug_logs_at_debug_level_until_a_reload_drops_it() -> None:
    root = logging.getLogger()
    before = root.level
    root.setLevel(logging.WARNING)
    try:
        async with FakeUpstream(records=RECORDS_A) as up, \
                AgentKit(corefile(up.port, METRICS, "debug")) as kit:
            assert root.level == logging.DEBUG  # process-wide, as CoreDNS
            kit.corefile = corefile(up.port, METRICS)
            assert await kit.agent.reload()
            assert root.level == logging.WARNING
    finally:
        root.setLevel(before)


async def test_timeouts_apply_to_the_open_listener_on_reload() -> None:
    async with FakeUpstream(records=RECORDS_A) as up, AgentKit(corefile(up.port, METRICS)) as kit:
        listener = kit.agent.listeners[("127.0.0.1", 0)]
        assert listener.tcp is not None and listener.tcp.timeouts is None  # the defaults
        kit.corefile = corefile(up.port, METRICS, "timeouts {\n  idle 1s\n }")
        assert await kit.agent.reload()
        assert kit.agent.listeners[("127.0.0.1", 0)] is listener  # same sockets
        assert listener.tcp.timeouts is not None and listener.tcp.timeouts.idle == 1.0
        client = await kit.tcp_client()
        try:
            await client.send(make_query("a.example."))
            assert await client.recv() is not None
            assert await client.closed_by_peer(3.0)  # 1 s idle, checked within 0.5 s
        finally:
            await client.close()
