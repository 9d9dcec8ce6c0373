"""bench-client end to end in the bench's namespaces, its figures checked against dnsperf's.

The topology is bench/'s (pod -> node -> cluster DNS: Knot behind the delaying
relay), plus what a cluster adds in front of the cluster DNS: its Service IP,
DNATed on the node as kube-proxy does. nodecache runs on the node on
169.254.20.10. The client runs in the pod namespace with a kubelet-style
resolv.conf bind-mounted over /etc/resolv.conf in a private mount namespace
of its own (the host's file is never touched) and measures both targets as
the Job does: around the cache, then through it, comparing. Then dnsperf and
bench/'s search-path probe measure the same names on the same targets at the
same rate: hit and search-path p50s must agree within a wide margin.
"""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodecache.benchclient.names import ptr_walk
from tests.kit.benchclientkit import KUBE_DNS_SERVICE, ROOT, SEARCH, Cluster, S, T, Z, model_cluster

from nodebench.measure import dnsperf, probe, summary_ms  # noqa: E402  (bench/ is on the path now)
from nodebench.scenarios import LATENCY_ARGS  # noqa: E402

RATE = 1000  # q/s, as bench/'s latency scenario (dnsperf -Q 1000)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with model_cluster(node_cache=True) as c:
        yield c


def _run_client(topo: T.Topology, work: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    resolv = work / "pod-resolv.conf"
    # Only the client's own mount namespace sees the pod's resolv.conf.
    inner = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'
    argv = ["ip", "netns", "exec", topo.pod, "taskset", "-c", str(S.LOADGEN_CPU),
            "unshare", "--mount", "--propagation", "private", "sh", "-c", inner, "sh", str(resolv),
            S.python(), "-m", "nodecache", "bench-client", "--out", str(out), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, cwd=ROOT, env=S._env())


def _close(ours: float, theirs: float | tuple[float, float]) -> bool:
    """Within 0.3 ms or 60 % of each other: the same thing measured by two tools on a
    loaded two-core machine. ``theirs`` may be a range (low, high): the reference tool's
    figure for a warm cache and for one where negative answers may have expired."""
    low, high = theirs if isinstance(theirs, tuple) else (theirs, theirs)
    low, high = min(low, high), max(low, high)
    if low <= ours <= high:
        return True
    near = low if ours < low else high
    return abs(ours - near) <= max(0.3, 0.6 * min(ours, near))


@pytest.mark.privileged
@pytest.mark.timeout(600)
def test_bench_client_in_the_pod_matches_dnsperf(cluster: Cluster, tmp_path: Path) -> None:
    topo, work, zone = cluster.topo, cluster.work, cluster.zone
    cluster.pod_resolv_conf()
    host_resolv = Path("/etc/resolv.conf").read_bytes()
    lookups = Z.external_names(40, "bc")
    (work / "lookups.txt").write_text("\n".join(lookups) + "\n")
    out = tmp_path / "report"
    common = ["--walk", "10.100.0.0/24", "--walk", "10.100.1.0/24", "--walk-max", "400", "--discover-rate", "1000",
              "--sample", "600", "--misses", "600", "--rate", str(RATE),
              "--lookups-file", str(work / "lookups.txt"), "--lookups", str(len(lookups)), "--lookup-types", "A",
              "--lookup-rate", "200", "--steady-seconds", "2", "--step-seconds", "1.5", "--max-rate", "4000",
              "--seed", "7"]
    # Twice, as the Job runs it: around the cache, then through it, compared with the first.
    cp = _run_client(topo, work, out / "around", "--target", f"kube-dns={KUBE_DNS_SERVICE}", *common)
    assert cp.returncode == 0, cp.stderr[-3000:]
    cp = _run_client(topo, work, out, "--target", f"node-cache={T.NODECACHE_IP}", "--compare", str(out / "around"),
                     *common)
    assert cp.returncode == 0, cp.stderr[-3000:]
    # The reference node-cache beside it, measured the same way, compared with both.
    ref_out = tmp_path / "with-node-cache"
    cp_ref = _run_client(topo, work, ref_out, "--target", f"ref-node-cache={T.NODE_CACHE_IP}", "--compare", str(out),
                         *common)
    assert cp_ref.returncode == 0, cp_ref.stderr[-3000:]
    assert Path("/etc/resolv.conf").read_bytes() == host_resolv
    with_ref = json.loads((ref_out / "results.json").read_text())
    assert list(with_ref["targets"]) == ["kube-dns", "node-cache", "ref-node-cache"]
    assert with_ref["targets"]["ref-node-cache"]["status"] == "ok"
    print(cp_ref.stdout.split("## Each phase")[0])
    res = json.loads((out / "results.json").read_text())
    first = json.loads((out / "around" / "results.json").read_text())
    assert res["sample"]["names"] == first["sample"]["names"]  # the second run asks the same names
    res["sample"] = first["sample"]
    assert res["meta"]["resolv_conf"] == {"nameservers": [KUBE_DNS_SERVICE], "search": SEARCH.split(),
                                          "ndots": 5, "edns0": False}
    # Discovery found the cluster's services through the Service IP: the walk's PTRs and their names.
    walked = {n for n, _ in ptr_walk(["10.100.0.0/24", "10.100.1.0/24"], 400)}
    # (The walk is one pass at 1,000 q/s through the relay: under load a few of its
    # queries time out, 19 of 360 beside two busy loops; none may be invented.)
    expected = len(walked & set(zone.ptr))
    assert 0.9 * expected <= res["sample"]["sources"]["PTR walk (PTR records)"] <= expected
    assert expected > 300
    # ... and the SRV walk their _http._tcp records (every service has one).
    assert res["sample"]["sources"]["SRV walk"] >= 100
    assert res["sample"]["queries"] == 600
    kd, nc = res["targets"]["kube-dns"], res["targets"]["node-cache"]
    assert kd["status"] == nc["status"] == "ok"
    for t in (kd, nc):
        for phase in ("cold", "hit", "miss", "steady"):
            # A few UDP queries may drop at the busy relay; more is a counting error.
            assert t[phase]["timeouts"] + t[phase]["errors"] <= 0.01 * t[phase]["sent"], (phase, t[phase])
        assert t["searchpath"]["found"] >= len(lookups) - 1 and 3.9 <= t["searchpath"]["queries_per_lookup"] <= 4
        first_step = t["throughput"]["steps"][0]
        assert first_step["offered_qps"] == RATE and 0.8 * RATE < first_step["sent_qps"] < 1.2 * RATE
    report = (out / "report.md").read_text()
    assert "| hit latency p50 (ms) |" in report and "node-cache / kube-dns" in report
    assert "## Summary" in cp.stdout and '"targets"' in cp.stdout  # the report in the log too
    for plot in ("latency_cdf.png", "searchpath.png", "throughput.png"):
        assert (out / plot).stat().st_size > 2000 and f"]({plot})" in report

    # A target given by name is resolved through the pod's resolv.conf (search path).
    by_name = _run_client(topo, work, tmp_path / "by-name", "--target", "kd=kube-dns.kube-system",
                          "--phases", "hit", "--walk-max", "0", "--sample", "5")
    assert by_name.returncode == 0, by_name.stderr[-2000:]
    assert json.loads((tmp_path / "by-name" / "results.json").read_text())["targets"]["kd"]["address"] == T.CLUSTER_DNS

    # The same names, targets and rate, measured by dnsperf (bench/'s latency scenario) and by
    # bench/'s search-path probe, each right after ours. Other work on the machine comes in
    # bursts, so a pair that disagrees is measured again (three tries); a tool that is off
    # by more than the margin fails every time.
    names = work / "sample.txt"
    names.write_text("\n".join(res["sample"]["names"]) + "\n")
    lookups_file = work / "lookups.txt"
    one_phase = ["--walk-max", "0", "--names-file", str(names), "--sample", "600", "--rate", str(RATE),
                 "--lookups-file", str(lookups_file), "--lookups", str(len(lookups)), "--lookup-types", "A",
                 "--lookup-rate", "200", "--misses", "600"]
    pairs: dict[str, list[tuple[float, float | tuple[float, float]]]] = {}
    ref = with_ref["targets"]["ref-node-cache"]
    for label, addr, t in (("kube-dns", KUBE_DNS_SERVICE, kd), ("node-cache", T.NODECACHE_IP, nc),
                           ("ref-node-cache", T.NODE_CACHE_IP, ref)):
        checks = [("hit", ("hit", "latency_ms", "p50")), ("searchpath", ("searchpath", "lookup_ms", "p50"))]
        for phase, path in checks:
            key = f"{label} {phase} p50"
            pairs[key] = []
            ours = _get(t, path)
            for attempt in range(3):
                if attempt:
                    again = tmp_path / f"{label}-{phase}-{attempt}"
                    cp = _run_client(topo, work, again, "--target", f"{label}={addr}", "--phases", phase,
                                     "--seed", str(attempt), *one_phase)
                    assert cp.returncode == 0, cp.stderr[-2000:]
                    ours = _get(json.loads((again / "results.json").read_text())["targets"][label], path)
                theirs = _reference(topo, work, addr, phase, names, lookups_file, attempt)
                pairs[key].append((ours, theirs))
                if _close(ours, theirs):
                    break
    # Misses through the cache cross the relay, a Python process on no fixed core: on this
    # machine its cost under other load swings by 10x from one second to the next, so the
    # pair is printed for the record, not held to a margin.
    pairs["node-cache miss p50 (not checked)"] = [
        (nc["miss"]["latency_ms"]["p50"], _reference(topo, work, T.NODECACHE_IP, "miss", names, lookups_file, 0))]
    print("bench-client against dnsperf / bench's probe, p50 ms (ours, theirs) per try:")
    print(json.dumps(pairs, indent=1))
    # A pair measured while a burst of other work ran is off; a tool that measures
    # wrong is off in every try. So a key passes when its last pair agrees or, failing
    # that, the fastest try of each tool does (beside two busy loops one pair read 1.08
    # against 5.02 ms, the next 2.18 against 0.49).
    bad = {k: v for k, v in pairs.items() if "not checked" not in k and not _close(*v[-1])
           and not _close(min(o for o, _ in v), min(_low(t) for _, t in v))}
    assert not bad, f"bench-client and dnsperf disagree beyond the margin: {bad}"


def _get(d: Any, path: tuple[str, ...]) -> float:
    for p in path:
        d = d[p]
    assert isinstance(d, float), (path, d)
    return d


def _low(theirs: float | tuple[float, float]) -> float:
    return min(theirs) if isinstance(theirs, tuple) else theirs


def _reference(topo: T.Topology, work: Path, addr: str, phase: str, names: Path, lookups: Path,
               attempt: int) -> float | tuple[float, float]:
    """p50 (ms) of the same phase measured by bench/'s tools: dnsperf paced at RATE, or the probe.

    The search path is probed twice: the second pass finds every answer cached, the first
    may find negative answers expired (their TTL is short, and how many expired since
    bench-client's own passes depends on how busy the machine was): (second, first).
    """
    if phase == "searchpath":
        passes = [probe(topo.pod, "searchpath", addr, lookups, "--search", SEARCH) for _ in range(2)]
        assert passes[1]["failures"] <= 1
        first, second = (float(summary_ms(sp["lookups_s"])["p50"]) for sp in passes)
        return second, first
    if phase == "miss":  # fresh names, as ours are
        names = Z.write_queries(work / f"fresh-{attempt}.txt", Z.pod_names(f"bcref{attempt}", 600))
    r = dnsperf(topo.pod, addr, names, LATENCY_ARGS, verbose=True)
    assert r.completed >= 0.99 * r.sent
    return float(summary_ms(r.latencies)["p50"])
