"""Real resolver clients in a pod, against nodecache, node-cache and the cluster DNS.

The topology is ``netns.node_and_pod``. The node namespace holds both node
caches, each on its own link-local address and each given the same Corefile,
and every upstream, on addresses of the node's ``lo``:

=============  =============================================================
169.254.20.10  nodecache
169.254.20.11  node-cache (``tests.refnodecache``)
10.96.0.11     Knot, authoritative for every zone below
10.96.0.12     the bench's delaying relay in front of Knot: 1 s each way
10.96.0.16     another one: 750 ms each way
10.96.0.13     silent: the node drops every packet to it
10.96.0.14     refused: nothing listens (TCP RST, ICMP port unreachable)
10.96.0.15     a relay with no delay, until a test kills it (kube-dns pods gone)
=============  =============================================================

Each failure mode is a cluster domain of its own (``slow.local``,
``refused.local``, ...), so one set of servers serves every case at once
and a pod's kubelet-style ``resolv.conf`` (ndots:5, three search domains)
walks the same names a pod of that cluster would. A client runs in the pod
namespace in a mount namespace of its own, with its ``resolv.conf`` bound over
``/etc/resolv.conf`` for that process only.

The clients (:data:`CLIENTS`) are glibc's and musl's ``getaddrinfo`` (one C
probe built twice), Go's pure resolver and dnspython; each times its own
look-up and prints ``STATUS SECONDS ADDRESS...``.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.kit import DATA as TESTDATA
from tests.kit import netns, refnodecache
from tests.kit import reliabilitykit as rkit

NODECACHE_IP = "169.254.20.10"
NODE_CACHE_IP = "169.254.20.11"
AUTH_IP = "10.96.0.11"
SLOW_IP = "10.96.0.12"
SLOWISH_IP = "10.96.0.16"
SILENT_IP = "10.96.0.13"
REFUSED_IP = "10.96.0.14"
FLAKY_IP = "10.96.0.15"
#: Relay address -> ms added in each direction: round trips of 2 s, 1.5 s and 0.
RELAYS = {SLOW_IP: 1000, SLOWISH_IP: 750, FLAKY_IP: 0}
#: TTL of the records that are let expire, s (also their cache's MINTTL).
SHORT_TTL = 1

DATA = TESTDATA / "clients"

#: Cluster domain -> (upstream, cache block body).
_CACHE = "success 9984 30\n        denial 9984 5"
_SHORT = f"success 9984 30 {SHORT_TTL}\n        denial 9984 5 {SHORT_TTL}"
DOMAINS = {
    "cluster.local": (AUTH_IP, _CACHE),
    "slow.local": (SLOW_IP, _CACHE),
    "slowish.local": (SLOWISH_IP, _CACHE),
    "refused.local": (REFUSED_IP, _CACHE),
    "silent.local": (SILENT_IP, _CACHE),
    "stale.local": (FLAKY_IP, _SHORT + "\n        serve_stale 1h"),
    "expired.local": (FLAKY_IP, _SHORT),
}

#: The servers a pod can be pointed at, by label; "direct" is the domain's upstream.
SERVERS = ("nodecache", "node-cache", "direct")


def addresses(n: int) -> list[str]:
    """The ``n`` A records of ``big<n>.default.svc.cluster.local``, in zone order."""
    return [f"10.{n}.{i // 256}.{i % 256}" for i in range(n)]


def _zone(domain: str, ttl: int, records: list[str]) -> str:
    head = [f"$ORIGIN {domain}.", f"$TTL {ttl}",
            f"@ SOA ns.{domain}. hostmaster.{domain}. 1 3600 600 86400 {ttl}",
            "@ NS ns", f"ns A {AUTH_IP}"]
    return "\n".join(head + records) + "\n"


ZONES = {
    "cluster.local.": _zone("cluster.local", 30, [
        "web.default.svc A 10.0.1.1", "db.other.svc A 10.0.2.1",
        *(f"big40.default.svc A {a}" for a in addresses(40)),
        *(f"big100.default.svc A {a}" for a in addresses(100))]),
    "slow.local.": _zone("slow.local", 30, ["web.default.svc A 10.0.3.1"]),
    "slowish.local.": _zone("slowish.local", 30, ["web.default.svc A 10.0.6.1"]),
    "stale.local.": _zone("stale.local", SHORT_TTL, ["web.default.svc A 10.0.4.1"]),
    "expired.local.": _zone("expired.local", SHORT_TTL, ["web.default.svc A 10.0.5.1"]),
}


def corefile(bind: str) -> str:
    """The Corefile both node caches run (with their own ``bind``), as node-local's blocks."""
    blocks = []
    for domain, (upstream, cache) in DOMAINS.items():
        blocks.append(f"{domain}:53 {{\n    errors\n    cache {{\n        {cache}\n    }}\n"
                      f"    bind {bind}\n    forward . {upstream} {{\n        force_tcp\n"
                      f"    }}\n}}\n")
    return "".join(blocks)


def resolv_conf(domain: str, nameserver: str) -> str:
    """What kubelet writes for a pod in namespace ``default`` (ClusterFirst)."""
    return (f"search default.svc.{domain} svc.{domain} {domain}\n"
            f"nameserver {nameserver}\noptions ndots:5\n")


# -- the clients --------------------------------------------------------------

@dataclass(frozen=True)
class Answer:
    """What one client got for one name."""

    status: str
    #: The client's own measure of its look-up, s.
    seconds: float
    addresses: tuple[str, ...]
    detail: str = ""


def build_clients(workdir: Path) -> dict[str, list[str]]:
    """Build the probes into ``workdir``; return client name -> command (without the name)."""
    workdir.mkdir(parents=True, exist_ok=True)
    source = DATA / "probe.c"
    glibc, musl, go = workdir / "probe-glibc", workdir / "probe-musl", workdir / "probe-go"
    _build(["gcc", "-O1", "-o", str(glibc), str(source)])
    _build(["musl-gcc", "-static", "-O1", "-o", str(musl), str(source)])
    # A program with no module dependencies builds offline, with a private cache.
    gobin = Path(sys.executable).with_name("go")
    env = dict(os.environ, GOCACHE=str(workdir / "gocache"), GOPATH=str(workdir / "gopath"),
               GOPROXY="off", GOFLAGS="", GOTOOLCHAIN="local", CGO_ENABLED="0")
    _build([str(gobin if gobin.exists() else "go"), "build", "-o", str(go),
            str(DATA / "probe.go")], env=env, cwd=workdir, timeout=600)
    return {"glibc": [str(glibc)], "musl": [str(musl)], "go": [str(go)],
            "dnspython": [sys.executable, "-m", "tests.kit.clientkit", "probe"]}


def _build(cmd: list[str], timeout: float = 120, env: dict[str, str] | None = None,
           cwd: Path | None = None) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{res.stdout}{res.stderr}")


#: Binds the resolv.conf in a private mount namespace, then runs the client.
_WITH_RESOLV_CONF = 'mount --bind "$1" /etc/resolv.conf && shift && exec "$@"'


def lookup(pod: str, command: list[str], conf: Path, name: str, timeout: float = 90) -> Answer:
    """Run one client in ``pod`` with ``conf`` as its ``/etc/resolv.conf``."""
    res = netns.run(pod, "unshare", "--mount", "--propagation", "private", "sh", "-c",
                    _WITH_RESOLV_CONF, "sh", str(conf), *command, name, check=False,
                    timeout=timeout, env=netns.python_env())
    line = res.stdout.strip().splitlines()[-1:] or [""]
    fields = line[0].split()
    if res.returncode != 0 or len(fields) < 2:
        raise AssertionError(f"{command[0]} {name}: exit {res.returncode}\n{res.stdout}{res.stderr}")
    return Answer(fields[0], float(fields[1]), tuple(sorted(fields[2:])), res.stderr.strip()[-200:])


def _probe(name: str) -> None:
    """The dnspython client: ``Resolver().resolve_name`` (A and AAAA), timed."""
    import dns.exception
    import dns.resolver

    start = time.monotonic()
    status, found, detail = "ok", [], ""
    try:
        found = list(dns.resolver.Resolver().resolve_name(name, search=True).addresses())
    except dns.resolver.NXDOMAIN:
        status = "nxdomain"
    except dns.exception.Timeout:
        status = "timeout"
    except dns.exception.DNSException as exc:
        status, detail = "fail", str(exc)
    print(f"{status} {time.monotonic() - start:.3f} {' '.join(found)}".rstrip())
    if detail:
        print(detail, file=sys.stderr)


# -- the servers ----------------------------------------------------------------

@dataclass
class Servers:
    topo: netns.NodePod
    relays: dict[str, subprocess.Popen[bytes]]

    def stop_flaky(self) -> None:
        """The upstream of ``stale.local`` and ``expired.local`` goes away: its
        connections close, new ones get RST and UDP an ICMP port unreachable."""
        rkit.stop(self.relays[FLAKY_IP], signal.SIGKILL)

    def nameserver(self, server: str, domain: str) -> str:
        if server == "nodecache":
            return NODECACHE_IP
        if server == "node-cache":
            return NODE_CACHE_IP
        return DOMAINS[domain][0]


@contextlib.contextmanager
def servers(workdir: Path) -> Iterator[Servers]:
    """Namespaces, Knot, the relay and both node caches, all removed on exit."""
    with netns.node_and_pod(routes_via_node=()) as topo:
        node = topo.node
        for ip in (NODECACHE_IP, NODE_CACHE_IP, AUTH_IP, SILENT_IP, REFUSED_IP,
                   *RELAYS):
            netns.run(node, "ip", "addr", "add", f"{ip}/32", "dev", "lo")
        rkit.iptables(node, "-A", "INPUT", "-d", SILENT_IP, "-j", "DROP")
        procs: list[subprocess.Popen[bytes]] = []
        try:
            with rkit.knot(node, workdir / "knot", ZONES, (AUTH_IP,),
                           "web.default.svc.cluster.local."):
                (workdir / "node-cache").mkdir(exist_ok=True)
                with refnodecache.node_cache(corefile(NODE_CACHE_IP), workdir / "node-cache",
                                             host=NODE_CACHE_IP, port=53, ns=node):
                    relays = [_relay(node, workdir, ip, ms) for ip, ms in RELAYS.items()]
                    procs += relays
                    conf = workdir / "Corefile.nodecache"
                    conf.write_text(corefile(NODECACHE_IP))
                    procs.append(rkit.start_agent(node, conf, log=workdir / "nodecache.log",
                                                  wait=False))
                    rkit.wait_answering(node, NODECACHE_IP, 53, "web.default.svc.cluster.local.",
                                        60, proc=procs[-1])
                    for ip, relay in zip(RELAYS, relays):
                        rkit.wait_answering(node, ip, 53, "web.default.svc.cluster.local.", 30,
                                            proc=relay, tries_time=4)
                    yield Servers(topo, dict(zip(RELAYS, relays)))
        finally:
            for proc in procs:
                rkit.stop(proc)


def _relay(node: str, workdir: Path, ip: str, delay_ms: int) -> subprocess.Popen[bytes]:
    env = netns.python_env({"PYTHONPATH": f"{netns.REPO_ROOT / 'bench'}:{netns.REPO_ROOT}"})
    log = open(workdir / f"relay-{ip}.log", "ab")
    with log:
        return netns.popen(node, sys.executable, "-m", "nodebench.relay", "--listen", ip,
                           "--upstream", AUTH_IP, "--delay-ms", str(delay_ms),
                           "--stats", str(workdir / f"relay-{ip}.json"), "--max-seconds", "600",
                           env=env, stdout=log, stderr=subprocess.STDOUT)


if __name__ == "__main__":
    if sys.argv[1] == "probe":
        _probe(sys.argv[2])
