"""Plain counters that the core increments on the query path.

Prometheus objects are too slow for the hot path (a labelled ``inc()`` takes
about a microsecond), so the core bumps ints here and ``nodecache.metrics``
turns them into CoreDNS-named metric families at scrape time.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

#: CoreDNS ``plugin.TimeBuckets``: 0.25 ms doubling 16 times (to about 8 s), in s.
TIME_BUCKETS: tuple[float, ...] = tuple(0.00025 * 2**n for n in range(16))
#: CoreDNS ``plugin/metrics/vars`` request and response size buckets, bytes.
SIZE_BUCKETS: tuple[float, ...] = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291,
                                   16e3, 32e3, 48e3, 64e3)
#: CoreDNS ``plugin/health`` self-check duration buckets, s.
HEALTH_BUCKETS: tuple[float, ...] = (0.00025, 0.0025, 0.025, 0.25, 2.5)


class Histogram:
    """Cumulative-at-export histogram: counts per bucket, plus sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        self.bounds = bounds
        #: counts[i] is observations <= bounds[i] and > bounds[i-1]; the last slot is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        """Count ``value`` ``times`` times (a tally folded in at scrape time)."""
        self.counts[bisect_left(self.bounds, value)] += times
        self.sum += value * times
        self.count += times


def _size_histograms() -> defaultdict[str, Histogram]:
    return defaultdict(lambda: Histogram(SIZE_BUCKETS))


@dataclass
class ServerStats:
    """``coredns_dns_*`` for one server block (labels server, zone)."""

    server: str
    zone: str
    #: (proto "udp"/"tcp", family "1"/"2", qtype name) -> requests
    requests: defaultdict[tuple[str, str, str], int] = field(
        default_factory=lambda: defaultdict(int))
    #: (rcode name, plugin name) -> responses; plugin is "cache", "forward" or "".
    responses: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: Plugins of the block's query chain (``coredns_plugin_enabled``), by CoreDNS name.
    plugins: tuple[str, ...] = ()
    do_requests: int = 0
    duration: Histogram = field(default_factory=Histogram)
    #: proto -> sizes of queries (the DNS message, without TCP's length prefix), bytes
    request_size: defaultdict[str, Histogram] = field(default_factory=_size_histograms)
    #: proto -> sizes of replies; 0 for errors the server answers itself, as CoreDNS, bytes
    response_size: defaultdict[str, Histogram] = field(default_factory=_size_histograms)


@dataclass
class CacheStats:
    """``coredns_cache_*`` for one server block's cache."""

    server: str
    zones: str
    hits_success: int = 0
    hits_denial: int = 0
    misses: int = 0
    prefetch: int = 0
    served_stale: int = 0
    evictions_success: int = 0
    evictions_denial: int = 0
    #: Upstream answers not stored because they did not match the question.
    drops: int = 0
    #: Filled in by the cache: current entry counts.
    entries_success: int = 0
    entries_denial: int = 0


@dataclass
class ForwardStats:
    """``coredns_forward_*`` / ``coredns_proxy_*`` for one forward plugin."""

    server: str
    zone: str
    #: upstream "host:port" -> queries sent
    requests: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: (upstream, rcode name) -> answers received
    responses: defaultdict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    #: (upstream, rcode name) -> request duration histogram
    duration: defaultdict[tuple[str, str], Histogram] = field(
        default_factory=lambda: defaultdict(Histogram))
    healthcheck_failures: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: Times every upstream was down and one was tried anyway.
    healthcheck_broken: int = 0
    max_concurrent_rejects: int = 0
    #: upstream -> TCP connections opened (pool misses) / reused (pool hits)
    conn_opened: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    conn_reused: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))


@dataclass
class AgentStats:
    """Process-wide counters."""

    #: errortype -> count, as node-cache's coredns_nodecache_setup_errors_total.
    setup_errors: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    reload_failed: int = 0
    panics: int = 0
    #: Queries dropped before any block was chosen (unparseable headers).
    dropped: int = 0
    #: The ``health`` plugin's self-check of its own /health, every second: how long
    #: each took (s) and how many failed (no answer, refused, timed out).
    health_duration: Histogram = field(default_factory=lambda: Histogram(HEALTH_BUCKETS))
    health_failures: int = 0
    #: Wall-clock time (Unix s) the ``hosts`` plugin last read its file; 0 before that.
    #: Set it through :meth:`hosts_reloaded`.
    hosts_reload_timestamp: float = 0.0

    #: HTTP status -> /metrics requests answered, and those being answered now
    #: (``promhttp_metric_handler_requests_*``, as Go's Prometheus handler counts).
    scrapes: defaultdict[int, int] = field(default_factory=lambda: defaultdict(int))
    scrapes_in_flight: int = 0

    def hosts_reloaded(self, wall: float) -> None:
        """The hosts plugin (re)read its file at ``wall`` (Unix s): the latest one counts."""
        self.hosts_reload_timestamp = max(self.hosts_reload_timestamp, wall)
