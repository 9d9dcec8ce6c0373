"""Running the load generators and turning their output into figures."""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from . import topology as T
from .host import BenchError, core_times, core_usage, cpu_seconds, in_ns, sh
from .servers import LOADGEN_CPU, _env, dnsperf_argv, python

PERCENTILES = (50, 90, 99, 99.9)


def percentile(sorted_values: list[float], p: float) -> float:
    """Linear-interpolated percentile of already sorted values (numpy's default)."""
    if not sorted_values:
        return math.nan
    k = (len(sorted_values) - 1) * p / 100.0
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def summary_ms(latencies_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9 and mean, in milliseconds."""
    v = sorted(latencies_s)
    out = {f"p{p:g}": percentile(v, p) * 1000 for p in PERCENTILES}
    out["mean"] = (sum(v) / len(v) * 1000) if v else math.nan
    out["n"] = len(v)
    return out


@dataclass
class PerfResult:
    """One dnsperf run."""

    sent: int
    completed: int
    lost: int
    qps: float
    run_time: float
    rcodes: dict[str, int]
    latencies: list[float] = field(default_factory=list)
    #: CPU used by the server under test during the run, s (None when not asked for).
    server_cpu: float | None = None
    #: CPU used by dnsperf itself, s.
    loadgen_cpu: float = 0.0
    #: Busy and steal share of each core over the run (/proc/stat), kernel work included.
    cores: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.lost / self.sent if self.sent else math.nan

    @property
    def loadgen_busy(self) -> float:
        """Share of its core dnsperf used (1.0 = the load generator was the limit)."""
        return self.loadgen_cpu / self.run_time if self.run_time else math.nan


_NUM = r"([0-9.]+)"


def dnsperf(ns: str | None, server: str, datafile: Path, args: list[str], *, verbose: bool = False,
            server_pid: int | None = None, timeout: float = 300.0) -> PerfResult:
    """Run dnsperf pinned to the load-generator core; parse its summary (and ``-v`` lines)."""
    argv = dnsperf_argv(ns, server, str(datafile), *args, *(["-v"] if verbose else []))
    cpu0 = cpu_seconds(server_pid) if server_pid else None
    cores0 = core_times()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    killer = threading.Timer(timeout, lambda: proc.send_signal(signal.SIGKILL))
    killer.start()
    chunks: list[bytes] = []
    try:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):
            chunks.append(chunk)
        # wait4 gives dnsperf's own CPU use (ip netns exec and taskset both exec).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    finally:
        killer.cancel()
        if proc.returncode is None:  # interrupted: do not leave dnsperf running
            proc.kill()
            proc.wait()
    cpu1 = cpu_seconds(server_pid) if server_pid else None
    cores = core_usage(cores0, core_times())
    out = b"".join(chunks).decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"dnsperf failed ({proc.returncode}): {' '.join(argv)}\n{out[-800:]}")

    def grab(label: str) -> float:
        m = re.search(rf"{label}:\s+{_NUM}", out)
        if not m:
            raise BenchError(f"dnsperf output has no {label!r}:\n{out[-800:]}")
        return float(m.group(1))

    rcodes: dict[str, int] = {}
    m = re.search(r"Response codes:\s+(.*)", out)
    if m:
        for code, n in re.findall(r"([A-Z]+) (\d+)", m.group(1)):
            rcodes[code] = int(n)
    lat: list[float] = []
    if verbose:
        for line in out.splitlines():
            if line.startswith("> ") and not line.startswith("> T "):
                try:
                    lat.append(float(line.rsplit(None, 1)[1]))
                except (ValueError, IndexError):
                    pass
    return PerfResult(
        sent=int(grab("Queries sent")), completed=int(grab("Queries completed")),
        lost=int(grab("Queries lost")), qps=grab("Queries per second"), run_time=grab(r"Run time \(s\)"),
        rcodes=rcodes, latencies=lat,
        server_cpu=(cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else None,
        loadgen_cpu=usage.ru_utime + usage.ru_stime, cores=cores,
    )


def probe(ns: str, mode: str, server: str, names: Path, *extra: str, timeout: float = 600.0) -> dict:
    """Run :mod:`nodebench.probe` in namespace *ns* on the load-generator core."""
    argv = in_ns(ns, ["taskset", "-c", str(LOADGEN_CPU), python(), "-m", "nodebench.probe", mode,
                      "--server", server, "--names", str(names), *extra])
    try:
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=_env())
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"probe {mode} timed out") from exc
    if cp.returncode != 0:
        raise BenchError(f"probe {mode} failed: {cp.stderr[-800:]}")
    return json.loads(cp.stdout)


def conntrack_flush(topo: T.Topology) -> None:
    sh(["conntrack", "-F"], ns=topo.node, check=False)


def conntrack_entries(topo: T.Topology) -> dict[str, int]:
    """Entries in the node namespace's table, split by where the flow was headed."""
    cp = sh(["conntrack", "-L"], ns=topo.node, check=False)
    counts = {"total": 0, "pod_to_node_cache": 0, "pod_to_cluster_dns": 0, "node_to_upstream": 0}
    for line in cp.stdout.splitlines():
        m = re.search(r"src=(\S+) dst=(\S+)", line)
        if not m:
            continue
        src, dst = m.groups()
        counts["total"] += 1
        if src == T.POD_IP and dst.startswith("169.254.20."):
            counts["pod_to_node_cache"] += 1
        elif src == T.POD_IP:
            counts["pod_to_cluster_dns"] += 1
        elif src == T.NODE_UP_IP:
            counts["node_to_upstream"] += 1
    return counts
