"""Generated zones for the cluster DNS, and the query lists the scenarios send.

``cluster.local`` looks like what CoreDNS's kubernetes plugin serves: ClusterIP
services (A + SRV), headless services (one A per endpoint, per-endpoint names,
SRV per endpoint), pod names ``a-b-c-d.<ns>.pod.cluster.local`` (a wildcard, so
any number of distinct names exists for the miss and memory scenarios), and the
reverse zone ``10.in-addr.arpa`` with a PTR for every service and endpoint
address. ``example.com/net/org`` stand in for the names a pod looks up outside
the cluster (the ``.`` block's upstream).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

EXTERNAL_ZONES = ("example.com", "example.net", "example.org")
#: One service in this many is headless.
HEADLESS_EVERY = 10
#: Endpoints per headless service.
ENDPOINTS = 3


def _ns_name(k: int) -> str:
    return ("default", "kube-system")[k] if k < 2 else f"ns-{k}"


def _ip(base: int, n: int) -> str:
    """The n-th host address in 10.<base>.0.0/16, skipping .0 and .255."""
    if n >= 254 * 256:
        raise ValueError("too many addresses for one /16")
    return f"10.{base}.{n // 254}.{n % 254 + 1}"


def _ptr(ip: str) -> str:
    return ".".join(reversed(ip.split("."))) + ".in-addr.arpa."


@dataclass
class ClusterZone:
    """What the generator produced: zone files and the names in them, by kind."""

    services: int
    ttl: int
    zone_files: dict[str, Path] = field(default_factory=dict)
    service_a: list[str] = field(default_factory=list)
    service_srv: list[str] = field(default_factory=list)
    headless_a: list[str] = field(default_factory=list)
    ptr: list[str] = field(default_factory=list)
    records: int = 0


def generate(out: Path, *, services: int, ttl: int) -> ClusterZone:
    """Write ``cluster.local``, ``10.in-addr.arpa`` and the external zones into *out*."""
    z = ClusterZone(services=services, ttl=ttl)
    n_ns = max(2, services // 100)
    soa = "ns.dns.cluster.local. hostmaster.cluster.local. 1 7200 1800 86400 {neg}"
    fwd = [
        "$ORIGIN cluster.local.",
        f"$TTL {ttl}",
        f"@ SOA {soa.format(neg=ttl)}",
        "@ NS ns.dns",
        "ns.dns A 10.96.0.10",
        "kube-dns.kube-system.svc A 10.96.0.10",
        # Pod records exist for any a-b-c-d.<ns> name in Kubernetes.
        "*.pod A 10.244.255.254",
    ]
    rev = ["$ORIGIN 10.in-addr.arpa.", f"$TTL {ttl}", f"@ SOA {soa.format(neg=ttl)}",
           "@ NS ns.dns.cluster.local."]
    endpoint = 0
    for i in range(services):
        ns = _ns_name(i % n_ns)
        if i % HEADLESS_EVERY == HEADLESS_EVERY - 1:
            name = f"hl-{i}.{ns}.svc"
            for _ in range(ENDPOINTS):
                ip = _ip(244, endpoint)
                ep = f"ep-{endpoint}.{name}"
                fwd += [f"{name} A {ip}", f"{ep} A {ip}",
                        f"_http._tcp.{name} SRV 0 {100 // ENDPOINTS} 80 {ep}"]
                rev.append(f"{_ptr(ip)} PTR {ep}.cluster.local.")
                z.headless_a.append(f"{ep}.cluster.local")
                z.ptr.append(_ptr(ip).rstrip("."))
                endpoint += 1
            z.headless_a.append(f"{name}.cluster.local")
            z.service_srv.append(f"_http._tcp.{name}.cluster.local")
        else:
            name = f"svc-{i}.{ns}.svc"
            ip = _ip(100, i)
            fwd += [f"{name} A {ip}", f"_http._tcp.{name} SRV 0 100 80 {name}"]
            rev.append(f"{_ptr(ip)} PTR {name}.cluster.local.")
            z.service_a.append(f"{name}.cluster.local")
            z.service_srv.append(f"_http._tcp.{name}.cluster.local")
            z.ptr.append(_ptr(ip).rstrip("."))
    out.mkdir(parents=True, exist_ok=True)
    files = {"cluster.local": fwd, "10.in-addr.arpa": rev}
    for ext in EXTERNAL_ZONES:
        files[ext] = [f"$ORIGIN {ext}.", f"$TTL {ttl}",
                      f"@ SOA ns.{ext}. hostmaster.{ext}. 1 7200 1800 86400 {ttl}",
                      f"@ NS ns.{ext}.", "ns A 192.0.2.53", "www A 192.0.2.80",
                      "* A 192.0.2.1"]
    for zone, lines in files.items():
        path = out / f"{zone}.zone"
        path.write_text("\n".join(lines) + "\n")
        z.zone_files[zone] = path
        z.records += sum(1 for l in lines if not l.startswith("$"))
    return z


def cluster_queries(z: ClusterZone, count: int, seed: int = 1) -> list[str]:
    """*count* distinct (name, type) queries in the mix pods send: mostly service A.

    70 % service A, 15 % SRV, 10 % headless A, 5 % PTR (fewer if a kind runs out).
    """
    rng = random.Random(seed)
    pools = [(0.70, z.service_a, "A"), (0.15, z.service_srv, "SRV"),
             (0.10, z.headless_a, "A"), (0.05, z.ptr, "PTR")]
    out: list[str] = []
    for share, pool, qtype in pools:
        k = min(len(pool), round(count * share))
        out += [f"{n} {qtype}" for n in rng.sample(pool, k)]
    # Top up with service A records if rounding or a small zone left a gap.
    seen = set(out)
    rest = [f"{n} A" for n in z.service_a if f"{n} A" not in seen]
    out += rest[: max(0, count - len(out))]
    rng.shuffle(out)
    return out[:count]


def pod_names(tag: str, count: int) -> list[str]:
    """*count* distinct pod-record queries no earlier scenario asked for (wildcard answers)."""
    return [f"10-{i // 65536 % 256}-{i // 256 % 256}-{i % 256}.{tag}.pod.cluster.local A"
            for i in range(count)]


def external_names(count: int, tag: str) -> list[str]:
    """*count* distinct external host names (served by the wildcards in the example zones)."""
    return [f"{tag}-{i}.{EXTERNAL_ZONES[i % len(EXTERNAL_ZONES)]}" for i in range(count)]


def write_queries(path: Path, queries: list[str]) -> Path:
    path.write_text("\n".join(queries) + "\n")
    return path
