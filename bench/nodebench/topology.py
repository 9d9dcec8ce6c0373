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
the bench created, so deleting the namespaces removes everything. The
namespaces, veth pairs and the sweep of a killed run's leftovers are the test
suite's (``tests/kit/netns.py``); the NOTRACK rules for the reference servers are
nodecache's own (``nodecache.hostnet``), installed from inside the node namespace.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nodecache.hostnet.firewall import choose_firewall
from nodecache.hostnet.rules import notrack_rules
from tests.kit import netns

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


@dataclass(frozen=True)
class Topology:
    pod: str
    node: str
    dns: str


def build(cleanup: Cleanup) -> Topology:
    """Create the namespaces, links, addresses and routes; register their removal."""
    for name in netns.sweep_stale():
        log(f"removed stale namespace {name}")
    stack = contextlib.ExitStack()
    cleanup.push("delete namespaces", stack.close)
    topo = Topology(pod=stack.enter_context(netns.namespace("pod")), node=stack.enter_context(netns.namespace("node")),
                    dns=stack.enter_context(netns.namespace("dns")))
    log(f"namespaces {topo.pod}, {topo.node}, {topo.dns}")
    stack.enter_context(netns.veth_pair(topo.node, "node-pod", topo.pod, "pod0"))
    stack.enter_context(netns.veth_pair(topo.node, "node-up", topo.dns, "dns0"))

    sh(["ip", "addr", "add", f"{POD_IP}/24", "dev", "pod0"], ns=topo.pod)
    sh(["ip", "route", "add", "default", "via", NODE_POD_IP], ns=topo.pod)

    sh(["ip", "addr", "add", f"{NODE_POD_IP}/24", "dev", "node-pod"], ns=topo.node)
    sh(["ip", "addr", "add", f"{NODE_UP_IP}/24", "dev", "node-up"], ns=topo.node)
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
    sh(["ip", "route", "add", "default", "via", NODE_UP_IP], ns=topo.dns)
    for ip in (CLUSTER_DNS, AUTH_DNS, RELAY0_DNS):
        sh(["ip", "addr", "add", f"{ip}/32", "dev", "lo"], ns=topo.dns)

    # Make conntrack active in the node namespace, as kube-proxy's rules do on a
    # real node: any rule with a conntrack match registers the hooks.
    for chain in ("INPUT", "FORWARD", "OUTPUT"):
        sh(["iptables", "-w", "5", "-A", chain, "-m", "conntrack", "--ctstate", "INVALID",
            "-j", "DROP"], ns=topo.node)
    return topo


# The reference servers get nodecache's own rule set (node-cache's, NODELOCAL.md
# section 1.3), so their runs skip conntrack as nodecache's do.
def _ensure_rules(ip: str) -> int:
    return choose_firewall("auto", {4}).ensure(notrack_rules([ip]))


def _remove_rules(ip: str) -> int:
    return choose_firewall("auto", {4}).remove(notrack_rules([ip]))


def add_notrack(topo: Topology, ip: str) -> None:
    netns.call(topo.node, _ensure_rules, ip)


def del_notrack(topo: Topology, ip: str) -> None:
    netns.call(topo.node, _remove_rules, ip)


def _remove_tagged() -> int:
    return choose_firewall("auto", {4}).remove_tagged()


def remove_nodecache_rules(topo: Topology) -> int:
    """Remove every nodecache-tagged rule in the node namespace; how many there were."""
    return netns.call(topo.node, _remove_tagged)
