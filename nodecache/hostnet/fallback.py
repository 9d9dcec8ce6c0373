"""The guard's fallback: the link-local IP reaches the cluster DNS while no agent serves.

Why: with the agent's rules removed the kube-dns ClusterIP is kube-proxy's again, but
nothing answers on 169.254.20.10, which is what pods use in IPVS mode (kubelet's
clusterDNS). So the guard adds ``nat`` rules sending DNS for the link-local IPs to the
cluster DNS Service (``-upstreamsvc``, kube-dns-upstream), and takes them out once an
agent serves again.

Where they point, by kube-proxy mode:

* iptables: the packet jumps to kube-proxy's own chain for the Service's ClusterIP
  (``KUBE-SERVICES -d IP -p udp --dport 53 -j KUBE-SVC-...``), which picks an endpoint
  and DNATs to it. A DNAT to the ClusterIP itself would black-hole: NAT is decided once
  per connection, so kube-proxy's DNAT would never see the rewritten packet.
* IPVS (no such chain): a DNAT to the ClusterIP. IPVS holds it on ``kube-ipvs0`` and
  balances it after ``nat`` PREROUTING/OUTPUT, so the rewritten packet is served.

Conntrack: the rules only act on tracked packets, and the agent's NOTRACK rules keep DNS
to the local IPs untracked. So the fallback is inert while those are in place, and the
order of the switch is what makes it seamless: the guard installs the fallback *before*
it removes the NOTRACK rules, and removes it only *after* the new agent's are back.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from nodecache.errors import HostNetworkError
from nodecache.hostnet.firewall import (Firewall, IptablesFirewall, all_backends,
                                        choose_firewall)
from nodecache.hostnet.rules import Rule, fallback_rules, notrack_rules

log = logging.getLogger(__name__)

#: kube-proxy's (iptables mode) chain for a ClusterIP's port, from ``iptables-save -t nat``.
_SERVICE_RULE = re.compile(r"^-A KUBE-SERVICES (?=.*?-d (?P<ip>[0-9a-f.:]+)/(?:32|128) )"
                           r"(?=.*?-p (?P<proto>tcp|udp) )(?=.*?--dport (?P<port>\d+) )"
                           r".*?-j (?P<chain>KUBE-SVC-\S+)")


def kube_proxy_chains(saved: Sequence[str], cluster_ip: str, port: int = 53) -> dict[str, str]:
    """kube-proxy's service chain for ``cluster_ip``:``port``, by protocol, from the ``-A``
    lines of the ``nat`` table (empty in IPVS mode, which has no such chains)."""
    out: dict[str, str] = {}
    for line in saved:
        m = _SERVICE_RULE.match(line)
        if m and m["ip"] == cluster_ip and int(m["port"]) == port:
            out.setdefault(m["proto"], m["chain"])
    return out


class Fallback:
    """Install and remove the fallback rules for ``local_ips``.

    :param local_ips: the link-local IPs to send on (not the kube-dns ClusterIP: with the
        agent's rules gone that one is kube-proxy's already).
    :param target_ip: the cluster DNS Service's ClusterIP.
    :param firewall: ``--firewall`` (``auto``: the iptables kubelet uses, as the agent picks).
    """

    def __init__(self, local_ips: Sequence[str], target_ip: str, *, firewall: str = "auto",
                 dns_port: int = 53, lock_wait: int = 5) -> None:
        self.local_ips = tuple(local_ips)
        self.target_ip = target_ip
        self.firewall = firewall
        self.dns_port = dns_port
        self.lock_wait = lock_wait
        #: The agent's NOTRACK rules for pods' queries: while any is there, it serves.
        self._agent_comments = {r.comment for r in notrack_rules(local_ips, dns_port)
                                if r.chain == "PREROUTING"}
        self._family = 6 if ":" in target_ip else 4
        #: The backend holding the fallback, once installed.
        self._fw: Firewall | None = None

    def rules(self, fw: Firewall) -> tuple[Rule, ...]:
        """The rules for backend ``fw``, pointed where kube-proxy serves the ClusterIP now."""
        jumps: dict[str, str] = {}
        if isinstance(fw, IptablesFirewall):
            jumps = kube_proxy_chains(fw.saved_rules(self._family, "nat"), self.target_ip)
        return fallback_rules(self.local_ips, self.target_ip, self.dns_port, jumps)

    def install(self) -> int:
        """Put the fallback in (inert until the agent's NOTRACK rules go); return rules added."""
        fw = choose_firewall(self.firewall, {self._family}, self.lock_wait)
        if not isinstance(fw, IptablesFirewall):
            raise HostNetworkError(f"the fallback needs iptables; {fw.name} has no nat rules here")
        rules = self.rules(fw)
        added = fw.ensure(rules)
        self._fw = fw
        via = rules[0].target if rules and rules[0].target != "DNAT" else f"DNAT {self.target_ip}"
        log.info("fallback for %s via %s (%d rules added)", ",".join(self.local_ips), via, added)
        return added

    def agent_rules_present(self) -> bool:
        """Whether some agent's NOTRACK rules for the local IPs are in place (any backend)."""
        families = {6 if ":" in ip else 4 for ip in self.local_ips}
        for fw in all_backends(self.lock_wait):
            try:
                if self._agent_comments & set(fw.present(families)):
                    return True
            except HostNetworkError as exc:
                log.warning("reading %s: %s", fw.name, exc)
        return False

    def remove(self) -> int:
        """Take the fallback out (found by comment, wherever it pointed); return rules removed."""
        fw = self._fw or choose_firewall(self.firewall, {self._family}, self.lock_wait)
        self._fw = None
        if not isinstance(fw, IptablesFirewall):
            return 0  # never installed there (nftables' remove drops the agent's whole table)
        return fw.remove(fallback_rules(self.local_ips, self.target_ip, self.dns_port))
