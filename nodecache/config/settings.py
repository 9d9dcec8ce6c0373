"""The effective configuration: frozen, typed settings built from a Corefile.

Everything downstream (core, aio, hostnet) takes these objects; nothing else
reads the Corefile. Durations are in seconds (float), capacities in entries.
Zone names are lower-case, absolute, in text form with a trailing dot
(``"cluster.local."``, ``"."``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nodecache.core.stages.dns64 import DNS64Settings
    from nodecache.core.stages.hosts import HostsSettings
    from nodecache.core.stages.rewrite import Rule
    from nodecache.core.stages.template import Template


@dataclass(frozen=True)
class Source:
    """Where a setting came from, for error messages and ``check-config``."""

    file: str
    line: int
    column: int = 1

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


@dataclass(frozen=True)
class CacheSettings:
    """The ``cache`` plugin, with CoreDNS's defaults (NODELOCAL.md section 3)."""

    success_capacity: int = 9984
    #: Largest TTL stored for a positive answer, s (``cache TTL`` or ``success CAP TTL``).
    success_max_ttl: int = 3600
    #: Smallest TTL stored for a positive answer, s.
    success_min_ttl: int = 5
    denial_capacity: int = 9984
    #: Largest TTL stored for NXDOMAIN/NODATA, s (RFC 2308).
    denial_max_ttl: int = 1800
    denial_min_ttl: int = 5
    #: How long an upstream SERVFAIL is cached, s; 0 disables (RFC 2308 section 7.1: at most 5 min).
    servfail_ttl: int = 5
    #: Prefetch when an item was hit this many times within ``prefetch_duration``; 0 disables.
    prefetch_amount: int = 0
    #: Window in which the hits for prefetch are counted, s.
    prefetch_duration: float = 60.0
    #: Prefetch once the remaining TTL is at most this percentage of the original TTL.
    prefetch_percentage: int = 10
    #: How long past expiry an entry may be served, s; 0 disables serve_stale.
    serve_stale: float = 0.0
    #: ``immediate`` answers stale at once (TTL 0) and refreshes in the background;
    #: ``verify`` asks upstream first and serves stale only if that fails.
    serve_stale_mode: str = "immediate"
    #: Zones for which positive answers are not stored (``disable success ZONES``).
    disable_success: tuple[str, ...] = ()
    #: Zones for which negative answers are not stored (``disable denial ZONES``).
    disable_denial: tuple[str, ...] = ()
    #: Report the original TTL on hits (expiry is unchanged).
    keepttl: bool = False
    #: ``cache [TTL] [ZONES...]``: only names under these zones are cached; empty means the block's zones.
    zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class Upstream:
    """One forward target."""

    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class ForwardSettings:
    """The ``forward`` plugin (NODELOCAL.md section 4), plus ``max_age`` and timeouts."""

    #: The FROM zone.
    zone: str
    upstreams: tuple[Upstream, ...]
    #: Names under these zones are not forwarded (SERVFAIL when no other plugin follows).
    except_zones: tuple[str, ...] = ()
    #: Always use TCP to the upstreams.
    force_tcp: bool = False
    #: Use UDP even for TCP clients; retry over TCP when the answer is truncated.
    prefer_udp: bool = False
    #: Close pooled connections idle for longer than this, s.
    expire: float = 10.0
    #: Close pooled connections older than this, s; 0 means no limit. Rotation keeps
    #: a pool to a ClusterIP from staying pinned to one backend (coredns#7903).
    max_age: float = 0.0
    #: An upstream is down after this many failed health checks; 0 never marks it down.
    max_fails: int = 2
    #: Interval between health checks of an upstream that failed, s.
    health_check: float = 0.5
    health_check_no_rec: bool = False
    health_check_domain: str = "."
    #: ``random``, ``round_robin`` or ``sequential``.
    policy: str = "random"
    #: Upstream queries in flight at most; beyond it clients get REFUSED. 0 means no limit.
    max_concurrent: int = 0
    #: ``failfast_all_unhealthy_upstreams``: SERVFAIL at once when every upstream
    #: is down, instead of trying one at random.
    failfast_all_unhealthy: bool = False
    #: Timeout of one try against one upstream, s (CoreDNS's read timeout).
    try_timeout: float = 2.0
    #: Overall budget for one client query, s; then SERVFAIL (or stale). Below the
    #: 5 s that glibc and musl wait by default, so the client sees the SERVFAIL
    #: (CoreDNS's 5 s arrives as the client gives up); two tries fit.
    budget: float = 3.5


@dataclass(frozen=True)
class HealthSettings:
    address: str = ":8080"
    #: Keep serving (with /health failing) this long after SIGTERM, s.
    lameduck: float = 0.0


@dataclass(frozen=True)
class ReloadSettings:
    #: How often the Corefile is checked for changes, s.
    interval: float = 30.0
    #: Random extra delay added to each interval, s.
    jitter: float = 15.0


@dataclass(frozen=True)
class LogSettings:
    #: Which answers are logged: a subset of {"success", "denial", "error"}.
    classes: frozenset[str] = frozenset({"success", "denial", "error"})
    #: A CoreDNS log format string; None is the default Common Log Format.
    format: str | None = None
    #: Only names under these zones are logged; empty means every name.
    zones: tuple[str, ...] = ()


@dataclass(frozen=True)
class TimeoutSettings:
    """The ``timeouts`` plugin: TCP listener timeouts, s (CoreDNS's defaults)."""

    #: Time a new connection has to deliver its first whole query.
    read: float = 3.0
    #: Time a reply may wait for the client to take it (the send buffer to drain).
    write: float = 5.0
    #: Time a connection may sit with no query after its first one.
    idle: float = 10.0


@dataclass(frozen=True)
class ConsolidateRule:
    """One ``consolidate DURATION REGEXP [LEVEL]`` line of the ``errors`` plugin."""

    #: Errors matching it are counted for this long after the first, s, then logged as one line.
    period: float
    #: A regular expression searched for in the error text.
    pattern: str
    #: ``error``, ``warning``, ``info`` or ``debug``.
    level: str = "error"


@dataclass(frozen=True)
class ErrorsSettings:
    """The ``errors`` plugin: log upstream failures, some of them consolidated."""

    #: In order: an error counts for the first rule it matches.
    consolidate: tuple[ConsolidateRule, ...] = ()
    #: Log the stack trace of a failure inside the agent (nodecache always does).
    stacktrace: bool = False


@dataclass(frozen=True)
class BindLine:
    """One ``bind`` line naming interfaces: resolved to addresses at start and on reload."""

    #: IP addresses and interface names to listen on.
    targets: tuple[str, ...]
    #: IP addresses and interface names not to listen on (``except``).
    excepted: tuple[str, ...] = ()
    #: The ``bind`` directive, for errors found when resolving.
    source: Source | None = None


@dataclass(frozen=True)
class ServerBlock:
    """One Corefile server block: the zones it serves and its plugins."""

    zones: tuple[str, ...]
    port: int
    #: Addresses to listen on; empty means every address (0.0.0.0 and ::) unless
    #: ``bind_lines`` is set.
    bind: tuple[str, ...] = ()
    #: ``bind`` lines with interface names; ``bind`` holds their addresses once resolved
    #: (:func:`nodecache.config.bind.resolve`), and is empty before.
    bind_lines: tuple[BindLine, ...] = ()
    #: ``bufsize``: UDP answers and the EDNS size asked upstream are held to this, bytes.
    bufsize: int | None = None
    timeouts: TimeoutSettings | None = None
    #: ``debug``: log at DEBUG level (process-wide, as CoreDNS).
    debug: bool = False
    cache: CacheSettings | None = None
    forward: ForwardSettings | None = None
    #: ``errors`` settings, or None when the block does not log errors.
    errors: ErrorsSettings | None = None
    log: LogSettings | None = None
    loop: bool = False
    loadbalance: bool = False
    #: ``prometheus`` address (host:port) or None.
    prometheus: str | None = None
    health: HealthSettings | None = None
    #: ``ready`` address (host:port) or None.
    ready: str | None = None
    reload: ReloadSettings | None = None
    # The answering plugins (nodecache.core.chain runs them in CoreDNS's order).
    hosts: HostsSettings | None = None
    #: Every ``template`` line of the block, in order.
    template: tuple[Template, ...] = ()
    #: Every ``rewrite`` line of the block, in order.
    rewrite: tuple[Rule, ...] = ()
    dns64: DNS64Settings | None = None
    whoami: bool = False
    source: Source | None = None

    @property
    def server(self) -> str:
        """The ``server`` label CoreDNS puts on metrics: ``dns://:53``.

        With one ``bind`` address CoreDNS names it: ``dns://169.254.20.10:53``.
        With several it keeps one series per address; ours are per block, so
        they keep the unbound spelling (docs/metrics.md).
        """
        if len(self.bind) == 1:
            host = self.bind[0]
            return f"dns://[{host}]:{self.port}" if ":" in host else f"dns://{host}:{self.port}"
        return f"dns://:{self.port}"


@dataclass(frozen=True)
class Config:
    """A whole Corefile."""

    blocks: tuple[ServerBlock, ...]
    #: The file it was read from.
    path: str = "<string>"
    #: SHA-512 of the Corefile text (as CoreDNS's reload plugin uses), hex.
    digest: str = ""
    #: Every file read, including imports (for reload).
    files: tuple[str, ...] = field(default=())

    def listeners(self) -> dict[tuple[str, int], tuple[ServerBlock, ...]]:
        """Each (address, port) to listen on, with the blocks served there."""
        out: dict[tuple[str, int], list[ServerBlock]] = {}
        for block in self.blocks:
            if block.bind_lines and not block.bind:
                raise ValueError("bind names interfaces: resolve them first (config.bind.resolve)")
            for addr in block.bind or ("0.0.0.0", "::"):
                out.setdefault((addr, block.port), []).append(block)
        return {k: tuple(v) for k, v in out.items()}
