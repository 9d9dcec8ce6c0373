"""Several forward lines, ``next``, ``failover``, ``max_connect_attempts``: answers as node-cache's.

Each case is one Corefile and its questions; both servers forward to the same
fake upstreams on loopback, which answer differently (``A`` and ``B`` give
www.example.org different addresses), so the reply shows which forward took it.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from tests.kit.agentkit import AgentKit
from tests.kit.answers import rcode_text
from tests.kit.diffkit import Pair, Zone
from tests.kit.fakeupstream import FakeUpstream
from tests.kit.refnodecache import closed_port

SOA = "example.org. 60 IN SOA ns.example.org. hostmaster.example.org. 1 7200 3600 86400 60"
ZONE_A = {
    "www.example.org. A": ["www.example.org. 300 IN A 192.0.2.1"],
    "svc.example.net. A": ["svc.example.net. 300 IN A 198.51.100.1"],
}
ZONE_B = {
    "www.example.org. A": ["www.example.org. 300 IN A 192.0.2.2"],
    "gone.example.org. A": ["gone.example.org. 300 IN A 192.0.2.3"],
    "svc.example.net. A": ["svc.example.net. 300 IN A 198.51.100.2"],
    "other.test. A": ["other.test. 300 IN A 203.0.113.2"],
}
QUESTIONS = [("www.example.org.", "A"), ("gone.example.org.", "A"), ("svc.example.net.", "A"),
             ("other.test.", "A"), ("www.example.org.", "AAAA")]


def _servfail(query: dns.message.Message, proto: str) -> dns.message.Message:
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.SERVFAIL)
    return reply


def block(forwards: str) -> str:
    return f".:53 {{\n  bind 127.0.0.1\n  cache 30\n{forwards}}}\n"


CASES = {
    # the first forward whose FROM zone takes the name forwards it; the rest go on
    "by zone": block("  forward example.org A\n  forward . B\n"),
    # the order written decides, not the longest zone: '.' first takes everything
    "order decides": block("  forward . B\n  forward example.org A\n"),
    # a name no forward takes: SERVFAIL
    "none takes": block("  forward example.org A\n  forward example.net B\n"),
    # except: the name goes on to the next forward
    "except": block("  forward example.org A {\n    except www.example.org\n  }\n  forward . B\n"),
    # next NXDOMAIN: A's NXDOMAIN (gone.example.org, other.test) goes to B
    "next": block("  forward . A {\n    next NXDOMAIN\n  }\n  forward . B\n"),
    # next, but no later forward takes the name: SERVFAIL
    "next, none after": block("  forward . A {\n    next NXDOMAIN\n  }\n  forward example.net B\n"),
    # next on the last forward: its answer stands
    "next on the last": block("  forward example.net B\n  forward . A {\n    next NXDOMAIN\n  }\n"),
    # failover SERVFAIL: the failing upstream's answer is passed over for B's
    "failover": block("  forward . F B {\n    policy sequential\n    failover SERVFAIL\n  }\n"),
    # next SERVFAIL after a failing upstream: the next forward answers
    "next after failure": block("  forward . F {\n    next SERVFAIL\n  }\n  forward . B\n"),
}


@contextlib.asynccontextmanager
async def upstreams() -> AsyncIterator[dict[str, str]]:
    async with Zone(ZONE_A, SOA) as a, Zone(ZONE_B, SOA) as b, \
            FakeUpstream(handler=_servfail) as f:
        yield {"A": f"127.0.0.1:{a.port}", "B": f"127.0.0.1:{b.port}", "F": f"127.0.0.1:{f.port}"}


def fill(corefile: str, specs: dict[str, str]) -> str:
    for key, spec in specs.items():
        corefile = corefile.replace(f" {key}\n", f" {spec}\n").replace(f" {key} ", f" {spec} ")
    return corefile


@pytest.mark.parametrize("case", list(CASES))
async def test_forward_chain_matches_node_cache(case: str, tmp_path: Path) -> None:
    async with upstreams() as specs:
        async with Pair(fill(CASES[case], specs), tmp_path) as pair:
            for name, rdtype in QUESTIONS:
                await pair.check(name, rdtype)


@pytest.mark.parametrize("case", ["next", "failover", "next after failure"])
async def test_forward_chain_over_tcp_matches_node_cache(case: str, tmp_path: Path) -> None:
    async with upstreams() as specs:
        async with Pair(fill(CASES[case], specs), tmp_path) as pair:
            for name, rdtype in QUESTIONS[:4]:
                await pair.check(name, rdtype, tcp=True)


async def test_max_connect_attempts_matches_node_cache(tmp_path: Path) -> None:
    # The first upstream refuses (nothing listens); one failed try is all a query may
    # take, so it is SERVFAIL although B would answer. Without the cap B answers.
    refused = f"127.0.0.1:{closed_port()}"
    async with upstreams() as specs:
        capped = block(f"  forward . {refused} B {{\n    policy sequential\n"
                       "    max_connect_attempts 1\n  }\n")
        async with Pair(fill(capped, specs), tmp_path) as pair:
            reply = await pair.check("www.example.org.", "A", times=1)
            assert reply is not None and reply.rcode() == dns.rcode.SERVFAIL
        uncapped = block(f"  forward . {refused} B {{\n    policy sequential\n  }}\n")
        async with Pair(fill(uncapped, specs), tmp_path) as pair:
            reply = await pair.check("www.example.org.", "A", times=1)
            assert reply is not None and reply.rcode() == dns.rcode.NOERROR


async def test_failover_stops_once_each_upstream_answered() -> None:
    # Better than node-cache: CoreDNS 1.13.2 starts the list over and sends
    # queries until its 5 s deadline (thousands on loopback), then SERVFAIL.
    async with FakeUpstream(handler=_servfail) as a, FakeUpstream(handler=_servfail) as b:
        text = (f".:53 {{\n  forward . 127.0.0.1:{a.port} 127.0.0.1:{b.port} {{\n"
                "    policy sequential\n    failover SERVFAIL\n  }\n}\n")
        async with AgentKit(text) as kit:
            started = time.monotonic()
            reply = await kit.query("x.example.org.")
            assert rcode_text(reply) == "SERVFAIL"
            assert time.monotonic() - started < 1.5  # wide margin: loopback answers in ms
            assert (len(a.queries), len(b.queries)) == (1, 1)
