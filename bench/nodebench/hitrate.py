"""Cache hits over UDP on loopback: nodecache, node-cache, unbound and the Python floor in one run.

The servers, knotd and the run loop are :mod:`nodebench.missrate`'s (each cache
pinned to the server core, dnsperf to the load generator's, every cache in
front of the same knotd); the floor is :mod:`nodebench.floor`. Per server and
run, after one pass over ``--names`` distinct names has filled its cache:

* hits/s: the same names over and over, up to 100 outstanding, unthrottled;
* CPU per hit: the server's user+system CPU over that run / answers, us;
* CPU per answer at a fixed 5,000 q/s (where the wake-up per datagram shows).

Run it as ``bench/run --hitrate`` (``python -m bench.hitrate`` is the same),
under the bench lock; ``--before DIR`` also runs nodecache from another source
tree, for before/after figures in one run. Nothing leaves 127.0.0.0/8.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .host import Cleanup
from .measure import dnsperf
from .missrate import ADDRS, cell, checked, dnsperf_on, parser, run_all, start_cache, write_names

#: Rate of the paced run, q/s.
PACED_RATE = 5000


def measure(name: str, work: Path, a: argparse.Namespace, run: int) -> dict[str, float]:
    d = work / str(run) / name
    d.mkdir(parents=True)
    cleanup = Cleanup()
    try:
        daemon = start_cache(cleanup, name, d, a)
        host = ADDRS[name][0]
        dnsperf(None, host, write_names(d / "warm.txt", "h", a.names), dnsperf_on(name, "-q", "20"))
        burst = dnsperf(None, host, write_names(d / "hits.txt", "h", a.names, max(1, a.hits // a.names)),
                        dnsperf_on(name, "-q", "100"), server_pid=daemon.pid, timeout=600)
        paced = dnsperf(None, host, write_names(d / "paced.txt", "h", a.names, max(1, a.paced // a.names)),
                        dnsperf_on(name, "-q", "100", "-Q", str(PACED_RATE)), server_pid=daemon.pid, timeout=600)
        assert burst.server_cpu is not None and paced.server_cpu is not None
        return {"hits_per_s": burst.qps, "cpu_us_per_hit": burst.server_cpu / burst.completed * 1e6,
                "cpu_us_at_5000": paced.server_cpu / paced.completed * 1e6, "answered": burst.completed}
    finally:
        cleanup.run()


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """One row per server, with its CPU per hit as a multiple of the floor's (same run)."""
    floor = [r["cpu_us_per_hit"] for r in results.get("floor", [])]
    lines = ["| server | hits/s | CPU us per hit | x floor | CPU us per answer at 5,000 q/s |",
             "|---|---|---|---|---|"]
    for name, rows in results.items():
        cpu = [r["cpu_us_per_hit"] for r in rows]
        ratio = cell([c / f for c, f in zip(cpu, floor)], "{:.2f}") if floor and min(floor) > 0 else "-"
        lines.append(f"| {name} | {cell([r['hits_per_s'] for r in rows], '{:,.0f}')} | {cell(cpu, '{:.2f}')} | "
                     f"{ratio} | {cell([r['cpu_us_at_5000'] for r in rows], '{:.1f}')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench/run --hitrate", __doc__, "nodecache,node-cache,unbound,floor")
    ap.add_argument("--names", type=int, default=1000, help="distinct cached names (default 1000)")
    ap.add_argument("--hits", type=int, default=300_000, help="queries of the unthrottled run (default 300000)")
    ap.add_argument("--paced", type=int, default=25_000, help=f"queries at {PACED_RATE:,} q/s (default 25000)")
    a = checked(ap, ap.parse_args(argv))
    if not 1 <= a.names <= 9000 or not 1 <= a.hits <= 10_000_000 or not 1 <= a.paced <= 1_000_000:
        ap.error("--names must be 1..9000 (every cache holds them), --hits 1..10000000, --paced 1..1000000")
    results = run_all(ap.prog, a, measure)
    if results is None:
        return 2
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
