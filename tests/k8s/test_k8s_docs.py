"""docs/metrics.md and docs/deploy.md agree with the code and the manifests."""
from __future__ import annotations

import pathlib
import re

from tests.kit import ROOT


METRICS_DOC = (ROOT / "docs" / "metrics.md").read_text()
DEPLOY_DOC = (ROOT / "docs" / "deploy.md").read_text()

#: The names the issue asks for, CoreDNS-compatible.
REQUIRED = {
    "coredns_dns_requests_total", "coredns_dns_responses_total", "coredns_dns_request_duration_seconds",
    "coredns_cache_entries", "coredns_cache_hits_total", "coredns_cache_misses_total",
    "coredns_cache_prefetch_total", "coredns_cache_served_stale_total", "coredns_cache_evictions_total",
    "coredns_forward_requests_total", "coredns_forward_responses_total",
    "coredns_forward_request_duration_seconds", "coredns_forward_healthcheck_failures_total",
    "coredns_forward_max_concurrent_rejects_total", "coredns_nodecache_setup_errors_total",
}


def _exported() -> set[str]:
    from nodecache import metrics

    source = pathlib.Path(metrics.__file__).read_text()
    return set(re.findall(r'"(coredns_[a-z_]+)"', source))


def _documented() -> set[str]:
    return set(re.findall(r"`(coredns_[a-z_]+)`", METRICS_DOC))


def test_metrics_doc_matches_the_exporter() -> None:
    exported = _exported()
    documented = _documented()
    assert REQUIRED <= documented
    assert exported - documented == set(), "exported but not documented"
    assert documented - exported == set(), "documented but not exported"


def test_setup_error_types_documented() -> None:
    from nodecache.metrics import SETUP_ERROR_TYPES

    for errortype in SETUP_ERROR_TYPES:
        assert f"| `{errortype}` |" in METRICS_DOC, errortype


def test_deploy_doc_ports_match_the_daemonset() -> None:
    # The DaemonSet declares no ports (hostNetwork would make them hostPorts);
    # what the pod listens on is what the Corefile template says.
    template = (ROOT / "Corefile.nodelocal").read_text()
    numbers = {int(n) for n in re.findall(r":(\d+)\b", template)}
    assert numbers >= {53, 9253, 8099, 8181}
    for number in numbers:
        assert re.search(rf"^\| {number}( UDP/TCP| TCP)", DEPLOY_DOC, re.M), number
    for overlay in ("iptables", "ipvs"):
        assert f"kubectl apply -k manifests/{overlay}" in DEPLOY_DOC
