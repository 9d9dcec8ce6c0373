"""``bench/run``: build the namespaces, run every scenario, write bench/results/.

See bench/README.md for what each scenario measures.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import report
from . import servers as S
from . import topology as T
from .host import BenchError, Cleanup, Interrupted, log, require, sh, trap_signals
from .scenarios import Plan, Runner

TOOLS = ["ip", "ss", "iptables", "conntrack", "taskset", "dnsperf", "dig", "knotd", "unbound", "dnsmasq"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run", description="nodecache benchmark against unbound and dnsmasq, "
                                 "in network namespaces (needs root).")
    ap.add_argument("--quick", action="store_true", help="smaller scenarios; about two minutes")
    ap.add_argument("--services", type=int, default=10_000, help="services in cluster.local (default 10000)")
    ap.add_argument("--delay-ms", type=float, default=0.25, help="delay added each way to the cluster DNS, ms")
    ap.add_argument("--ttl", type=int, default=30, help="TTL of the generated records, s")
    ap.add_argument("--caches", default="nodecache,unbound,dnsmasq",
                    help="comma-separated node caches to measure (default: all three)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results",
                    help="where the report goes (default bench/results)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch directory (configs, zones, logs)")
    a = ap.parse_args(argv)
    a.caches = [c.strip() for c in a.caches.split(",") if c.strip()]
    bad = set(a.caches) - {"nodecache", "unbound", "dnsmasq"}
    if bad:
        ap.error(f"unknown cache(s): {', '.join(sorted(bad))}")
    if not 0 <= a.delay_ms <= 100:
        ap.error("--delay-ms must be between 0 and 100")
    if not 10 <= a.services <= 60_000:
        ap.error("--services must be between 10 and 60000")
    return a


def _version(argv: list[str], pick: int = 0) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        lines = (out.stdout or out.stderr).strip().splitlines()
        return lines[pick].strip() if lines else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def meta(a: argparse.Namespace, plan: Plan) -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    commit = _version(["git", "-C", str(S.REPO), "rev-parse", "--short", "HEAD"])
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": a.quick, "plan": plan.__dict__, "cpu": cpu, "cores": os.cpu_count(),
        "kernel": platform.release(), "loadavg_start": _loadavg(), "server_cpu": S.SERVER_CPU, "loadgen_cpu": S.LOADGEN_CPU,
        "versions": {
            "knotd": _version(["knotd", "--version"]).replace("knotd (Knot DNS), version ", ""),
            "unbound": _version(["unbound", "-V"]).replace("Version ", ""),
            "dnsmasq": _version(["dnsmasq", "--version"]).replace("Dnsmasq version ", "").split()[0],
            "dnsperf": _version(["dnsperf", "-h"], -1).replace("Version ", ""),
            "python": platform.python_version(),
            "nodecache": commit,
        },
    }


def run(a: argparse.Namespace, cleanup: Cleanup) -> int:
    t0 = time.monotonic()
    require(TOOLS)
    plan = Plan.make(quick=a.quick, services=a.services, delay_ms=a.delay_ms, ttl=a.ttl)
    work = Path(tempfile.mkdtemp(prefix="nodebench-"))
    if a.keep_work:
        log(f"scratch directory (kept): {work}")
    else:
        cleanup.push("remove scratch directory", lambda: shutil.rmtree(work, ignore_errors=True))
    logs = a.out / "logs"
    # Server logs are copied into the results even when the run fails.
    cleanup.push("copy server logs", lambda: _copy_logs(work, logs))

    caches: list[S.Cache] = []
    nodecache_problem = ""
    for name in a.caches:
        if name == "nodecache":
            ok, why, help_text = S.nodecache_runnable()
            c = S.Cache("nodecache", T.NODECACHE_IP, own_notrack=True, cluster_transport="tcp (force_tcp)")
            if not ok:
                nodecache_problem = why
                log(f"nodecache is not runnable: {why}")
            caches.append(c)
            nodecache_help = help_text
        elif name == "unbound":
            caches.append(S.Cache("unbound", T.UNBOUND_IP, own_notrack=False, cluster_transport="tcp (forward-tcp-upstream)"))
        else:
            caches.append(S.Cache("dnsmasq", T.DNSMASQ_IP, own_notrack=False, cluster_transport="udp (no TCP forwarding)",
                                  notes=["forwards cluster.local misses over UDP: dnsmasq has no TCP-upstream option"]))

    log("building namespaces pod -> node -> cluster DNS")
    topo = T.build(cleanup)
    runner = Runner(cleanup, topo, work, plan)
    runner.nodecache_help = locals().get("nodecache_help", "")
    res = runner.results
    res["meta"] = meta(a, plan)
    path, origin = S.corefile(work)
    res["meta"]["corefile_origin"] = origin
    res["meta"]["corefile"] = path.read_text()

    runner.start_cluster_dns()
    res["meta"]["zone_records"] = runner.zone.records
    runner.run_direct()
    for c in caches:
        if c.name == "nodecache" and nodecache_problem:
            res["caches"]["nodecache"] = {"status": f"not runnable: {nodecache_problem}", "ip": c.ip,
                                          "cluster_transport": c.cluster_transport, "notes": c.notes}
            continue
        runner.run_cache(c)
    res["meta"]["elapsed_s"] = time.monotonic() - t0
    res["meta"]["loadavg_end"] = _loadavg()
    log(f"writing {a.out}/report.md, results.json and plots")
    report.write(res, runner.samples, a.out)
    failed = [n for n, c in res["caches"].items() if c["status"] != "ok"]
    for n in failed:
        log(f"NOT MEASURED: {n}: {res['caches'][n]['status'][:300]}")
    log(f"done in {time.monotonic() - t0:.0f} s")
    return 1 if failed else 0


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def _copy_logs(work: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for f in work.glob("*.log"):
        shutil.copy(f, dest / f.name)
    cf = work / "Corefile"
    if cf.exists():
        shutil.copy(cf, dest / "Corefile")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    trap_signals()
    cleanup = Cleanup()
    try:
        return run(a, cleanup)
    except (BenchError, KeyboardInterrupt) as exc:
        msg = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
        print(f"bench/run: error: {msg}", file=sys.stderr)
        return 130 if isinstance(exc, (KeyboardInterrupt, Interrupted)) else 2
    finally:
        log("cleaning up (processes, rules, namespaces)")
        cleanup.run()


if __name__ == "__main__":
    sys.exit(main())
