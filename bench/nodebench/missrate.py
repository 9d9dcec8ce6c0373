"""Cache misses over TCP on loopback: nodecache, node-cache, unbound and the miss floor in one run.

Every cache forwards ``cluster.local`` over TCP to the same knotd (a wildcard
zone, so every name exists) and is pinned to the server core; dnsperf runs on
the load generator's. The miss floor (:mod:`nodebench.missfloor`) forwards the
same way with nothing else: the least a Python miss path pays. Per cache and
run it measures:

* misses/s: N never-seen names, up to 100 outstanding (dnsperf ``-q 100``);
* CPU per miss: the cache's user+system CPU over that run / answers, us;
* latency at a light load: M more never-seen names at 2,000 q/s, average;
* memory after the N names: PSS and RSS summed over the cache's processes,
  and, each cache started in a memory cgroup of its own (where one can be
  made), the cgroup's working set and what it is made of (anon, file,
  kernel, sock; slab on cgroup v2).

Run it as ``bench/run --missrate`` (or ``python -m nodebench.missrate`` with
``bench`` on ``PYTHONPATH``); no namespaces and nothing leaves 127.0.0.0/8.
The servers, knotd and the run loop are shared with ``bench/run --hitrate``
(:mod:`nodebench.hitrate`).
node-cache is the build beside the project unless ``--node-cache`` names one.
``--before DIR`` also runs nodecache from another source tree (an export of
an older commit) in the same run, for before/after figures. ``nodecache-pure``
is the same tree as ``nodecache`` run with ``NODECACHE_PURE=1``: where the
modules are compiled (setup.py), the two rows compare the builds.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .host import BenchError, Cleanup, Daemon, log, start_daemon
from .measure import dnsperf
from .memory import MemoryCgroup, measure as measure_memory
from .servers import (REPO, SERVER_CPU, _env, byte_compile, dig_ok, knot_config, node_cache_binary,
                      nodecache_build, python, unbound_conf)

KNOT = ("127.0.0.30", 5300)
ADDRS = {"nodecache": ("127.0.0.31", 5301), "node-cache": ("127.0.0.32", 5302),
         "unbound": ("127.0.0.33", 5303), "nodecache-before": ("127.0.0.34", 5304),
         "floor": ("127.0.0.35", 5305), "miss-floor": ("127.0.0.36", 5306),
         "nodecache-pure": ("127.0.0.40", 5310),
         # The floor read other ways (floor.py ``--io``), for comparing ways of reading a socket.
         "floor-reader": ("127.0.0.37", 5307), "floor-mmsg": ("127.0.0.38", 5308),
         "floor-thread": ("127.0.0.39", 5309)}
TOOLS = ("knotd", "unbound", "dnsperf", "dig", "taskset")
#: A name the wildcard zone answers, asked until a server is up.
PROBE_NAME = "up.svc.cluster.local"


def corefile(host: str, port: int) -> str:
    return (f"cluster.local:{port} {{\n    bind {host}\n    cache 30\n"
            f"    forward . {KNOT[0]}:{KNOT[1]} {{\n        force_tcp\n    }}\n}}\n")


def each_beside_knot(prog: str, tools: list[str], prefix: str, servers: list[str],
                     run: Callable[[str, Path], dict[str, object]]) -> dict[str, dict[str, object]] | None:
    """``run(server, work)`` for each server, with knotd (:func:`start_knot`) in a scratch
    directory ``work``; ``None`` after saying what was missing or what failed (exit 2)."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print(f"{prog}: error: missing tools: {', '.join(missing)}", file=sys.stderr)
        return None
    cleanup = Cleanup()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        try:
            start_knot(cleanup, work)
            return {s: run(s, work) for s in servers}
        except BenchError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return None
        finally:
            cleanup.run()


def start_knot(cleanup: Cleanup, work: Path, addr: tuple[str, int] = KNOT) -> Daemon:
    """knotd on *addr* serving a wildcard ``cluster.local``: every name has an A record (10.0.0.1)."""
    d = work / "knot"
    (d / "db").mkdir(parents=True)
    (d / "cluster.local.zone").write_text(
        "$ORIGIN cluster.local.\n$TTL 30\n"
        "@ IN SOA ns.cluster.local. host.cluster.local. 1 7200 1800 86400 5\n"
        "@ IN NS ns\nns IN A 10.0.0.53\n* IN A 10.0.0.1\n")
    (d / "knot.conf").write_text(knot_config(d, f"{addr[0]}@{addr[1]}",
                                             {"cluster.local": d / "cluster.local.zone"}))
    ensure_free("knotd", *addr)
    daemon = start_daemon(cleanup, "knotd", ["knotd", "-c", str(d / "knot.conf")], ns=None, log_dir=work)
    wait_answer(daemon, *addr)
    return daemon


def cache_argv(name: str, d: Path, a: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run cache *name* from directory *d*."""
    host, port = ADDRS[name]
    env = _env()
    if name.startswith("nodecache"):
        (d / "Corefile").write_text(corefile(host, port))
        src = a.before if name == "nodecache-before" else a.nodecache_src
        if name == "nodecache-pure":
            env["NODECACHE_PURE"] = "1"
        if src:
            env["PYTHONPATH"] = f"{Path(src).resolve()}{os.pathsep}{env['PYTHONPATH']}"
        byte_compile(Path(src).resolve() if src else REPO)
        # -P: the source tree first in PYTHONPATH, not the current directory's, is the one run.
        return [python(), "-P", "-m", "nodecache", "run", "--conf", str(d / "Corefile"),
                "--localip", "", "--log-level", "warning"], env
    if name == "node-cache":
        (d / "Corefile").write_text(corefile(host, port))
        env["KUBE_DNS_SERVICE_HOST"] = "127.0.0.254"
        return [str(a.node_cache_binary), "-localip", host, "-conf", str(d / "Corefile"),
                "-setupinterface=false", "-setupiptables=false", "-skipteardown",
                "-metrics-listen-address", f"{host}:9353", "-basecorefile", str(d / "none")], env
    if name in ("floor", "miss-floor") or name.startswith("floor-"):
        module, _, io = name.replace("miss-", "miss").partition("-")
        return [python(), "-m", f"nodebench.{module}", "--listen", host, "--port", str(port),
                "--upstream", KNOT[0], "--upstream-port", str(KNOT[1]), *(["--io", io] if io else [])], env
    conf = unbound_conf(d, interface=host, port=port, upstream=f"{KNOT[0]}@{KNOT[1]}")
    return ["unbound", "-d", "-c", str(conf)], env


def ensure_free(name: str, host: str, port: int) -> None:
    """Stop unless UDP *host*:*port* is free: a server left running there with SO_REUSEPORT
    (nodecache, knotd) would share the queries and the figures would be half someone else's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise BenchError(f"{name}: {host}:{port} is taken ({exc.strerror}): stop what listens there "
                             "(ss -lunp) and run again") from None


def start_cache(cleanup: Cleanup, name: str, d: Path, a: argparse.Namespace,
                cgroup: MemoryCgroup | None = None) -> Daemon:
    """Cache *name* running from directory *d*, pinned to the server core (in *cgroup*), answering."""
    ensure_free(name, *ADDRS[name])
    argv, env = cache_argv(name, d, a)
    daemon = start_daemon(cleanup, name, argv, ns=None, log_dir=d, cpu=SERVER_CPU, env=env,
                          outer=cgroup.prefix() if cgroup is not None else ())
    wait_answer(daemon, *ADDRS[name])
    return daemon


def wait_answer(daemon: Daemon, host: str, port: int, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise BenchError(f"{daemon.name} exited during start-up:\n{daemon.tail()}")
        if dig_ok(None, host, PROBE_NAME, port=port):
            return
        time.sleep(0.1)
    raise BenchError(f"{daemon.name} did not answer on {host}:{port} within {seconds:.0f} s:\n{daemon.tail()}")


def write_names(path: Path, prefix: str, n: int, repeat: int = 1) -> Path:
    """A dnsperf input of *n* names, the whole list *repeat* times."""
    path.write_text("".join(f"{prefix}{i}.ns{i % 97}.svc.cluster.local A\n" for i in range(n)) * repeat)
    return path


def dnsperf_on(name: str, *extra: str) -> list[str]:
    """dnsperf options that aim one pass at cache *name* (``-s`` comes from :func:`dnsperf`)."""
    return ["-p", str(ADDRS[name][1]), "-n", "1", "-t", "5", *extra]


def measure(name: str, work: Path, a: argparse.Namespace, run: int) -> dict[str, float]:
    d = work / str(run) / name
    d.mkdir(parents=True)
    cleanup = Cleanup()
    try:
        cgroup = MemoryCgroup.create(cleanup, f"ncb{os.getpid()}-{name}-{run}")
        daemon = start_cache(cleanup, name, d, a, cgroup)
        host = ADDRS[name][0]
        dnsperf(None, host, write_names(d / "warm.txt", f"w{run}x", 200), dnsperf_on(name, "-q", "20"))  # connections up
        burst = dnsperf(None, host, write_names(d / "miss.txt", f"m{run}x", a.names), dnsperf_on(name, "-q", "100"),
                        server_pid=daemon.pid, timeout=600)
        memory = measure_memory(daemon.pid, cgroup)
        paced = dnsperf(None, host, write_names(d / "light.txt", f"l{run}x", a.light),
                        dnsperf_on(name, "-q", "100", "-Q", "2000"), verbose=True, timeout=600)
        if not paced.latencies:
            raise BenchError(f"{name}: dnsperf -v printed no latencies")
        assert burst.server_cpu is not None
        return {"misses_per_s": burst.qps, "cpu_us_per_miss": burst.server_cpu / burst.completed * 1e6,
                "latency_ms_2000": sum(paced.latencies) / len(paced.latencies) * 1000,
                "answered": burst.completed,
                "pss_mb": memory["pss_bytes"] / 2**20, "rss_mb": memory["rss_bytes"] / 2**20,
                **{k.replace("_bytes", "_mb"): v / 2**20 for k, v in memory.items() if k.startswith("cgroup_")}}
    finally:
        cleanup.run()


def cell(values: list[float], fmt: str) -> str:
    """A figure over runs: the value, or the range lowest-highest."""
    values = sorted(values)
    return fmt.format(values[0]) if values[0] == values[-1] else f"{fmt.format(values[0])}-{fmt.format(values[-1])}"


def table(results: dict[str, list[dict[str, float]]], names: int) -> str:
    """One row per cache; a range where the runs differ."""
    lines = [f"| cache | misses/s | CPU us per miss | avg latency at 2,000 q/s, ms | PSS after {names:,} names, MB "
             "| RSS, MB |", "|---|---|---|---|---|---|"]
    for name, rows in results.items():
        cells = [cell([r[key] for r in rows], fmt) for key, fmt in (
            ("misses_per_s", "{:,.0f}"), ("cpu_us_per_miss", "{:.1f}"), ("latency_ms_2000", "{:.3f}"),
            ("pss_mb", "{:.1f}"), ("rss_mb", "{:.1f}"))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    parts = [k for k in ("cgroup_working_set_mb", "cgroup_anon_mb", "cgroup_file_mb", "cgroup_kernel_mb",
                         "cgroup_sock_mb", "cgroup_slab_mb") if any(k in r for rows in results.values() for r in rows)]
    if parts:
        lines += ["", f"memory cgroup after {names:,} names, MB: | cache | "
                  + " | ".join(k[7:-3].replace("_", " ") for k in parts) + " |",
                  "|---|" + "---|" * len(parts)]
        for name, rows in results.items():
            lines.append(f"| {name} | " + " | ".join(cell([r.get(k, 0.0) for r in rows], "{:.1f}") for k in parts) + " |")
    ours = results.get("nodecache", [])
    for ref in ("nodecache-pure", "miss-floor"):
        theirs = results.get(ref, [])
        if theirs and ours:
            cpu = [r["cpu_us_per_miss"] / f["cpu_us_per_miss"] for r, f in zip(ours, theirs) if f["cpu_us_per_miss"] > 0]
            rate = [r["misses_per_s"] / f["misses_per_s"] for r, f in zip(ours, theirs)]
            lines.append(f"\nnodecache / {ref.replace('-', ' ')}, run by run: CPU per miss {cell(cpu, '{:.2f}x') if cpu else '-'}, "
                         f"misses/s {cell(rate, '{:.2f}x')}")
    return "\n".join(lines)


def build_header(a: argparse.Namespace) -> str:
    """Which build each nodecache row ran, above the table."""
    lines = []
    for name in a.caches:
        if name.startswith("nodecache"):
            src = a.before if name == "nodecache-before" else a.nodecache_src
            env = {**os.environ, "NODECACHE_PURE": "1"} if name == "nodecache-pure" else None
            lines.append(f"{name}: {nodecache_build(env, Path(src) / 'nodecache' if src else None)}\n")
    return "".join(lines)


def parser(prog: str, doc: str | None, caches: str) -> argparse.ArgumentParser:
    """The options every loopback benchmark takes."""
    ap = argparse.ArgumentParser(prog=prog, description=(doc or "").splitlines()[0])
    ap.add_argument("--node-cache", type=Path, help="node-cache binary or .gz (default: the build beside the project)")
    ap.add_argument("--nodecache-src", help="run nodecache from this source tree")
    ap.add_argument("--before", help="also run nodecache from this source tree, as nodecache-before")
    ap.add_argument("--caches", default=caches, help=f"comma-separated, of {', '.join(ADDRS)} (default {caches})")
    ap.add_argument("--runs", type=int, default=2)
    return ap


def checked(ap: argparse.ArgumentParser, a: argparse.Namespace) -> argparse.Namespace:
    # each cache once (it gets one work folder per run), in the order given
    a.caches = list(dict.fromkeys([c for c in a.caches.split(",") if c]
                                  + (["nodecache-before"] if a.before else [])))
    unknown = set(a.caches) - set(ADDRS)
    if unknown:
        ap.error(f"unknown cache(s): {', '.join(sorted(unknown))}")
    if "nodecache-before" in a.caches and not a.before:
        ap.error("nodecache-before needs --before DIR (the source tree to run)")
    if not 1 <= a.runs <= 10:
        ap.error("--runs must be 1..10")
    return a


Measure = Callable[[str, Path, argparse.Namespace, int], dict[str, float]]


def run_all(prog: str, a: argparse.Namespace, measure: Measure) -> dict[str, list[dict[str, float]]] | None:
    """*measure* for every cache in ``--caches`` in turn, ``--runs`` times, beside one knotd;
    None (after saying why on stderr) when a tool is missing or a server fails."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"{prog}: error: missing tools: {', '.join(missing)}", file=sys.stderr)
        return None
    results: dict[str, list[dict[str, float]]] = {c: [] for c in a.caches}
    cleanup = Cleanup()
    with tempfile.TemporaryDirectory(prefix="ncb-loopback-") as tmp:
        work = Path(tmp)
        try:
            if "node-cache" in a.caches:
                a.node_cache_binary, origin = node_cache_binary(a.node_cache, work)
                if a.node_cache_binary is None:
                    raise BenchError(f"no node-cache to run: {origin} (give --node-cache or leave it out of --caches)")
            start_knot(cleanup, work)
            for run in range(a.runs):
                for name in a.caches:
                    results[name].append(measure(name, work, a, run))
                    log(f"{name} run {run}: {results[name][-1]}")
        except (BenchError, KeyboardInterrupt) as exc:
            print(f"{prog}: error: {exc or 'interrupted'}", file=sys.stderr)
            return None
        finally:
            cleanup.run()
    return results


def main(argv: list[str] | None = None) -> int:
    ap = parser("bench/run --missrate", __doc__, "nodecache,nodecache-pure,node-cache,unbound,miss-floor")
    ap.add_argument("--names", type=int, default=20_000, help="never-seen names in the burst (default 20000)")
    ap.add_argument("--light", type=int, default=10_000, help="names at 2,000 q/s (default 10000)")
    a = checked(ap, ap.parse_args(argv))
    if not 1 <= a.names <= 1_000_000 or not 1 <= a.light <= 1_000_000:
        ap.error("--names and --light must be 1..1000000")
    results = run_all(ap.prog, a, measure)
    if results is None:
        return 2
    print(build_header(a) + table(results, a.names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
