"""The kustomize manifests: they build, validate against the Kubernetes schemas, and say what we mean.

The overlays are built with ``kubectl kustomize`` (or ``kustomize build``)
when one is on PATH. Otherwise ``tests.kit.kustomize.build`` does the same for the few
kustomize features we use (resources, namespace, JSON 6902 patches) and
refuses any other, so it cannot silently disagree; when both are available
the test checks that they agree.
"""
from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest
import yaml

from tests.kit import ROOT
from tests.kit.kustomize import MANIFESTS, Obj, build

OVERLAYS = ["iptables", "ipvs"]
#: Kubernetes releases whose OpenAPI schemas the objects must satisfy: the
#: current one, and an older one still found in production.
KUBERNETES_VERSIONS = ["1.37.0", "1.30.0"]


def _kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _key(obj: Obj) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, dict[tuple[str, str], Obj]]:
    name: str = request.param
    objects = build(MANIFESTS / name)
    cmd = _kustomize_command()
    if cmd is not None:
        try:
            out = subprocess.run([*cmd, str(MANIFESTS / name)], capture_output=True, text=True,
                                 check=True, timeout=60).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            pytest.fail(f"{' '.join(cmd)} failed: {exc}")
        real = sorted((d for d in yaml.safe_load_all(out) if d), key=_key)
        assert real == sorted(objects, key=_key), "the test's kustomize disagrees with the real one"
    return name, {_key(o): o for o in objects}


def _daemonset(objs: dict[tuple[str, str], Obj]) -> Obj:
    return objs["DaemonSet", "node-local-dns"]


def _container(objs: dict[tuple[str, str], Obj]) -> Obj:
    containers = _daemonset(objs)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["node-cache", "guard"]
    return containers[0]


def test_guard_beside_the_agent() -> None:
    """The guard: same image, its own memory limit, the serving lock's directory, no DNS port."""
    objs = {_key(o): o for o in build(MANIFESTS / "iptables")}
    agent, guard = _daemonset(objs)["spec"]["template"]["spec"]["containers"]
    assert guard["image"] == agent["image"]
    assert guard["args"][0] == "guard"
    assert guard["resources"]["limits"]["memory"]
    mounts = {m["name"]: m["mountPath"] for m in guard["volumeMounts"]}
    assert mounts["run"] == "/run/nodecache" and mounts["xtables-lock"] == "/run/xtables.lock"
    caps = guard["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"] and set(caps["add"]) == {"NET_ADMIN", "NET_RAW"}


def test_objects(overlay: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    _, objs = overlay
    assert set(objs) == {("ServiceAccount", "node-local-dns"), ("Service", "kube-dns-upstream"),
                         ("ConfigMap", "node-local-dns"), ("Service", "node-local-dns"),
                         ("DaemonSet", "node-local-dns")}
    assert {o["metadata"]["namespace"] for o in objs.values()} == {"kube-system"}


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_validates_against_kubernetes_schemas(overlay: tuple[str, dict[tuple[str, str], Obj]],
                                              version: str) -> None:
    import kubernetes_validate
    _, objs = overlay
    for obj in objs.values():
        # strict: unknown fields (a typo'd key) fail too.
        kubernetes_validate.validate(obj, version, strict=True)


def test_daemonset(overlay: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    _, objs = overlay
    ds = _daemonset(objs)
    pod = ds["spec"]["template"]["spec"]
    # Surge, not unavailability: the new pod serves before the old one stops.
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert pod["hostNetwork"] is True
    assert pod["dnsPolicy"] == "Default"
    assert pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "node-local-dns"
    assert {"operator": "Exists"} in pod["tolerations"]
    # Lameduck (5 s in the Corefile) plus teardown fit in the grace period.
    assert pod["terminationGracePeriodSeconds"] >= 5 + 10

    c = _container(objs)
    sc = c["securityContext"]
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert "NET_ADMIN" in sc["capabilities"]["add"]
    assert set(sc["capabilities"]["add"]) <= {"NET_ADMIN", "NET_BIND_SERVICE", "NET_RAW"}
    assert sc["allowPrivilegeEscalation"] is False and not sc.get("privileged")
    assert c["resources"]["requests"]["cpu"] and c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]

    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    probe_ports = {c["livenessProbe"]["httpGet"]["port"], c["readinessProbe"]["httpGet"]["port"]}
    assert 8080 not in probe_ports and len(probe_ports) == 2

    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["xtables-lock"] == "/run/xtables.lock"
    assert volumes["xtables-lock"]["hostPath"] == {"path": "/run/xtables.lock", "type": "FileOrCreate"}
    assert mounts["kube-dns-config"] == "/etc/kube-dns"
    assert volumes["kube-dns-config"]["configMap"] == {"name": "kube-dns", "optional": True}
    assert mounts["config-volume"] == "/etc/coredns"
    assert volumes["config-volume"]["configMap"]["items"] == [{"key": "Corefile", "path": "Corefile.base"}]
    assert "ports" not in _container(objs), \
        "hostNetwork containerPorts become hostPorts and block the surge pod"


def _flag(args: list[str], name: str) -> str:
    assert args.count(name) == 1, (name, args)
    return args[args.index(name) + 1]


def test_args_per_mode(overlay: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    name, objs = overlay
    args = _container(objs)["args"]
    assert all(isinstance(a, str) for a in args)
    # node-cache's single-dash flags, each followed by its value.
    assert [a for a in args[::2]] == ["-localip", "-conf", "-upstreamsvc", "-pidfile", "-health-port",
                                      "-cache-snapshot"]
    assert not any(a.startswith("--") for a in args)
    expected_ips = {"iptables": "169.254.20.10,10.96.0.10", "ipvs": "169.254.20.10"}[name]
    assert _flag(args, "-localip") == expected_ips
    # The rendered Corefile goes to an emptyDir: the root filesystem is read-only.
    assert _flag(args, "-conf") == "/etc/nodecache/Corefile"
    spec = _daemonset(objs)["spec"]["template"]["spec"]
    assert all(c["securityContext"]["readOnlyRootFilesystem"] for c in spec["containers"])
    mounts = {m["mountPath"]: m["name"] for m in _container(objs)["volumeMounts"]}
    assert {v["name"]: v for v in spec["volumes"]}[mounts["/etc/nodecache"]]["emptyDir"] == {}
    assert _flag(args, "-upstreamsvc") == "kube-dns-upstream"
    # The NOTRACK rules for the probe and the probe itself use the same port.
    assert int(_flag(args, "-health-port")) == _container(objs)["livenessProbe"]["httpGet"]["port"]


def test_args_accepted_by_the_cli(overlay: tuple[str, dict[tuple[str, str], Obj]]) -> None:
    from nodecache.cli import cli
    from nodecache.hostnet.flags import normalize_nodecache_argv

    _, objs = overlay
    args = list(_container(objs)["args"])
    normalized = normalize_nodecache_argv(args)
    # Every flag is one node-cache knows (rewritten to click's "--name"), every value kept.
    assert normalized[::2] == ["-" + a for a in args[::2]]
    assert normalized[1::2] == args[1::2]
    # Parse only: option callbacks run, the command does not.
    cli.commands["run"].make_context("run", normalized)


def test_agent_renders_and_accepts_the_deployment(overlay: tuple[str, dict[tuple[str, str], Obj]],
                                                  tmp_path: pathlib.Path) -> None:
    """``nodecache run --dry-run`` with the DaemonSet's args and the pod's files, paths moved to tmp."""
    from click.testing import CliRunner

    from nodecache.cli import cli

    _, objs = overlay
    args = list(_container(objs)["args"])
    base = tmp_path / "Corefile.base"
    base.write_text(objs["ConfigMap", "node-local-dns"]["data"]["Corefile"])
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.0.0.2\n")
    kube_dns = tmp_path / "kube-dns"
    kube_dns.mkdir()
    (kube_dns / "stubDomains").write_text('{"corp.example": ["10.1.0.1"]}')
    args[args.index("-conf") + 1] = str(tmp_path / "Corefile")
    args[args.index("-pidfile") + 1] = str(tmp_path / "node-cache.pid")
    args[args.index("-cache-snapshot") + 1] = str(tmp_path / "cache.snap")
    args += ["-basecorefile", str(base), "-kubednscm", str(kube_dns), "--resolv-conf", str(resolv),
             "-setupinterface=false", "-setupiptables=false", "--dry-run"]
    from nodecache.hostnet.flags import normalize_nodecache_argv

    result = CliRunner().invoke(cli, ["run", *normalize_nodecache_argv(args)],
                                env={"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"})
    assert result.exit_code == 0, result.output
    rendered = (tmp_path / "Corefile").read_text()
    assert "forward . 10.96.0.11 {" in rendered and "corp.example:53 {" in rendered


def test_probes_match_corefile(overlay: tuple[str, dict[tuple[str, str], Obj]], tmp_path: pathlib.Path) -> None:
    """Render the ConfigMap's Corefile with the DaemonSet's args: probes hit what it listens on."""
    from nodecache.k8s.template import render_corefile, split_localip

    _, objs = overlay
    c = _container(objs)
    local_ips = split_localip(_flag(c["args"], "-localip"))
    rendered = render_corefile(objs["ConfigMap", "node-local-dns"]["data"]["Corefile"],
                               local_ips=local_ips, dns_server_ips=[], cluster_dns="10.96.0.11",
                               upstream_servers=["10.0.0.2"], domain=None, kubedns=None)
    for probe, plugin in (("livenessProbe", "health"), ("readinessProbe", "ready")):
        get = c[probe]["httpGet"]
        assert get["host"] == local_ips[0]
        assert f"    {plugin} {get['host']}:{get['port']}" in rendered
    assert "    prometheus :9253" in rendered
    assert "    bind " + " ".join(local_ips) + "\n" in rendered


def test_configmap_is_the_template() -> None:
    objs = {_key(o): o for o in build(MANIFESTS / "base")}
    corefile = objs["ConfigMap", "node-local-dns"]["data"]["Corefile"]
    template = (ROOT / "Corefile.nodelocal").read_text()
    assert corefile == template.replace("__PILLAR__DNS__DOMAIN__", "cluster.local")


def test_template_uses_only_supported_plugins() -> None:
    supported = {"bind", "cache", "forward", "errors", "log", "loop", "loadbalance", "prometheus",
                 "health", "ready", "reload"}
    subdirectives = {"success", "denial", "force_tcp", "lameduck"}
    depth = 0
    for line in (ROOT / "Corefile.nodelocal").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if depth == 1 and words[0] != "}":
            assert words[0] in supported, line
        elif depth == 2 and words[0] != "}":
            assert words[0] in subdirectives, line
        depth += line.count("{") - line.count("}")
    assert depth == 0


def test_services() -> None:
    objs = {_key(o): o for o in build(MANIFESTS / "base")}
    upstream = objs["Service", "kube-dns-upstream"]["spec"]
    assert upstream["selector"] == {"k8s-app": "kube-dns"}
    assert {(p["port"], p["protocol"]) for p in upstream["ports"]} == {(53, "UDP"), (53, "TCP")}
    metrics = objs["Service", "node-local-dns"]
    assert metrics["spec"]["clusterIP"] == "None"
    assert metrics["spec"]["ports"][0]["port"] == 9253
    assert metrics["metadata"]["annotations"]["prometheus.io/port"] == "9253"


def test_upgrades_doc_examples_match_the_daemonset() -> None:
    """docs/upgrades.md's DaemonSet snippets use the manifests' volume names, paths and flags."""
    import re

    doc = (ROOT / "docs" / "upgrades.md").read_text()
    objs = {_key(o): o for o in build(MANIFESTS / "iptables")}
    spec = _daemonset(objs)["spec"]["template"]["spec"]
    mounts = {(m["name"], m["mountPath"]) for c in spec["containers"] for m in c["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    args = {a: b for c in spec["containers"] for a, b in zip(c["args"], c["args"][1:])}
    blocks = re.findall(r"```yaml\n(.*?)```", doc, re.S)
    assert blocks
    for block in blocks:
        for name, path in re.findall(r"\{name: ([\w-]+), mountPath: ([^}\s]+)\}", block):
            assert (name, path) in mounts, (name, path)
        for name, path in re.findall(r"- name: ([\w-]+)\n\s+hostPath: \{path: ([^,]+),", block):
            assert host_paths.get(name) == path, (name, path)
        for flag, value in re.findall(r'"(-{1,2}[\w-]+)", "([^"]+)"', block):
            if flag in args:
                assert args[flag] == value, (flag, value)
        assert '"run"' not in block and "--pidfile" not in block, block
