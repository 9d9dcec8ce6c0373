"""manifests/bench/: a Job that validates, is pinned to one node, and runs bench-client twice
(around the cache, then through it, comparing) with arguments the command accepts."""
from __future__ import annotations

import pathlib
from typing import Any

import click
import pytest
import yaml

from nodecache.benchclient.command import bench_client
from tests.kit import ROOT

BENCH = ROOT / "manifests" / "bench"
KUBERNETES_VERSIONS = ["1.37.0", "1.30.0"]


def _objects() -> dict[str, Any]:
    objs = [d for f in sorted(BENCH.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {o["kind"]: o for o in objs}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_validates_against_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate
    objs = _objects()
    assert set(objs) == {"Job", "ConfigMap"}  # no RBAC: discovery is through DNS
    for obj in objs.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_job_is_bounded_and_pinned() -> None:
    job = _objects()["Job"]
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert pod["nodeName"] == "NODE_NAME_HERE"  # the README's sed sets it
    assert spec["backoffLimit"] == 0 and 0 < spec["activeDeadlineSeconds"] <= 3600
    assert pod["restartPolicy"] == "Never" and pod["dnsPolicy"] == "ClusterFirst"
    assert pod["automountServiceAccountToken"] is False and "hostNetwork" not in pod
    assert pod["volumes"][0]["hostPath"]["path"] == "/var/log/nodecache-bench"
    assert {n["metadata"]["name"] for n in [_objects()["ConfigMap"]]} == {
        v["configMap"]["name"] for v in pod["volumes"] if "configMap" in v}
    for c in [*pod["initContainers"], *pod["containers"]]:
        assert c["command"] == ["nodecache", "bench-client"]
        assert c["resources"]["limits"]["cpu"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        # The defaults' gentle rates: no rate option raises them.
        assert not {"--rate", "--max-rate", "--max-seconds"} & set(c["args"])


def test_job_args_are_accepted(tmp_path: pathlib.Path) -> None:
    """Both runs' arguments parse, with the pod's paths moved under tmp; the second compares
    with the first's output directory."""
    pod = _objects()["Job"]["spec"]["template"]["spec"]
    around, through = pod["initContainers"][0], pod["containers"][0]
    assert (around["name"], through["name"]) == ("around", "through")
    values = []
    for c in (around, through):
        args = [a.replace("$(POD_NAME)", "p").replace("/results", str(tmp_path / "results"))
                 .replace("/etc/nodecache-bench", str(tmp_path / "cm")) for a in c["args"]]
        (tmp_path / "results" / "p" / "around").mkdir(parents=True, exist_ok=True)
        with click.Context(bench_client) as ctx:
            assert bench_client.parse_args(ctx, list(args)) == []
            values.append(ctx.params)
    a, t = values
    assert a["targets"] == ("kube-dns-upstream=kube-dns-upstream.kube-system",)
    assert t["targets"] == ("node-cache=169.254.20.10",)
    assert t["compare_dir"] == a["out_dir"] and a["out_dir"].startswith(t["out_dir"])
    cm = _objects()["ConfigMap"]["data"]
    assert pathlib.Path(a["names_file"]).name in cm and pathlib.Path(a["lookups_file"]).name in cm
