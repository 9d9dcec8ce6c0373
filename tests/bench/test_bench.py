"""End to end: ``bench/run --quick`` builds its namespaces, measures every scenario
for every cache (node-cache included: its build sits beside the project) and the
Python floor's hit scenarios, and writes a complete report. Timings are not asserted.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.kit import ROOT

NODE_CACHE = ROOT.parent / "shared" / "anchors" / "node-cache.gz"
CACHES = ("nodecache", "node-cache", "unbound", "dnsmasq")
#: The Python floor runs the hit scenarios only.
FLOOR_FIGURES = [
    ("latency", "hit", "latency_ms", "p50"),
    ("throughput", "max_qps"),
    ("throughput", "cpu_us_per_answer_at_max"),
    ("throughput", "cpu_us_per_answer_at_fixed"),
    ("under_load", "h4_q5000", "answered"),
    ("under_load", "h4_q5000", "latency_ms", "p99"),
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
    ("under_load", "h4_q1000", "answered"),
    ("under_load", "h4_q5000", "latency_ms", "p99"),
    ("under_load", "h4_q5000", "cpu_us_per_answer"),
]
SECTIONS = ["## Summary against the targets", "## 0. The core alone", "## The delay element", "## 1. Latency", "## 2. Pod search path",
            "## 3. Cache-hit throughput", "## 4. Misses", "## 5. Memory", "## 6. Conntrack",
            "## 7. Hits under machine load"]
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
    assert isinstance(res["caches"]["nodecache"]["under_load"]["h4_q5000"]["shedding_started"], int)
    for path in [("calibration", "delay_element_added_ms"), ("calibration", "relay_processing_ms"),
                 ("direct", "latency", "latency_ms", "p99"), ("direct", "searchpath", "lookup_ms", "p50"),
                 ("direct", "miss_throughput", "qps"), ("direct", "conntrack", "per_10k_queries", "total")]:
        v = _get(res, path)
        assert isinstance(v, (int, float)) and math.isfinite(v), f"{'.'.join(path)} = {v!r}"
    for kind in ("hit", "miss"):
        assert res["core"][kind]["median_us"] > 0
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
    made = _namespaces_of(cp)
    assert len(made) == 3, cp.stderr[-3000:]
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not set(made) & set(left), f"left behind: {set(made) & set(left)}"


def _namespaces_of(cp: subprocess.CompletedProcess[str]) -> list[str]:
    """The run's namespaces, read back from its progress line ``namespaces A, B, C``."""
    for line in cp.stderr.splitlines():
        if "] namespaces " in line:
            return [n.strip() for n in line.split("] namespaces ", 1)[1].split(",")]
    return []


def test_core_micro_benchmark_drives_the_handler() -> None:
    """``python -m nodebench.core``: hits (also with plugins in front of the cache) and misses
    through QueryHandler, the miss by stage with the upstream connection's framing, in us/op.

    The module itself checks that its misses were misses, its hits were answered
    from the cache and the connection matched every answer (it raises
    otherwise); no timing is asserted.
    """
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'bench'}{os.pathsep}{ROOT}")
    cp = subprocess.run([sys.executable, "-m", "nodebench.core", "--json", "--names", "300", "--rounds", "2"],
                        capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr[-2000:]
    res = json.loads(cp.stdout)
    assert res["names"] == 300
    for kind in ("hit", "miss", "hit_plugins"):
        assert res[kind]["rounds"] == 2
        assert 0 < res[kind]["best_us"] <= res[kind]["median_us"] < 1e5, res[kind]
    assert list(res["miss_stages_us"]) == ["handle", "upstream_query", "send", "receive", "absorb", "reply"]
    assert all(v > 0 for v in res["miss_stages_us"].values())
    # bytes a stored name holds: the entry, its key and body, the store's and the index's slots
    assert res["memory"]["names"] == 10_000 and 150 < res["memory"]["bytes_per_name"] < 4000, res["memory"]
    assert any(where.startswith("nodecache/core/") for where, _ in res["memory"]["by_line"]), res["memory"]


def test_core_micro_benchmark_measures_another_tree(tmp_path: Path) -> None:
    """``--tree DIR`` measures the nodecache package found there, not the installed one."""
    shutil.copytree(ROOT / "nodecache", tmp_path / "nodecache", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'bench'}{os.pathsep}{ROOT}")
    cp = subprocess.run([sys.executable, "-m", "nodebench.core", "--json", "--names", "50", "--rounds", "1",
                         "--tree", str(tmp_path)], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr[-2000:]
    assert json.loads(cp.stdout)["tree"] == str(tmp_path)


def test_bench_run_stops_at_once_without_a_virtualenv(tmp_path: Path) -> None:
    """bench/run in a checkout whose .venv cannot be made says what to run, before doing anything."""
    (tmp_path / "bench").mkdir()
    shutil.copy(ROOT / "bench" / "run", tmp_path / "bench" / "run")
    (tmp_path / "Makefile").write_text(".venv/.installed:\n\t@echo no network here >&2; false\n")
    cp = subprocess.run([str(tmp_path / "bench" / "run"), "--quick"], capture_output=True, text=True, timeout=60)
    assert cp.returncode == 2, (cp.stdout, cp.stderr)
    assert "make .venv/.installed" in cp.stderr and "no network here" in cp.stderr, cp.stderr
    assert not (tmp_path / "results").exists()


def _memory_controller() -> bool:
    """Whether this machine lets the bench make memory cgroups (v2 with the controller, or v1)."""
    v2 = Path("/sys/fs/cgroup/cgroup.controllers")
    return ("memory" in v2.read_text().split()) if v2.exists() \
        else Path("/sys/fs/cgroup/memory/memory.usage_in_bytes").exists()


@pytest.mark.timeout(180)
def test_missrate_on_loopback_measures_every_cache() -> None:
    """``bench/run --missrate``: nodecache, node-cache (its build beside the project), unbound
    and the miss floor forward never-seen names over TCP to one knotd on loopback; every cache
    answers (nearly) every name of the burst and gets a row with figures, and nodecache's ratio
    to the floor follows the table. Timings are not asserted."""
    assert NODE_CACHE.exists(), f"the node-cache build is missing: {NODE_CACHE}"
    cp = subprocess.run([str(ROOT / "bench" / "run"), "--missrate", "--names", "2000", "--light", "100",
                         "--runs", "1"], capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr[-2000:]
    first, _, rest = cp.stdout.partition("\n\n")
    rows = [line.split("|")[1:-1] for line in first.splitlines() if line.startswith("| ")]
    assert [cells[0].strip() for cells in rows] == ["cache", "nodecache", "nodecache-pure", "node-cache",
                                                    "unbound", "miss-floor"]
    # each cache's memory cgroup after the burst: working set, anon, file, kernel, sock (slab on v2)
    cgroup = [line.split("|")[1:-1] for line in rest.splitlines() if line.startswith("| ")]
    assert [cells[0].strip() for cells in cgroup] == (
        ["nodecache", "nodecache-pure", "node-cache", "unbound", "miss-floor"] if _memory_controller() else []), rest
    for cells in cgroup:
        working_set, anon = float(cells[1]), float(cells[2])
        assert 1 < working_set < 500 and 0 < anon <= working_set + 0.1, cells
    for cells in rows[1:]:  # misses/s, CPU, latency, PSS, RSS; CPU counts 10 ms ticks, so it may read 0
        values = [float(c.strip().replace(",", "")) for c in cells[1:]]
        assert len(values) == 5 and values[1] >= 0 and all(v > 0 for v in values[:1] + values[2:]), cells
    assert re.search(r"^nodecache / nodecache pure, run by run: CPU per miss (-|[\d.]+x), misses/s [\d.]+x$",
                     cp.stdout, re.M), cp.stdout
    assert re.search(r"^nodecache / miss floor, run by run: CPU per miss (-|[\d.]+x), misses/s [\d.]+x$",
                     cp.stdout, re.M), cp.stdout
    answered = [int(n) for n in re.findall(r"'answered': (\d+)", cp.stderr)]
    assert len(answered) == 5 and min(answered) >= 1900, cp.stderr  # UDP may drop a few under load


@pytest.mark.timeout(180)
def test_hitrate_on_loopback_measures_every_server() -> None:
    """``bench/run --hitrate``: nodecache, node-cache, unbound and the Python floor (read by the
    event loop, and by a thread) answer the same cached names again and again; every server
    answers (nearly) every query of the burst and gets a row, CPU per hit also as a multiple of
    the floor's, and per answer at 5,000 q/s its wake-ups and its CPU (schedstat, user, system).
    Timings are not asserted."""
    assert NODE_CACHE.exists(), f"the node-cache build is missing: {NODE_CACHE}"
    cp = subprocess.run([str(ROOT / "bench" / "run"), "--hitrate", "--names", "100", "--hits", "20000",
                         "--paced", "2500", "--runs", "1"], capture_output=True, text=True, timeout=170, cwd=ROOT)
    assert cp.returncode == 0, cp.stderr[-2000:]
    tables = [[line.split("|")[1:-1] for line in block.splitlines() if line.startswith("| ")]
              for block in cp.stdout.split("\n\n")]
    rows, per_answer = tables[0], tables[2]
    servers = ["server", "nodecache", "nodecache-pure", "node-cache", "unbound", "floor", "floor-thread"]
    assert [cells[0].strip() for cells in rows] == servers
    assert [cells[0].strip() for cells in per_answer] == servers
    for cells in per_answer[1:]:  # schedstat CPU, user, system, wake-ups, preempted, run-queue wait
        assert float(cells[1]) > 0 and all(float(c) >= 0 for c in cells[2:]), cells
    for cells in rows[1:]:  # hits/s, CPU per hit, x floor, CPU at 5,000 q/s, wake-ups; CPU counts 10 ms ticks
        assert float(cells[1].strip().replace(",", "")) > 0, cells
        assert float(cells[2]) >= 0 and float(cells[4]) >= 0, cells
        assert cells[3].strip() == "-" or float(cells[3]) >= 0, cells
        # Every server sleeps between paced queries, and wakes about once per answer at most.
        assert 0 < float(cells[5].split("-")[0]) < 3, cells
    answered = [int(n) for n in re.findall(r"'answered': (\d+)", cp.stderr)]
    assert len(answered) == 6 and min(answered) >= 19_000, cp.stderr  # UDP may drop a few under load
