"""``bench/run``: build the namespaces, run every scenario, write bench/results/.

See bench/README.md for what each scenario measures.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import memory, report
from . import servers as S
from . import topology as T
from .host import BenchError, Cleanup, Interrupted, log, require, sh, trap_signals
from .scenarios import Plan, Runner

ALL_CACHES = ("nodecache", "node-cache", "unbound", "dnsmasq", "floor")
TOOLS = ["ip", "ss", "iptables", "conntrack", "taskset", "dnsperf", "dig", "knotd", "unbound", "dnsmasq"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run", description="nodecache benchmark against node-cache, unbound "
                                 "and dnsmasq, in network namespaces (needs root).")
    ap.add_argument("--quick", action="store_true", help="smaller scenarios; about two minutes")
    ap.add_argument("--services", type=int, default=10_000, help="services in cluster.local (default 10000)")
    ap.add_argument("--delay-ms", type=float, default=0.25, help="delay added each way to the cluster DNS, ms")
    ap.add_argument("--ttl", type=int, default=30, help="TTL of the generated records, s")
    ap.add_argument("--caches", default=",".join(ALL_CACHES),
                    help=f"comma-separated servers to measure (default: {','.join(ALL_CACHES)}; "
                    "floor is the Python floor, hit scenarios only)")
    ap.add_argument("--node-cache", type=Path, metavar="PATH", dest="node_cache",
                    help="node-cache binary (or .gz) to measure (default: the build in "
                    "shared/anchors beside the project, when there)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "results",
                    help="where the report goes (default bench/results)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch directory (configs, zones, logs)")
    ap.add_argument("--load-only", action="store_true", dest="load_only",
                    help="only scenario 7, hits under machine load (a few minutes)")
    ap.add_argument("--core", action="store_true",
                    help="only the core micro-benchmark (QueryHandler, no sockets; needs no root), printed")
    ap.add_argument("--missrate", action="store_true",
                    help="only misses/s and CPU per miss on loopback against node-cache and unbound, "
                    "no namespaces (its options: bench/run --missrate --help)")
    ap.add_argument("--hitrate", action="store_true",
                    help="only hits/s and CPU per hit on loopback against node-cache, unbound and the "
                    "Python floor, no namespaces (its options: bench/run --hitrate --help)")
    a = ap.parse_args(argv)
    a.caches = [c.strip() for c in a.caches.split(",") if c.strip()]
    bad = set(a.caches) - set(ALL_CACHES)
    if bad:
        ap.error(f"unknown cache(s): {', '.join(sorted(bad))}")
    if a.node_cache is not None and not a.node_cache.is_file():
        ap.error(f"--node-cache {a.node_cache}: no such file")
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
        "quick": a.quick, "load_only": a.load_only, "plan": plan.__dict__, "cpu": cpu, "cores": os.cpu_count(),
        "kernel": platform.release(), "loadavg_start": _loadavg(), "server_cpu": S.SERVER_CPU, "loadgen_cpu": S.LOADGEN_CPU,
        "versions": {
            "knotd": _version(["knotd", "--version"]).replace("knotd (Knot DNS), version ", ""),
            "unbound": _version(["unbound", "-V"]).replace("Version ", ""),
            "dnsmasq": _version(["dnsmasq", "--version"]).replace("Dnsmasq version ", "").split()[0],
            "dnsperf": _version(["dnsperf", "-h"], -1).replace("Version ", ""),
            "python": platform.python_version(),
            "nodecache": commit,
        },
        "build": S.nodecache_build(),
    }


def core_alone(quick: bool) -> dict[str, Any]:
    """The core micro-benchmark in a child pinned to the server core (see nodebench.core)."""
    argv = ["taskset", "-c", str(S.SERVER_CPU), S.python(), "-m", "nodebench.core", "--json",
            "--rounds", "3" if quick else "7"]
    cp = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=S._env())
    if cp.returncode != 0:
        raise BenchError(f"the core micro-benchmark failed:\n{cp.stderr[-1500:]}")
    return json.loads(cp.stdout)


def run(a: argparse.Namespace, cleanup: Cleanup) -> int:
    t0 = time.monotonic()
    require(TOOLS)
    memory.sweep_stale()
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
    problems: dict[str, str] = {}
    nodecache_help = ""
    versions: dict[str, str] = {}
    for name in a.caches:
        if name == "nodecache":
            ok, why, nodecache_help = S.nodecache_runnable()
            c = S.Cache("nodecache", T.NODECACHE_IP, own_notrack=True, cluster_transport="tcp (force_tcp)")
            if not ok:
                problems[name] = f"not runnable: {why}"
                log(f"nodecache is not runnable: {why}")
            caches.append(c)
        elif name == "node-cache":
            binary, origin = S.node_cache_binary(a.node_cache, work)
            c = S.Cache("node-cache", T.NODE_CACHE_IP, own_notrack=False, cluster_transport="tcp (force_tcp)",
                        binary=binary)
            if binary is None:
                problems[name] = f"not measured: {origin}"
                log(f"node-cache is not measured: {origin}")
            else:
                versions["node-cache"] = S.node_cache_version(binary)
                _, dropped = S.node_cache_corefile(work)
                c.notes.append(f"runs nodecache's Corefile ({origin})"
                               + (f" without {', '.join(f'`{d}`' for d in dropped)} (not in its build)"
                                  if dropped else ""))
            caches.append(c)
        elif name == "floor":
            caches.append(S.Cache("floor", T.FLOOR_IP, own_notrack=False, cluster_transport="udp (misses relayed once)",
                                  hit_only=True,
                                  notes=["the Python floor: a uvloop loop answering from a dict of wire bytes "
                                         "(bench/nodebench/floor.py); hit scenarios only"]))
        elif name == "unbound":
            caches.append(S.Cache("unbound", T.UNBOUND_IP, own_notrack=False, cluster_transport="tcp (forward-tcp-upstream)"))
        else:
            caches.append(S.Cache("dnsmasq", T.DNSMASQ_IP, own_notrack=False, cluster_transport="udp (no TCP forwarding)",
                                  notes=["forwards cluster.local misses over UDP: dnsmasq has no TCP-upstream option"]))

    log("building namespaces pod -> node -> cluster DNS")
    topo = T.build(cleanup)
    runner = Runner(cleanup, topo, work, plan)
    runner.nodecache_help = nodecache_help
    res = runner.results
    res["meta"] = meta(a, plan)
    res["meta"]["versions"].update(versions)
    path, origin = S.corefile(work)
    res["meta"]["corefile_origin"] = origin
    res["meta"]["corefile"] = path.read_text()

    if not a.load_only:
        log("the core alone: hits and misses through QueryHandler, no sockets")
        res["core"] = core_alone(a.quick)
        log(f"  hit {res['core']['hit']['median_us']:.2f} us, miss {res['core']['miss']['median_us']:.2f} us (median)")
    runner.start_cluster_dns()
    res["meta"]["zone_records"] = runner.zone.records
    if not a.load_only:
        runner.run_direct()
    for c in caches:
        if c.name in problems:
            res["caches"][c.name] = {"status": problems[c.name], "ip": c.ip,
                                     "cluster_transport": c.cluster_transport, "notes": c.notes}
            continue
        runner.run_cache(c, load_only=a.load_only)
    res["meta"]["elapsed_s"] = time.monotonic() - t0
    res["meta"]["loadavg_end"] = _loadavg()
    log(f"writing {a.out}/report.md, results.json and plots")
    report.write(res, runner.samples, a.out, load_only=a.load_only)
    # node-cache without a build to run is reported, not a failure of the run.
    failed = [n for n, c in res["caches"].items() if c["status"] != "ok" and not c["status"].startswith("not measured")]
    for n, c in res["caches"].items():
        if c["status"].startswith("not measured"):
            log(f"{n}: {c['status']}")
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
    for cf in work.glob("Corefile*"):
        shutil.copy(cf, dest / cf.name)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--missrate" in argv:
        from . import missrate
        return missrate.main([x for x in argv if x != "--missrate"])
    if "--hitrate" in argv:
        from . import hitrate
        return hitrate.main([x for x in argv if x != "--hitrate"])
    a = parse_args(argv)
    if a.core:
        from . import core
        return core.main(["--rounds", "3"] if a.quick else [])
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
