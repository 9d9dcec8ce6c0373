"""Upstream faults under load: the agent stays up and never answers wrongly.

Each test runs the agent (``nodecache run``) and a paced load client in a
"node" namespace and a real upstream (Knot DNS, or a fault-injecting fake) in
another, then breaks the upstream or the path while 2,000 queries/s flow. Every
query is accounted for (``reliabilitykit.Counts``): correct, stale (serve_stale),
SERVFAIL, wrong, lost. In every case:

* ``wrong == 0`` and ``lost == 0``: a client gets a correct answer, a stale
  one, or SERVFAIL - never silence and never someone else's data;
* a SERVFAIL comes within the forward budget (3.5 s) plus scheduling slack;
* the agent is still running afterwards, and once the fault ends every query
  is answered correctly again within a few seconds.
"""
from __future__ import annotations

import concurrent.futures
import signal
import time
from pathlib import Path

import pytest

from nodecache.config.settings import ForwardSettings
from tests.kit import netns
from tests.kit import reliabilitykit as kit

pytestmark = pytest.mark.privileged

RATE = int(__import__("os").environ.get("REL_RATE", "2000"))  # queries/s
DURATION = 6.0  # s
BUDGET = ForwardSettings.budget  # s


def run_with_faults(topo: netns.NodePod, faults: list[tuple[float, object]], *,
                    duration: float = DURATION, tcp: bool = False,
                    hot_share: int = 8, rate: int = RATE) -> kit.Counts:
    """Load the agent in the node namespace; call each fault at its offset (s) into the run."""
    start_at = time.time() + 1.0
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(netns.call, topo.node, _load, start_at, duration, tcp, hot_share,
                             rate, timeout=duration + 30)
        for offset, action in sorted(faults, key=lambda f: f[0]):
            time.sleep(max(0.0, start_at + offset - time.time()))
            action()  # type: ignore[operator]
        return future.result()


def _load(start_at: float, duration: float, tcp: bool, hot_share: int,
          rate: int) -> kit.Counts:
    return kit.load("127.0.0.1", 53, rate=rate, duration=duration, start_at=start_at,
                    timeout=BUDGET + 1.5, tcp=tcp, hot_share=hot_share)


def check(name: str, counts: kit.Counts, agent: object, *, recovered_from: int | None) -> None:
    kit.report(name, counts)
    assert counts.sent == sum(s[0] for s in counts.seconds) > 0
    assert counts.wrong == 0, counts.wrong_samples
    assert counts.lost == 0, counts.summary()
    assert counts.correct + counts.stale + counts.servfail + counts.refused == counts.sent
    assert counts.servfail_max <= BUDGET + 1.0, counts.summary()
    assert agent.poll() is None, "the agent exited"  # type: ignore[attr-defined]
    if recovered_from is not None:
        assert counts.ok_from(recovered_from), counts.seconds


@pytest.fixture
def node(tmp_path: Path):  # type: ignore[no-untyped-def]
    with netns.node_and_pod(routes_via_node=()) as topo:
        yield topo


def agent_for(topo: netns.NodePod, tmp_path: Path, upstream: str, **corefile: str):
    conf = tmp_path / "Corefile"
    conf.write_text(kit.corefile(upstream, **corefile))
    return kit.start_agent(topo.node, conf, log=tmp_path / "agent.log")


def test_upstream_killed_under_load_and_restarted(node: netns.NodePod, tmp_path: Path) -> None:
    """Knot is SIGKILLed 1 s in and restarted 7 s in (down longer than the 5 s budget)."""
    with kit.knot(node.pod, tmp_path / "knot") as server:
        agent = agent_for(node, tmp_path, f"{kit.UPSTREAM_IP}:53")
        try:
            counts = run_with_faults(node, [(1.0, server.kill), (7.0, server.start)],
                                     duration=9.0)
            # Hot names are served stale, unique names get SERVFAIL at the budget;
            # from 1 s after the restart everything is answered correctly again.
            check("upstream killed", counts, agent, recovered_from=8)
            assert counts.stale > 0 and counts.servfail > 0
        finally:
            kit.stop(agent)


def test_upstream_slow(node: netns.NodePod, tmp_path: Path) -> None:
    """From 1 s in to 4 s in, every upstream answer takes 2 s (the try timeout).

    Hot names are answered from the cache (stale once expired); misses get
    SERVFAIL within the budget, or the late answer.
    """
    with kit.fake_upstream(node.pod, "slow") as (port, upstream):
        agent = agent_for(node, tmp_path, f"{kit.UPSTREAM_IP}:{port}")
        try:
            counts = run_with_faults(node, [(1.0, lambda: upstream.send_signal(signal.SIGUSR1)),
                                            (4.0, lambda: upstream.send_signal(signal.SIGUSR2))])
            check("upstream slow (2 s)", counts, agent, recovered_from=5)
            assert counts.correct + counts.stale > counts.sent * 0.7
        finally:
            kit.stop(agent)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_packet_loss_30_percent(node: netns.NodePod, tmp_path: Path, proto: str) -> None:
    """30% of the packets to the upstream are dropped (iptables statistic) for 3 s."""
    rule = ["INPUT", "-p", proto, "--dport", "53", "-m", "statistic", "--mode", "random",
            "--probability", "0.3", "-j", "DROP"]
    with kit.knot(node.pod, tmp_path / "knot"):
        agent = agent_for(node, tmp_path, f"{kit.UPSTREAM_IP}:53",
                          forward_options="force_tcp" if proto == "tcp" else "")
        try:
            counts = run_with_faults(node, [(1.0, lambda: kit.iptables(node.pod, "-A", *rule)),
                                            (4.0, lambda: kit.iptables(node.pod, "-D", *rule))])
            check(f"30% loss ({proto})", counts, agent, recovered_from=5)
        finally:
            kit.stop(agent)


def test_tcp_connections_reset_mid_stream(node: netns.NodePod, tmp_path: Path) -> None:
    """The upstream's TCP segments are answered with RSTs, 5% of them, for 3 s."""
    rule = ["OUTPUT", "-p", "tcp", "--sport", "53", "-m", "statistic", "--mode", "random",
            "--probability", "0.05", "-j", "REJECT", "--reject-with", "tcp-reset"]
    with kit.knot(node.pod, tmp_path / "knot"):
        agent = agent_for(node, tmp_path, f"{kit.UPSTREAM_IP}:53", forward_options="force_tcp")
        try:
            counts = run_with_faults(node, [(1.0, lambda: kit.iptables(node.pod, "-A", *rule)),
                                            (4.0, lambda: kit.iptables(node.pod, "-D", *rule))])
            check("TCP resets", counts, agent, recovered_from=5)
        finally:
            kit.stop(agent)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_hostile_upstream(node: netns.NodePod, tmp_path: Path, proto: str) -> None:
    """Wrong IDs, wrong questions, garbage, truncated messages and frames, bogus-only replies."""
    with kit.fake_upstream(node.pod, "hostile") as (port, _):
        agent = agent_for(node, tmp_path, f"{kit.UPSTREAM_IP}:{port}",
                          forward_options="force_tcp" if proto == "tcp" else "")
        try:
            # Over TCP every broken frame costs a connection and its pipelined queries;
            # the Python fake upstream then needs more CPU than this 2-CPU test box
            # has left at 2,000 q/s, so the TCP variant runs at 1,000 q/s.
            counts = run_with_faults(node, [], rate=RATE if proto == "udp" else RATE // 2)
            check(f"hostile upstream ({proto})", counts, agent, recovered_from=None)
            assert counts.correct + counts.stale > counts.sent * 0.7
        finally:
            kit.stop(agent)
