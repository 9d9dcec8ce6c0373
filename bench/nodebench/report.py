"""results.json, report.md and the PNG plots, from the runner's results."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodecache.benchclient.report import clean

CACHES = ("nodecache", "node-cache", "unbound", "dnsmasq", "floor")
#: What nodecache is compared with, in this order: the system it replaces first.
REFS = ("node-cache", "unbound", "dnsmasq", "floor")
#: Measured in the hit scenarios only; its other cells say "-".
HIT_ONLY = ("floor",)


def get(d: Any, *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.{digits}g}" if abs(v) < 1 else f"{v:.{digits}f}".rstrip("0").rstrip(".")
    return str(v)


def ratio(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "n/a"
    if not (math.isfinite(a) and math.isfinite(b)):
        return "n/a"
    if a == 0 and b == 0:
        return "same (0)"
    if b == 0:
        return "inf (reference 0)"
    return f"{a / b:.2f}x"


def table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


# (label, unit, getter, target text, target check or None). A check gets nodecache's
# figure and every server's figure (None where not measured).
Check = Callable[[float, dict[str, Any]], bool]
Figure = tuple[str, str, Callable[[dict[str, Any], dict[str, Any]], Any], str, Check | None]


def _vs(ref: str, factor: float, *, at_least: bool = False, plus: float = 0.0) -> Check:
    """Within *factor* of (or at least *factor* times) *ref*'s figure, plus *plus*; met
    vacuously when *ref* was not measured (the report says so)."""
    def check(v: float, vals: dict[str, Any]) -> bool:
        r = vals.get(ref)
        if not isinstance(r, (int, float)):
            return True
        return v >= factor * r if at_least else v <= factor * r + plus
    return check


def _all(*checks: Check) -> Check:
    return lambda v, vals: all(c(v, vals) for c in checks)


def _abs(test: Callable[[float], bool]) -> Check:
    return lambda v, vals: test(v)


def figures() -> list[Figure]:
    mb = 1e6
    return [
        ("hit throughput, one core, <= 0.1% loss", "q/s", lambda c, r: get(c, "throughput", "max_qps"),
         ">= 3x node-cache, >= 60,000", _all(_abs(lambda v: v >= 60_000), _vs("node-cache", 3, at_least=True))),
        ("CPU per answered hit at that rate", "us", lambda c, r: get(c, "throughput", "cpu_us_per_answer_at_max"),
         "<= 1.2x floor, < 16", _all(_abs(lambda v: v < 16), _vs("floor", 1.2))),
        ("CPU per answered hit at 5,000 q/s", "us", lambda c, r: get(c, "throughput", "cpu_us_per_answer_at_fixed"),
         "<= 1.2x unbound", _vs("unbound", 1.2)),
        ("p99 hit latency at 5,000 q/s", "ms", lambda c, r: get(c, "throughput", "p99_ms_at_fixed"),
         "< 1.5", _abs(lambda v: v < 1.5)),
        ("p99 hit latency under machine load (section 7's heaviest run)", "ms",
         lambda c, r: get(c, "under_load", _heaviest(r), "latency_ms", "p99"), "<= node-cache",
         _vs("node-cache", 1)),
        ("answered under machine load (section 7's heaviest run)", "",
         lambda c, r: get(c, "under_load", _heaviest(r), "answered"), ">= node-cache",
         _vs("node-cache", 1, at_least=True)),
        ("p50 hit latency at 1,000 q/s", "ms", lambda c, r: get(c, "latency", "hit", "latency_ms", "p50"),
         "", None),
        ("p50 miss latency at 1,000 q/s", "ms", lambda c, r: get(c, "latency", "miss", "latency_ms", "p50"),
         "<= node-cache + 0.05", _vs("node-cache", 1, plus=0.05)),
        ("p50 miss latency minus direct p50", "ms",
         lambda c, r: _sub(get(c, "latency", "miss", "latency_ms", "p50"),
                           get(r, "direct", "latency", "latency_ms", "p50")),
         "<= 0.3", _abs(lambda v: v <= 0.3)),
        ("miss throughput through the upstream", "q/s", lambda c, r: get(c, "miss_throughput", "qps"),
         ">= 2x node-cache", _vs("node-cache", 2, at_least=True)),
        ("CPU per miss at that rate", "us", lambda c, r: get(c, "miss_throughput", "cpu_us_per_answer"),
         "<= 20", _abs(lambda v: v <= 20)),
        ("p50 miss latency, 100 outstanding", "ms", lambda c, r: get(c, "miss_throughput", "latency_ms", "p50"),
         "<= node-cache", _vs("node-cache", 1)),
        ("search-path lookup p50, warm cache", "ms",
         lambda c, r: get(c, "searchpath", "warm", "lookup_ms", "p50"), "", None),
        ("RSS with 10,000 cached names (sum over processes)", "MB",
         lambda c, r: _div(get(c, "memory", "after", "10000", "rss_bytes"), mb), "< 50", _abs(lambda v: v < 50)),
        ("PSS with 10,000 cached names (sum over processes)", "MB",
         lambda c, r: _div(get(c, "memory", "after", "10000", "pss_bytes"), mb), "<= 0.75x node-cache",
         _vs("node-cache", 0.75)),
        ("cgroup working set with 10,000 cached names", "MB",
         lambda c, r: _div(get(c, "memory", "after", "10000", "cgroup_working_set_bytes"), mb),
         "<= 0.75x node-cache", _vs("node-cache", 0.75)),
        ("conntrack entries per 10,000 pod queries (pod to cache)", "",
         lambda c, r: get(c, "conntrack", "with_notrack", "per_10k_queries", "pod_to_node_cache"),
         "0", _abs(lambda v: v == 0)),
    ]


def _heaviest(res: dict[str, Any]) -> str:
    """Section 7's run with the most busy loops at the highest rate."""
    plan = get(res, "meta", "plan") or {}
    return f"h{max(plan.get('load_hogs') or [0])}_q{max(plan.get('load_rates') or [0])}"


def _sub(a: Any, b: Any) -> Any:
    return a - b if isinstance(a, (int, float)) and isinstance(b, (int, float)) else None


def _div(a: Any, b: float) -> Any:
    return a / b if isinstance(a, (int, float)) else None


def _status_cell(res: dict[str, Any], name: str) -> str | None:
    c = get(res, "caches", name)
    if c is None:
        return "not run"
    if c.get("status") != "ok":
        return "not measured"
    return None


def _cell(res: dict[str, Any], name: str, v: Any) -> str:
    """A figure's cell: the value, why there is none, or "-" where a hit-only server has none."""
    if v is not None:
        return fmt(v)
    return _status_cell(res, name) or ("-" if name in HIT_ONLY else "n/a")


def _full(caches: list[str]) -> list[str]:
    """The servers measured in every scenario."""
    return [c for c in caches if c not in HIT_ONLY]


def render(res: dict[str, Any], plots: list[str]) -> str:
    m = res["meta"]
    caches = [c for c in CACHES if c in res["caches"]]
    L: list[str] = []
    L.append("# nodecache benchmark\n")
    L.append(f"Run {m['date']} ({'--quick' if m['quick'] else 'full run'}, {m['elapsed_s']:.0f} s). "
             f"CPU: {m['cpu']} ({m['cores']} cores), kernel {m['kernel']}. "
             f"Server under test pinned to core {m['server_cpu']}, dnsperf and the probes to core {m['loadgen_cpu']}. "
             f"Load average at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}: other work on the "
             "machine shows up as noise, mostly in the tails and as steal.\n")
    L.append(f"Cluster DNS: {m['versions'].get('knotd', 'knotd')} serving `cluster.local` "
             f"({m['plan']['services']:,} services, {m['zone_records']:,} records incl. reverse and external zones, "
             f"TTL {m['plan']['ttl']} s), behind a delaying relay adding {m['plan']['delay_ms']} ms each way. "
             f"nodecache's Corefile: {m['corefile_origin']}.\n")
    L.append("Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".\n")
    L.append(f"nodecache build: {m.get('build', 'not recorded')} (NODECACHE_PURE=1 runs pure Python).\n")
    L.append("## Status\n")
    rows = []
    for c in caches:
        st = res["caches"][c]["status"]
        rows.append([c, get(res, "caches", c, "ip") or "", st if len(st) < 400 else st[:400] + "..."])
    L.append(table(["cache", "address", "status"], rows) + "\n")
    for c in caches:
        for note in res["caches"][c].get("notes") or []:
            L.append(f"- {c}: {note}")
    L.append("")
    if m.get("load_only"):  # bench/run --load-only
        return "\n".join(L + _under_load(res, caches))

    # --- summary against the targets
    L.append("## Summary against the targets\n")
    L.append("Targets are reported, never asserted. Ratios are nodecache's figure divided by the reference's "
             "(for throughput higher is better; for latency, CPU, memory and entries lower is better), "
             "node-cache, the system nodecache replaces, first. A target relative to a server that was not "
             "measured counts only its absolute part. floor is the Python floor (hit scenarios only).\n")
    refs = [r for r in REFS if r in caches]
    head = ["figure", "target", *caches, "met (nodecache)"]
    if "nodecache" in caches:
        head[-1:-1] = [f"nodecache / {r}" for r in refs]
    rows = []
    for label, unit, getter, target, check in figures():
        vals = {c: (getter(res["caches"][c], res) if res["caches"][c]["status"] == "ok" else None) for c in caches}
        row = [f"{label}" + (f" ({unit})" if unit else ""), target or "-"]
        row += [_cell(res, c, vals[c]) for c in caches]
        if "nodecache" in caches:
            row += [ratio(vals["nodecache"], vals[r]) if vals[r] is not None or r not in HIT_ONLY else "-"
                    for r in refs]
        nc = vals.get("nodecache")
        row.append(("yes" if check(nc, vals) else "**no**") if check and isinstance(nc, (int, float)) else "-")
        rows.append(row)
    L.append(table(head, rows) + "\n")

    # --- the core alone
    core = res.get("core")
    if core:
        L.append("## 0. The core alone\n")
        L.append(f"`QueryHandler` with no sockets and a fake clock (bench/nodebench/core.py, `bench/run --core`), "
                 f"pinned to the server core, timed in CPU time: {core['names']:,} new pod names per round, each a miss answered "
                 "by a fake upstream answer (handle, upstream_query, absorb, reply), then each asked again (a "
                 "hit), and again with dns64, rewrite, template and hosts in front of the cache (`hit_plugins`, "
                 "which should cost what a hit does). What sections 3 and 4 spend per query above this is "
                 "the event loop's, the kernel's and the forwarder's.\n")
        rows = [[kind, fmt(get(core, kind, "best_us")), fmt(get(core, kind, "median_us")),
                 fmt(get(core, kind, "rounds"))] for kind in ("hit", "miss", "hit_plugins") if kind in core]
        L.append(table(["path", "best us/op", "median us/op", "rounds"], rows) + "\n")
        stages = core.get("miss_stages_us") or {}
        if stages:
            L.append("A miss by stage (each stage for all names in turn, best round; `send` and `receive` are "
                     "the pooled TCP connection's framing): "
                     + ", ".join(f"`{k}` {fmt(v)} us" for k, v in stages.items()) + ".\n")
        held = core.get("memory")
        if held:
            L.append(f"Memory: {held['bytes_per_name']:.0f} bytes per stored name (tracemalloc over "
                     f"{held['names']:,} names: entry, key, body, store and index).\n")

    # --- calibration
    cal = res["calibration"]
    L.append("## The delay element\n")
    L.append("The kernel has no netem qdisc, so a relay (bench/nodebench/relay.py) holds every packet for the "
             "configured delay in each direction. The same queries at 1,000 q/s, straight from the pod:\n")
    rows = []
    for key, label in (("auth", "knotd directly"), ("relay_no_delay", "relay, no added delay"),
                       ("relay_delay", f"relay, {m['plan']['delay_ms']} ms each way (the cluster DNS)"),
                       ("auth_tcp", "knotd directly, TCP"),
                       ("relay_delay_tcp", f"relay, {m['plan']['delay_ms']} ms each way, TCP")):
        lat = get(cal, key, "latency_ms") or {}
        rows.append([label, *(fmt(lat.get(p)) for p in ("p50", "p90", "p99", "p99.9"))])
    L.append(table(["path", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms"], rows) + "\n")
    L.append(f"Relay processing adds {fmt(cal.get('relay_processing_ms'))} ms at p50; the whole delay element "
             f"adds {fmt(cal.get('delay_element_added_ms'))} ms against a nominal "
             f"{fmt(cal.get('nominal_added_ms'))} ms (sleep overshoot {fmt(cal.get('delay_error_ms'))} ms). Over TCP "
             f"(one connection per dnsperf client, pipelined) it adds {fmt(cal.get('delay_element_added_tcp_ms'))} ms: "
             "caches that forward over TCP pay that, not the UDP figure, so compare their misses with both. "
             "The relay is Python and shares the two cores with everything else, so its cost grows under load "
             "(see the direct row of section 4).\n")

    # --- 1 latency
    L.append("## 1. Latency: direct vs through the cache (miss, then hit)\n")
    L.append(f"{m['plan']['latency_names']:,} distinct cluster queries (70% service A, 15% SRV, 10% headless A, "
             "5% PTR), paced at 1,000 q/s so they rarely overlap (dnsperf `-Q 1000 -v`); the miss pass fills the cache, the hit "
             "pass repeats it.\n")
    rows = [["direct to the cluster DNS", *(_lat_cells(get(res, "direct", "latency", "latency_ms")))]]
    for c in caches:
        for kind in ("miss", "hit"):
            rows.append([f"{c} {kind}", *(_lat_cells(get(res, "caches", c, "latency", kind, "latency_ms"),
                                                     _status_cell(res, c)))])
    L.append(table(["path", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "mean ms"], rows) + "\n")
    L += _ratio_rows(res, caches, [("hit p50", ("latency", "hit", "latency_ms", "p50")),
                                   ("hit p99", ("latency", "hit", "latency_ms", "p99")),
                                   ("miss p50", ("latency", "miss", "latency_ms", "p50")),
                                   ("miss p99", ("latency", "miss", "latency_ms", "p99"))])
    L.append(_img(plots, "latency_cdf.png", "Latency CDF"))

    # --- 2 search path
    L.append("## 2. Pod search path (ndots:5)\n")
    L.append(f"{m['plan']['search_names']:,} external names (`host-N.example.com/net/org`), each looked up as "
             "glibc does in a pod in namespace `default`: `NAME.default.svc.cluster.local`, "
             "`NAME.svc.cluster.local`, `NAME.cluster.local` (each NXDOMAIN), then `NAME.`; the time is the "
             "whole lookup. Cold: first lookup of each name; warm: the same names again.\n")
    rows = [["direct to the cluster DNS", *_sp_cells(get(res, "direct", "searchpath"))]]
    for c in _full(caches):
        for kind in ("cold", "warm"):
            rows.append([f"{c} {kind}", *_sp_cells(get(res, "caches", c, "searchpath", kind), _status_cell(res, c))])
    L.append(table(["path", "queries / lookup", "NXDOMAIN / lookup", "p50 ms", "p99 ms", "failed"], rows) + "\n")
    L += _ratio_rows(res, caches, [("warm lookup p50", ("searchpath", "warm", "lookup_ms", "p50")),
                                   ("cold lookup p50", ("searchpath", "cold", "lookup_ms", "p50"))])
    L.append(_img(plots, "searchpath.png", "Search-path lookup time"))

    # --- 3 throughput
    L.append("## 3. Cache-hit throughput on one core\n")
    L.append("Server on one core, dnsperf (4 sockets, up to 200 outstanding) on the other. First unthrottled; if "
             "more than 0.1% is lost, the rate is searched with `-Q`. CPU is utime+stime from /proc/PID/stat "
             "over the run, divided by answered queries. Core busy shares come from /proc/stat and include the "
             "kernel's softirq work for the packets; a dnsperf core near 100% means the load generator, not the "
             "server, was the limit. Steal is time the hypervisor gave to other guests.\n")
    rows = []
    for c in caches:
        t = get(res, "caches", c, "throughput")
        sc = _status_cell(res, c)
        if sc:
            rows.append([c, *[sc] * 9])
            continue
        rows.append([c, fmt(t["max_qps"]), f"{t['max_loss']:.3%}" if t["max_loss"] is not None else "n/a",
                     fmt(t["cpu_us_per_answer_at_max"]), _pct(t.get("loadgen_core_busy_at_max")),
                     _pct(t.get("server_core_busy_at_max")), _pct(t.get("steal_at_max")),
                     fmt(t["cpu_us_per_answer_at_fixed"]), fmt(get(t, "fixed", "latency_ms", "p50")),
                     fmt(t["p99_ms_at_fixed"])])
    L.append(table(["cache", "max q/s", "loss", "CPU us/answer at max", "dnsperf core busy", "server core busy",
                    "steal",
                    f"CPU us/answer at {m['plan']['fixed_rate']:,} q/s", f"p50 ms at {m['plan']['fixed_rate']:,} q/s",
                    f"p99 ms at {m['plan']['fixed_rate']:,} q/s"], rows) + "\n")
    L += _ratio_rows(res, caches, [("max q/s", ("throughput", "max_qps")),
                                   ("CPU us/answer at max", ("throughput", "cpu_us_per_answer_at_max")),
                                   ("CPU us/answer at fixed rate", ("throughput", "cpu_us_per_answer_at_fixed")),
                                   ("p99 at fixed rate", ("throughput", "p99_ms_at_fixed"))])
    L.append(_img(plots, "throughput.png", "Hit throughput and CPU per answer"))

    # --- 4 miss
    L.append("## 4. Misses through the upstream\n")
    L.append(f"{m['plan']['miss_names']:,} new pod names (`a-b-c-d.NS.pod.cluster.local`, answered by a wildcard), "
             "each asked once with up to 100 outstanding, from a freshly started cache. Connections opened and "
             "upstream queries are counted at the relay from just before the cache starts (its readiness check "
             "adds one query); connections still open at the end come from `ss`. nodecache and unbound forward `cluster.local` over TCP "
             "(`force_tcp`); dnsmasq cannot, so it uses UDP.\n")
    rows = []
    d = get(res, "direct", "miss_throughput") or {}
    rows.append(["direct (UDP to the cluster DNS)", fmt(d.get("qps")), f"{d.get('loss', 0):.3%}",
                 *(_lat_cells(d.get("latency_ms"))[:3]), "-", "-", "-", "-", "-"])
    for c in _full(caches):
        mt = get(res, "caches", c, "miss_throughput")
        sc = _status_cell(res, c)
        if sc:
            rows.append([c, *[sc] * 10])
            continue
        up = mt["upstream"]
        rows.append([c, fmt(mt["qps"]), f"{mt['loss']:.3%}", *(_lat_cells(mt["latency_ms"])[:3]),
                     fmt(mt.get("cpu_us_per_answer")),
                     fmt(up["tcp_connections_opened"]), fmt(up.get("tcp_connections_open_at_end")),
                     fmt(up["tcp_queries"]), fmt(up["udp_queries"])])
    L.append(table(["path", "q/s", "loss", "p50 ms", "p90 ms", "p99 ms", "server CPU us/miss", "TCP connections opened",
                    "open at the end (ss)", "upstream TCP queries", "upstream UDP queries"], rows) + "\n")
    L += _ratio_rows(res, caches, [("miss q/s", ("miss_throughput", "qps")),
                                   ("CPU us/miss", ("miss_throughput", "cpu_us_per_answer")),
                                   ("miss p50", ("miss_throughput", "latency_ms", "p50"))])
    L.append(_img(plots, "miss_cdf.png", "Miss latency under load"))

    # --- 5 memory
    L.append("## 5. Memory\n")
    pts = [str(p) for p in m["plan"]["memory_points"]]
    L.append("A fresh server, then after asking for that many distinct new names. RSS (VmRSS) summed over the "
             "server's processes counts shared pages once per process; PSS (smaps_rollup) summed over them "
             "counts each page once; the cgroup working set (usage minus inactive file pages) is what the "
             "kubelet, `kubectl top` and evictions use: each server runs in a memory cgroup of its own (fresh "
             "per start). Page-cache pages are charged to the cgroup that read them first, so the interpreter, "
             "its libraries and the node-cache binary, cached already, count elsewhere: the working set here is "
             "mostly anonymous and kernel memory, while in a pod the program's own files count too (about the "
             "file-backed part of PSS). nodecache runs as two processes (the supervisor, which removes the rules if "
             "the worker dies, and the worker), as in its image; both are counted. Caches hold about 10,000 "
             "entries (node-cache's 9984 per cache), so past that the figure shows eviction, not growth.\n")
    rows = []
    for c in _full(caches):
        mem = get(res, "caches", c, "memory")
        sc = _status_cell(res, c)
        if sc:
            rows.append([c, "", sc, *[sc] * (1 + len(pts))])
            continue
        procs = get(mem, "after", pts[-1], "processes")
        for key, label in (("rss_bytes", "RSS"), ("pss_bytes", "PSS"), ("pss_file_bytes", "of which file-backed"),
                           ("cgroup_working_set_bytes", "cgroup working set")):
            rows.append([c, fmt(procs), label, fmt(_div(get(mem, "idle", key), 1e6)),
                         *(fmt(_div(get(mem, "after", p, key), 1e6)) for p in pts)])
    L.append(table(["server", "processes", "measure", "idle MB", *(f"after {int(p):,} names MB" for p in pts)],
                   rows) + "\n")
    sup = get(res, "caches", "nodecache", "memory", "first_process")
    if sup:
        L.append(f"nodecache's supervisor alone, at the end: PSS {fmt(_div(sup.get('pss_bytes'), 1e6))} MB, "
                 f"RSS {fmt(_div(sup.get('rss_bytes'), 1e6))} MB.\n")
    L += _ratio_rows(res, caches, [(f"{label} after {int(p):,}", ("memory", "after", p, key)) for p in pts
                                   for key, label in (("pss_bytes", "PSS"), ("cgroup_working_set_bytes", "working set"),
                                                      ("rss_bytes", "RSS"))])
    L.append(_img(plots, "memory.png", "Memory"))

    # --- 6 conntrack
    L.append("## 6. Conntrack entries on the node\n")
    L.append("Conntrack is active in the node namespace (a `--ctstate INVALID` rule, as kube-proxy's rules make "
             "it). The table is flushed, then the pod sends queries for cached names, each from a new socket "
             "(a new source port, as pods do), and the entries are counted and scaled to 10,000 queries. "
             "\"pod to cache\" are the entries the NOTRACK rules exist to avoid.\n")
    rows = []
    ct = get(res, "direct", "conntrack", "per_10k_queries") or {}
    rows.append(["no node cache (pod to cluster DNS, through the node)", fmt(ct.get("total")),
                 fmt(ct.get("pod_to_node_cache")), fmt(ct.get("pod_to_cluster_dns")), fmt(ct.get("node_to_upstream"))])
    for c in _full(caches):
        sc = _status_cell(res, c)
        for kind, label in (("with_notrack", "with NOTRACK"), ("without_notrack", "without NOTRACK")):
            e = get(res, "caches", c, "conntrack", kind, "per_10k_queries")
            if sc:
                if kind == "with_notrack":
                    rows.append([c, *[sc] * 4])
                continue
            if e is None:
                continue
            by = get(res, "caches", c, "conntrack", "notrack_rules_by")
            who = f" (rules by {by})" if kind == "with_notrack" else ""
            rows.append([f"{c} {label}{who}", fmt(e["total"]), fmt(e["pod_to_node_cache"]),
                         fmt(e["pod_to_cluster_dns"]), fmt(e["node_to_upstream"])])
    L.append(table(["path", "entries / 10k queries", "pod to cache", "pod to cluster DNS", "node to upstream"],
                   rows) + "\n")
    L.append(_img(plots, "conntrack.png", "Conntrack entries"))
    L += _under_load(res, caches)
    L.append("## Files\n")
    L.append("`results.json` holds every figure above and more (each dnsperf run's counts, every throughput "
             "trial, relay counters); the PNGs sit beside this report; `logs/` has each server's output.\n")
    return "\n".join(L)


def _under_load(res: dict[str, Any], caches: list[str]) -> list[str]:
    """Section 7: hits while busy loops share the server core."""
    plan = res["meta"]["plan"]
    keys = [(h, q) for h in plan.get("load_hogs") or () for q in plan.get("load_rates") or ()]
    if not keys:
        return []
    L = ["## 7. Hits under machine load\n",
         f"The cached names of section 1, paced with `-Q` for {fmt(plan['load_s'])} s a run (dnsperf as in section 3, "
         "a query unanswered after 1 s is lost), while shell busy loops pinned to the server's core compete "
         "for it, each in a session of its own (the scheduler gives each session an equal share, as it gives "
         "pods in cgroups of their own). \"answered\" is the share of queries sent that got an answer: a "
         "server whose queue is short drops what it cannot take, so its latency looks better and its clients "
         "wait for a retry instead (glibc: 5 s). nodecache's last column counts the times it turned miss "
         "shedding on (docs/failure-modes.md).\n"]
    rows = []
    for c in caches:
        sc = _status_cell(res, c)
        for h, q in keys:
            run = get(res, "caches", c, "under_load", f"h{h}_q{q}")
            if sc or run is None:
                rows.append([c, str(h), f"{q:,}", *[sc or "n/a"] * 6])
                continue
            lat = run["latency_ms"]
            rows.append([c, str(h), f"{q:,}", f"{run['answered']:.2%}", fmt(lat["p50"]), fmt(lat["p99"]),
                         fmt(lat["p99.9"]), fmt(run.get("cpu_us_per_answer")),
                         fmt(run["shedding_started"]) if "shedding_started" in run else "-"])
    L.append(table(["cache", "busy loops", "q/s", "answered", "p50 ms", "p99 ms", "p99.9 ms", "CPU us/answer",
                    "shedding started"], rows) + "\n")
    L += _ratio_rows(res, caches, [(f"{what} at {q:,} q/s, {h} busy loops", ("under_load", f"h{h}_q{q}", *path))
                                   for h, q in keys
                                   for what, path in (("p50", ("latency_ms", "p50")), ("p99", ("latency_ms", "p99")),
                                                      ("answered", ("answered",)))])
    return L


def _pct(v: Any) -> str:
    return f"{v:.0%}" if isinstance(v, (int, float)) else "n/a"


def _lat_cells(lat: Any, status: str | None = None) -> list[str]:
    if status or not isinstance(lat, dict):
        return [status or "n/a"] * 5
    return [fmt(lat.get(k)) for k in ("p50", "p90", "p99", "p99.9", "mean")]


def _sp_cells(sp: Any, status: str | None = None) -> list[str]:
    if status or not isinstance(sp, dict):
        return [status or "n/a"] * 5
    names = max(1, sp["names"])
    return [fmt(sp["queries_per_lookup"]), fmt(sp["nxdomain"] / names), fmt(get(sp, "lookup_ms", "p50")),
            fmt(get(sp, "lookup_ms", "p99")), fmt(sp["failures"])]


def _ratio_rows(res: dict[str, Any], caches: list[str], items: list[tuple[str, tuple[str, ...]]]) -> list[str]:
    if "nodecache" not in caches:
        return []
    refs = [r for r in REFS if r in caches]
    nc = res["caches"]["nodecache"]
    if nc["status"] != "ok":
        return [f"Ratios to {', '.join(refs)}: nodecache was not measured ({nc['status'][:200]}).\n"]
    rows = []
    for label, path in items:
        a = get(nc, *path)
        cells = []
        for r in refs:
            b = get(res, "caches", r, *path)
            if get(res, "caches", r, "status") != "ok":
                cells.append("n/a")
            elif b is None and r in HIT_ONLY:
                cells.append("-")
            else:
                cells.append(ratio(a, b))
        rows.append([label, *cells])
    if all(r[1 + i] == "-" for r in rows for i, ref in enumerate(refs) if ref in HIT_ONLY):
        keep = [i for i, ref in enumerate(refs) if ref not in HIT_ONLY]
        refs = [refs[i] for i in keep]
        rows = [[r[0], *(r[1 + i] for i in keep)] for r in rows]
    return [table(["nodecache figure", *(f"/ {r}" for r in refs)], rows) + "\n"]


def _img(plots: list[str], name: str, alt: str) -> str:
    return f"![{alt}]({name})\n" if name in plots else ""


# --- plots -------------------------------------------------------------------------

def plot(res: dict[str, Any], samples: dict[str, list[float]], out: Path) -> list[str]:
    """Write the PNGs; returns the names written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    caches = [c for c in CACHES if res["caches"].get(c, {}).get("status") == "ok"]
    colors = {"nodecache": "tab:blue", "node-cache": "tab:red", "unbound": "tab:orange", "dnsmasq": "tab:green",
              "floor": "tab:gray", "direct": "black"}
    full = _full(caches)
    written: list[str] = []

    def cdf(ax: Any, values: list[float], label: str, color: str, style: str = "-") -> None:
        if not values:
            return
        v = sorted(x * 1000 for x in values)
        n = len(v)
        ax.plot(v, [(i + 1) / n for i in range(n)], style, color=color, label=label, linewidth=1.3)

    fig, ax = plt.subplots(figsize=(8, 5))
    cdf(ax, samples.get("direct", []), "direct to cluster DNS", "black")
    for c in caches:
        cdf(ax, samples.get(f"{c}:miss", []), f"{c} miss", colors[c], "--")
        cdf(ax, samples.get(f"{c}:hit", []), f"{c} hit", colors[c])
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of queries")
    ax.set_title("1. Query latency at 1,000 q/s")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_cdf.png", dpi=110)
    plt.close(fig)
    written.append("latency_cdf.png")

    fig, ax = plt.subplots(figsize=(8, 5))
    cdf(ax, samples.get("direct:miss_tp", []), "direct (UDP)", "black")
    for c in full:
        cdf(ax, samples.get(f"{c}:miss_tp", []), f"{c} miss", colors[c])
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of queries")
    ax.set_title("4. Miss latency, 100 outstanding")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "miss_cdf.png", dpi=110)
    plt.close(fig)
    written.append("miss_cdf.png")

    labels, p50, p99 = [], [], []
    d = get(res, "direct", "searchpath", "lookup_ms")
    if d:
        labels.append("direct")
        p50.append(d["p50"] or 0)
        p99.append(d["p99"] or 0)
    for c in full:
        for kind in ("cold", "warm"):
            lm = get(res, "caches", c, "searchpath", kind, "lookup_ms") or {}
            labels.append(f"{c}\n{kind}")
            p50.append(lm.get("p50") or 0)
            p99.append(lm.get("p99") or 0)
    fig, ax = plt.subplots(figsize=(9, 5))
    xs = range(len(labels))
    ax.bar([x - 0.2 for x in xs], p50, width=0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, width=0.4, label="p99")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_ylabel("whole lookup (ms)")
    ax.set_title("2. Search-path lookup of an external name (4 queries)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "searchpath.png", dpi=110)
    plt.close(fig)
    written.append("searchpath.png")

    if caches:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.5))
        qps = [get(res, "caches", c, "throughput", "max_qps") or 0 for c in caches]
        cpu = [get(res, "caches", c, "throughput", "cpu_us_per_answer_at_max") or 0 for c in caches]
        a1.bar(caches, qps, color=[colors[c] for c in caches])
        a1.axhline(60_000, color="red", linestyle=":", label="target 60,000")
        a1.set_ylabel("answered q/s, <= 0.1% loss")
        a1.set_title("3. Max hit throughput, one core")
        a1.legend()
        a2.bar(caches, cpu, color=[colors[c] for c in caches])
        a2.axhline(16, color="red", linestyle=":", label="target 16 us")
        a2.set_ylabel("CPU us per answered hit")
        a2.set_title("CPU per answer at max rate")
        a2.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=110)
        plt.close(fig)
        written.append("throughput.png")

        fig, ax = plt.subplots(figsize=(8, 5))
        for c in full:
            mem = get(res, "caches", c, "memory") or {}
            after = mem.get("after") or {}
            xs2 = [0] + [int(k) for k in after]
            for key, style, what in (("pss_bytes", "o-", "PSS"), ("rss_bytes", "o:", "RSS")):
                ys = [(get(mem, "idle", key) or 0) / 1e6] + [(v.get(key) or 0) / 1e6 for v in after.values()]
                ax.plot(xs2, ys, style, color=colors[c], label=f"{c} {what}")
        ax.axhline(50, color="red", linestyle=":", label="RSS target at 10,000: 50 MB")
        ax.set_xlabel("distinct names asked for")
        ax.set_ylabel("MB (summed over the server's processes)")
        ax.set_title("5. Memory")
        ax.grid(True, alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "memory.png", dpi=110)
        plt.close(fig)
        written.append("memory.png")

    labels, vals = [], []
    ct = get(res, "direct", "conntrack", "per_10k_queries", "total")
    if ct is not None:
        labels.append("no cache")
        vals.append(ct)
    for c in full:
        for kind, short in (("with_notrack", "NOTRACK"), ("without_notrack", "no NOTRACK")):
            v = get(res, "caches", c, "conntrack", kind, "per_10k_queries", "total")
            if v is not None:
                labels.append(f"{c}\n{short}")
                vals.append(v)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(vals)), vals)
    ax.set_xticks(list(range(len(vals))), labels, fontsize=8)
    ax.set_ylabel("entries per 10,000 pod queries")
    ax.set_title("6. Conntrack entries created on the node")
    fig.tight_layout()
    fig.savefig(out / "conntrack.png", dpi=110)
    plt.close(fig)
    written.append("conntrack.png")
    return written


def write(res: dict[str, Any], samples: dict[str, list[float]], out: Path, *, load_only: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    res = clean(res)
    (out / "results.json").write_text(json.dumps(res, indent=2, allow_nan=False) + "\n")
    plots = [] if load_only else plot(res, samples, out)
    (out / "report.md").write_text(render(res, plots))
