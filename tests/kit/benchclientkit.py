"""The model cluster bench-client's end-to-end tests run in: bench/'s namespaces and servers.

bench/nodebench builds pod -> node -> cluster DNS (Knot behind the delaying
relay on 10.96.0.10); :func:`model_cluster` adds what a cluster puts in front
of the cluster DNS, a Service IP (:data:`KUBE_DNS_SERVICE`) DNATed on the node
as kube-proxy does, with the names a cluster has for it
(``kube-dns-upstream.kube-system``, which the Job in manifests/bench/ measures,
and ``kubernetes.default``), and starts nodecache on the node on 169.254.20.10
(and, if asked, node-cache beside it).
Everything is removed at the end, also when the test fails.
"""
from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.kit import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from nodebench import servers as S  # noqa: E402
from nodebench import topology as T  # noqa: E402
from nodebench import zone as Z  # noqa: E402
from nodebench.host import Cleanup, sh  # noqa: E402

#: The cluster DNS Service IP the pod's resolv.conf names, DNATed to the cluster DNS.
KUBE_DNS_SERVICE = "10.96.0.53"
SEARCH = "default.svc.cluster.local svc.cluster.local cluster.local"
#: What the kubelet writes for dnsPolicy: ClusterFirst.
RESOLV_CONF = f"search {SEARCH}\nnameserver {KUBE_DNS_SERVICE}\noptions ndots:5\n"


@dataclass(frozen=True)
class Cluster:
    topo: T.Topology
    work: Path
    zone: Z.ClusterZone

    def pod_resolv_conf(self) -> Path:
        path = self.work / "pod-resolv.conf"
        path.write_text(RESOLV_CONF)
        return path


def _dnat(topo: T.Topology, op: str) -> None:
    for proto in ("udp", "tcp"):
        sh(["iptables", "-w", "5", "-t", "nat", op, "PREROUTING", "-d", f"{KUBE_DNS_SERVICE}/32", "-p", proto,
            "--dport", "53", "-j", "DNAT", "--to-destination", f"{T.CLUSTER_DNS}:53"], ns=topo.node,
           check=op == "-A")


@contextlib.contextmanager
def model_cluster(services: int = 1000, *, node_cache: bool = False) -> Iterator[Cluster]:
    """The cluster; with *node_cache* also the reference node-cache (the anchor build beside
    the project, serving only) on :data:`nodebench.topology.NODE_CACHE_IP`."""
    cleanup = Cleanup()
    work = Path(tempfile.mkdtemp(prefix="benchclient-"))
    cleanup.push("remove work", lambda: shutil.rmtree(work, ignore_errors=True))
    try:
        topo = T.build(cleanup)
        _dnat(topo, "-A")
        cleanup.push("remove DNAT", lambda: _dnat(topo, "-D"))
        zone = Z.generate(work / "zones", services=services, ttl=30)
        with open(zone.zone_files["cluster.local"], "a", encoding="ascii") as f:
            f.write(f"kube-dns-upstream.kube-system.svc A {KUBE_DNS_SERVICE}\nkubernetes.default.svc A 10.96.0.1\n")
        S.start_knot(cleanup, topo, work, zone.zone_files)
        S.start_relay(cleanup, topo, work, listen=T.CLUSTER_DNS, delay_ms=0.25, name="relay")
        ok, why, help_text = S.nodecache_runnable()
        assert ok, why
        cache = S.Cache("nodecache", T.NODECACHE_IP, own_notrack=True, cluster_transport="tcp")
        S.start_cache(cleanup, topo, work, cache, help_text)
        if node_cache:
            binary, why = S.node_cache_binary(None, work)
            assert binary is not None, why
            ref = S.Cache("node-cache", T.NODE_CACHE_IP, own_notrack=False, cluster_transport="tcp",
                          binary=binary)
            S.start_cache(cleanup, topo, work, ref)
        assert S.dig_ok(topo.pod, KUBE_DNS_SERVICE, "kube-dns.kube-system.svc.cluster.local"), "DNAT"
        yield Cluster(topo, work, zone)
    finally:
        cleanup.run()
