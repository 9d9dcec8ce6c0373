"""A generated sample cluster DNS: the records a small Kubernetes cluster would serve.

The names follow the Kubernetes DNS specification (kubernetes/dns
``docs/specification.md``): services are ``<svc>.<ns>.svc.<domain>``, named
ports are ``_<port>._<proto>.<svc>.<ns>.svc.<domain>`` SRV records, headless
services have one A record per ready endpoint plus ``<hostname>.<svc>...``
names, and pods are ``<a-b-c-d>.<ns>.pod.<domain>``. Reverse PTRs live in
``in-addr.arpa.``.

Nothing here does I/O; :func:`build_zones` returns plain ``dns.zone.Zone``
objects that :mod:`nodecache.sample.authority` answers from.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.name
import dns.zone

#: TTL of every positive record, s (CoreDNS's kubernetes plugin defaults to 5;
#: a longer one makes the cache in front visible in the demo).
RECORD_TTL = 30  # s
#: SOA MINIMUM, which with the SOA TTL bounds negative caching (RFC 2308 section 5).
NEGATIVE_TTL = 5  # s
#: SOA timers as the kubernetes plugin writes them: refresh, retry, expire.
SOA_TIMERS = (7200, 1800, 86400)  # s
#: The cluster's service CIDR: kubernetes.default gets .1, kube-dns .10.
SERVICE_NET = ipaddress.IPv4Network("10.96.0.0/12")
#: Pod CIDR.
POD_NET = ipaddress.IPv4Network("10.244.0.0/16")
REVERSE_ZONE = "in-addr.arpa."


@dataclass(frozen=True)
class SampleService:
    """One Service in the sample cluster."""

    name: str
    namespace: str
    #: ClusterIP, or None for a headless service.
    cluster_ip: str | None
    #: (port name, protocol "tcp"/"udp", port number) for SRV records.
    ports: tuple[tuple[str, str, int], ...] = ()
    #: Headless only: (hostname, pod IP) of each ready endpoint.
    endpoints: tuple[tuple[str, str], ...] = ()
    #: ExternalName services are a CNAME to this name.
    external_name: str | None = None


@dataclass(frozen=True)
class SampleCluster:
    """The objects a sample zone is generated from."""

    domain: str
    services: tuple[SampleService, ...]
    #: (namespace, pod IP) of every pod with a pod A record.
    pods: tuple[tuple[str, str], ...] = field(default=())


def sample_cluster(domain: str = "cluster.local", services: int = 8) -> SampleCluster:
    """The fixed core services plus ``services`` generated ones (at least the fixed ones).

    :param domain: The cluster domain, without trailing dot.
    :param services: How many services with a ClusterIP to create in total.
    """
    domain = domain.strip(".").lower()
    fixed = [
        SampleService("kubernetes", "default", "10.96.0.1", (("https", "tcp", 443),)),
        SampleService("kube-dns", "kube-system", "10.96.0.10",
                      (("dns", "udp", 53), ("dns-tcp", "tcp", 53), ("metrics", "tcp", 9153))),
        SampleService("web", "default", "10.96.0.20", (("http", "tcp", 80), ("https", "tcp", 443))),
        SampleService("api", "default", "10.96.0.21", (("grpc", "tcp", 8443),)),
        SampleService("redis", "cache", "10.96.0.30", (("redis", "tcp", 6379),)),
    ]
    generated = []
    for i in range(max(0, services - len(fixed))):
        ip = str(SERVICE_NET.network_address + 257 + i)  # 10.96.1.1 onwards
        generated.append(SampleService(f"svc-{i}", "apps", ip, (("http", "tcp", 8080),)))
    headless = SampleService(
        "db", "default", None, (("postgres", "tcp", 5432),),
        endpoints=tuple((f"db-{i}", f"10.244.1.{10 + i}") for i in range(3)))
    external = SampleService("search", "default", None, external_name="example.com.")
    pods = tuple(("default", f"10.244.1.{10 + i}") for i in range(3)) + tuple(
        ("default", f"10.244.2.{i}") for i in range(2, 6))
    return SampleCluster(domain, tuple(fixed + generated) + (headless, external), pods)


def _reverse(ip: str) -> str:
    return ipaddress.ip_address(ip).reverse_pointer + "."


def zone_texts(cluster: SampleCluster) -> dict[str, str]:
    """Master-file text of the forward and reverse zones, keyed by absolute origin."""
    origin = cluster.domain + "."
    ns_name = f"ns.dns.{origin}"
    soa = (f"@ {RECORD_TTL} IN SOA {ns_name} hostmaster.{origin} 1 "
           f"{' '.join(map(str, SOA_TIMERS))} {NEGATIVE_TTL}")
    fwd = [soa, f"@ {RECORD_TTL} IN NS {ns_name}", f"{ns_name} {RECORD_TTL} IN A 10.96.0.10"]
    rev = [soa, f"@ {RECORD_TTL} IN NS {ns_name}"]
    ptrs: dict[str, str] = {}
    for svc in cluster.services:
        fqdn = f"{svc.name}.{svc.namespace}.svc.{origin}"
        if svc.external_name:
            fwd.append(f"{fqdn} {RECORD_TTL} IN CNAME {svc.external_name}")
            continue
        if svc.cluster_ip:
            fwd.append(f"{fqdn} {RECORD_TTL} IN A {svc.cluster_ip}")
            ptrs.setdefault(svc.cluster_ip, fqdn)
            targets = [fqdn]
        else:
            targets = []
            for host, ip in svc.endpoints:
                ep = f"{host}.{fqdn}"
                fwd.append(f"{fqdn} {RECORD_TTL} IN A {ip}")
                fwd.append(f"{ep} {RECORD_TTL} IN A {ip}")
                ptrs.setdefault(ip, ep)
                targets.append(ep)
        for port_name, proto, port in svc.ports:
            weight = 100 // max(1, len(targets))
            for target in targets:
                fwd.append(f"_{port_name}._{proto}.{fqdn} {RECORD_TTL} IN SRV "
                           f"0 {weight} {port} {target}")
    for namespace, ip in cluster.pods:
        pod = f"{ip.replace('.', '-')}.{namespace}.pod.{origin}"
        fwd.append(f"{pod} {RECORD_TTL} IN A {ip}")
        ptrs.setdefault(ip, pod)
    for ip, target in ptrs.items():
        rev.append(f"{_reverse(ip)} {RECORD_TTL} IN PTR {target}")
    return {origin: "\n".join(fwd) + "\n", REVERSE_ZONE: "\n".join(rev) + "\n"}


def build_zones(domain: str = "cluster.local", services: int = 8) -> dict[str, dns.zone.Zone]:
    """The sample forward zone and its ``in-addr.arpa.`` reverse zone.

    :param domain: The cluster domain (``cluster.local``).
    :param services: Services with a ClusterIP (the five fixed ones included).
    :returns: Zones keyed by absolute, lower-case origin text (``"cluster.local."``).
    """
    zones = {}
    for origin, text in zone_texts(sample_cluster(domain, services)).items():
        zones[origin] = dns.zone.from_text(text, origin=dns.name.from_text(origin),
                                           relativize=False, check_origin=True)
    return zones
