"""``python -m nodecache.sample`` runs standalone and answers over loopback."""
from __future__ import annotations

import re
import signal
import subprocess
import sys

import dns.message
import dns.query
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from nodecache.sample import ZoneAnswerer, build_zones, sample_cluster


def test_module_runs_and_answers() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "nodecache.sample", "--host", "127.0.0.1", "--port", "0",
         "--services", "12"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"on 127\.0\.0\.1:(\d+) ", line)
        assert match, line
        port = int(match.group(1))
        query = dns.message.make_query("svc-6.apps.svc.cluster.local.", "A")
        reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=3)
        assert reply.rcode() == dns.rcode.NOERROR and reply.answer
        reply = dns.query.tcp(query, "127.0.0.1", port=port, timeout=3)
        assert reply.answer[0][0].address == "10.96.1.7"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0


def test_services_count() -> None:
    cluster = sample_cluster(services=30)
    assert sum(1 for s in cluster.services if s.cluster_ip) == 30
    assert len({s.cluster_ip for s in cluster.services if s.cluster_ip}) == 30
    assert sum(1 for s in sample_cluster(services=0).services if s.cluster_ip) == 5


ANSWERER = ZoneAnswerer(build_zones(services=6))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_garbage_never_raises(data: bytes) -> None:
    reply = ANSWERER.answer(data, max_size=65535)
    if reply is not None:
        assert len(reply) >= 12 and reply[:2] == data[:2] and reply[2] & 0x80
