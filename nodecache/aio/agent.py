"""The agent's lifecycle: build from a Config, serve, reload, shut down.

Order matters on a node (NODELOCAL.md 1.2, 1.5):

* start: interface first (so the local IPs can be bound), then every
  listener, then the firewall rules, then the pidfile: rules never point at a
  socket that is not there, and there is no 60 s window without them;
* reload: a new Config is built beside the running one and swapped in only
  when complete; listeners that stay are re-pointed, never closed; caches whose
  settings did not change keep their entries; any failure keeps the old one;
* shutdown: /health fails for ``lameduck`` while queries are still answered;
  if another agent serves on the node by then (it holds the serving lock,
  aio/servinglock.py; aio/handover.py), this one hands over: it leaves the
  SO_REUSEPORT groups, answers what it already has, and exits without touching
  the rules. Otherwise it is the last one: the rules go (kube-dns takes over
  the ClusterIP), then the listeners are drained and closed. docs/upgrades.md has the whole story.
"""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import socket
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from nodecache.aio.errorlog import ErrorReporter
from nodecache.aio.forwardchain import ForwardChain, forwarder_for, stats_of
from nodecache.aio.forwarder import Forwarder
from nodecache.aio.hostsfile import TICK as HOSTS_TICK
from nodecache.aio.hostsfile import HostsFiles, hosts_stages
from nodecache.aio.http import HttpEndpoints, PluginEndpoints, self_check
from nodecache.aio.loopcheck import check_loops
from nodecache.aio.pidfile import PidFile
from nodecache.aio.resolver import Resolver
from nodecache.aio.queuewatch import watch_queues
from nodecache.aio.server import TCP_DRAIN_FORCE, Listener
from nodecache.aio.handover import successor_serving, take_shared
from nodecache.aio.servinglock import ServingLock
from nodecache.config import bind
from nodecache.config.settings import Config
from nodecache.core import querylog
from nodecache.core import runtime as _runtime
from nodecache.core.handler import SLOT_PROTO, QueryHandler, Zone
from nodecache.core.overload import OverloadDetector
from nodecache.core.stats import AgentStats, ForwardStats
from nodecache.errors import ConfigError, NodecacheError
from nodecache.metrics import StatsCollector, make_registry, server_stats

log = logging.getLogger(__name__)

#: Python's cyclic garbage collector, tuned for a server whose heap is mostly a
#: cache without reference cycles: a collection walks every tracked object, so
#: with the default thresholds (700 allocations) the pauses of gen-2 passes over
#: a full cache were the p99 of hit latency (9.3 ms against 1.9 ms with the
#: collector off, 5,000 q/s, 10,000 names). A young collection is due only after
#: 50,000 more tracked objects live than at the last one: a full cache adds none
#: (each stored entry evicts one), so under a steady miss load none runs.
GC_THRESHOLDS = (50_000, 20, 100)
#: How often what is not frozen is collected and the survivors frozen, s.
GC_INTERVAL = 60.0
#: Every this many passes collect the frozen objects too (a pass over the whole heap,
#: 3-5 times as long as the others with a full cache): frozen garbage in a cycle (with
#: the standard event loop, a closed transport that was alive at a pass) is freed only then.
GC_THAW_EVERY = 10
#: Upper bound for closing listeners and connections at shutdown, s (CoreDNS: 5 s grace).
SHUTDOWN_GRACE = 5.0
#: Where the serving lock lives when neither --serving-lock nor --pidfile says.
DEFAULT_SERVING_LOCK = "/run/nodecache/serving.lock"


class HostNet(Protocol):
    """The node's interface and firewall rules (``nodecache.hostnet.host.HostNetwork``).

    Each call blocks (netlink, iptables): the agent runs them in a thread.
    """

    def check_prerequisites(self) -> None: ...
    def adopt_leftovers(self) -> None: ...
    def ensure_interface(self) -> None: ...
    def ensure_rules(self) -> int: ...
    def resync(self) -> None: ...
    def teardown(self) -> None: ...


@dataclass
class Runtime:
    """Everything built from one Config."""

    config: Config
    zones: list[Zone]
    #: listener (address, port) -> handler
    handlers: dict[tuple[str, int], QueryHandler]
    resolvers: dict[int, Resolver] = field(default_factory=dict)
    forwarders: dict[Zone, Forwarder | ForwardChain] = field(default_factory=dict)
    forward_stats: list[ForwardStats] = field(default_factory=list)
    errors: ErrorReporter = field(default_factory=ErrorReporter)

    def unique_handlers(self) -> list[QueryHandler]:
        return list({id(h): h for h in self.handlers.values()}.values())


class Agent:
    """Serves one Config at a time."""

    def __init__(self, load_config: Callable[[], Config], *, hostnet: HostNet | None = None,
                 stats: AgentStats | None = None, syncinterval: float = 60.0,
                 skipteardown: bool = False, pidfile: str | None = None,
                 extra_metrics_address: str | None = None,
                 watch_interval: float | None = None,
                 cache_snapshot: str | None = None,
                 serving_lock: str | None = None,
                 interfaces: Callable[[str], Sequence[str] | None] | None = None) -> None:
        #: Returns a fresh Config (reads and renders the Corefile); raises ConfigError.
        self.load_config = load_config
        #: An interface's addresses, for ``bind IFACE``; None when the agent cannot look them up.
        self.interfaces = interfaces
        self.hostnet = hostnet
        self.stats = stats or AgentStats()
        self.syncinterval = syncinterval
        self.skipteardown = skipteardown
        self.pidfile = PidFile(pidfile) if pidfile else None
        #: Where the cache is written at shutdown and read back at start (docs/upgrades.md).
        self.cache_snapshot = cache_snapshot
        #: Held shared while serving; tells an exiting agent whether a successor
        #: serves (then it skips the teardown). None: no lock, always the last one.
        self.serving_lock = ServingLock(serving_lock) if serving_lock else None
        #: Check the configuration this often, s, whether or not the Corefile
        #: has ``reload`` (template mode: ConfigMap changes apply within seconds).
        self.watch_interval = watch_interval
        self.runtime: Runtime | None = None
        #: Which handlers index each zone's cache entries (core.runtime rule 2).
        self._index = _runtime.EntryIndex()
        self.listeners: dict[tuple[str, int], Listener] = {}
        self.collector = StatsCollector(sync=self._sync_stats)
        self.registry = make_registry(self.collector)
        #: /ready: true from serving (listeners bound, rules in place) until SIGTERM.
        self.ready = False
        self._http = PluginEndpoints(self.registry, self.stats, lambda: self.ready,
                                     extra_metrics_address=extra_metrics_address)
        self.stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_rejection: str | None = None
        self.hosts_files = HostsFiles(self.stats.hosts_reloaded)
        #: The root logger's level before a ``debug`` block lowered it.
        self._level_before_debug: int | None = None

    # -- building ------------------------------------------------------------

    def _build(self, config: Config, previous: Runtime | None) -> Runtime:
        zones, handlers = _runtime.build(config, previous.zones if previous else (), self._index,
                                         on_log=_log_query, server_stats=server_stats)
        self.hosts_files.check(hosts_stages(zones), time.monotonic())
        return Runtime(config, zones, handlers)

    _pending: Runtime | None = None

    def _set_runtimes(self, running: Runtime | None, pending: Runtime | None) -> None:
        self.runtime, self._pending = running, pending
        self._index.track(h for r in (running, pending) if r is not None
                          for h in r.unique_handlers())

    async def _wire(self, runtime: Runtime, previous: Runtime | None) -> None:
        """Create forwarders (reusing unchanged ones) and resolvers."""
        old = previous.forwarders if previous is not None else {}
        for zone in runtime.zones:
            forward = zone.block.forward
            if forward is None:
                continue
            reuse = next((f for z, f in old.items() if z is zone), None)
            if reuse is None:
                reuse = forwarder_for(zone.block, zone.name)
                await reuse.start()
            runtime.forwarders[zone] = reuse
            runtime.forward_stats.extend(stats_of(reuse))
        for handler in runtime.unique_handlers():
            resolver = Resolver(handler, runtime.forwarders, self.stats, runtime.errors)
            runtime.resolvers[id(handler)] = resolver

    def _load(self) -> Config:
        return self._resolve(self.load_config())

    def _resolve(self, config: Config) -> Config:
        """``config`` with ``bind`` interface names resolved; applies ``debug`` logging."""
        if any(b.bind_lines for b in config.blocks):
            if self.interfaces is None:
                raise ConfigError("bind names an interface, and this agent cannot look"
                                  " interfaces up", config.path)
            config = bind.resolve(config, self.interfaces)
        # debug is process-wide, as in CoreDNS: any block turns it on.
        root = logging.getLogger()
        if any(b.debug for b in config.blocks):
            if self._level_before_debug is None:
                self._level_before_debug = root.level
            root.setLevel(logging.DEBUG)
        elif self._level_before_debug is not None:
            root.setLevel(self._level_before_debug)
            self._level_before_debug = None
        return config

    # -- start ---------------------------------------------------------------

    async def start(self) -> None:
        config = self.load_config()
        if self.hostnet is not None:
            await asyncio.to_thread(self.hostnet.check_prerequisites)
            await asyncio.to_thread(self.hostnet.adopt_leftovers)
            await asyncio.to_thread(self.hostnet.ensure_interface)
        # After the interface exists: ``bind nodelocaldns`` names it (node-cache, too,
        # sets up its interface before the server starts).
        config = self._resolve(config)
        runtime = self._build(config, None)
        self._set_runtimes(self.runtime, runtime)
        await self._wire(runtime, None)
        if self.cache_snapshot:
            self._restore_snapshot(runtime)
        try:
            await self._open_listeners(runtime)
        except OSError as exc:
            await self._close_forwarders(runtime, None)
            raise NodecacheError(f"cannot listen: {exc}") from exc
        self._set_runtimes(runtime, None)
        self._export(runtime)
        await self._http.apply(runtime.config)
        await check_loops(runtime.zones, runtime.handlers,
                          {a: lt.port for a, lt in self.listeners.items()})
        if self.serving_lock is not None and await take_shared(self.serving_lock) \
                and self.hostnet is not None:
            # The exiting agent may have removed the link or its addresses: put them back.
            await asyncio.to_thread(self.hostnet.ensure_interface)
        if self.hostnet is not None:
            added = await asyncio.to_thread(self.hostnet.ensure_rules)
            log.info("firewall rules in place (%s added)", added)
        if self.pidfile:
            self.pidfile.write()
        self.ready = True
        self._spawn(self._load_probe())
        self._spawn(self._gc_loop())
        self._spawn(self._resync_loop())
        self._spawn(self._reload_loop())
        self._spawn(self._hosts_loop())
        self._spawn(self._health_self_check())
        for (address, port), listener in self.listeners.items():
            log.info("serving DNS on %s:%d (udp, tcp)", address, listener.port)

    async def _open_listeners(self, runtime: Runtime) -> None:
        opened: list[tuple[tuple[str, int], Listener]] = []
        try:
            for address, handler in runtime.handlers.items():
                listener = self.listeners.get(address)
                resolver = runtime.resolvers[id(handler)]
                if listener is None:
                    listener = Listener(*address, runtime.config.server_label(address))
                    await listener.start(handler, resolver.submit, self.stats)
                    opened.append((address, listener))
        except BaseException:
            for _, listener in opened:
                await listener.close()
            raise
        # Everything bound: switch over.
        for address, listener in opened:
            self.listeners[address] = listener
        blocks_at = runtime.config.listeners()
        for address, handler in runtime.handlers.items():
            # One listener, several blocks: the last with ``timeouts`` sets them (as CoreDNS).
            timeouts = next((b.timeouts for b in reversed(blocks_at[address]) if b.timeouts),
                            None)
            self.listeners[address].swap(handler, runtime.resolvers[id(handler)].submit,
                                         timeouts)
        for address in [a for a in self.listeners if a not in runtime.handlers]:
            await self.listeners.pop(address).close()

    @property
    def http(self) -> HttpEndpoints:
        """The HTTP listeners serving now (replaced when a reload moves them)."""
        return self._http.endpoints

    def _sync_stats(self) -> None:
        """Fold the hit path's tallies into the counters (before each scrape)."""
        if self.runtime is not None:
            for handler in self.runtime.unique_handlers():
                handler.sync_stats()

    def _export(self, runtime: Runtime) -> None:
        self.collector.set_sources(
            servers=[s for z in runtime.zones for s in z.all_stats()[0]],
            caches=[c for z in runtime.zones for c in z.all_stats()[1]],
            forwards=runtime.forward_stats, agent=self.stats)

    # -- running -------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hosts_loop(self) -> None:
        """Re-read changed hosts files (hosts' ``reload``)."""
        while True:
            try:
                await asyncio.wait_for(self.stopping.wait(), HOSTS_TICK)
                return
            except asyncio.TimeoutError:
                pass
            runtime = self.runtime
            if runtime is not None:
                self.hosts_files.check(hosts_stages(runtime.zones), time.monotonic())

    async def _gc_loop(self) -> None:
        """Collect cyclic garbage on our schedule and keep live objects out of later walks."""
        gc.set_threshold(*GC_THRESHOLDS)
        passes = 0
        while True:
            collect_garbage(passes % GC_THAW_EVERY == 0)
            passes += 1
            try:
                await asyncio.wait_for(self.stopping.wait(), GC_INTERVAL)
                return
            except asyncio.TimeoutError:
                pass

    async def _load_probe(self) -> None:
        """Flag the resolvers overloaded while queries queue up on a UDP socket (core/overload.py)."""
        await watch_queues(self._udp_sockets, OverloadDetector(), self._set_overloaded)

    def _udp_sockets(self) -> list[socket.socket]:
        return [listener.udp_sock for listener in self.listeners.values() if listener.udp_sock is not None]

    def _set_overloaded(self, state: bool) -> None:
        if self.runtime is not None:
            for resolver in self.runtime.resolvers.values():
                resolver.overloaded = state
        log.warning("%s", "queries are queueing up: shedding misses of the busiest "
                    "clients" if state else "keeping up again")

    async def _resync_loop(self) -> None:
        if self.hostnet is None:
            return
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), self.syncinterval)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await asyncio.to_thread(self.hostnet.resync)
            except Exception:
                log.exception("re-checking the interface and rules failed")

    async def _health_self_check(self) -> None:
        """The ``health`` plugin's self-check (coredns_health_request_* metrics)."""
        # The endpoints are replaced on reload: look the address up afresh each time.
        await self_check(lambda: self.http.address_of("/health"), "/health", self.stats)

    async def _reload_loop(self) -> None:
        """The ``reload`` plugin: poll the Corefile's digest."""
        while not self.stopping.is_set():
            # Only the settings are held across the wait: a runtime held here would stay
            # alive after a reload replaced it.
            settings = next((b.reload for b in self.runtime.config.blocks if b.reload), None) \
                if self.runtime else None
            if self.watch_interval:
                delay = self.watch_interval
            elif settings is not None:
                delay = settings.interval + random.uniform(0, settings.jitter)
            else:
                delay = 5.0
            try:
                await asyncio.wait_for(self.stopping.wait(), delay)
                return
            except asyncio.TimeoutError:
                pass
            if settings is not None or self.watch_interval:
                await self.reload()

    async def reload(self) -> bool:
        """Load the config again and apply it if it changed; False if it was rejected."""
        if self.stopping.is_set():
            return False
        async with self._reload_lock:
            previous = self.runtime
            assert previous is not None
            try:
                config = self._load()
            except (ConfigError, OSError) as exc:
                # The same broken file is reported once, not on every poll.
                if str(exc) != self._last_rejection:
                    self._last_rejection = str(exc)
                    self.stats.reload_failed += 1
                    log.error("reload: keeping the running configuration: %s", exc)
                return False
            self._last_rejection = None
            if config.digest and config.digest == previous.config.digest:
                return True
            runtime = self._build(config, previous)
            self._set_runtimes(self.runtime, runtime)
            try:
                await self._wire(runtime, previous)
                await self._open_listeners(runtime)
                await self._http.apply(config)
            except (OSError, NodecacheError, ValueError) as exc:
                self._set_runtimes(self.runtime, None)
                await self._close_forwarders(runtime, previous)
                # Back to the previous listeners (keyed by the Corefile's address: with
                # port 0 a listener's bound port differs) and HTTP endpoints.
                self._http.forget()
                try:
                    await self._open_listeners(previous)
                    await self._http.apply(previous.config)
                except (OSError, NodecacheError, ValueError):
                    log.exception("reload: could not fully restore the running configuration")
                self.stats.reload_failed += 1
                log.error("reload: keeping the running configuration: %s", exc)
                return False
            self._set_runtimes(runtime, None)
            self._export(runtime)
            await self._close_forwarders(previous, runtime)
            # Once this frame lets go of it, the previous runtime is garbage, frozen, and
            # partly in cycles (a dropped cache and its entries point at each other).
            asyncio.get_running_loop().call_soon(collect_garbage, True)
            log.info("reload: now serving %s (%s)", config.path, config.digest[:12])
            return True

    async def _close_forwarders(self, runtime: Runtime, keep: Runtime | None) -> None:
        runtime.errors.close()
        kept = set(map(id, keep.forwarders.values())) if keep else set()
        for forwarder in runtime.forwarders.values():
            if id(forwarder) not in kept:
                await forwarder.close()

    # -- stopping ------------------------------------------------------------

    async def shutdown(self) -> None:
        """Lameduck, teardown, close; bounded in time."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        # /ready fails from the signal on, so that whatever routes by readiness
        # stops sending first; /health stays 200 until the listeners close.
        self.ready = False
        # No reload or resync may start (or finish) behind our back: a reload
        # racing SIGTERM is how node-cache hung (kubernetes/dns#394).
        for task in list(self._tasks):
            task.cancel()
        runtime = self.runtime
        lameduck = max((b.health.lameduck for b in runtime.config.blocks if b.health),
                       default=0.0) if runtime else 0.0
        if lameduck:
            log.info("lameduck: still answering for %.1fs", lameduck)
        successor = await successor_serving(self.serving_lock, lameduck)
        if successor:
            log.info("another agent serves on this node (%s): handing over to it",
                     self.serving_lock.path if self.serving_lock else "")
        if self.hostnet is not None and successor:
            log.info("skipping teardown: the interface and rules stay for the other agent")
        elif self.hostnet is not None and not self.skipteardown:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.hostnet.teardown),
                                       SHUTDOWN_GRACE * 2)
            except Exception:
                log.exception("teardown failed")
        for task in list(self._tasks):
            task.cancel()
        try:
            await asyncio.wait_for(self._close_all(), SHUTDOWN_GRACE * 2)
        except asyncio.TimeoutError:
            log.warning("shutdown: gave up waiting for connections to close")
        if self.cache_snapshot and self.runtime is not None:
            self._write_snapshot(self.runtime)
        if self.pidfile and not successor:  # a successor writes its own (pidfile.py)
            self.pidfile.remove()
        if self.serving_lock is not None:
            self.serving_lock.release()

    # -- cache snapshots (nodecache.core.snapshot) -------------------------------

    def _restore_snapshot(self, runtime: Runtime) -> None:
        """Load the snapshot into the new runtime's caches; any problem means a cold start."""
        from nodecache.core import snapshot  # noqa: PLC0415
        path = self.cache_snapshot
        assert path is not None
        loop = asyncio.get_running_loop()
        try:
            with open(path, "rb") as f:
                data = f.read(snapshot.MAX_SIZE + 1)
            restored = snapshot.load(data, loop.time(), time.time())
        except FileNotFoundError:
            log.info("no cache snapshot at %s: starting with an empty cache", path)
            return
        except (OSError, snapshot.SnapshotError) as exc:
            log.warning("ignoring the cache snapshot %s: %s", path, exc)
            return
        now = loop.time()
        zones = {snapshot.zone_label(z.name, z.block.port): z for z in runtime.zones
                 if z.cache is not None}
        count = 0
        for item in restored:
            zone = zones.get(item.zone)
            if zone is None or zone.cache is None:
                continue
            entry = item.entry
            if now >= entry.expires + zone.cache.settings.serve_stale:
                continue  # expired beyond what serve_stale may still use
            zone.cache.put(entry, now)
            count += 1
        for handler in runtime.unique_handlers():
            for zone in {id(z): z for z in handler.zones.values()}.values():
                if zone.cache is not None:
                    for entry in zone.cache.entries():
                        handler.index_add(entry)
        log.info("restored %d cached answers from %s (%d in the snapshot)", count, path,
                 len(restored))

    def _write_snapshot(self, runtime: Runtime) -> None:
        """Write every cached answer to ``cache_snapshot`` (atomically: temp file, rename)."""
        from nodecache.core import snapshot  # noqa: PLC0415
        path = self.cache_snapshot
        assert path is not None
        entries = [(snapshot.zone_label(z.name, z.block.port), e) for z in runtime.zones
                   if z.cache is not None for e in z.cache.entries()]
        try:
            data = snapshot.dump(entries, asyncio.get_running_loop().time(), time.time())
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            log.info("wrote %d cached answers to %s", len(entries), path)
        except OSError as exc:
            log.warning("could not write the cache snapshot %s: %s", path, exc)

    async def _drain(self) -> None:
        """Leave the SO_REUSEPORT groups, then answer everything already ours.

        New datagrams and connections go to the other sockets of each group (a
        successor's), or nowhere once we are the last; queued datagrams are read,
        and misses in flight (bounded by the forward budget) are answered from the
        socket their query came in on, before anything is closed.
        """
        listeners = list(self.listeners.values())
        for listener in listeners:
            await listener.stop_receiving()
        resolvers = list(self.runtime.resolvers.values()) if self.runtime else []
        loop = asyncio.get_running_loop()
        began = loop.time()
        deadline = began + SHUTDOWN_GRACE
        queued = 0
        at_start = sum(r.busy for r in resolvers) + sum(lt.busy() for lt in listeners)
        while True:
            read = sum(listener.read_queued() for listener in listeners)
            queued += read
            now = loop.time()
            for listener in listeners:  # TCP: end idle connections, all of them near the end
                listener.end_connections(now, force=now >= deadline - TCP_DRAIN_FORCE)
            inflight = sum(r.busy for r in resolvers) \
                + sum(listener.busy() for listener in listeners)
            if not read and not inflight:
                log.info("drained in %.0f ms: %d queries were in flight, %d more read from "
                         "the socket queues", (loop.time() - began) * 1000, at_start, queued)
                break
            if loop.time() >= deadline:
                log.warning("shutdown: %d queries still in flight after %.0fs", inflight,
                            SHUTDOWN_GRACE)
                break
            await asyncio.sleep(0.01)

    async def _close_all(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("draining the listeners failed")
        for listener in self.listeners.values():
            await listener.close()
        self.listeners.clear()
        runtime = self.runtime
        if runtime is not None:
            for resolver in runtime.resolvers.values():
                await resolver.close()
            await self._close_forwarders(runtime, None)
        await self._http.close()

    async def run(self) -> None:
        """Start, then serve until SIGTERM/SIGINT; SIGUSR1 reloads."""
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, done.set)
        loop.add_signal_handler(signal.SIGINT, done.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: self._spawn(self.reload()))
        try:
            await self.start()
            await done.wait()
            log.info("signal received: shutting down")
        finally:
            await self.shutdown()


def collect_garbage(thaw: bool) -> None:
    """Collect cyclic garbage, then freeze what is left out of the collector's later walks.

    Frozen objects are never collected: with *thaw*, the frozen are collected too.
    """
    if thaw:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    _trim_heap()


def _trim_heap() -> None:
    """Hand the C heap's free pages back to the kernel (glibc ``malloc_trim``): what
    start-up, a reload or a collection freed is otherwise kept, and counted in the
    container's working set (about 1 MB after start-up). Elsewhere (musl) nothing."""
    global _malloc_trim
    if _malloc_trim is None:
        import ctypes  # noqa: PLC0415 - once, here only
        _malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", False)
    if _malloc_trim:
        _malloc_trim(0)


#: glibc's ``malloc_trim``; False where there is none; None until first asked.
_malloc_trim: Any = None


def _log_query(zone: Zone, addr: object, query: bytes, reply: bytes, slot: int,
               duration: float) -> None:
    """The ``log`` plugin: one CoreDNS Common Log Format line per answered query."""
    try:
        line = querylog.answered_line(zone.block.log, addr, query, reply, SLOT_PROTO[slot & 3],
                                      duration)
    except Exception:  # a log line must never cost the answer
        log.debug("could not format a query log line", exc_info=True)
        return
    if line is not None:
        logging.getLogger("nodecache.query").info("%s", line)
