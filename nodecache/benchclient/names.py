"""The sample of names: what a pod in this cluster would ask for.

Without API access the cluster DNS itself is the catalogue:

* every cluster has ``kubernetes.default`` and ``kube-dns.kube-system``, and
  their SRV records (``_https._tcp``, ``_dns._udp``);
* a PTR walk over the Service range (by default the /24s holding those two
  Service IPs) names the other services: the cluster DNS answers a PTR query
  for each Service IP with ``<svc>.<ns>.svc.<domain>`` (Kubernetes DNS
  specification, section 2.3.3); an SRV walk then asks each of them for a few
  common named ports (``_http._tcp`` and the like);
* an optional list of services (``name.namespace``) and a names file in
  dnsperf's format (``NAME TYPE`` per line, e.g. from a ConfigMap) add to it.

Misses are names no cache can hold: fresh pod names
``a-b-c-d.<ns>.pod.<domain>`` (answered by the cluster DNS's pod records, or
NXDOMAIN when those are disabled; either way a trip to the cluster DNS).
"""
from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.rdatatype

from nodecache.errors import ConfigError

#: (name, type): one query, name absolute without the trailing dot.
Query = tuple[str, str]


def well_known(domain: str) -> list[Query]:
    """Names every Kubernetes cluster serves."""
    return [
        (f"kubernetes.default.svc.{domain}", "A"),
        (f"kube-dns.kube-system.svc.{domain}", "A"),
        (f"_https._tcp.kubernetes.default.svc.{domain}", "SRV"),
        (f"_dns._udp.kube-dns.kube-system.svc.{domain}", "SRV"),
    ]


def service_queries(services: Iterable[str], domain: str) -> list[Query]:
    """``name.namespace`` (or a full ``name.namespace.svc.<domain>``) to A queries."""
    out = []
    for s in services:
        s = s.strip().rstrip(".")
        out.append((s if s.endswith(f".svc.{domain}") else f"{s}.svc.{domain}", "A"))
    return out


def parse_names_file(text: str, *, source: str = "<string>") -> list[Query]:
    """dnsperf's datafile format: ``NAME [TYPE]`` per line (TYPE defaults to A); ``#`` comments.

    :raises ConfigError: an unknown type, with its line.
    """
    out: list[Query] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        qtype = words[1].upper() if len(words) > 1 else "A"
        try:
            dns.rdatatype.from_text(qtype)
        except dns.rdatatype.UnknownRdatatype:
            raise ConfigError(f"unknown query type {words[1]!r} (expected NAME [TYPE])", source, lineno) from None
        out.append((words[0].rstrip("."), qtype))
    return out


def parse_lookups_file(text: str) -> list[str]:
    """One name per line, as an application writes it (``web.shop``, ``api.example.com``)."""
    return [w[0] for w in (line.split("#", 1)[0].split() for line in text.splitlines()) if w]


def ptr_walk(cidrs: Sequence[str], limit: int) -> list[Query]:
    """PTR queries for the host addresses of *cidrs*, at most *limit* of them."""
    out: list[Query] = []
    for cidr in cidrs:
        for ip in ipaddress.ip_network(cidr, strict=False).hosts():
            if len(out) >= limit:
                return out
            out.append((ip.reverse_pointer, "PTR"))
    return out


#: Named ports tried for each service found (``_<port>._<proto>.<svc>``, Kubernetes DNS
#: specification, section 2.3.1); the cluster DNS answers those the Service defines.
SRV_PORTS = ("_http._tcp", "_https._tcp", "_grpc._tcp", "_dns._udp")


def srv_walk(services: Sequence[str], domain: str, limit: int) -> list[Query]:
    """SRV queries for common named ports of each service (``svc.ns.svc.<domain>``), at most *limit*."""
    out: list[Query] = []
    for s in services:
        if short_service_name(s, domain) is None:
            continue
        for port in SRV_PORTS:
            if len(out) >= limit:
                return out
            out.append((f"{port}.{s}", "SRV"))
    return out


def default_walk(addresses: Iterable[str]) -> list[str]:
    """The /24 (IPv4) or /120 (IPv6) around each Service address, once each."""
    out: list[str] = []
    for a in addresses:
        ip = ipaddress.ip_address(a)
        net = str(ipaddress.ip_network(f"{ip}/{24 if ip.version == 4 else 120}", strict=False))
        if net not in out:
            out.append(net)
    return out


@dataclass
class Answers:
    """What the discovery queries found."""

    #: Queries answered NOERROR with at least one record.
    answered: list[Query] = field(default_factory=list)
    #: Addresses from A/AAAA answers.
    addresses: list[str] = field(default_factory=list)
    #: Names from PTR and SRV answers (absolute, no trailing dot).
    targets: list[str] = field(default_factory=list)


def read_answers(queries: Sequence[Query], answers: Sequence[bytes | None]) -> Answers:
    """Sort the answers to *queries* (same order; None where unanswered)."""
    out = Answers()
    for q, wire in zip(queries, answers):
        if wire is None:
            continue
        try:
            msg = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            continue
        if msg.rcode() != 0 or not msg.answer:
            continue
        out.answered.append(q)
        for rrset in msg.answer:
            for rd in rrset:
                if rd.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    if rd.address not in out.addresses:
                        out.addresses.append(rd.address)
                elif rd.rdtype in (dns.rdatatype.PTR, dns.rdatatype.SRV):
                    name = rd.target.to_text().rstrip(".")
                    if name not in out.targets:
                        out.targets.append(name)
    return out


def short_service_name(fqdn: str, domain: str) -> str | None:
    """``web.shop`` for ``web.shop.svc.<domain>``; None for other names."""
    suffix = f".svc.{domain}"
    if not fqdn.endswith(suffix):
        return None
    head = fqdn[: -len(suffix)]
    return head if head.count(".") == 1 else None


def fresh_pod_names(count: int, namespace: str, domain: str, rng: random.Random) -> list[Query]:
    """*count* distinct pod names in 10.0.0.0/8 that no cache is likely to hold."""
    picks = rng.sample(range(1 << 24), count)
    return [(f"10-{n >> 16}-{n >> 8 & 255}-{n & 255}.{namespace}.pod.{domain}", "A") for n in picks]


def dedupe(queries: Iterable[Query]) -> list[Query]:
    seen: set[Query] = set()
    out = []
    for q in queries:
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out
