"""Every Prometheus metric the agent exports, under CoreDNS's names and labels.

The query path never touches a Prometheus object: the core bumps plain ints in
:mod:`nodecache.core.stats`, and :class:`StatsCollector` reads them when
``/metrics`` is scraped and turns them into metric families. Names and label
sets follow CoreDNS (``plugin/metrics/vars``, ``plugin/cache/metrics.go``,
``plugin/forward/metrics.go``, ``plugin/pkg/proxy/metrics.go``) and node-cache's
``coredns_nodecache_setup_errors_total``, so existing dashboards keep working.

Forward metrics are exported twice, as CoreDNS versions differ: the current
``coredns_forward_*{to,...}`` family and 1.13's ``coredns_proxy_*{proxy_name="forward",...}``.

Label values that several stats objects share (two server blocks forwarding to
the same upstream) are summed, so each series appears once.

On a config reload the agent calls :meth:`StatsCollector.set_sources` with the
new set of stats objects; reusing the object of a block that did not change
keeps its counters monotonic.
"""
from __future__ import annotations

import platform
import resource
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from typing import TypeVar

from . import __version__
from .config.settings import ServerBlock
from .core.stats import AgentStats, CacheStats, ForwardStats, Histogram, ServerStats
from .exposition import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                         PlatformCollector, ProcessCollector, Registry, go_float)
from .exposition import MetricFamily as Metric

#: node-cache pre-creates these so the series exist at zero from the start.
SETUP_ERROR_TYPES: tuple[str, ...] = (
    "iptables", "iptables_lock", "interface_add", "interface_check", "configmap")
#: Go's Prometheus handler pre-creates these status codes of its scrape counter.
SCRAPE_CODES: tuple[int, ...] = (200, 500, 503)
#: CoreDNS's default ``view`` label value (no ``view`` plugin).
VIEW = ""
#: ``proxy_name`` of the 1.13 ``coredns_proxy_*`` families.
PROXY_NAME = "forward"
#: Pooled upstream connections counted by ForwardStats are TCP.
POOL_PROTO = "tcp"

Labels = tuple[str, ...]


@dataclass(frozen=True)
class StatsSources:
    """The stats objects one configuration generation increments."""

    servers: tuple[ServerStats, ...] = ()
    caches: tuple[CacheStats, ...] = ()
    forwards: tuple[ForwardStats, ...] = ()
    agent: AgentStats = field(default_factory=AgentStats)


class _Hist:
    """A histogram being summed from several :class:`Histogram` objects."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def add(self, h: Histogram) -> None:
        assert h.bounds == self.bounds, "histograms with different buckets cannot be summed"
        for i, n in enumerate(h.counts):
            self.counts[i] += n
        self.sum += h.sum

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs ending in ``+Inf``, as the exposition wants."""
        out = []
        total = 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            out.append((_le(bound), float(total)))
        return out


def _le(bound: float) -> str:
    """A bucket bound spelled as Go's client spells it: ``100``, not ``100.0``.

    Dashboards and recording rules written against CoreDNS may match ``le``
    as a string (``le="511"``), so whole numbers must not grow a ``.0``.
    """
    if abs(bound) < 1e21 and bound == int(bound):  # Go's %g switches to 1e+21 there
        return str(int(bound))
    return go_float(bound)


Family = TypeVar("Family", CounterMetricFamily, GaugeMetricFamily)

def _filled(family: Family, values: dict[Labels, float]) -> Family:
    for key in sorted(values):
        family.add_metric(list(key), values[key])
    return family


def _counter(name: str, doc: str, labels: Sequence[str],
             values: dict[Labels, float]) -> CounterMetricFamily:
    return _filled(CounterMetricFamily(name, doc, labels=list(labels)), values)


def _gauge(name: str, doc: str, labels: Sequence[str],
           values: dict[Labels, float]) -> GaugeMetricFamily:
    return _filled(GaugeMetricFamily(name, doc, labels=list(labels)), values)


def _histogram(name: str, doc: str, labels: Sequence[str],
               values: dict[Labels, _Hist]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=list(labels))
    for key in sorted(values):
        family.add_metric(list(key), values[key].buckets(), values[key].sum)
    return family


def _add_hist(into: dict[Labels, _Hist], key: Labels, h: Histogram) -> None:
    if key not in into:
        into[key] = _Hist(h.bounds)
    into[key].add(h)


#: ServerBlock fields that are not plugins of the query chain: CoreDNS lists
#: only the chain's handlers in ``coredns_plugin_enabled`` (not bind, health,
#: ready, reload, timeouts or debug, which set the server up but never see a
#: query; node-cache lists bufsize and not those, measured).
_NOT_HANDLERS = frozenset({"zones", "port", "bind", "bind_lines", "health", "ready", "reload",
                           "timeouts", "debug", "source"})


def enabled_plugins(block: ServerBlock) -> tuple[str, ...]:
    """The names of a server block's query-chain plugins, as ``coredns_plugin_enabled`` has them.

    Every other field of :class:`~nodecache.config.settings.ServerBlock` is a
    plugin named after it (``cache``, ``forward``, ``errors``, ``log``, ``loop``,
    ``loadbalance``, ``prometheus``, ...), enabled when set.
    """
    return tuple(sorted(f.name for f in fields(block)
                        if f.name not in _NOT_HANDLERS and getattr(block, f.name)
                        not in (None, False, ())))


def server_stats(block: ServerBlock, zone: str) -> ServerStats:
    """A zone's counters, knowing which plugins its block enables (``coredns_plugin_enabled``)."""
    return ServerStats(block.server, zone, plugins=enabled_plugins(block))


class StatsCollector:
    """Reads the plain counters at scrape time and yields CoreDNS-named families.

    :param sources: The stats objects to export; replace them with :meth:`set_sources`.
    :param version: ``coredns_build_info`` ``version``.
    :param revision: ``coredns_build_info`` ``revision`` (a VCS revision, if known).
    :param sync: Called before each scrape, to fold tallies kept elsewhere into the
        counters (the hit path counts in a dict of its own: ``QueryHandler.sync_stats``).

    ``collect()`` runs on whichever thread scrapes; the counters are plain ints
    whose reads are atomic, so a scrape sees each value at some instant.
    """

    def __init__(self, sources: StatsSources | None = None, *, version: str = __version__,
                 revision: str = "", sync: Callable[[], None] | None = None) -> None:
        self._sources = sources or StatsSources()
        self._sync = sync
        self.version = version
        self.revision = revision
        self.goversion = "python " + ".".join(platform.python_version_tuple()[:2])

    @property
    def sources(self) -> StatsSources:
        return self._sources

    def set_sources(self, servers: Iterable[ServerStats] = (), caches: Iterable[CacheStats] = (),
                    forwards: Iterable[ForwardStats] = (),
                    agent: AgentStats | None = None) -> None:
        """Export these stats objects from the next scrape on (one atomic swap).

        :param agent: Process-wide counters; ``None`` keeps the current ones.
        """
        self._sources = StatsSources(tuple(servers), tuple(caches), tuple(forwards),
                                     agent if agent is not None else self._sources.agent)

    def collect(self) -> Iterator[Metric]:
        if self._sync is not None:
            self._sync()
        yield from self._families(self._sources)

    def _families(self, src: StatsSources) -> Iterator[Metric]:
        yield from self._process_families(src.agent)
        yield from self._server_families(src.servers, src.agent)
        yield from self._cache_families(src.caches)
        yield from self._forward_families(src.forwards)

    def _process_families(self, agent: AgentStats) -> Iterator[Metric]:
        build = GaugeMetricFamily(
            "coredns_build_info",
            "A metric with a constant '1' value labeled by version, revision, and goversion "
            "from which CoreDNS was built.",
            labels=["version", "revision", "goversion"])
        build.add_metric([self.version, self.revision, self.goversion], 1)
        yield build
        # Go's process collector has this one too; Python's does not.
        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        yield GaugeMetricFamily("process_virtual_memory_max_bytes",
                                "Maximum amount of virtual memory available in bytes.",
                                value=-1 if soft == resource.RLIM_INFINITY else soft)
        yield CounterMetricFamily("coredns_panics_total", "A metrics that counts the number "
                                  "of panics.", value=agent.panics)
        yield CounterMetricFamily("coredns_reload_failed_total",
                                  "Counter of the number of failed reload attempts.",
                                  value=agent.reload_failed)
        errors: dict[Labels, float] = {(t,): 0 for t in SETUP_ERROR_TYPES}
        for errortype, n in agent.setup_errors.items():
            errors[(errortype,)] = errors.get((errortype,), 0) + n
        yield _counter("coredns_nodecache_setup_errors_total",
                       "The number of errors during periodic network setup for node-cache",
                       ["errortype"], errors)
        health = _Hist(agent.health_duration.bounds)
        health.add(agent.health_duration)
        yield _histogram("coredns_health_request_duration_seconds",
                         "Histogram of the time (in seconds) each request took.", [],
                         {(): health})
        yield CounterMetricFamily("coredns_health_request_failures_total",
                                  "The number of times the health check failed.",
                                  value=agent.health_failures)
        yield GaugeMetricFamily("promhttp_metric_handler_requests_in_flight",
                                "Current number of scrapes being served.",
                                value=agent.scrapes_in_flight)
        scrapes: dict[Labels, float] = {(str(code),): 0 for code in SCRAPE_CODES}
        for code, n in agent.scrapes.items():
            scrapes[(str(code),)] = n
        yield _counter("promhttp_metric_handler_requests_total",
                       "Total number of scrapes by HTTP status code.", ["code"], scrapes)
        yield GaugeMetricFamily("coredns_hosts_reload_timestamp_seconds",
                                "The timestamp of the last reload of hosts file.",
                                value=agent.hosts_reload_timestamp)

    def _server_families(self, servers: Sequence[ServerStats],
                         agent: AgentStats) -> Iterator[Metric]:
        requests: dict[Labels, float] = defaultdict(float)
        responses: dict[Labels, float] = defaultdict(float)
        do: dict[Labels, float] = defaultdict(float)
        durations: dict[Labels, _Hist] = {}
        request_sizes: dict[Labels, _Hist] = {}
        response_sizes: dict[Labels, _Hist] = {}
        plugins: dict[Labels, float] = {}
        for s in servers:
            for (proto, family, qtype), n in s.requests.items():
                requests[(s.server, s.zone, VIEW, proto, family, qtype)] += n
            for (rcode, plugin), n in s.responses.items():
                responses[(s.server, s.zone, VIEW, rcode, plugin)] += n
            if s.do_requests:  # CoreDNS makes the series with the first DO query
                do[(s.server, s.zone, VIEW)] += s.do_requests
            if s.duration.count:
                _add_hist(durations, (s.server, s.zone, VIEW), s.duration)
            for proto, h in s.request_size.items():
                _add_hist(request_sizes, (s.server, s.zone, VIEW, proto), h)
            for proto, h in s.response_size.items():
                _add_hist(response_sizes, (s.server, s.zone, VIEW, proto), h)
            for name in s.plugins:
                plugins[(s.server, s.zone, VIEW, name)] = 1
        if agent.dropped:
            # CoreDNS reports queries that reach no server block under zone "dropped".
            requests[("", "dropped", VIEW, "", "", "")] += agent.dropped
        yield _counter("coredns_dns_requests_total",
                       "Counter of DNS requests made per zone, protocol and family.",
                       ["server", "zone", "view", "proto", "family", "type"], requests)
        yield _counter("coredns_dns_responses_total",
                       "Counter of response status codes.",
                       ["server", "zone", "view", "rcode", "plugin"], responses)
        yield _counter("coredns_dns_do_requests_total",
                       "Counter of DNS requests with DO bit set per zone.",
                       ["server", "zone", "view"], do)
        yield _histogram("coredns_dns_request_duration_seconds",
                         "Histogram of the time (in seconds) each request took per zone.",
                         ["server", "zone", "view"], durations)
        # CoreDNS's help text says "EDNS0 UDP buffer", but it observes the query's length.
        yield _histogram("coredns_dns_request_size_bytes",
                         "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and "
                         "protocol.", ["server", "zone", "view", "proto"], request_sizes)
        yield _histogram("coredns_dns_response_size_bytes", "Size of the returned response in "
                         "bytes.", ["server", "zone", "view", "proto"], response_sizes)
        yield _gauge("coredns_plugin_enabled", "A metric that indicates whether a plugin is "
                     "enabled on per server and zone basis.",
                     ["server", "zone", "view", "name"], plugins)

    def _cache_families(self, caches: Sequence[CacheStats]) -> Iterator[Metric]:
        typed = ["server", "type", "zones", "view"]
        plain = ["server", "zones", "view"]
        entries: dict[Labels, float] = defaultdict(float)
        hits: dict[Labels, float] = defaultdict(float)
        evictions: dict[Labels, float] = defaultdict(float)
        misses: dict[Labels, float] = defaultdict(float)
        requests: dict[Labels, float] = defaultdict(float)
        prefetch: dict[Labels, float] = defaultdict(float)
        stale: dict[Labels, float] = defaultdict(float)
        drops: dict[Labels, float] = defaultdict(float)
        for c in caches:
            for kind, n_entries, n_hits, n_evicted in (
                    ("success", c.entries_success, c.hits_success, c.evictions_success),
                    ("denial", c.entries_denial, c.hits_denial, c.evictions_denial)):
                key = (c.server, kind, c.zones, VIEW)
                entries[key] += n_entries
                hits[key] += n_hits
                evictions[key] += n_evicted
            block = (c.server, c.zones, VIEW)
            misses[block] += c.misses
            # Every lookup is a hit (stale ones too) or a miss, as in CoreDNS's handler.
            requests[block] += c.hits_success + c.hits_denial + c.misses
            prefetch[block] += c.prefetch
            stale[block] += c.served_stale
            drops[block] += c.drops
        yield _gauge("coredns_cache_entries", "The number of elements in the cache.",
                     typed, entries)
        yield _counter("coredns_cache_hits_total", "The count of cache hits.", typed, hits)
        yield _counter("coredns_cache_misses_total",
                       "The count of cache misses. Deprecated, derive misses from cache "
                       "hits/requests counters.", plain, misses)
        yield _counter("coredns_cache_requests_total", "The count of cache requests.",
                       plain, requests)
        yield _counter("coredns_cache_prefetch_total", "The number of times the cache has "
                       "prefetched a cached item.", plain, prefetch)
        yield _counter("coredns_cache_drops_total", "The number responses that are not cached, "
                       "because the reply is malformed.", plain, drops)
        yield _counter("coredns_cache_served_stale_total", "The number of requests served "
                       "from stale cache entries.", plain, stale)
        yield _counter("coredns_cache_evictions_total", "The count of cache evictions.",
                       typed, evictions)

    def _forward_families(self, forwards: Sequence[ForwardStats]) -> Iterator[Metric]:
        requests: dict[Labels, float] = defaultdict(float)
        responses: dict[Labels, float] = defaultdict(float)
        durations: dict[Labels, _Hist] = {}
        hc_failures: dict[Labels, float] = defaultdict(float)
        conn_hits: dict[Labels, float] = defaultdict(float)
        conn_misses: dict[Labels, float] = defaultdict(float)
        broken = 0
        rejects = 0
        for f in forwards:
            for to, n in f.requests.items():
                requests[(to,)] += n
            for (to, rcode), h in f.answer_durations().items():
                responses[(rcode, to)] += h.count
                _add_hist(durations, (to, rcode), h)
            for to, n in f.healthcheck_failures.items():
                hc_failures[(to,)] += n
            for to, n in f.conn_reused.items():
                conn_hits[(to, POOL_PROTO)] += n
            for to, n in f.conn_opened.items():
                conn_misses[(to, POOL_PROTO)] += n
            broken += f.healthcheck_broken
            rejects += f.max_concurrent_rejects
        yield _counter("coredns_forward_requests_total", "Counter of requests made per upstream.",
                       ["to"], requests)
        yield _counter("coredns_forward_responses_total",
                       "Counter of responses received per upstream.", ["rcode", "to"], responses)
        yield _histogram("coredns_forward_request_duration_seconds",
                         "Histogram of the time each request took.", ["to", "rcode"], durations)
        yield _counter("coredns_forward_healthcheck_failures_total",
                       "Counter of the number of failed healthchecks.", ["to"], hc_failures)
        yield _counter("coredns_forward_conn_cache_hits_total",
                       "Counter of connection cache hits per upstream and protocol.",
                       ["to", "proto"], conn_hits)
        yield _counter("coredns_forward_conn_cache_misses_total",
                       "Counter of connection cache misses per upstream and protocol.",
                       ["to", "proto"], conn_misses)
        yield CounterMetricFamily("coredns_forward_healthcheck_broken_total",
                                  "Counter of the number of complete failures of the "
                                  "healthchecks.", value=broken)
        yield CounterMetricFamily("coredns_forward_max_concurrent_rejects_total",
                                  "Counter of the number of queries rejected because the "
                                  "concurrent queries were at maximum.", value=rejects)
        # CoreDNS 1.11-1.13 names, with proxy_name.
        yield _histogram("coredns_proxy_request_duration_seconds",
                         "Histogram of the time each request took.",
                         ["proxy_name", "to", "rcode"],
                         {(PROXY_NAME,) + k: v for k, v in durations.items()})
        yield _counter("coredns_proxy_healthcheck_failures_total",
                       "Count of failed health checks.", ["proxy_name", "to"],
                       {(PROXY_NAME,) + k: v for k, v in hc_failures.items()})
        yield _counter("coredns_proxy_conn_cache_hits_total",
                       "Counter of connection cache hits per upstream and protocol.",
                       ["proxy_name", "to", "proto"],
                       {(PROXY_NAME,) + k: v for k, v in conn_hits.items()})
        yield _counter("coredns_proxy_conn_cache_misses_total",
                       "Counter of connection cache misses per upstream and protocol.",
                       ["proxy_name", "to", "proto"],
                       {(PROXY_NAME,) + k: v for k, v in conn_misses.items()})


def make_registry(collector: StatsCollector, *, process_metrics: bool = True) -> Registry:
    """A registry holding ``collector`` and, by default, ``process_*`` and ``python_info``.

    CoreDNS exports ``process_*`` (memory, CPU, open fds) too; dashboards use them.
    """
    if process_metrics:
        return Registry([collector, ProcessCollector(), PlatformCollector()])
    return Registry([collector])
