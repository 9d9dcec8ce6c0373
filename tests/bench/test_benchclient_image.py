"""manifests/bench/'s Job from inside the image: both containers in the pod's network
namespace, run with podman as the kubelet would run them (tests/kit/podkit.py), against the
model cluster of tests/kit/benchclientkit.py (nodecache on the node, Knot behind a DNAT'd
Service IP, the names kube-dns-upstream.kube-system and kubernetes.default).

The test plays the kubelet's part: the pod's resolv.conf bound over /etc/resolv.conf,
the ConfigMap's files, the hostPath under the test's directory, ``$(POD_NAME)`` and the
downward-API variables. The arguments are the Job's own: its default rates and sizes.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kit import podkit
from tests.kit.benchclientkit import KUBE_DNS_SERVICE, ROOT, Cluster, T, model_cluster
from tests.kit.podman import Podman

pytestmark = [pytest.mark.privileged, pytest.mark.timeout(1800)]

BENCH = ROOT / "manifests" / "bench"
POD = "nodecache-bench-x7k2p"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with model_cluster(services=300) as c:
        yield c


def _job() -> tuple[dict[str, Any], dict[str, str]]:
    docs = [d for f in ("names.yaml", "job.yaml") for d in yaml.safe_load_all((BENCH / f).read_text()) if d]
    job = next(d for d in docs if d["kind"] == "Job")
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    return job["spec"]["template"]["spec"], cm["data"]


def _start(pm: Podman, tag: str, cluster: Cluster, container: dict[str, Any], sources: dict[str, Path],
           name: str) -> None:
    args = podkit.podman_args(container, name=name, node_ns=cluster.topo.pod, sources=sources,
                              resolv_conf=cluster.pod_resolv_conf(),
                              env={"NODE_NAME": "node-1", "POD_NAME": POD})
    cmd = [a.replace("$(POD_NAME)", POD) for a in podkit.command(container)]
    pm.run(*args, tag, *cmd)


def _wait(pm: Podman, name: str, timeout: float) -> int:
    out = pm.run("wait", name, timeout=timeout)
    return int(out.stdout.strip().splitlines()[-1])


def test_the_job_in_the_image(image: tuple[Podman, str], cluster: Cluster, tmp_path: Path) -> None:
    pm, tag = image
    spec, cm_data = _job()
    cm = tmp_path / "configmap"
    cm.mkdir()
    for key, text in cm_data.items():
        (cm / key).write_text(text)
    results = tmp_path / "host" / "var" / "log" / "nodecache-bench"
    results.mkdir(parents=True)
    sources = {"results": results, "names": cm}
    around, through = spec["initContainers"][0], spec["containers"][0]
    names = []
    try:
        # Deleting the Job: SIGTERM mid-run ends it at once with a partial report.
        names.append("bc-stopped")
        _start(pm, tag, cluster, around, sources, "bc-stopped")
        deadline = time.monotonic() + 120
        while "steady" not in pm.run("logs", "bc-stopped").stderr and time.monotonic() < deadline:
            time.sleep(0.5)
        t0 = time.monotonic()
        pm.run("stop", "--time", "20", "bc-stopped", timeout=60)
        assert time.monotonic() - t0 < 10, "SIGTERM did not stop the client at once"
        assert _wait(pm, "bc-stopped", 30) == 130
        stopped = json.loads((results / POD / "around" / "results.json").read_text())
        assert stopped["meta"]["status"] == "interrupted"
        assert "interrupted" in pm.run("logs", "bc-stopped").stdout

        # The init container, then the container, as the kubelet runs them.
        for container in (around, through):
            names.append(f"bc-{container['name']}")
            _start(pm, tag, cluster, container, sources, names[-1])
            code = _wait(pm, names[-1], 600)
            logs = pm.run("logs", names[-1])
            assert code == 0, logs.stdout[-2000:] + logs.stderr[-3000:]
    finally:
        for name in names:
            pm.run("rm", "--force", "--time", "0", name, check=False)

    log = logs.stdout
    assert "## Summary" in log and "node-cache / kube-dns-upstream" in log
    res = json.loads((results / POD / "results.json").read_text())
    assert list(res["targets"]) == ["kube-dns-upstream", "node-cache"]
    up, nc = res["targets"]["kube-dns-upstream"], res["targets"]["node-cache"]
    # The name the Job gives resolved through the pod's resolv.conf to the Service IP.
    assert (up["address"], nc["address"]) == (KUBE_DNS_SERVICE, T.NODECACHE_IP)
    assert res["meta"]["resolv_conf"]["nameservers"] == [KUBE_DNS_SERVICE]
    assert (res["meta"]["node"], res["meta"]["pod"]) == ("node-1", POD)
    for t in (up, nc):
        assert t["status"] == "ok"
        for phase in ("cold", "hit", "miss", "steady"):
            assert t[phase]["answered"] == t[phase]["sent"] > 0, (phase, t[phase])
        assert t["searchpath"]["found"] >= 2
        # the Job's defaults: a ramp from 100 to 1,000 q/s
        assert [s["offered_qps"] for s in t["throughput"]["steps"]] == [100, 200, 400, 800, 1000]
    for f in ("report.md", "results.json", "samples.json", "latency_cdf.png", "searchpath.png", "throughput.png"):
        assert (results / POD / f).stat().st_size > 500, f
