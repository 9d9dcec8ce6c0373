"""The seven scenarios, run against the cluster DNS directly and through each node cache.

Each cache runs alone, pinned to the server core, and every scenario that needs
an empty cache gets a fresh process. All figures land in one dict (see
:class:`Runner.results`) that :mod:`nodebench.report` turns into the report.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import servers as S
from . import topology as T
from . import zone as Z
from .host import BenchError, Cleanup, Daemon, Interrupted, busy_loops, log
from .memory import measure as measure_memory
from .memory import process_memory
from .measure import PerfResult, conntrack_entries, conntrack_flush, dnsperf, probe, summary_ms

LOSS_LIMIT = 0.001  # 0.1 %
#: Unloaded latency: 1,000 q/s paced, so queries rarely overlap. (dnsperf's
#: closed loop with one outstanding query, ``-q 1``, stalls between queries.)
LATENCY_ARGS = ["-n", "1", "-Q", "1000", "-q", "20", "-t", "2"]
#: Log line nodecache writes when it starts shedding misses (aio/agent.py).
SHEDDING_LINE = "shedding misses"


@dataclass(frozen=True)
class Plan:
    """Sizes and durations; ``--quick`` shrinks them."""

    quick: bool
    services: int
    delay_ms: float
    ttl: int
    latency_names: int
    search_names: int
    trial_s: float
    search_steps: int
    fixed_rate: int
    fixed_s: float
    miss_names: int
    memory_points: tuple[int, ...]
    conntrack_queries: int
    #: Hits under machine load: busy loops on the server core, paced rates, seconds per run.
    load_hogs: tuple[int, ...]
    load_rates: tuple[int, ...]
    load_s: float

    @classmethod
    def make(cls, *, quick: bool, services: int, delay_ms: float, ttl: int) -> Plan:
        if quick:
            return cls(quick, services, delay_ms, ttl, latency_names=400, search_names=60, trial_s=2.0,
                       search_steps=3, fixed_rate=5000, fixed_s=3.0, miss_names=3000,
                       memory_points=(10_000, 20_000), conntrack_queries=2000,
                       load_hogs=(4,), load_rates=(1000, 5000), load_s=3.0)
        return cls(quick, services, delay_ms, ttl, latency_names=4000, search_names=400, trial_s=5.0,
                   search_steps=5, fixed_rate=5000, fixed_s=10.0, miss_names=20_000,
                   memory_points=(10_000, 100_000), conntrack_queries=10_000,
                   load_hogs=(2, 8), load_rates=(1000, 5000), load_s=8.0)


def _perf_dict(r: PerfResult, *, latency: bool = False) -> dict[str, Any]:
    d: dict[str, Any] = {
        "sent": r.sent, "completed": r.completed, "lost": r.lost, "loss": r.loss,
        "qps": r.qps, "run_time_s": r.run_time, "rcodes": r.rcodes,
        "dnsperf_process_busy": r.loadgen_busy,
        "cores": r.cores,
    }
    if r.server_cpu is not None:
        d["server_cpu_s"] = r.server_cpu
        d["cpu_us_per_answer"] = r.server_cpu / r.completed * 1e6 if r.completed else math.nan
    if latency:
        d["latency_ms"] = summary_ms(r.latencies)
    return d


class Runner:
    def __init__(self, cleanup: Cleanup, topo: T.Topology, work: Path, plan: Plan) -> None:
        self.cleanup, self.topo, self.work, self.plan = cleanup, topo, work, plan
        self.results: dict[str, Any] = {"calibration": {}, "direct": {}, "caches": {}}
        #: raw latency samples (s) for the CDF plots, not written to results.json
        self.samples: dict[str, list[float]] = {}
        self.relay: Daemon | None = None
        self.relay_stats: Path | None = None
        self.nodecache_help = ""

    # --- set-up ----------------------------------------------------------------
    def start_cluster_dns(self) -> None:
        p = self.plan
        log(f"generating cluster.local with {p.services} services")
        self.zone = Z.generate(self.work / "zones", services=p.services, ttl=p.ttl)
        log(f"zone files: {self.zone.records} records; starting knotd")
        S.start_knot(self.cleanup, self.topo, self.work, self.zone.zone_files)
        self.relay, self.relay_stats = S.start_relay(
            self.cleanup, self.topo, self.work, listen=T.CLUSTER_DNS, delay_ms=p.delay_ms, name="relay")
        S.start_relay(self.cleanup, self.topo, self.work, listen=T.RELAY0_DNS, delay_ms=0.0, name="relay0")
        q = self.work / "queries"
        q.mkdir(exist_ok=True)
        self.latency_file = Z.write_queries(q / "latency.txt", Z.cluster_queries(self.zone, p.latency_names))
        self.search_names = Z.external_names(p.search_names, "host")
        self.search_file = Z.write_queries(q / "search.txt", self.search_names)

    def counters(self) -> dict[str, int]:
        assert self.relay is not None and self.relay_stats is not None
        return S.relay_counters(self.relay, self.relay_stats)

    # --- without a node cache --------------------------------------------------
    def run_direct(self) -> None:
        p, pod = self.plan, self.topo.pod
        cal = self.results["calibration"]
        log("calibration: the authoritative server, the relay without delay, the relay with delay")
        for key, addr, mode in (("auth", T.AUTH_DNS, "udp"), ("relay_no_delay", T.RELAY0_DNS, "udp"),
                                ("relay_delay", T.CLUSTER_DNS, "udp"), ("auth_tcp", T.AUTH_DNS, "tcp"),
                                ("relay_delay_tcp", T.CLUSTER_DNS, "tcp")):
            dnsperf(pod, addr, self.latency_file, ["-n", "1", "-q", "20", "-t", "2", "-m", mode])  # warm up
            r = dnsperf(pod, addr, self.latency_file, [*LATENCY_ARGS, "-m", mode], verbose=True)
            cal[key] = _perf_dict(r, latency=True)
            self.samples[f"cal:{key}"] = r.latencies
        auth, r0, rd = (cal[k]["latency_ms"]["p50"] for k in ("auth", "relay_no_delay", "relay_delay"))
        cal["nominal_added_ms"] = 2 * p.delay_ms
        cal["relay_processing_ms"] = r0 - auth
        cal["delay_element_added_ms"] = rd - auth
        cal["delay_error_ms"] = (rd - r0) - 2 * p.delay_ms
        cal["delay_element_added_tcp_ms"] = (cal["relay_delay_tcp"]["latency_ms"]["p50"]
                                             - cal["auth_tcp"]["latency_ms"]["p50"])
        cal["method"] = "relay"  # no netem qdisc in this kernel
        log(f"  p50 auth {auth:.3f} ms, relay {r0:.3f} ms, relay+delay {rd:.3f} ms "
            f"(nominal +{2 * p.delay_ms:.2f} ms)")

        d = self.results["direct"]
        d["latency"] = cal["relay_delay"]
        self.samples["direct"] = self.samples["cal:relay_delay"]

        log("search path, no node cache")
        d["searchpath"] = self._searchpath(T.CLUSTER_DNS)

        log("miss throughput, no node cache (UDP to the cluster DNS)")
        names = Z.write_queries(self.work / "queries" / "miss-direct.txt", Z.pod_names("direct", p.miss_names))
        r = dnsperf(pod, T.CLUSTER_DNS, names, ["-n", "1", "-q", "100", "-c", "4", "-t", "3"], verbose=True)
        d["miss_throughput"] = _perf_dict(r, latency=True)
        self.samples["direct:miss_tp"] = r.latencies

        log("conntrack, no node cache")
        d["conntrack"] = self._conntrack(T.CLUSTER_DNS)

    # --- one node cache ----------------------------------------------------------
    def run_cache(self, cache: S.Cache, *, load_only: bool = False) -> None:
        res: dict[str, Any] = {"status": "running", "ip": cache.ip,
                               "cluster_transport": cache.cluster_transport, "notes": cache.notes}
        self.results["caches"][cache.name] = res
        try:
            if load_only:
                log(f"== {cache.name} on {cache.ip} (pinned to core {S.SERVER_CPU}): 7. hits under machine load")
                res["under_load"] = self.hits_under_load(cache, self._start(cache))
            else:
                self._run_cache(cache, res)
            res["status"] = "ok"
        except Interrupted:
            res["status"] = "interrupted"
            raise
        except BenchError as exc:
            res["status"] = f"failed: {exc}"
            log(f"{cache.name}: FAILED: {exc}")
        finally:
            S.stop_cache(self.topo, cache)

    def _start(self, cache: S.Cache, fresh: bool = True) -> Daemon:
        if fresh:
            return S.restart_cache(self.cleanup, self.topo, self.work, cache, self.nodecache_help)
        assert cache.daemon is not None
        return cache.daemon

    def _run_cache(self, cache: S.Cache, res: dict[str, Any]) -> None:
        p, pod, name = self.plan, self.topo.pod, cache.name
        log(f"== {name} on {cache.ip} (pinned to core {S.SERVER_CPU})")
        daemon = self._start(cache)
        res["rss_idle_bytes"] = measure_memory(daemon.pid, cache.cgroup)["rss_bytes"]

        # 1. latency: miss then hit, same queries, one outstanding at a time
        log(f"{name}: 1. latency, cache miss then hit ({p.latency_names} names at 1,000 q/s)")
        miss = dnsperf(pod, cache.ip, self.latency_file, LATENCY_ARGS, verbose=True)
        hit = dnsperf(pod, cache.ip, self.latency_file, LATENCY_ARGS, verbose=True)
        res["latency"] = {"miss": _perf_dict(miss, latency=True), "hit": _perf_dict(hit, latency=True)}
        self.samples[f"{name}:miss"], self.samples[f"{name}:hit"] = miss.latencies, hit.latencies

        if cache.hit_only:
            log(f"{name}: 3. maximum hit throughput (<= {LOSS_LIMIT:.1%} loss)")
            res["throughput"] = self._hit_throughput(cache, daemon)
            res["memory"] = {"idle": measure_memory(daemon.pid, cache.cgroup)}
            log(f"{name}: 7. hits under machine load")
            res["under_load"] = self.hits_under_load(cache, daemon)
            return

        # 2. search path
        log(f"{name}: 2. search path (ndots:5), cold and warm cache")
        res["searchpath"] = {"cold": self._searchpath(cache.ip), "warm": self._searchpath(cache.ip)}

        # 3. hit throughput on one core
        log(f"{name}: 3. maximum hit throughput (<= {LOSS_LIMIT:.1%} loss)")
        res["throughput"] = self._hit_throughput(cache, daemon)

        # 7. (here: the cache is warm) hits while other work keeps the server core busy
        log(f"{name}: 7. hits under machine load")
        res["under_load"] = self.hits_under_load(cache, daemon)

        # 4. misses through the upstream
        log(f"{name}: 4. miss throughput through the upstream ({p.miss_names} new names)")
        names = Z.write_queries(self.work / "queries" / f"miss-{name}.txt", Z.pod_names(f"m{name}", p.miss_names))
        S.stop_cache(self.topo, cache)
        # Counted from before the start, so connections opened by the readiness
        # query (and then reused) count too; that query adds one upstream query.
        c0 = self.counters()
        daemon = self._start(cache)
        r = dnsperf(pod, cache.ip, names, ["-n", "1", "-q", "100", "-c", "4", "-t", "3"], verbose=True,
                    server_pid=daemon.pid)
        open_at_end = self._upstream_connections()
        c1 = self.counters()
        res["miss_throughput"] = _perf_dict(r, latency=True)
        res["miss_throughput"]["upstream"] = {
            "tcp_connections_opened": c1["tcp_connections"] - c0["tcp_connections"],
            "tcp_connections_open_at_end": open_at_end,
            "tcp_queries": c1["tcp_queries"] - c0["tcp_queries"],
            "udp_queries": c1["udp_queries"] - c0["udp_queries"],
        }
        self.samples[f"{name}:miss_tp"] = r.latencies

        # 5. memory
        log(f"{name}: 5. memory after caching {', '.join(map(str, p.memory_points))} names")
        daemon = self._start(cache)
        idle = measure_memory(daemon.pid, cache.cgroup)
        mem: dict[str, Any] = {"idle_bytes": idle["rss_bytes"], "idle": idle, "after": {}}
        done = 0
        for point in p.memory_points:
            batch = Z.pod_names(f"r{name}{point}", point - done)
            f = Z.write_queries(self.work / "queries" / f"mem-{name}-{point}.txt", batch)
            r = dnsperf(pod, cache.ip, f, ["-n", "1", "-q", "100", "-c", "4", "-t", "3"])
            done = point
            mem["after"][str(point)] = {**measure_memory(daemon.pid, cache.cgroup), "answered": r.completed,
                                        "queries": r.sent}
        # The first process alone: nodecache's supervisor (its worker is the child).
        mem["first_process"] = process_memory(daemon.pid)
        res["memory"] = mem

        # 6. conntrack
        log(f"{name}: 6. conntrack entries per {p.conntrack_queries} pod queries")
        ct: dict[str, Any] = {"with_notrack": self._conntrack(cache.ip, warm=True),
                              "notrack_rules_by": "nodecache" if cache.own_notrack else "bench"}
        S.restart_cache(self.cleanup, self.topo, self.work, cache, self.nodecache_help, notrack=False)
        ct["without_notrack"] = self._conntrack(cache.ip, warm=True)
        res["conntrack"] = ct

    def hits_under_load(self, cache: S.Cache, daemon: Daemon) -> dict[str, Any]:
        """Section 7: cached names at paced rates while busy loops share the server core.

        Keyed ``h{loops}_q{rate}``. For nodecache, ``shedding_started`` counts the
        times it turned miss shedding on during the run (its log line).
        """
        p, hits = self.plan, self.latency_file
        out: dict[str, Any] = {}
        for hogs in p.load_hogs:
            for rate in p.load_rates:
                dnsperf(self.topo.pod, cache.ip, hits, ["-n", "1", "-q", "50", "-t", "2"])  # (re)warm every name
                shed0 = daemon.tail(10**6).count(SHEDDING_LINE)
                with busy_loops(S.SERVER_CPU, hogs, p.load_s + 10):
                    time.sleep(0.3)  # let the scheduler settle on the new mix
                    r = self._hit_trial(cache, daemon, hits, rate, p.load_s, verbose=True)
                run = {"busy_loops": hogs, "target_qps": rate, **_perf_dict(r, latency=True),
                       "answered": r.completed / r.sent if r.sent else math.nan}
                if cache.name == "nodecache":
                    run["shedding_started"] = daemon.tail(10**6).count(SHEDDING_LINE) - shed0
                out[f"h{hogs}_q{rate}"] = run
                lat = run["latency_ms"]
                log(f"  {hogs} busy loops, -Q {rate}: answered {run['answered']:.2%}, p50 {lat['p50']:.2f} ms, "
                    f"p99 {lat['p99']:.2f} ms, CPU {run.get('cpu_us_per_answer', math.nan):.1f} us/answer"
                    + (f", shedding started {run['shedding_started']}x" if "shedding_started" in run else ""))
        return out

    def _upstream_connections(self) -> int:
        """Established TCP connections to the cluster DNS address, from ss in the dns namespace."""
        from .host import sh
        cp = sh(["ss", "-Htn", "state", "established", "src", T.CLUSTER_DNS], ns=self.topo.dns, check=False)
        return sum(1 for line in cp.stdout.splitlines() if f"{T.CLUSTER_DNS}:53" in line)

    # --- pieces --------------------------------------------------------------------
    def _searchpath(self, server: str) -> dict[str, Any]:
        out = probe(self.topo.pod, "searchpath", server, self.search_file)
        lookups = out.pop("lookups_s")
        out["lookup_ms"] = summary_ms(lookups)
        out["queries_per_lookup"] = out["queries"] / max(1, out["names"])
        self.samples.setdefault(f"search:{server}", lookups)
        return out

    def _conntrack(self, server: str, warm: bool = False) -> dict[str, Any]:
        p = self.plan
        names = self.work / "queries" / "conntrack.txt"
        if not names.exists():
            lines = self.latency_file.read_text().split("\n")[:200]
            Z.write_queries(names, [l for l in lines if l])
        if warm:
            dnsperf(self.topo.pod, server, names, ["-n", "1", "-q", "20", "-t", "2"])
        conntrack_flush(self.topo)
        out = probe(self.topo.pod, "fresh", server, names, "--count", str(p.conntrack_queries))
        entries = conntrack_entries(self.topo)
        scale = 10_000 / p.conntrack_queries
        out["entries"] = entries
        out["per_10k_queries"] = {k: v * scale for k, v in entries.items()}
        return out

    def _hit_trial(self, cache: S.Cache, daemon: Daemon, hits: Path, rate: float | None,
                   seconds: float, verbose: bool = False) -> PerfResult:
        args = ["-l", f"{seconds:g}", "-c", "4", "-q", "200", "-t", "1"]
        if rate:
            args += ["-Q", str(int(rate))]
        return dnsperf(self.topo.pod, cache.ip, hits, args, verbose=verbose, server_pid=daemon.pid)

    @staticmethod
    def _core(r: PerfResult, cpu: int, what: str = "busy") -> float:
        return r.cores.get(f"cpu{cpu}_{what}", math.nan)

    def _hit_throughput(self, cache: S.Cache, daemon: Daemon) -> dict[str, Any]:
        p = self.plan
        hits = self.latency_file
        dnsperf(self.topo.pod, cache.ip, hits, ["-n", "1", "-q", "50", "-t", "2"])  # warm every name
        trials: list[dict[str, Any]] = []

        def trial(rate: float | None) -> PerfResult:
            r = self._hit_trial(cache, daemon, hits, rate, p.trial_s)
            trials.append({"target_qps": rate, **_perf_dict(r)})
            log(f"  {'unthrottled' if rate is None else f'-Q {rate:.0f}'}: {r.qps:,.0f} q/s, "
                f"loss {r.loss:.3%}, server {r.server_cpu or 0:.2f} s CPU; core busy: "
                f"dnsperf's {self._core(r, S.LOADGEN_CPU):.0%}, server's {self._core(r, S.SERVER_CPU):.0%}, "
                f"steal {self._core(r, S.SERVER_CPU, 'steal'):.0%}")
            return r

        best = trial(None)
        if best.loss > LOSS_LIMIT:
            lo, hi = 0.0, best.qps
            best_ok: PerfResult | None = None
            for _ in range(p.search_steps):
                mid = (lo + hi) / 2 if best_ok else hi * 0.8
                r = trial(mid)
                if r.loss <= LOSS_LIMIT:
                    lo = mid
                    if best_ok is None or r.qps > best_ok.qps:
                        best_ok = r
                else:
                    hi = mid
            if best_ok is None:
                raise BenchError(f"no rate with <= {LOSS_LIMIT:.1%} loss found")
            best = best_ok
        log(f"  fixed {p.fixed_rate} q/s for {p.fixed_s:g} s")
        fixed = self._hit_trial(cache, daemon, hits, p.fixed_rate, p.fixed_s, verbose=True)
        self.samples[f"{cache.name}:fixed"] = fixed.latencies
        return {
            "max_qps": best.qps,
            "max_loss": best.loss,
            "cpu_us_per_answer_at_max": best.server_cpu / best.completed * 1e6 if best.completed and best.server_cpu is not None else math.nan,
            "loadgen_core_busy_at_max": self._core(best, S.LOADGEN_CPU),
            "server_core_busy_at_max": self._core(best, S.SERVER_CPU),
            "steal_at_max": max(self._core(best, S.LOADGEN_CPU, "steal"), self._core(best, S.SERVER_CPU, "steal")),
            "fixed_rate_qps": p.fixed_rate,
            "fixed": _perf_dict(fixed, latency=True),
            "cpu_us_per_answer_at_fixed": fixed.server_cpu / fixed.completed * 1e6 if fixed.completed and fixed.server_cpu is not None else math.nan,
            "p99_ms_at_fixed": summary_ms(fixed.latencies)["p99"],
            "trials": trials,
        }
