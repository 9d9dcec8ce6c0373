"""Cache hits over UDP on loopback: nodecache, node-cache, unbound and the Python floor in one run.

The servers, knotd and the run loop are :mod:`nodebench.missrate`'s (each cache
pinned to the server core, dnsperf to the load generator's, every cache in
front of the same knotd); the floor is :mod:`nodebench.floor`. Per server and
run, after one pass over ``--names`` distinct names has filled its cache:

* hits/s: the same names over and over, up to 100 outstanding, unthrottled;
* CPU per hit: the server's user+system CPU over that run / answers, us;
* CPU per answer at a fixed 5,000 q/s (where the wake-up per datagram shows),
  and the server's wake-ups per answer there: its threads' voluntary context
  switches (/proc/PID/task/*/status) over the answers, and that CPU split: schedstat's time
  on the CPU (exact), user and system (tick-sampled), preemptions, time waiting for the core;
* with ``--strace``, a second paced pass under ``strace -c -f``: system calls
  per answer by name, failed ones (EAGAIN reads) apart (strace slows the
  server, so it batches more; counts, not times, are what this shows).

The floor's other ways of reading its socket (``floor-reader``, ``floor-mmsg``,
``floor-thread``: :mod:`nodebench.floor`'s ``--io``) can be added to
``--caches``.

Run it as ``bench/run --hitrate`` (``python -m bench.hitrate`` is the same),
under the bench lock; ``--before DIR`` also runs nodecache from another source
tree, for before/after figures in one run. Nothing leaves 127.0.0.0/8.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .host import Cleanup, proc_tree
from .measure import PerfResult, dnsperf
from .missrate import ADDRS, build_header, cell, checked, dnsperf_on, parser, run_all, start_cache, write_names

#: Clock ticks per second of utime and stime.
_TCK = os.sysconf("SC_CLK_TCK")
#: Rate of the paced run, q/s.
PACED_RATE = 5000


#: Calls per answer below this are left out of the strace table (timers, start-up).
_RARE = 0.005


#: Per-thread counters :func:`thread_counters` sums: /proc/PID/task/TID/status lines, then the
#: schedstat fields (ns on the CPU, ns waiting for it, times scheduled in) and stat's utime/stime.
_STATUS = ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")


def thread_counters(pid: int) -> dict[str, float]:
    """Summed over every thread of *pid* and its descendants: context switches (a voluntary
    one is a thread going to sleep in epoll_wait, recvfrom..., so one per wake-up), CPU time
    from schedstat (ns, exact, unlike the tick-sampled utime/stime), and utime and stime, s."""
    total = dict.fromkeys((*_STATUS, "run_ns", "wait_ns", "slices", "utime", "stime"), 0.0)
    for p in proc_tree(pid):
        try:
            threads = list(Path(f"/proc/{p}/task").iterdir())
        except OSError:
            continue
        for t in threads:
            try:
                status = (t / "status").read_text()
                sched = (t / "schedstat").read_text().split()
                stat = (t / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            for key in _STATUS:
                m = re.search(rf"^{key}:\s+(\d+)", status, re.M)
                total[key] += int(m.group(1)) if m else 0
            for key, value in zip(("run_ns", "wait_ns", "slices"), sched):
                total[key] += int(value)
            total["utime"] += int(stat[11]) / _TCK
            total["stime"] += int(stat[12]) / _TCK
    return total


def syscalls(pid: int, run: Callable[[], int], out: Path) -> dict[str, float]:
    """System calls per answer of *run* (which returns the answers) under ``strace -c -f``:
    ``name`` -> calls, ``name!`` -> failed calls."""
    tasks = [int(t.name) for p in proc_tree(pid) for t in Path(f"/proc/{p}/task").iterdir()]
    argv = ["strace", "-c", "-f", "-o", str(out)] + [arg for t in tasks for arg in ("-p", str(t))]
    tracer = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # attached to every thread before the load starts
        answers = run()
    finally:
        tracer.terminate()
        tracer.wait(timeout=30)
    counts: dict[str, float] = {}
    for line in out.read_text().splitlines():
        f = line.split()  # % time, seconds, usecs/call, calls, [errors,] syscall
        if len(f) in (5, 6) and f[0][0].isdigit() and f[-1] != "total":
            counts[f[-1]] = int(f[3]) / answers
            if len(f) == 6:
                counts[f[-1] + "!"] = int(f[4]) / answers
    return {k: v for k, v in counts.items() if v >= _RARE}


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
        paced_names = write_names(d / "paced.txt", "h", a.names, max(1, a.paced // a.names))

        def paced_run() -> PerfResult:
            return dnsperf(None, host, paced_names, dnsperf_on(name, "-q", "100", "-Q", str(PACED_RATE)),
                           server_pid=daemon.pid, timeout=600)

        before = thread_counters(daemon.pid)
        paced = paced_run()
        after = thread_counters(daemon.pid)
        n = paced.completed
        delta = {k: after[k] - before[k] for k in after}
        assert burst.server_cpu is not None and paced.server_cpu is not None
        out = {"hits_per_s": burst.qps, "cpu_us_per_hit": burst.server_cpu / burst.completed * 1e6,
               "cpu_us_at_5000": paced.server_cpu / n * 1e6,
               "wakeups_per_answer_at_5000": delta["voluntary_ctxt_switches"] / n, "answered": burst.completed,
               "run_us_at_5000": delta["run_ns"] / n / 1e3, "user_us_at_5000": delta["utime"] / n * 1e6,
               "system_us_at_5000": delta["stime"] / n * 1e6,
               "preempted_per_answer_at_5000": delta["nonvoluntary_ctxt_switches"] / n,
               "wait_us_at_5000": delta["wait_ns"] / n / 1e3}
        if a.strace:
            out.update({f"syscalls:{k}": v for k, v in
                        syscalls(daemon.pid, lambda: paced_run().completed, d / "strace.txt").items()})
        return out
    finally:
        cleanup.run()


def table(results: dict[str, list[dict[str, float]]]) -> str:
    """One row per server, with its CPU per hit as a multiple of the floor's (same run)."""
    floor = [r["cpu_us_per_hit"] for r in results.get("floor", [])]
    lines = ["| server | hits/s | CPU us per hit | x floor | CPU us per answer at 5,000 q/s "
             "| wake-ups per answer at 5,000 q/s |", "|---|---|---|---|---|---|"]
    for name, rows in results.items():
        cpu = [r["cpu_us_per_hit"] for r in rows]
        ratio = cell([c / f for c, f in zip(cpu, floor)], "{:.2f}") if floor and min(floor) > 0 else "-"
        lines.append(f"| {name} | {cell([r['hits_per_s'] for r in rows], '{:,.0f}')} | {cell(cpu, '{:.2f}')} | "
                     f"{ratio} | {cell([r['cpu_us_at_5000'] for r in rows], '{:.1f}')} | "
                     f"{cell([r['wakeups_per_answer_at_5000'] for r in rows], '{:.2f}')} |")
    lines += ["", f"Per answer at {PACED_RATE:,} q/s: CPU from schedstat (exact), user and system CPU "
              "(tick-sampled), context switches, time runnable but waiting for the core:", "",
              "| server | CPU us (schedstat) | user us | system us | wake-ups | preempted | run-queue wait us |",
              "|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        lines.append(f"| {name} | " + " | ".join(cell([r.get(k, 0.0) for r in rows], fmt) for k, fmt in (
            ("run_us_at_5000", "{:.1f}"), ("user_us_at_5000", "{:.1f}"), ("system_us_at_5000", "{:.1f}"),
            ("wakeups_per_answer_at_5000", "{:.2f}"), ("preempted_per_answer_at_5000", "{:.3f}"),
            ("wait_us_at_5000", "{:.1f}"))) + " |")
    calls = sorted({k for rows in results.values() for r in rows for k in r if k.startswith("syscalls:")})
    if calls:
        lines += ["", f"System calls per answer at {PACED_RATE:,} q/s under strace (name! = failed calls):", "",
                  "| server | " + " | ".join(k.split(":", 1)[1] for k in calls) + " |",
                  "|---|" + "---|" * len(calls)]
        for name, rows in results.items():
            lines.append(f"| {name} | " + " | ".join(
                cell([r.get(k, 0.0) for r in rows], "{:.2f}") for k in calls) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench/run --hitrate", __doc__, "nodecache,nodecache-pure,node-cache,unbound,floor,floor-thread")
    ap.add_argument("--names", type=int, default=1000, help="distinct cached names (default 1000)")
    ap.add_argument("--hits", type=int, default=300_000, help="queries of the unthrottled run (default 300000)")
    ap.add_argument("--paced", type=int, default=25_000, help=f"queries at {PACED_RATE:,} q/s (default 25000)")
    ap.add_argument("--strace", action="store_true", help="also count system calls per answer (strace -c)")
    a = checked(ap, ap.parse_args(argv))
    if a.strace and shutil.which("strace") is None:
        ap.error("--strace needs strace (scripts/install-system-deps installs it)")
    if not 1 <= a.names <= 9000 or not 1 <= a.hits <= 10_000_000 or not 1 <= a.paced <= 1_000_000:
        ap.error("--names must be 1..9000 (every cache holds them), --hits 1..10000000, --paced 1..1000000")
    results = run_all(ap.prog, a, measure)
    if results is None:
        return 2
    print(build_header(a) + table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
