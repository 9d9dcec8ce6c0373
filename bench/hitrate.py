"""Cache hits over UDP on loopback: nodecache, node-cache, unbound and the Python floor in one run.

The servers are started as ``bench/missrate.py`` starts them (pinned to CPU 1,
dnsperf on CPU 0, every cache in front of the same knotd); the floor is
``nodebench/floor.py``. Per server and run, after one pass over ``--names``
distinct names has filled its cache:

* hits/s: the same names over and over, up to 100 outstanding, unthrottled;
* CPU per hit: the server's user+system CPU over that run / answers, us;
* CPU per answer at a fixed 5,000 q/s (where the wake-up per datagram shows).

Run as root from the repository root (``.venv/bin/python -m bench.hitrate
--node-cache PATH``); ``--before DIR`` also runs
nodecache from another source tree, for before/after figures in one run.
Nothing leaves 127.0.0.0/8.
"""
from __future__ import annotations

import argparse
import socket
import subprocess
import time
from pathlib import Path

from bench.missrate import (ADDRS, cell, cpu_seconds, dnsperf, run_all, server_args, start_cache,
                            stop, wait_tcp, write_names)

#: Queries of the paced run and its rate, q/s.
PACED_RATE = 5000
PACED_QUERIES = 25_000


def wait_answer(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Until the server answers a UDP query (the floor has no TCP port to probe)."""
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x07cluster\x05local\x00" \
        b"\x00\x01\x00\x01"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"{proc.args} exited"
            try:
                sock.sendto(query, (host, port))
                if sock.recv(512)[:2] == query[:2]:
                    return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"no answer from {host}:{port}")


def measure(name: str, work: Path, args: argparse.Namespace, run: int) -> dict[str, float]:
    proc = start_cache(name, work / f"{run}", args)
    try:
        host, port = ADDRS[name]
        wait_answer(host, port, proc)
        if name != "floor":
            wait_tcp(host, port, proc)
        d = work / f"{run}"
        dnsperf(host, port, write_names(d / "warm.txt", "h", args.names), extra=["-q", "20"])
        hits = write_names(d / "hits.txt", "h", args.names, args.hits // args.names)
        before = cpu_seconds(proc.pid)
        burst = dnsperf(host, port, hits, extra=["-q", "100"])
        cpu = cpu_seconds(proc.pid) - before
        paced_names = write_names(d / "paced.txt", "h", args.names, PACED_QUERIES // args.names)
        before = cpu_seconds(proc.pid)
        paced = dnsperf(host, port, paced_names, extra=["-q", "100", "-Q", str(PACED_RATE)])
        paced_cpu = cpu_seconds(proc.pid) - before
        return {"hits_per_s": burst["qps"], "cpu_us_per_hit": cpu / burst["completed"] * 1e6,
                "cpu_us_at_5000": paced_cpu / paced["completed"] * 1e6,
                "answered": burst["completed"]}
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    server_args(ap, "nodecache,node-cache,unbound,floor")
    ap.add_argument("--names", type=int, default=1000, help="distinct cached names")
    ap.add_argument("--hits", type=int, default=300_000, help="queries of the unthrottled run")
    args = ap.parse_args()
    results = run_all(ap, args, "hitrate-", measure)
    floor = [r["cpu_us_per_hit"] for r in results.get("floor", [])]
    print("| server | hits/s | CPU us per hit | x floor | CPU us per answer at 5,000 q/s |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        cpu = [r["cpu_us_per_hit"] for r in rows]
        ratio = cell([c / f for c, f in zip(cpu, floor)], "{:.2f}") if floor else "-"
        print(f"| {name} | {cell([r['hits_per_s'] for r in rows], '{:,.0f}')} | "
              f"{cell(cpu, '{:.2f}')} | {ratio} | "
              f"{cell([r['cpu_us_at_5000'] for r in rows], '{:.1f}')} |")


if __name__ == "__main__":
    main()
