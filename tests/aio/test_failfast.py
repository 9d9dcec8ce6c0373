"""What a pod sees when the cluster DNS refuses or stays silent (real sockets, loopback).

* Refused (nothing listens: TCP RST to the SYN, or ICMP port unreachable on
  UDP): SERVFAIL at once, first query included, over either transport; the
  reference node-cache takes about 1 s for the first (until its health checks
  mark the upstream down) and about 25 ms after.
* Silent (every packet dropped): SERVFAIL within the forward budget, before
  the 5 s a glibc or musl client waits by default.

Times are measured with the real defaults (try timeout, budget) and asserted
with wide margins; each test prints what it measured.
"""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from nodecache.config.settings import ForwardSettings
from tests.kit.agentkit import AgentKit
from tests.kit.answers import rcode_text
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, loop_errors, make_answer
from tests.kit.refnodecache import closed_port, free_port, node_cache

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")

#: The shipped defaults, not the short ones AgentKit uses for other tests.
DEFAULTS = {"try_timeout": ForwardSettings.try_timeout, "budget": ForwardSettings.budget}
#: A client's default timeout (glibc, musl), s.
CLIENT_TIMEOUT = 5.0
#: Both caches bind 127.0.0.1 (AgentKit then picks a free port) and log errors.
PLUGINS = ("errors", "bind 127.0.0.1")


async def timed_queries(ask, names: list[str]) -> list[tuple[str, float]]:
    """(rcode, seconds) per name, one after another."""
    out = []
    for name in names:
        began = time.monotonic()
        reply = await ask(name)
        out.append((rcode_text(reply) if reply is not None else "none", time.monotonic() - began))
    return out


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_refused_upstream_servfail_at_once(transport: str, tmp_path: Path) -> None:
    closed = closed_port()
    options = "force_tcp" if transport == "tcp" else ""
    names = [f"n{i}.example." for i in range(4)]
    async with AgentKit(corefile(f"127.0.0.1:{closed}", *PLUGINS, forward_options=options),
                        forward_overrides=DEFAULTS) as kit:
        ours = await timed_queries(lambda n: kit.query(n, tcp=transport == "tcp"), names)
    port = free_port()
    with node_cache(corefile(f"127.0.0.1:{closed}", *PLUGINS, forward_options=options,
                             server=f".:{port}"), tmp_path, port=port):
        async def ask(name: str) -> dns.message.Message:
            query = dns.message.make_query(name, "A")
            if transport == "tcp":
                return await dns.asyncquery.tcp(query, "127.0.0.1", port=port, timeout=10)
            return await dns.asyncquery.udp(query, "127.0.0.1", port=port, timeout=10)
        theirs = await timed_queries(ask, names)
    print(f"refused over {transport}: nodecache {[round(t, 3) for _, t in ours]} s,"
          f" node-cache {[round(t, 3) for _, t in theirs]} s")
    assert [r for r, _ in ours] == [r for r, _ in theirs] == ["SERVFAIL"] * len(names)
    # "At once": well before a try would time out, which is what a refusal
    # missed would cost. Half a try timeout is wide for a loaded machine (the first
    # query took 0.56 s beside two busy loops, 0.05 s unloaded).
    assert ours[0][1] < ForwardSettings.try_timeout / 2  # node-cache: about 1 s
    assert all(t < ForwardSettings.try_timeout / 4 for _, t in ours[1:])  # node-cache: ~25 ms
    assert ours[0][1] <= theirs[0][1] + 0.25


async def test_refused_upstream_fails_over_at_once() -> None:
    closed = closed_port()
    async with FakeUpstream(records={"a.example. A": "192.0.2.1"}) as up, \
            AgentKit(corefile(f"127.0.0.1:{closed} 127.0.0.1:{up.port}", *PLUGINS,
                              forward_options="policy sequential\n force_tcp"), forward_overrides=DEFAULTS) as kit:
        for name in ("a.example.", "b.example."):
            began = time.monotonic()
            reply = await kit.query(name, "A")
            took = time.monotonic() - began
            assert reply is not None and took < 0.5, (name, took)
        assert rcode_text(reply) == "NXDOMAIN"
        assert [q.qname for q in up.queries if q.qtype == "A"] == ["a.example.", "b.example."]


async def test_silent_upstream_servfail_before_the_client_gives_up() -> None:
    async with FakeUpstream(lambda q, p: None) as up, \
            AgentKit(corefile(f"127.0.0.1:{up.port}", *PLUGINS), forward_overrides=DEFAULTS) as kit:
        loop = asyncio.get_running_loop()
        began = loop.time()

        async def ask(name: str, tcp: bool) -> tuple[str, float]:
            reply = await kit.query(name, tcp=tcp, timeout=CLIENT_TIMEOUT)
            return (rcode_text(reply) if reply is not None else "none", loop.time() - began)

        results = await asyncio.gather(ask("u.example.", False), ask("t.example.", True))
    print(f"silent upstream: {results}")
    for rcode, took in results:
        assert rcode == "SERVFAIL"
        assert ForwardSettings.budget - 0.3 <= took < 4.0   # before the client's 5 s


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_answer_just_past_the_try_timeout_is_not_lost(transport: str) -> None:
    """A try that times out still takes its answer while the next try runs."""
    delay = ForwardSettings.try_timeout + 0.4

    async def late(query: dns.message.Message, proto: str) -> dns.message.Message:
        await asyncio.sleep(delay)
        return make_answer(query, ["192.0.2.7"])

    options = "force_tcp" if transport == "tcp" else ""
    async with FakeUpstream(late) as up, \
            AgentKit(corefile(f"127.0.0.1:{up.port}", *PLUGINS, forward_options=options), forward_overrides=DEFAULTS) as kit:
        began = time.monotonic()
        reply = await kit.query("late.example.", timeout=CLIENT_TIMEOUT)
        took = time.monotonic() - began
    assert rcode_text(reply) == "NOERROR" and str(reply.answer[0][0]) == "192.0.2.7"
    assert delay - 0.1 <= took < delay + 1.0
    # the second try went out; the first one answered (health-check probes aside)
    assert [q.qname for q in up.queries if q.qtype == "A"] == ["late.example."] * 2
