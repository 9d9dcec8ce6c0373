"""Metrics scraped over HTTP, /health and /ready, and the ``log``/``errors`` plugins' lines."""
from __future__ import annotations

import asyncio
import logging
import re

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from tests.kit.agentkit import AgentKit, total
from tests.kit.answers import rcode_text
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, loop_errors
from tests.kit.queries import make_query

ENDPOINTS = ("prometheus 127.0.0.1:9153", "health 127.0.0.1:8080", "ready 127.0.0.1:8181")

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")

RECORDS = {"a.example. A": "192.0.2.1", "b.example. A": "192.0.2.2"}


async def test_metrics_grow_with_traffic() -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port, *ENDPOINTS)) as kit:
        before = await kit.metrics()
        await kit.query("a.example.")  # miss (udp)
        await kit.query("a.example.")  # hit (udp)
        await kit.query("a.example.", tcp=True)  # hit (tcp)
        await kit.query("nx.example.")  # NXDOMAIN without SOA: not cached
        await kit.query("a.example.", "AAAA")  # NODATA without SOA: cached briefly
        after = await kit.metrics()

        def grew(name: str, **labels: str) -> float:
            return total(after, name, **labels) - total(before, name, **labels)

        assert grew("coredns_dns_requests_total") == 5
        assert grew("coredns_dns_requests_total", proto="udp") == 4
        assert grew("coredns_dns_requests_total", proto="tcp", family="1") == 1
        assert grew("coredns_dns_requests_total", type="AAAA") == 1
        assert grew("coredns_dns_responses_total") == 5
        assert grew("coredns_dns_responses_total", rcode="NOERROR") == 4
        assert grew("coredns_dns_responses_total", rcode="NXDOMAIN") == 1
        assert grew("coredns_dns_request_duration_seconds_count") == 5
        assert grew("coredns_cache_hits_total") == 2
        assert grew("coredns_cache_hits_total", type="success") == 2
        assert grew("coredns_cache_misses_total") == 3
        assert grew("coredns_cache_requests_total") == 5
        assert total(after, "coredns_cache_entries", type="success") == 2
        assert grew("coredns_forward_requests_total") == len(up.queries) == 3
        assert grew("coredns_forward_responses_total") == 3
        assert grew("coredns_forward_request_duration_seconds_count") == 3
        for name in ("coredns_cache_prefetch_total", "coredns_cache_served_stale_total",
                     "coredns_forward_max_concurrent_rejects_total"):
            assert any(sample == name for sample, _ in after), name
        # Scraping twice without traffic changes nothing.
        again = await kit.metrics()
        assert total(again, "coredns_dns_requests_total") == total(after, "coredns_dns_requests_total")


async def test_metrics_labels_match_coredns() -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port, *ENDPOINTS)) as kit:
        await kit.query("a.example.")
        samples = await kit.metrics()
        requests = [dict(have) for name, have in samples if name == "coredns_dns_requests_total"]
        assert requests and set(requests[0]) >= {"server", "zone", "proto", "family", "type"}
        assert requests[0]["zone"] == "."
        responses = [dict(have) for name, have in samples
                     if name == "coredns_dns_responses_total"]
        assert responses and set(responses[0]) >= {"server", "zone", "rcode", "plugin"}
        forward = [dict(have) for name, have in samples
                   if name == "coredns_forward_requests_total"]
        assert forward and forward[0].get("to") == f"127.0.0.1:{up.port}"


async def test_upstream_failures_counted() -> None:
    async with FakeUpstream(lambda q, p: None) as up, AgentKit(corefile(up.port, *ENDPOINTS)) as kit:
        before = await kit.metrics()
        assert rcode_text(await kit.query("a.example.")) == "SERVFAIL"
        after = await kit.metrics()
        assert (total(after, "coredns_dns_responses_total", rcode="SERVFAIL")
                - total(before, "coredns_dns_responses_total", rcode="SERVFAIL")) == 1
        assert up.queries
        # The failure starts health checks, which fail too (bounded wait).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.0
        while total(await kit.metrics(), "coredns_forward_healthcheck_failures_total",
                    to=f"127.0.0.1:{up.port}") == 0:
            assert loop.time() < deadline, "no health check failure counted"
            await asyncio.sleep(0.1)
        assert any(q.qname == "." and q.qtype == "NS" for q in up.queries)


async def test_health_and_ready() -> None:
    async with FakeUpstream(records=RECORDS) as up:
        kit = AgentKit(corefile(up.port, *ENDPOINTS, "health 127.0.0.1:8080 {\n lameduck 0.3s\n }")
                       .replace(" health 127.0.0.1:8080\n", "", 1))
        await kit.start()
        try:
            assert await kit.http_get("/health") == (200, b"OK")
            assert await kit.http_get("/ready") == (200, b"OK")
            assert (await kit.http_get("/nothing"))[0] == 404
        finally:
            stopping = asyncio.ensure_future(kit.close())
            await asyncio.sleep(0.1)
            # Lameduck: /ready fails at once, /health stays 200 (a liveness probe
            # must not kill a draining agent) and queries are still answered.
            assert (await kit.http_get("/ready"))[0] == 503
            assert await kit.http_get("/health") == (200, b"OK")
            assert rcode_text(await kit.query("a.example.")) == "NOERROR"
            await stopping


# CoreDNS: [INFO] {remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do}
# {>bufsize}" {rcode} {>rflags} {rsize} {duration}
LINE = re.compile(r'^\[INFO\] 127\.0\.0\.1:(\d+) - (\d+) "(\S+) IN (\S+) (udp|tcp) (\d+) '
                  r'(true|false) (\d+)" (\S+) ([a-z,]+) (\d+) (\d+\.\d+)s$')


async def test_log_plugin_lines(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nodecache.query")
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port, *ENDPOINTS, "log")) as kit:
        asked = [("a.example.", "A", False, {}), ("A.Example.", "A", False, {}),
                 ("a.example.", "A", True, {}), ("nx.example.", "AAAA", False,
                                                  {"dnssec": True, "payload": 1232})]
        expected = []
        for name, rdtype, tcp, kwargs in asked:
            query = make_query(name, rdtype, qid=len(expected) + 100, **kwargs)
            reply = await kit.ask(query, tcp=tcp)
            assert reply is not None
            expected.append((query, reply, tcp))
        lines = [r.getMessage() for r in caplog.records if r.name == "nodecache.query"]
        assert len(lines) == len(asked), lines
        for line, (query, reply, tcp) in zip(lines, expected):
            m = LINE.match(line)
            assert m, line
            port, qid, qtype, qname, proto, size, do, bufsize, rcode, rflags, rsize, _ = m.groups()
            assert int(qid) == query.id
            assert qname == query.question[0].name.to_text().lower()  # as CoreDNS's {name}
            assert qtype == dns.rdatatype.to_text(query.question[0].rdtype)
            assert proto == ("tcp" if tcp else "udp")
            assert int(size) == len(query.to_wire())
            assert do == ("true" if query.ednsflags & dns.flags.DO else "false")
            assert int(bufsize) == (65535 if tcp else max(query.payload, 512)
                                    if query.edns >= 0 else 512)
            assert rcode == dns.rcode.to_text(reply.rcode())
            assert rflags.split(",")[0] == "qr"
            assert int(rsize) == len(reply.to_wire()) or int(rsize) > 0
            assert 0 < int(port) < 65536


async def test_log_class_filter(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="nodecache.query")
    async with FakeUpstream(records=RECORDS) as up, \
            AgentKit(corefile(up.port, *ENDPOINTS, "log . {\n class denial error\n }")) as kit:
        await kit.query("a.example.")  # success: not logged
        await kit.query("nx.example.")  # NXDOMAIN without SOA: an error class
        lines = [r.getMessage() for r in caplog.records if r.name == "nodecache.query"]
        assert len(lines) == 1 and "nx.example." in lines[0]


async def test_errors_plugin_logs_upstream_failures(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR)
    async with FakeUpstream(lambda q, p: None) as up, AgentKit(corefile(up.port, *ENDPOINTS, "errors")) as kit:
        await kit.query("a.example.")
        errors = [r.getMessage() for r in caplog.records if "plugin/errors" in r.getMessage()]
        assert errors, caplog.text
        assert re.match(r"^\[ERROR\] plugin/errors: 2 a\.example\. A: ", errors[0]), errors[0]


async def test_errors_not_matching_a_consolidate_rule_are_logged_each(
        caplog: pytest.LogCaptureFixture) -> None:
    block = 'errors {\n  consolidate 30s "^refused by policy"\n }'
    async with FakeUpstream(lambda q, p: None) as up, AgentKit(corefile(up.port, *ENDPOINTS, block)) as kit:
        for name in ("a.example.", "b.example."):
            assert rcode_text(await kit.query(name)) == "SERVFAIL"
        errors = [r.getMessage() for r in caplog.records if "plugin/errors" in r.getMessage()]
        assert len(errors) == 2, errors
        assert re.match(r"^\[ERROR\] plugin/errors: 2 b\.example\. A: no answer within .*"
                        r": i/o timeout$", errors[1]), errors[1]
