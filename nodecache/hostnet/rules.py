"""The NOTRACK/ACCEPT rules as data, built by one pure function.

Why these rules exist (NODELOCAL.md section 1.3, the node-local DNS KEP):

* ``raw`` NOTRACK on the way in (PREROUTING) and out (OUTPUT) keeps DNS packets
  to and from the local IPs out of conntrack. That is the whole point: no
  conntrack insert races (the 5 s timeouts), no full conntrack table, and for
  the kube-dns ClusterIP it is also *the switch*: an untracked packet never
  reaches kube-proxy's DNAT, so it lands on the node cache instead of kube-dns.
* ``filter`` ACCEPT in INPUT and OUTPUT, because the node's filter rules usually
  accept only tracked (``ESTABLISHED``) traffic, which untracked packets are not.
* OUTPUT NOTRACK with ``--dport`` covers locally generated queries (hostNetwork
  pods, kubernetes/dns#318); the health-port pair covers the kubelet's probe.

The guard's fallback (:func:`fallback_rules`, used by
:mod:`nodecache.hostnet.fallback`) is data of the same kind, in ``nat``.

Each rule carries a comment that names nodecache and says exactly which rule
it is, so the comment alone identifies the rule in ``iptables-save`` or
``nft list`` output: that is how the backends find, count and delete ours.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

#: Every comment starts with this; rules carrying it belong to nodecache.
COMMENT_PREFIX = "nodecache:"

#: nftables: the one table we own (family ``inet`` holds IPv4 and IPv6 rules together).
NFT_TABLE = "nodecache"

#: nftables chain for each (iptables table, chain), with its hook and priority:
#: the iptables ``raw`` table sits at priority -300 ("raw"), ``filter`` at 0 ("filter").
NFT_CHAINS: dict[tuple[str, str], tuple[str, str, str]] = {
    ("raw", "PREROUTING"): ("prerouting", "prerouting", "raw"),
    ("raw", "OUTPUT"): ("output_raw", "output", "raw"),
    ("filter", "INPUT"): ("input", "input", "filter"),
    ("filter", "OUTPUT"): ("output", "output", "filter"),
}


@dataclass(frozen=True)
class Rule:
    """One firewall rule for one local IP."""

    #: ``raw`` or ``filter``.
    table: str
    #: ``PREROUTING``, ``INPUT`` or ``OUTPUT``.
    chain: str
    #: ``udp`` or ``tcp``.
    proto: str
    #: The local IP, as text (compressed form for IPv6).
    ip: str
    port: int
    #: True: match destination IP and port (``-d``/``--dport``); False: source (replies).
    to_ip: bool
    #: ``NOTRACK``, ``ACCEPT``, ``DNAT`` or a chain to jump to (the guard's fallback).
    target: str
    #: What the rule is for, in a few words (goes into the comment).
    why: str
    #: ``DNAT`` only: the new destination, ``IP:PORT`` (``[IP]:PORT`` for IPv6).
    to: str = ""

    @property
    def family(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.ip else 4

    @property
    def comment(self) -> str:
        """Unique per rule: prefix, purpose and the rule's own match, e.g.
        ``nodecache: skip conntrack: PREROUTING udp to 169.254.20.10 port 53``."""
        way = "to" if self.to_ip else "from"
        return (f"{COMMENT_PREFIX} {self.why}: {self.chain} {self.proto} {way} {self.ip}"
                f" port {self.port}")

    def iptables_spec(self) -> list[str]:
        """Arguments after ``-I CHAIN`` / ``-C CHAIN`` / ``-D CHAIN``."""
        plen = 128 if self.family == 6 else 32
        addr, port = ("-d", "--dport") if self.to_ip else ("-s", "--sport")
        return ["-p", self.proto, addr, f"{self.ip}/{plen}", port, str(self.port),
                "-m", "comment", "--comment", self.comment, "-j", self.target,
                *(["--to-destination", self.to] if self.to else [])]

    def iptables_restore_line(self, op: str = "-I") -> str:
        """The rule as an ``iptables-restore`` line; ``-I`` inserts at the top of the chain."""
        words = [op, self.chain, *(["1"] if op == "-I" else []), *self.iptables_spec()]
        return " ".join(f'"{w}"' if " " in w else w for w in words)

    @property
    def nft_chain(self) -> str:
        return NFT_CHAINS[(self.table, self.chain)][0]

    def nft_rule(self) -> str:
        """The rule as an nftables rule body for a chain of the ``inet`` table."""
        l3 = "ip6" if self.family == 6 else "ip"
        way = "daddr" if self.to_ip else "saddr"
        pway = "dport" if self.to_ip else "sport"
        verdict = "notrack" if self.target == "NOTRACK" else "accept"
        return (f"{l3} {way} {self.ip} {self.proto} {pway} {self.port} {verdict}"
                f' comment "{self.comment}"')


def parse_local_ips(ips: Iterable[str]) -> tuple[str, ...]:
    """Validate and normalise local IPs (compressed text, order kept, duplicates dropped).

    IPv4 and IPv6 may be mixed (node-cache refuses that).

    :raises ValueError: an entry is empty or not an IP address.
    """
    out: list[str] = []
    for raw in ips:
        text = raw.strip()
        try:
            ip = str(ipaddress.ip_address(text))
        except ValueError:
            raise ValueError(f"invalid localip {raw!r}") from None
        if ip not in out:
            out.append(ip)
    return tuple(out)


#: node-cache's rules for one local IP, in its order: (table, chain, protocols,
#: port, matches the IP as destination (else as source), target, comment).
_RULE_TABLE: tuple[tuple[str, str, tuple[str, ...], str, bool, str, str], ...] = (
    # 1-2: queries arriving from pods skip conntrack (and so kube-proxy's DNAT).
    ("raw", "PREROUTING", ("tcp", "udp"), "dns", True, "NOTRACK", "skip conntrack"),
    # 3-4: let untracked queries in past "accept ESTABLISHED only" filters.
    ("filter", "INPUT", ("tcp", "udp"), "dns", True, "ACCEPT", "allow DNS traffic"),
    # 5-6: our replies skip conntrack.
    ("raw", "OUTPUT", ("tcp", "udp"), "dns", False, "NOTRACK", "skip conntrack"),
    # 7-8: and are let out.
    ("filter", "OUTPUT", ("tcp", "udp"), "dns", False, "ACCEPT", "allow DNS traffic"),
    # 9-10: queries from the node itself (hostNetwork pods), kubernetes/dns#318.
    ("raw", "OUTPUT", ("tcp", "udp"), "dns", True, "NOTRACK", "skip conntrack"),
    # 11-12: the kubelet's liveness probe to the health port, and its replies.
    ("raw", "OUTPUT", ("tcp",), "health", True, "NOTRACK", "skip conntrack for health"),
    ("raw", "OUTPUT", ("tcp",), "health", False, "NOTRACK", "skip conntrack for health"),
)


def notrack_rules(local_ips: Sequence[str], dns_port: int = 53,
                  health_port: int = 8080) -> tuple[Rule, ...]:
    """The 12 rules node-cache installs, for each local IP (NODELOCAL.md section 1.3).

    Pure: no I/O. The order is node-cache's; backends insert each at the top
    of its chain.
    """
    rules: list[Rule] = []
    for ip in parse_local_ips(local_ips):
        for table, chain, protos, port, to_ip, target, comment in _RULE_TABLE:
            for proto in protos:
                rules.append(Rule(table, chain, proto, ip, health_port if port == "health"
                                  else dns_port, to_ip, target, comment))
    return tuple(rules)


def fallback_rules(local_ips: Sequence[str], target_ip: str, dns_port: int = 53,
                   jumps: Mapping[str, str] | None = None) -> tuple[Rule, ...]:
    """The guard's stand-in while no agent serves: DNS to each local IP goes to the cluster DNS.

    ``nat`` PREROUTING catches pods' queries, ``nat`` OUTPUT the node's own (hostNetwork).
    Pure: no I/O. The rules are inert while the agent's NOTRACK rules are in place (an
    untracked packet never reaches ``nat``), so they may overlap the agent's in both ways.

    :param target_ip: the cluster DNS Service's ClusterIP (port 53); local IPs of the
        other family are left out.
    :param jumps: kube-proxy's chain for that ClusterIP, by protocol (iptables mode):
        the rule jumps there instead of a DNAT, because a packet is NATed once and a
        DNAT to the ClusterIP would never meet kube-proxy's own DNAT.
    """
    target = ipaddress.ip_address(target_ip)
    to = f"[{target}]:53" if target.version == 6 else f"{target}:53"
    rules: list[Rule] = []
    for ip in parse_local_ips(local_ips):
        if ipaddress.ip_address(ip).version != target.version:
            continue
        for chain in ("PREROUTING", "OUTPUT"):
            for proto in ("tcp", "udp"):
                jump = (jumps or {}).get(proto)
                rules.append(Rule("nat", chain, proto, ip, dns_port, True, jump or "DNAT",
                                  "fallback to the cluster DNS", "" if jump else to))
    return tuple(rules)
