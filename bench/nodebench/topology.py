"""The three-namespace topology: pod -> node -> cluster DNS.

::

    pod ns                 node ns                                   dns ns
    pod0 10.200.1.2 ---- node-pod 10.200.1.1                          dns0 10.200.2.2
                         node-up  10.200.2.1 ---------------------------/
                         nodelocaldns (bridge) 169.254.20.10  nodecache   lo 10.96.0.10  delay relay
                         ncbref       (bridge) 169.254.20.11  unbound        10.96.0.11  knotd
                                               169.254.20.12  dnsmasq        10.96.0.12  relay, no delay
                                               169.254.20.13  node-cache
                                               169.254.20.14  the Python floor (hits only)

The node forwards pod traffic for 10.96.0.0/24 (the "cluster DNS" service
addresses) to the dns namespace, so a pod can query the cluster DNS directly or
a cache on the node, just as in a cluster. Every link lives inside a namespace
the bench created, so deleting the namespaces removes everything.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from .host import Cleanup, log, sh

POD_IP = "10.200.1.2"
NODE_POD_IP = "10.200.1.1"
NODE_UP_IP = "10.200.2.1"
DNS_IP = "10.200.2.2"
#: The cluster DNS service address (kube-dns), served by the delaying relay.
CLUSTER_DNS = "10.96.0.10"
#: The authoritative server itself, reachable without the added delay.
AUTH_DNS = "10.96.0.11"
#: A relay with no added delay, to measure what the relay itself costs.
RELAY0_DNS = "10.96.0.12"
NODECACHE_IP = "169.254.20.10"
UNBOUND_IP = "169.254.20.11"
DNSMASQ_IP = "169.254.20.12"
NODE_CACHE_IP = "169.254.20.13"
FLOOR_IP = "169.254.20.14"

_PREFIX = "ncb"


@dataclass(frozen=True)
class Topology:
    pod: str
    node: str
    dns: str


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def delete_ns(ns: str) -> None:
    """Kill what still runs inside *ns*, then delete it (links and rules go with it)."""
    cp = sh(["ip", "netns", "pids", ns], check=False)
    for pid in cp.stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass
    sh(["ip", "netns", "delete", ns], check=False)


def remove_stale() -> None:
    """Delete namespaces left by an earlier run that was killed with SIGKILL."""
    cp = sh(["ip", "netns", "list"], check=False)
    for line in cp.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.fullmatch(rf"{_PREFIX}(\d+)-(pod|node|dns)", name)
        if m and not _pid_alive(int(m.group(1))):
            log(f"removing stale namespace {name}")
            delete_ns(name)


def build(cleanup: Cleanup) -> Topology:
    """Create the namespaces, links, addresses and routes; register their removal."""
    remove_stale()
    tag = f"{_PREFIX}{os.getpid()}"
    topo = Topology(pod=f"{tag}-pod", node=f"{tag}-node", dns=f"{tag}-dns")
    log(f"namespaces {topo.pod}, {topo.node}, {topo.dns}")
    for ns in (topo.pod, topo.node, topo.dns):
        sh(["ip", "netns", "add", ns])
        cleanup.push(f"delete namespace {ns}", lambda ns=ns: delete_ns(ns))
        sh(["ip", "link", "set", "lo", "up"], ns=ns)

    # veth pairs are created inside the node namespace, then one end is moved.
    sh(["ip", "link", "add", "node-pod", "type", "veth", "peer", "name", "pod0"], ns=topo.node)
    sh(["ip", "link", "set", "pod0", "netns", topo.pod], ns=topo.node)
    sh(["ip", "link", "add", "node-up", "type", "veth", "peer", "name", "dns0"], ns=topo.node)
    sh(["ip", "link", "set", "dns0", "netns", topo.dns], ns=topo.node)

    sh(["ip", "addr", "add", f"{POD_IP}/24", "dev", "pod0"], ns=topo.pod)
    sh(["ip", "link", "set", "pod0", "up"], ns=topo.pod)
    sh(["ip", "route", "add", "default", "via", NODE_POD_IP], ns=topo.pod)

    sh(["ip", "addr", "add", f"{NODE_POD_IP}/24", "dev", "node-pod"], ns=topo.node)
    sh(["ip", "addr", "add", f"{NODE_UP_IP}/24", "dev", "node-up"], ns=topo.node)
    for dev in ("node-pod", "node-up"):
        sh(["ip", "link", "set", dev, "up"], ns=topo.node)
    sh(["ip", "route", "add", "10.96.0.0/24", "via", DNS_IP], ns=topo.node)
    sh(["sysctl", "-qw", "net.ipv4.ip_forward=1"], ns=topo.node)
    # The kernel here has no "dummy" link type; nodecache adopts an existing
    # "nodelocaldns" link of any kind, so give it a bridge.
    sh(["ip", "link", "add", "nodelocaldns", "type", "bridge"], ns=topo.node)
    sh(["ip", "link", "set", "nodelocaldns", "up"], ns=topo.node)
    # The reference caches get their own link so nodecache's teardown cannot touch them.
    sh(["ip", "link", "add", "ncbref", "type", "bridge"], ns=topo.node)
    sh(["ip", "link", "set", "ncbref", "up"], ns=topo.node)
    for ip in (UNBOUND_IP, DNSMASQ_IP, NODE_CACHE_IP, FLOOR_IP):
        sh(["ip", "addr", "add", f"{ip}/32", "dev", "ncbref"], ns=topo.node)

    sh(["ip", "addr", "add", f"{DNS_IP}/24", "dev", "dns0"], ns=topo.dns)
    sh(["ip", "link", "set", "dns0", "up"], ns=topo.dns)
    sh(["ip", "route", "add", "default", "via", NODE_UP_IP], ns=topo.dns)
    for ip in (CLUSTER_DNS, AUTH_DNS, RELAY0_DNS):
        sh(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], ns=topo.dns)

    # Make conntrack active in the node namespace, as kube-proxy's rules do on a
    # real node: any rule with a conntrack match registers the hooks.
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        sh(["iptables", "-w", "5", "-A", chain, "-m", "conntrack", "--ctstate", "INVALID",
            "-j", "DROP"], ns=topo.node)
    return topo


# NOTRACK rules equivalent to node-cache's (NODELOCAL.md section 1.3), installed
# by the bench for the reference caches so their runs skip conntrack as
# nodecache's do. Each entry: (table, chain, match).
def notrack_rules(ip: str, port: int = 53) -> list[tuple[str, str, list[str]]]:
    rules: list[tuple[str, str, list[str]]] = []
    for proto in ("tcp", "udp"):
        rules += [
            ("raw", "PREROUTING", ["-p", proto, "-d", ip, "--dport", str(port), "-j", "NOTRACK"]),
            ("raw", "OUTPUT", ["-p", proto, "-s", ip, "--sport", str(port), "-j", "NOTRACK"]),
            ("raw", "OUTPUT", ["-p", proto, "-d", ip, "--dport", str(port), "-j", "NOTRACK"]),
        ]
    return rules


def add_notrack(topo: Topology, ip: str) -> None:
    for table, chain, match in notrack_rules(ip):
        sh(["iptables", "-w", "5", "-t", table, "-I", chain, *match], ns=topo.node)


def del_notrack(topo: Topology, ip: str) -> None:
    for table, chain, match in notrack_rules(ip):
        sh(["iptables", "-w", "5", "-t", table, "-D", chain, *match], ns=topo.node, check=False)
