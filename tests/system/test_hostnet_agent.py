"""End to end: ``python -m nodecache run`` with host networking, inside a node namespace.

Rules appear as soon as the listeners are bound (the pidfile is written after
them); SIGTERM leaves the node exactly as it was; ``--skipteardown`` leaves
the link and rules in place (and ``nodecache teardown`` then removes them).
"""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from nodecache.hostnet.rules import notrack_rules
from tests.kit import netns
from tests.kit.netns import dns_entries, precreate_link, rule_texts

pytestmark = pytest.mark.privileged

V4 = "169.254.20.10"
HEALTH = 9053
COREFILE = f"""\
.:53 {{
    bind {V4}
    cache 30
    forward . 127.0.0.1:5399
    health {V4}:{HEALTH}
}}
"""


def _answer(ip: str, tcp: bool) -> str:
    import dns.message
    import dns.query
    import dns.rcode
    q = dns.message.make_query("probe.example.", "A")
    r = (dns.query.tcp if tcp else dns.query.udp)(q, ip, timeout=8)
    return dns.rcode.to_text(r.rcode())


def wait_for(pred: Any, timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[netns.NodePod, Path]]:
    netns.sweep_stale()
    (tmp_path / "Corefile").write_text(COREFILE)
    with netns.node_and_pod() as topo:
        netns.activate_conntrack(topo.node, "iptables-nft")
        precreate_link(topo.node)
        yield topo, tmp_path


def start_agent(topo: netns.NodePod, tmp: Path, *extra: str) -> subprocess.Popen[str]:
    return netns.python(
        topo.node, "-m", "nodecache", "run", "--conf", str(tmp / "Corefile"),
        # node-cache's own spelling, as a DaemonSet passes it
        "-localip", V4, "-setupiptables=true", "--firewall", "iptables-nft",
        "--health-port", str(HEALTH), "--syncinterval", "1", "--pidfile", str(tmp / "pid"),
        *extra, background=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"agent ignored SIGTERM:\n{out}") from None
    return out


def running(proc: subprocess.Popen[str], tmp: Path) -> bool:
    if proc.poll() is not None:
        raise AssertionError(f"agent exited {proc.returncode}:\n{proc.stdout.read()}")  # type: ignore[union-attr]
    return (tmp / "pid").exists()


def test_run_then_sigterm_leaves_node_as_before(node: tuple[netns.NodePod, Path]) -> None:
    topo, tmp = node
    links, rules = netns.link_snapshot(topo.node), netns.ruleset_snapshot(topo.node)
    proc = start_agent(topo, tmp)
    try:
        wait_for(lambda: running(proc, tmp), what="the pidfile")
        # the pidfile comes after ensure_rules: the rules are already there
        text = rule_texts(topo.node, "iptables-nft")
        for rule in notrack_rules([V4], 53, HEALTH):
            assert text.count(f'"{rule.comment}"') == 1
        assert "state UP" in netns.run(topo.node, "ip", "link", "show", "nodelocaldns").stdout \
            or "UNKNOWN" in netns.run(topo.node, "ip", "link", "show", "nodelocaldns").stdout
        netns.run(topo.node, "conntrack", "-F")
        assert netns.call(topo.pod, _answer, V4, False)
        assert netns.call(topo.pod, _answer, V4, True)
        assert dns_entries(topo.node, V4) == []
        # removed by hand: back within the sync interval (1 s)
        rule = notrack_rules([V4], 53, HEALTH)[0]
        netns.run(topo.node, "iptables-nft", "-t", "raw", "-D", "PREROUTING",
                  *rule.iptables_spec())
        wait_for(lambda: f'"{rule.comment}"' in rule_texts(topo.node, "iptables-nft"),
                 timeout=10, what="the rule to come back")
    finally:
        out = stop(proc)
    assert proc.returncode is not None
    assert netns.link_snapshot(topo.node) == links, out
    assert netns.ruleset_snapshot(topo.node) == rules, out


def test_skipteardown_leaves_everything(node: tuple[netns.NodePod, Path]) -> None:
    topo, tmp = node
    links, rules = netns.link_snapshot(topo.node), netns.ruleset_snapshot(topo.node)
    proc = start_agent(topo, tmp, "-skipteardown")
    try:
        wait_for(lambda: running(proc, tmp), what="the pidfile")
    finally:
        out = stop(proc)
    assert rule_texts(topo.node, "iptables-nft").count("nodecache: ") == 12, out
    assert V4 in netns.run(topo.node, "ip", "addr", "show", "nodelocaldns").stdout
    # the operator's one-shot teardown (another process) removes exactly that
    netns.python(topo.node, "-m", "nodecache", "teardown", "--localip", V4,
                 "--firewall", "iptables-nft", "--health-port", str(HEALTH))
    assert netns.link_snapshot(topo.node) == links
    assert netns.ruleset_snapshot(topo.node) == rules


def test_missing_binary_exits_nonzero_with_one_line(node: tuple[netns.NodePod, Path]) -> None:
    topo, tmp = node
    empty = tmp / "bin"
    empty.mkdir()
    res = netns.run(topo.node, "env", f"PATH={empty}", f"PYTHONPATH={netns.REPO_ROOT}",
                    sys.executable, "-m", "nodecache", "run",
                    "--conf", str(tmp / "Corefile"), "--localip", V4,
                    "--firewall", "iptables-legacy", "--health-port", str(HEALTH), check=False)
    assert res.returncode != 0
    assert ("iptables-legacy-save not found in PATH (needed for the iptables-legacy "
            "firewall backend)") in res.stdout + res.stderr


def test_bind_names_the_interface_the_agent_creates(node: tuple[netns.NodePod, Path]) -> None:
    """``bind nodelocaldns``: resolved once the agent has put the local IP on it."""
    topo, tmp = node
    (tmp / "Corefile").write_text(COREFILE.replace(f"bind {V4}", "bind nodelocaldns"))
    proc = start_agent(topo, tmp)
    try:
        wait_for(lambda: running(proc, tmp), what="the pidfile")
        assert netns.call(topo.pod, _answer, V4, False)
        assert netns.call(topo.pod, _answer, V4, True)
    finally:
        out = stop(proc)
    assert f"serving DNS on {V4}:53" in out, out
