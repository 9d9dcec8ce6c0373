"""report.md, results.json and the PNG plots, in the shape bench/ writes them."""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import plot

#: (label, unit, path into a target's results); lower is better unless the unit says q/s.
FIGURES: list[tuple[str, str, tuple[str, ...]]] = [
    ("hit latency p50", "ms", ("hit", "latency_ms", "p50")),
    ("hit latency p99", "ms", ("hit", "latency_ms", "p99")),
    ("miss latency p50", "ms", ("miss", "latency_ms", "p50")),
    ("miss latency p99", "ms", ("miss", "latency_ms", "p99")),
    ("first look (cold) p50", "ms", ("cold", "latency_ms", "p50")),
    ("search-path lookup p50, first pass", "ms", ("searchpath_cold", "lookup_ms", "p50")),
    ("search-path lookup p50", "ms", ("searchpath", "lookup_ms", "p50")),
    ("search-path lookup p99", "ms", ("searchpath", "lookup_ms", "p99")),
    ("queries per lookup", "", ("searchpath", "queries_per_lookup")),
    ("timeouts at the steady rate", "%", ("steady", "timeout_rate")),
    ("errors (SERVFAIL, REFUSED) at the steady rate", "%", ("steady", "error_rate")),
    ("highest rate with <= 0.1% loss", "q/s", ("throughput", "sustained_qps")),
]


def clean(obj: Any) -> Any:
    """NaN and infinities become None, so the JSON is strict and a gap is visible."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def get(d: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def fmt(v: Any, unit: str = "") -> str:
    if not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if unit == "%":
        return f"{v * 100:.2f}%"
    if isinstance(v, int) or abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _ratio(a: Any, b: Any) -> str:
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)):
        return "n/a"
    if b == 0:
        return "same (0)" if a == 0 else "n/a (reference 0)"
    return f"{a / b:.2f}x"


def table(head: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                      *("| " + " | ".join(r) + " |" for r in rows)])


def render(res: dict[str, Any], plots: list[str]) -> str:
    m = res["meta"]
    labels = list(res["targets"])
    L = ["# DNS from a pod: around and through the node cache\n"]
    L.append(f"Run {m['date']} on node {m.get('node') or '?'} (pod {m.get('pod') or '?'}), "
             f"{m['elapsed_s']:.0f} s, status: **{m['status']}**. nodecache {m['version']}.\n")
    rc = m["resolv_conf"]
    L.append(f"The pod's resolv.conf: nameserver {', '.join(rc['nameservers']) or 'none'}, "
             f"search {' '.join(rc['search']) or 'none'}, ndots:{rc['ndots']}.\n")
    st = m["settings"]
    L.append(f"Rate {st['rate']:g} q/s for the latency phases and the steady run "
             f"({st['steady_seconds']:g} s); throughput ramp up to {st['max_rate']:g} q/s "
             f"(hard cap {m['hard_max_rate']:g}); timeout {st['timeout']:g} s; "
             f"{st['sockets']} sockets. Sample: {res['sample']['queries']} names "
             f"({', '.join(f'{k}: {v}' for k, v in res['sample']['sources'].items())}), "
             f"{res['sample']['lookups']} search-path lookups.\n")
    L.append("## Targets\n")
    L.append(table(["target", "address", "status"],
                   [[t, f"{v['address']}:{v['port']}", v["status"]] for t, v in res["targets"].items()]) + "\n")
    L.append("## Summary\n")
    head = ["figure", *labels, *(f"{t} / {labels[0]}" for t in labels[1:])]
    rows = []
    for label, unit, path in FIGURES:
        vals = [get(res["targets"][t], path) for t in labels]
        rows.append([label + (f" ({unit})" if unit and unit != "%" else ""), *(fmt(v, unit) for v in vals),
                     *(_ratio(v, vals[0]) for v in vals[1:])])
    L.append(table(head, rows) + "\n")
    L.append("Latencies are per query, from its send to its answer; a search-path lookup is the "
             "whole getaddrinfo() as the application waits for it. For throughput higher is "
             "better; for everything else lower is.\n")
    L.append("## Each phase\n")
    rows = []
    for t in labels:
        for phase in ("cold", "hit", "miss", "steady"):
            p = res["targets"][t].get(phase)
            if not p:
                continue
            lat = p["latency_ms"]
            rows.append([t, phase, fmt(p["offered_qps"]), f"{p['sent']:,}", f"{p['answered']:,}",
                         f"{p['timeouts']:,}", f"{p['errors']:,}",
                         *(fmt(lat[k]) for k in ("p50", "p90", "p99", "p99.9")),
                         fmt(p["send_lag_ms"]["p99"]), f"{p['client_drops']:,}"])
    L.append(table(["target", "phase", "rate (q/s)", "sent", "answered", "timeouts", "errors",
                    "p50 (ms)", "p90", "p99", "p99.9", "send lag p99 (ms)", "client drops"], rows) + "\n")
    rows = []
    for t, key in ((t, k) for t in labels for k in ("searchpath_cold", "searchpath")):
        sp = res["targets"][t].get(key)
        if sp:
            lat = sp["lookup_ms"]
            rows.append([t, "first" if key == "searchpath_cold" else "again", f"{sp['lookups']:,}", f"{sp['found']:,}", f"{sp['not_found']:,}",
                         f"{sp['timeouts']:,}", fmt(sp["queries_per_lookup"]),
                         *(fmt(lat[k]) for k in ("p50", "p90", "p99"))])
    if rows:
        L.append("Search-path lookups (" + "+".join(st["lookup_types"]) + "):\n")
        L.append(table(["target", "pass", "lookups", "found", "not found", "timeouts", "queries per lookup",
                        "p50 (ms)", "p90", "p99"], rows) + "\n")
    rows = []
    for t in labels:
        for stp in get(res["targets"][t], ("throughput", "steps")) or []:
            rows.append([t, fmt(stp["offered_qps"]), fmt(stp["answered_qps"]), fmt(stp["loss"], "%"),
                         fmt(stp["latency_ms"]["p99"]), fmt(stp["send_lag_ms"]["p99"]),
                         f"{stp['client_drops']:,}"])
    if rows:
        L.append("Throughput ramp:\n")
        L.append(table(["target", "offered (q/s)", "answered (q/s)", "loss", "p99 (ms)",
                        "send lag p99 (ms)", "client drops"], rows) + "\n")
    L.append("The send lag is how late the load generator sent against its schedule, and client "
             "drops are answers the kernel dropped at the client's own sockets: when either is "
             "large, the pod's CPU, not the target, limited the run.\n")
    for name, alt in (("latency_cdf.png", "latency CDF: hits solid, misses dashed"),
                      ("searchpath.png", "search-path lookup CDF"),
                      ("throughput.png", "answered against offered rate")):
        if name in plots:
            L.append(f"![{alt}]({name})\n")
    return "\n".join(L)


def _plots(res: dict[str, Any], samples: dict[str, list[float]], out: Path) -> list[str]:
    labels = list(res["targets"])
    made: list[str] = []

    def save(name: str, draw: Callable[[], plot.Canvas]) -> None:
        (out / name).write_bytes(draw().png())
        made.append(name)

    lat = []
    for i, t in enumerate(labels):
        if samples.get(f"{t}:hit"):
            lat.append(plot.cdf(f"{t} hit", samples[f"{t}:hit"], color=i))
        if samples.get(f"{t}:miss"):
            lat.append(plot.cdf(f"{t} miss", samples[f"{t}:miss"], color=i, dashed=True))
    save("latency_cdf.png", lambda: plot.chart(lat, title="QUERY LATENCY, CDF", xlabel="MS (LOG)",
                                               ylabel="FRACTION", xlog=True))
    sp = [plot.cdf(t, samples[f"{t}:searchpath"], color=i)
          for i, t in enumerate(labels) if samples.get(f"{t}:searchpath")]
    save("searchpath.png", lambda: plot.chart(sp, title="SEARCH-PATH LOOKUP, CDF", xlabel="MS (LOG)",
                                              ylabel="FRACTION", xlog=True))
    tp = []
    for i, t in enumerate(labels):
        steps = get(res["targets"][t], ("throughput", "steps")) or []
        if steps:
            tp.append(plot.Series(t, [s["offered_qps"] for s in steps], [s["answered_qps"] for s in steps],
                                  markers=True, color=i))
    save("throughput.png", lambda: plot.chart(tp, title="THROUGHPUT", xlabel="OFFERED Q/S",
                                              ylabel="ANSWERED Q/S", diagonal=True))
    return made


def write(res: dict[str, Any], samples: dict[str, list[float]], out: Path) -> str:
    """Write results.json, the plots and report.md into *out*; return the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    plots = _plots(res, samples, out)
    text = render(res, plots)
    (out / "results.json").write_text(json.dumps(clean(res), indent=1, allow_nan=False) + "\n")
    (out / "report.md").write_text(text)
    return text
