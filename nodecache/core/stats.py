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


class Histogram:
    """Cumulative-at-export histogram: counts per bucket, plus sum and count."""

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...] = TIME_BUCKETS) -> None:
        self.bounds = bounds
        #: counts[i] is observations <= bounds[i] and > bounds[i-1]; the last slot is +Inf.
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


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
    do_requests: int = 0
    duration: Histogram = field(default_factory=Histogram)


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
    #: upstream -> request duration histogram
    duration: defaultdict[str, Histogram] = field(default_factory=lambda: defaultdict(Histogram))
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
