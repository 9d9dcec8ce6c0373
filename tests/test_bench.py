"""End to end: ``bench/run --quick`` builds its namespaces, measures every scenario
for every cache (node-cache included: its build sits beside the project) and the
Python floor's hit scenarios, and writes a complete report. Timings are not asserted.
"""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
NODE_CACHE = ROOT.parent / "shared" / "anchors" / "node-cache.gz"
CACHES = ("nodecache", "node-cache", "unbound", "dnsmasq")
#: The Python floor runs the hit scenarios only.
FLOOR_FIGURES = [
    ("latency", "hit", "latency_ms", "p50"),
    ("throughput", "max_qps"),
    ("throughput", "cpu_us_per_answer_at_max"),
    ("throughput", "cpu_us_per_answer_at_fixed"),
]
#: Figures every measured cache must have, as paths into results.json's caches.<name>.
CACHE_FIGURES = [
    ("latency", "miss", "latency_ms", "p50"),
    ("latency", "miss", "latency_ms", "p99.9"),
    ("latency", "hit", "latency_ms", "p50"),
    ("latency", "hit", "latency_ms", "p99.9"),
    ("searchpath", "cold", "lookup_ms", "p50"),
    ("searchpath", "warm", "lookup_ms", "p99"),
    ("throughput", "max_qps"),
    ("throughput", "cpu_us_per_answer_at_max"),
    ("throughput", "cpu_us_per_answer_at_fixed"),
    ("throughput", "p99_ms_at_fixed"),
    ("miss_throughput", "qps"),
    ("miss_throughput", "cpu_us_per_answer"),
    ("miss_throughput", "latency_ms", "p50"),
    ("miss_throughput", "upstream", "tcp_connections_opened"),
    ("miss_throughput", "upstream", "tcp_queries"),
    ("miss_throughput", "upstream", "udp_queries"),
    ("memory", "idle_bytes"),
    ("memory", "after", "10000", "rss_bytes"),
    ("memory", "after", "10000", "pss_bytes"),
    ("memory", "after", "10000", "cgroup_working_set_bytes"),
    ("conntrack", "with_notrack", "per_10k_queries", "pod_to_node_cache"),
    ("conntrack", "without_notrack", "per_10k_queries", "pod_to_node_cache"),
]
SECTIONS = ["## Summary against the targets", "## The delay element", "## 1. Latency", "## 2. Pod search path",
            "## 3. Cache-hit throughput", "## 4. Misses", "## 5. Memory", "## 6. Conntrack"]
PLOTS = ["latency_cdf.png", "miss_cdf.png", "searchpath.png", "throughput.png", "memory.png", "conntrack.png"]


def _get(d: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        assert isinstance(d, dict) and p in d, f"missing {'.'.join(path)} (at {p!r})"
        d = d[p]
    return d


def _no_nan(obj: Any, where: str = "") -> None:
    if isinstance(obj, float):
        assert math.isfinite(obj), f"{where} is {obj}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _no_nan(v, f"{where}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _no_nan(v, f"{where}[{i}]")


@pytest.mark.privileged
@pytest.mark.timeout(600)
def test_bench_quick_end_to_end(tmp_path: Path) -> None:
    assert NODE_CACHE.exists(), f"the node-cache build is missing: {NODE_CACHE}"
    out = tmp_path / "results"
    cp = subprocess.run([str(ROOT / "bench" / "run"), "--quick", "--out", str(out),
                         "--node-cache", str(NODE_CACHE)],
                        capture_output=True, text=True, timeout=580)
    assert (out / "results.json").exists(), f"no results.json; stderr:\n{cp.stderr[-3000:]}"
    res = json.loads((out / "results.json").read_text())  # strict: NaN would not parse back as a number

    for c in CACHES:
        status = res["caches"][c]["status"]
        assert status == "ok", f"{c} was not measured: {status[:1500]}"
        for path in CACHE_FIGURES:
            v = _get(res["caches"][c], path)
            assert isinstance(v, (int, float)) and math.isfinite(v), f"{c}: {'.'.join(path)} = {v!r}"
    assert res["caches"]["floor"]["status"] == "ok", res["caches"]["floor"]["status"][:1500]
    for path in FLOOR_FIGURES:
        v = _get(res["caches"]["floor"], path)
        assert isinstance(v, (int, float)) and math.isfinite(v), f"floor: {'.'.join(path)} = {v!r}"
    # Two processes for nodecache (supervisor and worker), counted together.
    assert _get(res["caches"]["nodecache"], ("memory", "after", "10000", "processes")) == 2
    assert res["meta"]["versions"]["node-cache"].startswith("sha256:")
    for path in [("calibration", "delay_element_added_ms"), ("calibration", "relay_processing_ms"),
                 ("direct", "latency", "latency_ms", "p99"), ("direct", "searchpath", "lookup_ms", "p50"),
                 ("direct", "miss_throughput", "qps"), ("direct", "conntrack", "per_10k_queries", "total")]:
        v = _get(res, path)
        assert isinstance(v, (int, float)) and math.isfinite(v), f"{'.'.join(path)} = {v!r}"
    _no_nan(res, "results")

    report = (out / "report.md").read_text()
    for s in SECTIONS:
        assert s in report, f"report.md has no section {s!r}"
    assert "n/a" not in report.split("## The delay element")[0], "summary table has unmeasured figures"
    summary = report.split("## Summary against the targets")[1].split("\n## ")[0]
    head = next(line for line in summary.splitlines() if line.startswith("| figure"))
    # node-cache, the system nodecache replaces, is the first comparison.
    assert head.index("nodecache / node-cache") < head.index("nodecache / unbound") \
        < head.index("nodecache / dnsmasq") < head.index("nodecache / floor"), head
    assert "| node-cache |" in report.split("## 3. Cache-hit throughput")[1].split("\n## ")[0]
    assert "| floor |" in report.split("## 3. Cache-hit throughput")[1].split("\n## ")[0]
    for p in PLOTS:
        assert (out / p).stat().st_size > 1000, f"{p} missing or empty"
        assert f"]({p})" in report

    assert cp.returncode == 0, cp.stderr[-3000:]
    # Everything the run created is gone.
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(line.startswith("ncb") and f"ncb{_pid_of(cp)}" in line for line in left.splitlines())


def _pid_of(cp: subprocess.CompletedProcess[str]) -> str:
    """The run's namespace tag is its pid; read it back from the progress lines."""
    for line in cp.stderr.splitlines():
        if "namespaces ncb" in line:
            return line.split("namespaces ncb", 1)[1].split("-", 1)[0]
    return "-"
