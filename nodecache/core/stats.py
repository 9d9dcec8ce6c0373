"""Plain counters that the core increments on the query path.

Prometheus objects are too slow for the hot path (a labelled ``inc()`` takes
about a microsecond), so the core bumps ints here and ``nodecache.metrics``
turns them into CoreDNS-named metric families at scrape time.
"""
from __future__ import annotations

from bisect import bisect_left
from collections import defaultdict
from dataclasses import dataclass, field

from nodecache.core.wire import rcode_name

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


#: ``server`` labels by index, the index a listener puts into its slot (bits 8 and
#: up of the slot the handler gets): the label is mapped only at scrape time, so
#: the hit path keys its counts by the slot it already has. Index 0 is "the
#: zone's own label" (a handler driven without listeners); entries are never
#: removed, so a label keeps its index across reloads.
SERVER_LABELS: list[str] = [""]
_SERVER_INDEX: dict[str, int] = {}


def server_index(label: str) -> int:
    """The index of the ``server`` label ``label`` (``dns://10.96.0.10:53``), made on first use."""
    index = _SERVER_INDEX.get(label)
    if index is None:
        index = _SERVER_INDEX[label] = len(SERVER_LABELS)
        SERVER_LABELS.append(label)
    return index


#: Bit fields of a ForwardStats answer key: bucket (0-16) in bits 0-4, RCODE in 5-8.
ANSWER_RCODE_SHIFT = 5
ANSWER_UPSTREAM_SHIFT = 9
_BUCKET_MASK = (1 << ANSWER_RCODE_SHIFT) - 1


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
    #: upstream "host:port" by the index answer keys carry (:meth:`upstream_index`).
    upstreams: list[str] = field(default_factory=list)
    #: Answers received, one dict update each: answer key -> count, unpacked
    #: at scrape time (:meth:`answer_durations`). An answer key is the
    #: upstream's index << ANSWER_UPSTREAM_SHIFT | header RCODE <<
    #: ANSWER_RCODE_SHIFT | the TIME_BUCKETS slot of its duration.
    answers: dict[int, int] = field(default_factory=dict)
    #: key >> ANSWER_RCODE_SHIFT (upstream index * 16 + RCODE) -> seconds those answers took
    seconds: list[float] = field(default_factory=list)
    healthcheck_failures: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    #: Times every upstream was down and one was tried anyway.
    healthcheck_broken: int = 0
    max_concurrent_rejects: int = 0
    #: upstream -> TCP connections opened (pool misses) / reused (pool hits)
    conn_opened: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    conn_reused: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))

    def upstream_index(self, name: str) -> int:
        """The index answer keys carry for upstream ``name``, made on first use."""
        if name in self.upstreams:
            return self.upstreams.index(name)
        self.upstreams.append(name)
        self.seconds.extend([0.0] * 16)
        return len(self.upstreams) - 1

    def answered(self, index: int, rcode: int, seconds: float) -> None:
        """Count one answer (header RCODE ``rcode``) from upstream ``index`` that took
        ``seconds`` (the forwarder does the same inline, on its per-answer path)."""
        key = index << ANSWER_UPSTREAM_SHIFT | rcode << ANSWER_RCODE_SHIFT \
            | bisect_left(TIME_BUCKETS, seconds)
        self.answers[key] = self.answers.get(key, 0) + 1
        self.seconds[key >> ANSWER_RCODE_SHIFT] += seconds

    def answer_durations(self) -> dict[tuple[str, str], Histogram]:
        """(upstream, rcode name) -> the duration histogram of its answers (their count too)."""
        out: dict[tuple[str, str], Histogram] = {}
        for key, count in list(self.answers.items()):
            pair = key >> ANSWER_RCODE_SHIFT
            label = (self.upstreams[pair >> 4], rcode_name(pair & 0x0F))
            h = out.get(label)
            if h is None:
                h = out[label] = Histogram()
                h.sum = self.seconds[pair]
            h.counts[key & _BUCKET_MASK] += count
            h.count += count
        return out


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
