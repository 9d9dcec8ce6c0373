"""The image on a node, run as a DaemonSet runs it: podman in network namespaces.

The "node" is a network namespace (``netns.node_and_pod``) with kube-proxy's
part played by a DNAT rule: the kube-dns ClusterIP (10.96.0.10) goes to the
cluster DNS, a Knot server in a third namespace (10.201.0.2). A "pod"
namespace routes through the node and sends the queries. Every container gets
exactly what its manifest says (tests/kit/podkit.py): args, capabilities, user,
mounts, probes, grace period; the test plays the kubelet's part (service-link
env, ConfigMap files, hostPaths under the test's directory, HTTP probes).

* Our manifests (``manifests/iptables``, built with tests/kit/kustomize.py's
  kustomize): serving on both IPs over UDP and TCP, the rules, probes,
  metrics, a ConfigMap edit, a surge rollout under dnsperf load with nothing
  lost, the pidfile afterwards, SIGTERM teardown.
* node-cache's own manifests (tests/data/node-cache-manifests), only the image
  swapped: serving, rules, probes, node-cache's paths, teardown.
"""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from nodecache.hostnet.rules import COMMENT_PREFIX
from tests.kit import DATA as TESTDATA
from tests.kit import netns, podkit
from tests.kit import reliabilitykit as kit
from tests.kit.kustomize import MANIFESTS, build
from tests.kit.netns import dummy_supported, precreate_link
from tests.kit.podman import Podman

pytestmark = pytest.mark.privileged

LOCAL = "169.254.20.10"
KUBE_DNS = "10.96.0.10"
#: The cluster DNS "pod" (Knot) behind kube-dns's ClusterIP, and the node's end.
CLUSTER_DNS, NODE_DNS_SIDE = "10.201.0.2", "10.201.0.1"
#: Every local IP a manifest here uses (the pod routes them through the node).
LOCAL_IPS = (LOCAL, KUBE_DNS, "169.254.25.10", "169.254.20.11")
DATA = TESTDATA / "node-cache-manifests"
#: The kubelet waits at least this long before SIGKILL, whatever the pod says, s.
MIN_GRACE = 2


@dataclass
class Node:
    topo: netns.NodePod
    pm: Podman
    image: str
    dir: Path
    #: ConfigMap name -> key -> text (written when a pod mounts it).
    configmaps: dict[str, dict[str, str]] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)

    def hostpath(self, path: str) -> Path:
        return self.dir / "host" / path.lstrip("/")

    @property
    def resolv_conf(self) -> Path:
        """The node's resolv.conf: the cluster DNS pod stands in for the node's resolvers."""
        path = self.dir / "resolv.conf"
        path.write_text(f"nameserver {CLUSTER_DNS}\n")
        return path

    def configmap_dir(self, name: str) -> Path:
        return self.dir / "configmaps" / name


@pytest.fixture
def node(image: tuple[Podman, str], tmp_path: Path) -> Iterator[Node]:
    pm, tag = image
    with netns.node_and_pod(routes_via_node=LOCAL_IPS) as topo, netns.namespace("kdns") as kdns:
        tag_ = f"{os.getpid() % 100000}"
        with netns.veth_pair(topo.node, f"nk{tag_}", kdns, f"kn{tag_}"):
            netns.run(topo.node, "ip", "addr", "add", f"{NODE_DNS_SIDE}/24", "dev", f"nk{tag_}")
            netns.run(kdns, "ip", "addr", "add", f"{CLUSTER_DNS}/24", "dev", f"kn{tag_}")
            netns.run(kdns, "ip", "route", "add", "default", "via", NODE_DNS_SIDE)
            netns.run(topo.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            # kube-proxy (iptables mode): the ClusterIP is DNATed to the DNS pod.
            for chain in ("PREROUTING", "OUTPUT"):
                for proto in ("udp", "tcp"):
                    netns.run(topo.node, "iptables-nft", "-t", "nat", "-A", chain, "-d", KUBE_DNS,
                              "-p", proto, "--dport", "53", "-j", "DNAT", "--to-destination",
                              f"{CLUSTER_DNS}:53")
            netns.activate_conntrack(topo.node, "iptables-nft")
            if not dummy_supported():
                precreate_link(topo.node)  # adopted by the agent, as an operator's would be
            with kit.knot(kdns, tmp_path / "knot", listen=(CLUSTER_DNS,)):
                n = Node(topo, pm, tag, tmp_path)
                try:
                    yield n
                finally:
                    for name in n.started:
                        pm.run("rm", "--force", "--time", "0", name, check=False)


# -- the kubelet's part ------------------------------------------------------------

def volume_sources(node: Node, spec: podkit.PodSpec, pod: str) -> dict[str, Path]:
    sources: dict[str, Path] = {}
    for name, vol in spec.volumes.items():
        if "hostPath" in vol:
            path = node.hostpath(vol["hostPath"]["path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            if vol["hostPath"].get("type") == "FileOrCreate":
                path.touch()
            else:
                path.mkdir(exist_ok=True)
        elif "configMap" in vol:
            cm = vol["configMap"]
            path = node.configmap_dir(cm["name"])
            path.mkdir(parents=True, exist_ok=True)
            data = node.configmaps.get(cm["name"])
            assert data is not None or cm.get("optional"), f"ConfigMap {cm['name']} missing"
            for item in cm.get("items") or [{"key": k, "path": k} for k in data or {}]:
                if not (path / item["path"]).exists():
                    (path / item["path"]).write_text((data or {})[item["key"]])
        elif "emptyDir" in vol:
            path = node.dir / "pods" / pod / name
            path.mkdir(parents=True, exist_ok=True)
        else:
            raise AssertionError(f"volume {name}: kind not rehearsed: {vol}")
        sources[name] = path
    return sources


def start_pod(node: Node, spec: podkit.PodSpec, name: str) -> str:
    """Start the pod's containers; the agent's is called ``name``, the others
    ``name-<container>``."""
    assert spec.host_network
    env = {"KUBE_DNS_UPSTREAM_SERVICE_HOST": CLUSTER_DNS, "KUBE_DNS_SERVICE_HOST": KUBE_DNS,
           "COREDNS_SERVICE_HOST": KUBE_DNS}
    sources = volume_sources(node, spec, name)
    for cname, container in [("", spec.container), *spec.others.items()]:
        full = f"{name}-{cname}" if cname else name
        args = podkit.podman_args(container, name=full, node_ns=node.topo.node,
                                  sources=sources, resolv_conf=node.resolv_conf, env=env)
        node.started.append(full)
        node.pm.run(*args, node.image, *podkit.command(container))
    return name


def running(node: Node, name: str) -> bool:
    state = node.pm.inspect(name)["State"]
    return bool(state["Running"])  # type: ignore[index]


def logs(node: Node, name: str) -> str:
    res = node.pm.run("logs", name, check=False)
    return res.stdout + res.stderr


def wait_for(what: str, check: Any, timeout: float = 60.0, node: Node | None = None,
             pod: str | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        if node is not None and pod is not None and not running(node, pod):
            raise AssertionError(f"{pod} exited while waiting for {what}:\n{logs(node, pod)}")
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}"
                         + (f":\n{logs(node, pod)}" if node and pod else ""))


def wait_probe(node: Node, spec: podkit.PodSpec, pod: str, which: str = "readinessProbe") -> None:
    probe = spec.container.get(which) or spec.container["livenessProbe"]
    wait_for(f"{pod} {which}", lambda: podkit.probe(node.topo.node, probe) == 200,
             node=node, pod=pod)


def stop_pod(node: Node, spec: podkit.PodSpec, pod: str) -> float:
    """SIGTERM, then SIGKILL after the grace period (as the kubelet), every container at
    once; the seconds the agent's took."""
    started = time.monotonic()
    grace = str(max(spec.grace, MIN_GRACE))
    others = [node.pm.popen("stop", "--time", grace, f"{pod}-{c}", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL) for c in spec.others]
    node.pm.run("stop", "--time", grace, pod, timeout=120)
    took = time.monotonic() - started
    for proc in others:
        proc.wait(120)
    return took


# -- what a pod and the node see ------------------------------------------------------

def dig(node: Node, server: str, name: str = "h1.example.", tcp: bool = False) -> str:
    res = netns.run(node.topo.pod, "dig", "+short", "+tries=1", "+time=2",
                    *(["+tcp"] if tcp else []), f"@{server}", name, check=False)
    return res.stdout.strip()


def our_rules(node: Node) -> int:
    """How many nodecache rules the node has, in any backend."""
    text = "".join(netns.run(node.topo.node, tool, check=False).stdout
                   for tool in ("iptables-nft-save", "ip6tables-nft-save"))
    text += netns.run(node.topo.node, "nft", "list", "ruleset", check=False).stdout \
        if "nodecache" not in text else ""
    return len(re.findall(re.escape(COMMENT_PREFIX), text))


def holds(node: Node, ip: str) -> bool:
    """Whether the node holds ``ip`` (on the agent's interface)."""
    out = netns.run(node.topo.node, "ip", "-o", "addr", "show", check=False).stdout
    return f" {ip}/" in out


def http_get(node: Node, host: str, port: int, path: str) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=5) as r:
            return str(r.read().decode())

    return netns.call(node.topo.node, fetch)


def dnsperf(node: Node, server: str, *, tcp: bool, rate: int, seconds: int,
            queries: Path) -> Any:
    cmd = ["dnsperf", "-s", server, "-d", str(queries), "-l", str(seconds), "-Q", str(rate),
           "-t", "3", "-c", "4" if tcp else "1", "-m", "tcp" if tcp else "udp"]
    return netns.popen(node.topo.pod, *cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)


def dnsperf_result(proc: Any) -> tuple[int, int, str]:
    out, _ = proc.communicate(timeout=120)
    sent = re.search(r"Queries sent:\s+(\d+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    assert sent and lost, out
    return int(sent.group(1)), int(lost.group(1)), out


def write_queries(path: Path, count: int = 2000) -> Path:
    path.write_text("".join(f"{kit.name_for(k)} A\n" for k in range(count)))
    return path


# -- our manifests -------------------------------------------------------------------

def ours() -> tuple[podkit.PodSpec, dict[str, dict[str, str]]]:
    objs = build(MANIFESTS / "iptables")
    configmaps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    return podkit.pod_from_manifest(objs), configmaps


def test_our_daemonset_rehearsed(node: Node) -> None:
    spec, configmaps = ours()
    node.configmaps.update(configmaps)
    args = spec.container["args"]
    local_ips = args[args.index("-localip") + 1].split(",")
    assert local_ips == [LOCAL, KUBE_DNS]
    pidfile = node.hostpath(args[args.index("-pidfile") + 1])
    old = start_pod(node, spec, "nodecache-a")
    wait_probe(node, spec, old)

    # Serving on both IPs, UDP and TCP, from a pod; rules; probes; metrics.
    for ip in local_ips:
        for tcp in (False, True):
            assert dig(node, ip, tcp=tcp) == "10.1.0.1", (ip, tcp, logs(node, old))
    # The guard hands the link-local IP back once the agent's NOTRACK rules are in.
    wait_for("the guard's fallback removed", lambda: our_rules(node) == 24, timeout=15,
             node=node, pod=old)
    assert podkit.probe(node.topo.node, spec.container["livenessProbe"]) == 200
    assert podkit.probe(node.topo.node, spec.container["readinessProbe"]) == 200
    metrics = http_get(node, LOCAL, 9253, "/metrics")
    assert 'coredns_dns_requests_total{' in metrics

    # A ConfigMap edit: the `log` plugin in the catch-all block, served without a restart.
    base = node.configmap_dir("node-local-dns") / "Corefile.base"
    edited = base.read_text().replace(".:53 {\n    errors\n", ".:53 {\n    errors\n    log\n")
    assert edited != base.read_text()
    tmp = base.with_suffix(".new")
    tmp.write_text(edited)
    tmp.rename(base)
    wait_for("the edited Corefile to be served",
             lambda: dig(node, LOCAL, "h7.example.") == "10.1.0.7"
             and "h7.example." in logs(node, old), timeout=30, node=node, pod=old)

    # A surge rollout under load: the new pod starts beside the old, then SIGTERM to the old.
    queries = write_queries(node.dir / "queries.txt")
    seconds = 14
    rules_seen: list[int] = []
    stop_sampling = threading.Event()

    def sample() -> None:
        while not stop_sampling.is_set():
            rules_seen.append(our_rules(node))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    udp = dnsperf(node, KUBE_DNS, tcp=False, rate=1000, seconds=seconds, queries=queries)
    tcp = dnsperf(node, LOCAL, tcp=True, rate=1000, seconds=seconds, queries=queries)
    sampler.start()
    try:
        time.sleep(2)
        new = start_pod(node, spec, "nodecache-b")
        wait_for("the new pod to serve", lambda: "serving DNS on" in logs(node, new), node=node,
                 pod=new)
        time.sleep(1)
        took = stop_pod(node, spec, old)
        results = [dnsperf_result(udp), dnsperf_result(tcp)]
    finally:
        stop_sampling.set()
        sampler.join(10)
        for proc in (udp, tcp):
            if proc.poll() is None:
                proc.kill()
    for sent, _, out in results:
        assert sent > 1000 * (seconds - 3), out
    (udp_sent, udp_lost, udp_out), (tcp_sent, tcp_lost, tcp_out) = results
    assert udp_lost == 0, f"UDP to kube-dns: {udp_lost} of {udp_sent} lost\n{udp_out}"
    assert rules_seen and min(rules_seen) == 24, rules_seen
    assert took < spec.grace, f"the old pod took {took:.1f}s to stop (grace {spec.grace}s)"
    old_logs = logs(node, old)
    assert "skipping teardown" in old_logs, old_logs

    # The pidfile is the new pod's worker: the old agent (the same PID in its own
    # namespace) left it alone.
    pid = pidfile.read_text().strip()
    cmdline = node.pm.run("exec", new, "cat", f"/proc/{pid}/cmdline").stdout
    assert "nodecache" in cmdline and "--worker" in cmdline, cmdline

    # The last pod's SIGTERM: everything torn down, its pidfile gone.
    stop_pod(node, spec, new)
    assert our_rules(node) == 0
    assert not any(holds(node, ip) for ip in local_ips)
    assert not pidfile.exists()
    for pod in (old, new):
        text = logs(node, pod)
        assert "RuntimeWarning" not in text and "Traceback" not in text, text
    # dnsperf keeps each connection busy and does not resend what was in flight when
    # the old agent ends it: past the drain's deadline a few queries per connection
    # can go (docs/upgrades.md, the same window as node-cache's).
    assert tcp_lost <= 4 * 4, f"TCP to the local IP: {tcp_lost} of {tcp_sent} lost\n{tcp_out}"
    if tcp_lost:
        pytest.xfail(f"TCP to the local IP: {tcp_lost} of {tcp_sent} lost (connections busy "
                     f"past the drain)\n{tcp_out}")


# -- node-cache's manifests, only the image swapped --------------------------------------

def node_cache_manifest(name: str) -> tuple[podkit.PodSpec, dict[str, dict[str, str]]]:
    objs = list(yaml.safe_load_all((DATA / name).read_text()))
    configmaps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    return podkit.pod_from_manifest(objs), configmaps


def _flags(args: list[str]) -> dict[str, str]:
    """node-cache's args as name -> value (``-a b`` and ``-a=b``; bare booleans -> "true")."""
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].lstrip("-").partition("=")
        if not eq:
            nxt = args[i + 1] if i + 1 < len(args) else "-"
            if nxt.startswith("-"):
                value = "true"
            else:
                value, i = nxt, i + 1
        out[name] = value
        i += 1
    return out


@pytest.mark.parametrize("manifest", ["addon.yaml", "kubespray.yaml", "kops.yaml", "helm.yaml"])
def test_node_cache_manifest_with_our_image(node: Node, manifest: str) -> None:
    spec, configmaps = node_cache_manifest(manifest)
    node.configmaps.update(configmaps)
    flags = _flags(spec.container["args"])
    local_ips = flags["localip"].split(",")
    rules = flags.get("setupiptables", "true") == "true"
    pod = start_pod(node, spec, "node-cache-swapped")
    wait_probe(node, spec, pod)
    # /health answers once listening; the rules follow the loop check.
    wait_for("serving", lambda: "serving DNS on" in logs(node, pod), node=node, pod=pod)
    assert ", compiled with mypyc: " in logs(node, pod)  # the start-up line: what ships
    for ip in local_ips:
        for tcp in (False, True):
            assert dig(node, ip, tcp=tcp) == "10.1.0.1", (ip, tcp, logs(node, pod))
    assert our_rules(node) == (12 * len(local_ips) if rules else 0), logs(node, pod)
    assert podkit.probe(node.topo.node, spec.container["livenessProbe"]) == 200
    # node-cache's paths: /etc/Corefile rendered from /etc/coredns/Corefile.base.
    rendered = node.pm.run("exec", pod, "cat", flags["conf"]).stdout
    assert "__PILLAR__" not in rendered
    assert f"forward . {CLUSTER_DNS}" in rendered or "forward . 10.96.0.10" in rendered, rendered
    if "pidfile" in flags:
        pid = node.pm.run("exec", pod, "cat", flags["pidfile"]).stdout.strip()
        assert pid.isdigit()
    stop_pod(node, spec, pod)
    assert our_rules(node) == 0
    kept = flags.get("skipteardown") == "true"
    assert all(holds(node, ip) == kept for ip in local_ips), logs(node, pod)
    text = logs(node, pod)
    assert "RuntimeWarning" not in text and "Traceback" not in text, text


# -- the whole agent container killed ---------------------------------------------------

def _answered_after(node: Node, ips: tuple[str, ...], since: float, limit: float) -> dict[str, float]:
    """From the pod: query each IP every 20 ms until it answers; seconds after ``since``
    (time.time()) at which each first answered, or ``limit`` if it never did."""
    def probe_loop() -> dict[str, float]:
        import socket  # noqa: PLC0415

        import dns.message  # noqa: PLC0415
        query = dns.message.make_query("h1.example.", "A").to_wire()
        first: dict[str, float] = {}
        deadline = since + limit
        while len(first) < len(ips) and time.time() < deadline:
            for ip in ips:
                if ip in first:
                    continue
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                    sock.settimeout(0.2)
                    try:
                        sock.sendto(query, (ip, 53))
                        sock.recv(512)
                        first[ip] = time.time() - since
                    except OSError:
                        pass
            time.sleep(0.02)
        return {ip: first.get(ip, limit) for ip in ips}

    return netns.call(node.topo.pod, probe_loop, timeout=limit + 30)


def test_whole_agent_container_sigkill_under_load(node: Node) -> None:
    """SIGKILL of the agent's whole container (as an OOM kill of PID 1): with the guard,
    pods get the kube-dns ClusterIP back from kube-proxy and the link-local IP from the
    guard's fallback at once; without it (node-cache's case) both IPs stay black-holed
    until the container is restarted."""
    spec, configmaps = ours()
    node.configmaps.update(configmaps)
    pod = start_pod(node, spec, "nodecache-k")
    guard = f"{pod}-guard"
    wait_for("serving", lambda: "serving DNS on" in logs(node, pod), node=node, pod=pod)
    # The guard's fallback must be gone before the guard stops (its SIGTERM leaves it).
    wait_for("the guard's fallback removed", lambda: our_rules(node) == 24, timeout=15,
             node=node, pod=pod)
    queries = write_queries(node.dir / "queries.txt")
    load = dnsperf(node, KUBE_DNS, tcp=False, rate=500, seconds=40, queries=queries)
    figures: dict[str, float] = {}
    try:
        # Without the guard: nothing removes the rules.
        node.pm.run("stop", "--time", "2", guard)
        killed = time.time()
        node.pm.run("kill", "--signal", "KILL", pod)
        without = _answered_after(node, (KUBE_DNS, LOCAL), killed, 3.0)
        assert without == {KUBE_DNS: 3.0, LOCAL: 3.0}, without
        assert our_rules(node) == 24
        restarted = time.time()
        node.pm.run("start", pod)  # the kubelet's first restart, at once
        back = _answered_after(node, (KUBE_DNS, LOCAL), restarted, 60.0)
        figures["restart: both IPs answered again after (s)"] = max(back.values())
        wait_for("serving", lambda: our_rules(node) == 24, node=node, pod=pod)

        # With the guard.
        node.pm.run("start", guard)
        wait_for("the guard", lambda: "guarding" in logs(node, guard))
        time.sleep(1)
        killed = time.time()
        node.pm.run("kill", "--signal", "KILL", pod)
        with_guard = _answered_after(node, (KUBE_DNS, LOCAL), killed, 10.0)
        figures["guard: kube-dns ClusterIP answered again after (s)"] = with_guard[KUBE_DNS]
        figures["guard: link-local IP answered again after (s)"] = with_guard[LOCAL]
        assert max(with_guard.values()) < 3.0, (with_guard, logs(node, guard))
        # Only the fallback for the link-local IP (nat PREROUTING and OUTPUT, UDP and TCP).
        wait_for("the fallback alone", lambda: our_rules(node) == 4, node=node, pod=pod)
        assert dig(node, LOCAL, tcp=True) == "10.1.0.1"  # the cluster DNS (knot) answers
        restarted = time.time()
        node.pm.run("start", pod)
        wait_for("the rules back", lambda: our_rules(node) == 24, node=node, pod=pod)
        figures["guard: agent's rules back after restart (s)"] = time.time() - restarted
        assert dig(node, KUBE_DNS) == dig(node, LOCAL) == "10.1.0.1"
    finally:
        if load.poll() is None:
            load.kill()
        load.communicate()
    print("\nwhole-container SIGKILL:", ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
    stop_pod(node, spec, pod)
    assert our_rules(node) == 0
