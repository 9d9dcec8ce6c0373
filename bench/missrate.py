"""Cache misses over TCP on loopback: nodecache, node-cache and unbound in one run.

Every cache forwards ``cluster.local`` over TCP to the same knotd (a wildcard
zone, so every name exists) and is pinned to CPU 1; dnsperf runs on CPU 0.
Per cache and run it measures:

* misses/s: N never-seen names, up to 100 outstanding (dnsperf ``-q 100``);
* CPU per miss: the cache's user+system CPU over that run / answers, us;
* latency at a light load: M more never-seen names at 2,000 q/s, average.

Run as root from the repository root (``.venv/bin/python -m bench.missrate
--node-cache PATH``); needs knotd, unbound, dnsperf and taskset. Nothing
leaves 127.0.0.0/8. ``--before DIR`` also runs nodecache from another source
tree (an export of an older commit) in the same run, for before/after figures.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.nodebench.servers import knot_config, unbound_conf

KNOT = ("127.0.0.30", 5300)
ADDRS = {"nodecache": ("127.0.0.31", 5301), "node-cache": ("127.0.0.32", 5302),
         "unbound": ("127.0.0.33", 5303), "nodecache-before": ("127.0.0.34", 5304),
         "floor": ("127.0.0.35", 5305)}
#: Ticks of /proc/PID/stat CPU times per second.
CLK_TCK = os.sysconf("SC_CLK_TCK")


def corefile(host: str, port: int) -> str:
    return (f"cluster.local:{port} {{\n    bind {host}\n    cache 30\n"
            f"    forward . {KNOT[0]}:{KNOT[1]} {{\n        force_tcp\n    }}\n}}\n")


def start_knot(work: Path) -> subprocess.Popen[bytes]:
    d = work / "knot"
    (d / "db").mkdir(parents=True)
    (d / "cluster.local.zone").write_text(
        "$ORIGIN cluster.local.\n$TTL 30\n"
        "@ IN SOA ns.cluster.local. host.cluster.local. 1 7200 1800 86400 5\n"
        "@ IN NS ns\nns IN A 10.0.0.53\n* IN A 10.0.0.1\n")
    (d / "knot.conf").write_text(knot_config(d, f"{KNOT[0]}@{KNOT[1]}",
                                             {"cluster.local": d / "cluster.local.zone"}))
    return spawn(["knotd", "-c", str(d / "knot.conf")], work / "knot.log", cpu=0)


def start_cache(name: str, work: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    host, port = ADDRS[name]
    d = work / name
    d.mkdir()
    (d / "Corefile").write_text(corefile(host, port))
    if name.startswith("nodecache"):
        env = dict(os.environ)
        src = args.before if name == "nodecache-before" else args.nodecache_src
        if src:
            env["PYTHONPATH"] = str(Path(src).resolve())
        # Started in its scratch directory: ``-m`` puts the working directory first
        # on sys.path, which from a checkout would shadow the tree asked for.
        return spawn([sys.executable, "-m", "nodecache", "run", "--conf", str(d / "Corefile"),
                      "--localip", "", "--log-level", "warning"], d / "log", cpu=1, env=env, cwd=d)
    if name == "node-cache":
        return spawn([args.node_cache, "-localip", host, "-conf", str(d / "Corefile"),
                      "-setupinterface=false", "-setupiptables=false", "-skipteardown",
                      "-metrics-listen-address", f"{host}:9353", "-basecorefile", str(d / "none")],
                     d / "log", cpu=1, env={**os.environ, "KUBE_DNS_SERVICE_HOST": "127.0.0.254"})
    if name == "floor":
        floor = Path(__file__).resolve().parent / "nodebench" / "floor.py"
        return spawn([sys.executable, str(floor), "--listen", host, "--port", str(port),
                      "--upstream", KNOT[0], "--upstream-port", str(KNOT[1])], d / "log", cpu=1)
    conf = unbound_conf(d, interface=host, port=port, upstream=f"{KNOT[0]}@{KNOT[1]}")
    return spawn(["unbound", "-d", "-c", str(conf)], d / "log", cpu=1)


def spawn(argv: list[str], log: Path, *, cpu: int, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["taskset", "-c", str(cpu), *argv], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)


def wait_tcp(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{proc.args} exited"
        try:
            socket.create_connection((host, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port}")


def cpu_seconds(pid: int) -> float:
    """User+system CPU of ``pid`` and its descendants, s."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return total


def dnsperf(host: str, port: int, names: Path, *, extra: list[str]) -> dict[str, float]:
    out = subprocess.run(["taskset", "-c", "0", "dnsperf", "-s", host, "-p", str(port), "-d",
                          str(names), "-n", "1", "-t", "5", *extra],
                         capture_output=True, text=True, timeout=600).stdout
    found = {
        "completed": re.search(r"Queries completed:\s+(\d+)", out),
        "qps": re.search(r"Queries per second:\s+([\d.]+)", out),
        "latency": re.search(r"Average Latency \(s\):\s+([\d.]+)", out),
    }
    if not all(found.values()):
        raise RuntimeError(f"dnsperf output not understood:\n{out}")
    return {k: float(m.group(1)) for k, m in found.items()}  # type: ignore[union-attr]


def write_names(path: Path, prefix: str, n: int, repeat: int = 1) -> Path:
    """A dnsperf input of ``n`` names, the whole list ``repeat`` times."""
    path.write_text("".join(f"{prefix}{i}.ns{i % 97}.svc.cluster.local A\n"
                            for i in range(n)) * repeat)
    return path


def measure(name: str, work: Path, args: argparse.Namespace, run: int) -> dict[str, float]:
    proc = start_cache(name, work / f"{run}", args)
    try:
        host, port = ADDRS[name]
        wait_tcp(host, port, proc)
        time.sleep(1.0)
        warm = write_names(work / f"{run}" / "warm.txt", f"w{run}x", 200)
        dnsperf(host, port, warm, extra=["-q", "20"])  # connections up
        names = write_names(work / f"{run}" / "miss.txt", f"m{run}x", args.names)
        before = cpu_seconds(proc.pid)
        burst = dnsperf(host, port, names, extra=["-q", "100"])
        cpu = cpu_seconds(proc.pid) - before
        light = write_names(work / f"{run}" / "light.txt", f"l{run}x", args.light)
        paced = dnsperf(host, port, light, extra=["-q", "100", "-Q", "2000"])
        return {"misses_per_s": burst["qps"], "cpu_us_per_miss": cpu / burst["completed"] * 1e6,
                "latency_ms_2000": paced["latency"] * 1000, "answered": burst["completed"]}
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def server_args(ap: argparse.ArgumentParser, caches: str) -> None:
    """The options every loopback bench takes."""
    ap.add_argument("--node-cache", help="node-cache binary (unpacked)")
    ap.add_argument("--nodecache-src", help="run nodecache from this source tree")
    ap.add_argument("--before", help="also run nodecache from this source tree, as nodecache-before")
    ap.add_argument("--caches", default=caches)
    ap.add_argument("--runs", type=int, default=2)


def run_all(ap: argparse.ArgumentParser, args: argparse.Namespace, prefix: str,
            measure: Callable[[str, Path, argparse.Namespace, int], dict[str, float]],
            ) -> dict[str, list[dict[str, float]]]:
    """``measure`` for every server in ``--caches`` in turn, ``--runs`` times, beside one knotd."""
    caches = args.caches.split(",") + (["nodecache-before"] if args.before else [])
    if "node-cache" in caches and not args.node_cache:
        ap.error("--node-cache PATH is needed (or leave node-cache out of --caches)")
    work = Path(tempfile.mkdtemp(prefix=prefix))
    knot = start_knot(work)
    results: dict[str, list[dict[str, float]]] = {c: [] for c in caches}
    try:
        wait_tcp(*KNOT, knot)
        for run in range(args.runs):
            (work / f"{run}").mkdir(exist_ok=True)
            for name in caches:
                results[name].append(measure(name, work, args, run))
                print(name, run, results[name][-1], file=sys.stderr)
    finally:
        knot.terminate()
        knot.wait(10)
        shutil.rmtree(work, ignore_errors=True)
    return results


def cell(values: list[float], fmt: str) -> str:
    """A figure over runs: the value, or the range lowest-highest."""
    values = sorted(values)
    if values[0] == values[-1]:
        return fmt.format(values[0])
    return f"{fmt.format(values[0])}-{fmt.format(values[-1])}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    server_args(ap, "nodecache,node-cache,unbound")
    ap.add_argument("--names", type=int, default=20_000)
    ap.add_argument("--light", type=int, default=10_000)
    args = ap.parse_args()
    results = run_all(ap, args, "missrate-", measure)
    print("| cache | misses/s | CPU us per miss | avg latency at 2,000 q/s, ms |")
    print("|---|---|---|---|")
    for name, rows in results.items():
        cells = [cell([r[key] for r in rows], fmt) for key, fmt in (
            ("misses_per_s", "{:,.0f}"), ("cpu_us_per_miss", "{:.1f}"), ("latency_ms_2000", "{:.3f}"))]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
