"""StatsCollector: plain counters in, CoreDNS-named exposition lines out."""
from __future__ import annotations

import platform

import pytest
import prometheus_client
from prometheus_client.parser import text_string_to_metric_families

from nodecache.core.stats import AgentStats, CacheStats, ForwardStats, ServerStats
from nodecache import exposition
from nodecache.exposition import render
from nodecache.metrics import SETUP_ERROR_TYPES, StatsCollector, make_registry

SERVER = "dns://:53"
ZONE = "cluster.local."
UP = "10.96.0.10:53"


def scrape(collector: StatsCollector) -> list[str]:
    text = render(make_registry(collector, process_metrics=False)).decode()
    return [line for line in text.splitlines() if not line.startswith("#")]


def lines_of(lines: list[str], name: str) -> list[str]:
    return [line for line in lines if line.split("{")[0].split(" ")[0] == name]


def test_empty_collector_exports_process_wide_families() -> None:
    lines = scrape(StatsCollector(version="1.2.3", revision="abc"))
    py = ".".join(platform.python_version_tuple()[:2])
    assert f'coredns_build_info{{goversion="python {py}",revision="abc",version="1.2.3"}} 1.0' \
        in lines
    assert "coredns_panics_total 0.0" in lines
    assert "coredns_reload_failed_total 0.0" in lines
    assert "coredns_forward_healthcheck_broken_total 0.0" in lines
    assert "coredns_forward_max_concurrent_rejects_total 0.0" in lines
    for errortype in SETUP_ERROR_TYPES:
        assert f'coredns_nodecache_setup_errors_total{{errortype="{errortype}"}} 0.0' in lines


def test_server_counters() -> None:
    s = ServerStats(SERVER, ZONE)
    s.requests[("udp", "1", "A")] += 3
    s.requests[("tcp", "2", "AAAA")] += 1
    s.responses[("NOERROR", "cache")] += 2
    s.responses[("NXDOMAIN", "forward")] += 1
    s.do_requests = 4
    c = StatsCollector()
    c.set_sources(servers=[s])
    lines = scrape(c)
    labels = f'server="{SERVER}",view="",zone="{ZONE}"'
    assert sorted(lines_of(lines, "coredns_dns_requests_total")) == [
        f'coredns_dns_requests_total{{family="1",proto="udp",server="{SERVER}",type="A",'
        f'view="",zone="{ZONE}"}} 3.0',
        f'coredns_dns_requests_total{{family="2",proto="tcp",server="{SERVER}",type="AAAA",'
        f'view="",zone="{ZONE}"}} 1.0',
    ]
    assert sorted(lines_of(lines, "coredns_dns_responses_total")) == sorted([
        f'coredns_dns_responses_total{{plugin="cache",rcode="NOERROR",{labels}}} 2.0',
        f'coredns_dns_responses_total{{plugin="forward",rcode="NXDOMAIN",{labels}}} 1.0',
    ])
    assert lines_of(lines, "coredns_dns_do_requests_total") == [
        f"coredns_dns_do_requests_total{{{labels}}} 4.0"]


def test_duration_histogram_is_cumulative() -> None:
    s = ServerStats(SERVER, ZONE)
    for value in (0.0001, 0.00025, 0.0003, 0.05, 0.05, 20.0):
        s.duration.observe(value)
    c = StatsCollector()
    c.set_sources(servers=[s])
    lines = scrape(c)
    labels = f'server="{SERVER}",view="",zone="{ZONE}"'
    expected = {"0.00025": 2, "0.0005": 3, "0.001": 3, "0.002": 3, "0.004": 3, "0.008": 3,
                "0.016": 3, "0.032": 3, "0.064": 5, "0.128": 5, "0.256": 5, "0.512": 5,
                "1.024": 5, "2.048": 5, "4.096": 5, "8.192": 5, "+Inf": 6}
    assert lines_of(lines, "coredns_dns_request_duration_seconds_bucket") == [
        f'coredns_dns_request_duration_seconds_bucket{{le="{le}",{labels}}} {n}.0'
        for le, n in expected.items()]
    assert f"coredns_dns_request_duration_seconds_count{{{labels}}} 6.0" in lines
    (sum_line,) = lines_of(lines, "coredns_dns_request_duration_seconds_sum")
    assert float(sum_line.rsplit(" ", 1)[1]) == pytest.approx(20.10065)


def test_cache_counters() -> None:
    cs = CacheStats(SERVER, ZONE, hits_success=5, hits_denial=2, misses=3, prefetch=1,
                    served_stale=4, evictions_success=6, evictions_denial=7, drops=8,
                    entries_success=10, entries_denial=11)
    c = StatsCollector()
    c.set_sources(caches=[cs])
    lines = scrape(c)
    plain = f'server="{SERVER}",view="",zones="{ZONE}"'

    def typed(kind: str) -> str:
        return f'server="{SERVER}",type="{kind}",view="",zones="{ZONE}"'

    for line in [
        f"coredns_cache_entries{{{typed('denial')}}} 11.0",
        f"coredns_cache_entries{{{typed('success')}}} 10.0",
        f"coredns_cache_hits_total{{{typed('denial')}}} 2.0",
        f"coredns_cache_hits_total{{{typed('success')}}} 5.0",
        f"coredns_cache_evictions_total{{{typed('denial')}}} 7.0",
        f"coredns_cache_evictions_total{{{typed('success')}}} 6.0",
        f"coredns_cache_misses_total{{{plain}}} 3.0",
        f"coredns_cache_requests_total{{{plain}}} 10.0",
        f"coredns_cache_prefetch_total{{{plain}}} 1.0",
        f"coredns_cache_served_stale_total{{{plain}}} 4.0",
        f"coredns_cache_drops_total{{{plain}}} 8.0",
    ]:
        assert line in lines


def test_forward_counters_under_both_names() -> None:
    f = ForwardStats(SERVER, ".")
    f.requests[UP] += 9
    up = f.upstream_index(UP)
    for _ in range(7):
        f.answered(up, 0, 0.0001)
    f.answered(up, 0, 0.003)
    f.answered(up, 2, 0.01)
    f.healthcheck_failures[UP] += 2
    f.healthcheck_broken = 1
    f.max_concurrent_rejects = 5
    f.conn_opened[UP] += 3
    f.conn_reused[UP] += 12
    c = StatsCollector()
    c.set_sources(forwards=[f])
    lines = scrape(c)
    for line in [
        f'coredns_forward_requests_total{{to="{UP}"}} 9.0',
        f'coredns_forward_responses_total{{rcode="NOERROR",to="{UP}"}} 8.0',
        f'coredns_forward_responses_total{{rcode="SERVFAIL",to="{UP}"}} 1.0',
        f'coredns_forward_healthcheck_failures_total{{to="{UP}"}} 2.0',
        f'coredns_proxy_healthcheck_failures_total{{proxy_name="forward",to="{UP}"}} 2.0',
        "coredns_forward_healthcheck_broken_total 1.0",
        "coredns_forward_max_concurrent_rejects_total 5.0",
        f'coredns_forward_conn_cache_hits_total{{proto="tcp",to="{UP}"}} 12.0',
        f'coredns_forward_conn_cache_misses_total{{proto="tcp",to="{UP}"}} 3.0',
        f'coredns_proxy_conn_cache_hits_total{{proto="tcp",proxy_name="forward",to="{UP}"}} 12.0',
        f'coredns_proxy_conn_cache_misses_total{{proto="tcp",proxy_name="forward",to="{UP}"}} 3.0',
        f'coredns_forward_request_duration_seconds_bucket{{le="0.00025",rcode="NOERROR",'
        f'to="{UP}"}} 7.0',
        f'coredns_forward_request_duration_seconds_bucket{{le="0.002",rcode="NOERROR",to="{UP}"}} 7.0',
        f'coredns_forward_request_duration_seconds_bucket{{le="0.004",rcode="NOERROR",'
        f'to="{UP}"}} 8.0',
        f'coredns_forward_request_duration_seconds_count{{rcode="NOERROR",to="{UP}"}} 8.0',
        f'coredns_forward_request_duration_seconds_sum{{rcode="SERVFAIL",to="{UP}"}} 0.01',
        f'coredns_proxy_request_duration_seconds_bucket{{le="+Inf",proxy_name="forward",'
        f'rcode="NOERROR",to="{UP}"}} 8.0',
    ]:
        assert line in lines


def test_duration_keyed_by_upstream_and_rcode() -> None:
    f = ForwardStats(SERVER, ".")
    f.answered(f.upstream_index("192.0.2.9:53"), 3, 0.5)
    f.answered(f.upstream_index(UP), 0, 0.001)
    c = StatsCollector()
    c.set_sources(forwards=[f])
    lines = scrape(c)
    assert f'coredns_forward_request_duration_seconds_count{{rcode="NOERROR",to="{UP}"}} 1.0' \
        in lines
    assert f'coredns_forward_request_duration_seconds_sum{{rcode="NOERROR",to="{UP}"}} 0.001' \
        in lines
    assert 'coredns_forward_responses_total{rcode="NXDOMAIN",to="192.0.2.9:53"} 1.0' in lines
    assert 'coredns_forward_request_duration_seconds_sum{rcode="NXDOMAIN",to="192.0.2.9:53"} 0.5' \
        in lines


def test_same_labels_from_two_blocks_are_summed() -> None:
    a, b = ForwardStats("dns://:53", "."), ForwardStats("dns://:53", "in-addr.arpa.")
    a.requests[UP] += 1
    b.requests[UP] += 2
    a.answered(a.upstream_index(UP), 0, 0.1)
    b.answered(b.upstream_index(UP), 0, 0.2)
    c = StatsCollector()
    c.set_sources(forwards=[a, b])
    lines = scrape(c)
    assert lines_of(lines, "coredns_forward_requests_total") == [
        f'coredns_forward_requests_total{{to="{UP}"}} 3.0']
    assert f'coredns_forward_request_duration_seconds_count{{rcode="NOERROR",to="{UP}"}} 2.0' \
        in lines


def test_agent_counters_and_extra_setup_error_type() -> None:
    agent = AgentStats(reload_failed=2, panics=1, dropped=7)
    agent.setup_errors["iptables"] += 3
    agent.setup_errors["notrack"] += 1
    c = StatsCollector()
    c.set_sources(agent=agent)
    lines = scrape(c)
    assert 'coredns_nodecache_setup_errors_total{errortype="iptables"} 3.0' in lines
    assert 'coredns_nodecache_setup_errors_total{errortype="iptables_lock"} 0.0' in lines
    assert 'coredns_nodecache_setup_errors_total{errortype="notrack"} 1.0' in lines
    assert "coredns_reload_failed_total 2.0" in lines
    assert "coredns_panics_total 1.0" in lines
    assert ('coredns_dns_requests_total{family="",proto="",server="",type="",view="",'
            'zone="dropped"} 7.0') in lines


def test_set_sources_swaps_and_keeps_agent() -> None:
    agent = AgentStats(panics=3)
    old, new = ServerStats("dns://:53", ZONE), ServerStats("dns://:5353", ZONE)
    old.do_requests, new.do_requests = 1, 2
    c = StatsCollector()
    c.set_sources(servers=[old], agent=agent)
    c.set_sources(servers=[new])  # a reload: agent counters stay
    lines = scrape(c)
    assert lines_of(lines, "coredns_dns_do_requests_total") == [
        f'coredns_dns_do_requests_total{{server="dns://:5353",view="",zone="{ZONE}"}} 2.0']
    assert "coredns_panics_total 3.0" in lines
    assert c.sources.agent is agent


def test_exposition_parses_and_process_metrics_included() -> None:
    s = ServerStats(SERVER, ZONE)
    s.duration.observe(0.01)
    c = StatsCollector()
    c.set_sources(servers=[s], caches=[CacheStats(SERVER, ZONE)],
                  forwards=[ForwardStats(SERVER, ".")])
    text = render(make_registry(c)).decode()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"coredns_dns_request_duration_seconds", "coredns_cache_hits",
            "coredns_build_info", "python_info", "process_resident_memory_bytes"} <= names
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(set(helps)), "a family is exported twice"


def test_scrape_does_not_mutate_stats() -> None:
    f = ForwardStats(SERVER, ".")
    c = StatsCollector()
    c.set_sources(forwards=[f])
    scrape(c)
    assert not f.requests and not f.answers and not f.conn_opened


class Fixed:
    """A collector of families built beforehand."""

    def __init__(self, families: list[exposition.MetricFamily]) -> None:
        self.families = families

    def collect(self) -> list[exposition.MetricFamily]:
        return self.families


def _as_prometheus_client(families: list[exposition.MetricFamily]) -> bytes:
    """The same families rendered by prometheus_client, the reference for the format."""
    from prometheus_client.metrics_core import Metric
    from prometheus_client.samples import Sample

    class Collector(prometheus_client.registry.Collector):
        def collect(self):  # type: ignore[no-untyped-def]
            for family in families:
                metric = Metric(family.name, family.documentation, family.type)
                metric.samples = [Sample(s.name, s.labels, s.value) for s in family.samples]
                yield metric

    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(Collector())
    return prometheus_client.generate_latest(registry)


def test_exposition_is_prometheus_clients_byte_for_byte() -> None:
    s = ServerStats(SERVER, ZONE)
    for value in (0.00004, 0.01, 0.3, 9.0):
        s.duration.observe(value)
    s.requests[("udp", "1", "A")] += 1234567
    s.requests[("tcp", "2", "AAAA")] += 12345678
    f = ForwardStats(SERVER, ".")
    f.requests[UP] += 3
    c = StatsCollector(version="1.2.3", revision="abc")
    c.set_sources(servers=[s], caches=[CacheStats(SERVER, ZONE)], forwards=[f])
    odd = exposition.GaugeMetricFamily("nodecache_test_odd", 'back\\slash "and"\nnewline',
                                       labels=["b", "a"])
    for i, value in enumerate((float("inf"), float("-inf"), float("nan"), -1.5, 0.1, 1e7,
                               1234567.0, 2.5e-9, 1e22)):
        odd.add_metric([f'x\\y"{i}"\nz', str(i)], value)
    families = [*make_registry(c).collect(), odd]
    assert render(exposition.Registry([Fixed(families)])) == _as_prometheus_client(families)


def test_process_and_platform_families_are_prometheus_clients() -> None:
    ours = {f.name: f for f in exposition.ProcessCollector().collect()}
    theirs = {f.name: f for f in prometheus_client.ProcessCollector(registry=None).collect()}
    assert ours.keys() == theirs.keys()
    for name, family in theirs.items():
        assert (ours[name].documentation, ours[name].type) == (family.documentation, family.type)
        assert [s.name for s in ours[name].samples] == [s.name for s in family.samples]
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert ours[name].samples[0].value == theirs[name].samples[0].value
    info = list(exposition.PlatformCollector().collect())
    assert render(exposition.Registry([Fixed(info)])) == _as_prometheus_client(info)
    [theirs_info] = prometheus_client.PlatformCollector(registry=None).collect()
    assert info[0].samples[0].labels == theirs_info.samples[0].labels
