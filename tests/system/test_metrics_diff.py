"""Differential: node-cache and nodecache scraped after the same Corefile and traffic.

Both run in one network namespace the test creates, in front of the same Knot
(``example.``), each bound to its own loopback address with the same Corefile
(node-cache's shape: a ``force_tcp`` block with ``health``, a ``.`` block over
UDP, both with ``cache``, ``errors``, ``loop``, ``prometheus``). The same
queries go to each over UDP and TCP: misses then hits, NODATA, a REFUSED
from Knot, DO queries. Then both ``/metrics`` are compared: every family
node-cache exports exists in ours with the same type and label names; for the
DNS, cache and plugin families the label values and the counts are equal; the
size histograms have the same buckets and the same counts in each.

The reference binary comes from :mod:`tests.refnodecache`.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import dns.message
import dns.query
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.kit import netns, refnodecache
from tests.kit import reliabilitykit as kit

pytestmark = pytest.mark.privileged

REFERENCE, OURS = "127.0.0.10", "127.0.0.11"
PORT, METRICS, HEALTH = 5391, 9391, 8391

#: Families only one side can have: the Go runtime's against Python's, and
#: process counters Python's client does not read (network bytes of the process).
RUNTIME_ONLY = ("go_", "python_", "process_network_")
#: Families whose label values and counts must be equal after equal traffic.
COUNTED = ("coredns_dns_requests_total", "coredns_dns_responses_total",
           "coredns_dns_do_requests_total", "coredns_dns_request_size_bytes",
           "coredns_dns_response_size_bytes", "coredns_cache_hits_total",
           "coredns_cache_misses_total", "coredns_cache_requests_total",
           "coredns_cache_entries", "coredns_plugin_enabled",
           "coredns_health_request_failures_total", "coredns_panics_total",
           "coredns_reload_failed_total", "coredns_hosts_reload_timestamp_seconds",
           "coredns_forward_healthcheck_broken_total",
           "coredns_forward_max_concurrent_rejects_total")


def corefile(ip: str) -> str:
    return (f"example:{PORT} {{\n    errors\n    cache 30\n    reload\n    loop\n"
            f"    bind {ip}\n    forward . {kit.UPSTREAM_IP}:53 {{\n        force_tcp\n    }}\n"
            f"    prometheus {ip}:{METRICS}\n    health {ip}:{HEALTH}\n}}\n"
            # bufsize is a handler (in coredns_plugin_enabled), timeouts is not
            f".:{PORT} {{\n    errors\n    cache 30\n    reload\n    loop\n    bind {ip}\n"
            f"    bufsize 1232\n    timeouts {{\n        idle 30s\n    }}\n"
            f"    forward . {kit.UPSTREAM_IP}:53\n    prometheus {ip}:{METRICS}\n}}\n")


#: (name, type, over TCP, DNSSEC OK): each asked twice, so the second is a hit.
TRAFFIC = [(f"h{i}.example.", "A", i % 3 == 0, i % 4 == 0) for i in range(1, 9)] + [
    ("h1.example.", "AAAA", False, False),     # NODATA (denial)
    ("w.x.example.", "A", True, False),        # the wildcard
    ("elsewhere.test.", "A", False, False),    # Knot is not authoritative: REFUSED
    ("elsewhere.test.", "A", True, True),
]


def _traffic(server: str, traffic: Sequence[tuple[str, str, bool, bool]] | None = None,
             rounds: int = 2) -> list[str]:
    """Send ``traffic`` (TRAFFIC) ``rounds`` times to ``server``; the rcodes seen."""
    rcodes = []
    for _ in range(rounds):
        for name, rdtype, tcp, do in TRAFFIC if traffic is None else traffic:
            query = dns.message.make_query(name, rdtype, want_dnssec=do, use_edns=0 if do else False)
            ask = dns.query.tcp if tcp else dns.query.udp
            rcodes.append(dns.rcode.to_text(ask(query, server, timeout=3, port=PORT).rcode()))
    return rcodes


def _scrape(ip: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:{METRICS}/metrics", timeout=5) as r:
        return r.read().decode()


def _wait_health_checks(ip: str, count: int) -> None:
    """Until the health self-check has run ``count`` times (it runs every second)."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for family in text_string_to_metric_families(_scrape(ip)):
            if family.name == "coredns_health_request_duration_seconds":
                done = [s.value for s in family.samples if s.name.endswith("_count")]
                if done and done[0] >= count:
                    return
        time.sleep(0.2)
    raise AssertionError(f"the health self-check of {ip} did not run {count} times")


def _wait_loop_probes(ip: str, zones: Sequence[str] = ("example.", ".")) -> None:
    """Until each zone's ``loop`` probe (an HINFO query to itself) has been counted.

    CoreDNS counts HINFO under ``type="other"``; the traffic here asks no such type.

    node-cache sends its probe when the listener answers, which can be a second after
    start (the first try is refused and retried); its reply is stored in the cache,
    through the first address. Traffic sent before it would see a different cache size.
    """
    deadline = time.monotonic() + 40  # the loop plugin stops probing after 30 s
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for family in text_string_to_metric_families(_scrape(ip)):
            if family.name == "coredns_dns_requests":
                seen = {s.labels["zone"] for s in family.samples
                        if s.labels.get("type") == "other" and s.value >= 1}
        if seen >= set(zones):
            return
        time.sleep(0.2)
    raise AssertionError(f"the loop probes of {ip} were not counted: {sorted(seen)} of {zones}")


Samples = dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]


def parse(text: str, server: str | dict[str, str]) -> tuple[dict[str, str], Samples]:
    """(family -> type, family -> {(sample name, labels): value}).

    ``server`` labels are renamed: one given as a string to "S", or as the mapping says.
    """
    rename = server if isinstance(server, dict) else {server: "S"}
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        into = samples.setdefault(family.name, {})
        for s in family.samples:
            labels = tuple(sorted((k, rename.get(v, v) if k == "server" else v)
                                  for k, v in s.labels.items()))
            into[(s.name, labels)] = s.value
    return types, samples


@contextlib.contextmanager
def _pair(tmp_path: Path, make_corefile: Callable[[Sequence[str]], str],
          addresses: dict[str, Sequence[str]]) -> Iterator[str]:
    """node-cache and nodecache, each on its ``addresses``, in front of one Knot."""
    binary = refnodecache.unpack(tmp_path)
    netns.sweep_stale()
    with netns.namespace("mdiff") as ns:
        netns.run(ns, "ip", "addr", "add", f"{kit.UPSTREAM_IP}/32", "dev", "lo")
        with kit.knot(ns, tmp_path / "knot"):
            procs: list[subprocess.Popen[bytes]] = []
            try:
                for name, ips in addresses.items():
                    conf = tmp_path / f"Corefile.{name}"
                    conf.write_text(make_corefile(ips))
                    out = open(tmp_path / f"{name}.log", "ab")
                    if name == "reference":
                        procs.append(netns.popen(
                            ns, *refnodecache.serving_argv(binary, ",".join(ips), conf,
                                                           f"{ips[0]}:9392"),
                            stdout=out, stderr=out, env=refnodecache.ENV))
                    else:
                        procs.append(netns.python(
                            ns, "-m", "nodecache", "run", "--conf", str(conf),
                            "--localip", ",".join(ips),
                            "-setupinterface=false", "-setupiptables=false",
                            "-skipteardown", background=True,
                            stdout=out, stderr=subprocess.STDOUT))
                    out.close()
                for ips, proc in zip(addresses.values(), procs):
                    for ip in ips:
                        kit.wait_answering(ns, ip, PORT, "h1.example.", proc=proc)
                    netns.call(ns, _wait_loop_probes, ips[0], timeout=60)
                yield ns
            finally:
                for proc in procs:
                    kit.stop(proc)


@pytest.fixture
def both(tmp_path: Path):  # type: ignore[no-untyped-def]
    with _pair(tmp_path, lambda ips: corefile(ips[0]),
               {"reference": [REFERENCE], "ours": [OURS]}) as ns:
        yield ns, tmp_path


def test_same_families_labels_and_counts(both: tuple[str, Path]) -> None:
    ns, tmp = both
    results = {}
    for ip in (REFERENCE, OURS):
        # wait_answering asked each for h1.example. alike before this.
        rcodes = netns.call(ns, _traffic, ip, timeout=60)
        assert "NOERROR" in rcodes and "REFUSED" in rcodes, rcodes
        netns.call(ns, _wait_health_checks, ip, 2, timeout=30)
        results[ip] = netns.call(ns, _scrape, ip, timeout=30)
    (tmp / "reference.metrics").write_text(results[REFERENCE])
    (tmp / "ours.metrics").write_text(results[OURS])
    _compare(parse(results[REFERENCE], f"dns://{REFERENCE}:{PORT}"),
             parse(results[OURS], f"dns://{OURS}:{PORT}"))


#: Two addresses in one block, as the iptables-mode template binds (node-local and
#: the kube-dns Service's address): CoreDNS labels each with its own ``server``.
TWO = {"reference": ("127.0.0.10", "127.0.0.20"), "ours": ("127.0.0.11", "127.0.0.21")}


def two_address_corefile(ips: Sequence[str]) -> str:
    bind = " ".join(ips)
    return (f"example:{PORT} {{\n    errors\n    cache 30\n    reload\n    loop\n"
            f"    bind {bind}\n    forward . {kit.UPSTREAM_IP}:53 {{\n        force_tcp\n"
            f"    }}\n    prometheus {ips[0]}:{METRICS}\n    health {ips[0]}:{HEALTH}\n}}\n"
            f".:{PORT} {{\n    errors\n    cache 30\n    reload\n    loop\n    bind {bind}\n"
            f"    forward . {kit.UPSTREAM_IP}:53\n    prometheus {ips[0]}:{METRICS}\n}}\n")


def test_two_bind_addresses_count_per_address(tmp_path: Path) -> None:
    """Each address's queries under its own ``server``, hits of the shared cache too."""
    results = {}
    with _pair(tmp_path, two_address_corefile, TWO) as ns:
        for name, (first, second) in TWO.items():
            # The whole TRAFFIC twice to the first address; to the second, a part
            # once (hits of what the first stored) and names of its own (misses).
            rcodes = netns.call(ns, _traffic, first, timeout=60)
            rcodes += netns.call(ns, _traffic, second, TRAFFIC[:5] + EXTRA, 1, timeout=60)
            assert "NOERROR" in rcodes and "REFUSED" in rcodes, rcodes
            netns.call(ns, _wait_health_checks, first, 2, timeout=30)
            results[name] = netns.call(ns, _scrape, first, timeout=30)
            (tmp_path / f"{name}.metrics").write_text(results[name])
    labels = {name: {f"dns://{ip}:{PORT}": f"S{i}" for i, ip in enumerate(ips)}
              for name, ips in TWO.items()}
    ref, ours = parse(results["reference"], labels["reference"]), \
        parse(results["ours"], labels["ours"])
    for server in ("S0", "S1"):
        assert any(dict(k[1]).get("server") == server
                   for k in ref[1]["coredns_dns_requests"]), (server, ref[1])
    _compare(ref, ours)


#: Names only the second address is asked (misses there), each once.
EXTRA = [("s1.example.", "A", False, False), ("s2.example.", "A", True, False),
         ("s3.example.", "AAAA", False, True)]


def _compare(reference: tuple[dict[str, str], Samples],
             ours_parsed: tuple[dict[str, str], Samples]) -> None:
    """Every family of node-cache's with our types and label names; COUNTED ones equal."""
    ref_types, ref = reference
    our_types, ours = ours_parsed
    wanted = {f for f in ref_types if not f.startswith(RUNTIME_ONLY)}
    missing = sorted(wanted - set(our_types))
    assert not missing, f"families node-cache has and we lack: {missing}"
    for family in sorted(wanted):
        assert our_types[family] == ref_types[family], family
        ref_labels = {tuple(k for k, _ in labels) for _, labels in ref[family]}
        our_labels = {tuple(k for k, _ in labels) for _, labels in ours[family]}
        assert our_labels == ref_labels, f"{family}: label names {our_labels} != {ref_labels}"
    for family in (f.removesuffix("_total") for f in COUNTED):  # the parser's family names
        assert family in ref or family.startswith("coredns_cache_"), family
        if family == "coredns_dns_request_size_bytes":
            # The loop plugin's probe name is random, a few bytes longer or shorter.
            for key in [k for k in ref[family] if k[0].endswith("_sum")]:
                assert abs(ours[family].pop(key) - ref[family].pop(key)) <= 4, key
        elif family == "coredns_dns_response_size_bytes":
            # Replies differ in content (which records an uncached upstream answer
            # keeps): same buckets and counts, sums shown.
            for key in [k for k in ref[family] if k[0].endswith("_sum")]:
                print(f"[metrics-diff] {key}: node-cache {ref[family].pop(key):.0f} bytes, "
                      f"nodecache {ours[family].pop(key):.0f}")
        if family.startswith("coredns_cache_"):
            # CoreDNS creates a cache series on first use; ours exist from the start at 0.
            ours[family] = {k: v for k, v in ours.get(family, {}).items() if v}
        assert ours.get(family) == ref.get(family), \
            f"{family}:\n  node-cache {sorted(ref.get(family, {}).items())}\n" \
            f"  nodecache  {sorted(ours.get(family, {}).items())}"
    # Histograms of durations: the same buckets, the same number of observations.
    for family in ("coredns_dns_request_duration_seconds",
                   "coredns_health_request_duration_seconds",
                   "coredns_proxy_request_duration_seconds"):
        def shape(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]) \
                -> tuple[set[tuple[str, tuple[tuple[str, str], ...]]], dict[object, float]]:
            return ({k for k in samples if k[0].endswith("_bucket")},
                    {k: v for k, v in samples.items() if k[0].endswith("_count")})
        ref_buckets, ref_counts = shape(ref[family])
        our_buckets, our_counts = shape(ours[family])
        assert our_buckets == ref_buckets, family
        if family != "coredns_health_request_duration_seconds":  # that one: per second
            assert our_counts == ref_counts, family
