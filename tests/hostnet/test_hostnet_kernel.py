"""HostNetwork against a real kernel, in a "node" and a "pod" namespace made per test.

The node's stateful tracking is switched on (a ``--ctstate ESTABLISHED`` rule,
as on every real node), so "no conntrack entry" means the NOTRACK rules work.
A small DNS responder stands in for the agent's listeners.

Each HostNetwork call runs in a fresh forked process inside the node
namespace, so these tests also show that what one run did is found by the
next (the link's marker, the rules' comments), as after a crash.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from nodecache.core.stats import AgentStats
from nodecache.errors import HostNetworkError
from nodecache.hostnet.host import HostNetwork
from nodecache.hostnet.rules import notrack_rules
from tests.kit import netns
from tests.kit.netns import dns_entries, dummy_supported, precreate_link, rule_texts

pytestmark = pytest.mark.privileged

V4, V6 = "169.254.20.10", "fd00:53::10"
HEALTH = 9053
BACKENDS = ("iptables-legacy", "iptables-nft", "nftables")
#: The conntrack-activating rule uses the same tool as the backend under test.
CT_TOOL = {"iptables-legacy": "iptables-legacy", "iptables-nft": "iptables-nft",
           "nftables": "nftables"}

RESPONDER = r"""
import socket, sys, threading
import dns.message, dns.rrset
ip = sys.argv[1]
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
def answer(wire):
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", "192.0.2.53"))
    return r.to_wire()
u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((ip, 53))
t = socket.socket(fam, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((ip, 53)); t.listen(16)
def tcp():
    while True:
        c, _ = t.accept()
        with c:
            n = int.from_bytes(c.recv(2), "big"); data = b""
            while len(data) < n:
                data += c.recv(n - len(data))
            out = answer(data); c.sendall(len(out).to_bytes(2, "big") + out)
threading.Thread(target=tcp, daemon=True).start()
print("ready", flush=True)
while True:
    data, addr = u.recvfrom(4096); u.sendto(answer(data), addr)
"""


def _query(ip: str, tcp: bool) -> str:
    import dns.message
    import dns.query
    q = dns.message.make_query("probe.example.", "A")
    r = (dns.query.tcp if tcp else dns.query.udp)(q, ip, timeout=3)
    return r.answer[0][0].to_text()


def query(ns: str, ip: str, tcp: bool = False) -> str:
    return netns.call(ns, _query, ip, tcp, timeout=20)


def _host_call(method: str, kwargs: dict[str, Any], env: dict[str, str]) -> tuple[Any, dict[str, int]]:
    os.environ.update(env)
    stats = AgentStats()
    host = HostNetwork(stats=stats, **kwargs)
    try:
        result = getattr(host, method)()
    except HostNetworkError as exc:
        return exc, dict(stats.setup_errors)
    return result, dict(stats.setup_errors)


def host(ns: str, method: str, env: dict[str, str] | None = None, **kwargs: Any
         ) -> tuple[Any, dict[str, int]]:
    """Run ``HostNetwork(**kwargs).method()`` in ``ns``: (result or HostNetworkError, setup_errors)."""
    kwargs.setdefault("health_port", HEALTH)
    return netns.call(ns, _host_call, method, kwargs, env or {}, timeout=60)


def ok(ns: str, method: str, **kwargs: Any) -> Any:
    result, errors = host(ns, method, **kwargs)
    assert not isinstance(result, Exception), result
    assert errors == {}, errors
    return result


def assert_each_rule_once(ns: str, backend: str, ips: list[str]) -> None:
    text = rule_texts(ns, backend)
    for rule in notrack_rules(ips, 53, HEALTH):
        assert text.count(f'"{rule.comment}"') == 1, rule.comment
    assert text.count("nodecache: ") - text.count('comment "nodecache: node-local DNS"') \
        == 12 * len(ips)


@pytest.fixture
def topo() -> Iterator[netns.NodePod]:
    netns.sweep_stale()
    with netns.node_and_pod() as t:
        yield t


@pytest.fixture
def responder_factory(topo: netns.NodePod) -> Iterator[Any]:
    procs: list[subprocess.Popen[str]] = []

    def start(ip: str) -> subprocess.Popen[str]:
        p = netns.python(topo.node, "-c", RESPONDER, ip, background=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready", p.stderr
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait(timeout=10)


# -- the full life cycle, per backend and family ---------------------------------

@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_lifecycle(topo: netns.NodePod, responder_factory: Any, backend: str, family: str) -> None:
    node, pod = topo.node, topo.pod
    ip = V4 if family == "ipv4" else V6
    kw = dict(local_ips=[ip], firewall=backend)
    netns.activate_conntrack(node, CT_TOOL[backend])
    precreate_link(node)
    links_before, rules_before = netns.link_snapshot(node), netns.ruleset_snapshot(node)

    ok(node, "adopt_leftovers", **kw)
    ok(node, "ensure_interface", **kw)
    addrs = netns.run(node, "ip", "-br", "addr", "show", "nodelocaldns").stdout
    assert " UP " in addrs or "UNKNOWN" in addrs
    assert f"{ip}/{32 if family == 'ipv4' else 128}" in addrs
    assert ok(node, "ensure_interface", **kw) is None  # idempotent

    responder_factory(ip)
    # without the rules: answered, and tracked
    netns.run(node, "conntrack", "-F")
    assert query(pod, ip) == "192.0.2.53"
    assert query(pod, ip, tcp=True) == "192.0.2.53"
    assert dns_entries(node, ip), "conntrack is not active: the check below would prove nothing"

    assert ok(node, "ensure_rules", **kw) == 12
    assert ok(node, "ensure_rules", **kw) == 0
    assert_each_rule_once(node, backend, [ip])

    # with the rules: answered, and not tracked
    netns.run(node, "conntrack", "-F")
    for _ in range(3):
        assert query(pod, ip) == "192.0.2.53"
        assert query(pod, ip, tcp=True) == "192.0.2.53"
    assert dns_entries(node, ip) == []

    # someone removes a rule and the address: resync puts them back (once)
    _delete_one_rule(node, backend, ip)
    netns.run(node, "ip", "addr", "del", f"{ip}/{32 if family == 'ipv4' else 128}",
              "dev", "nodelocaldns")
    result, errors = host(node, "resync", **kw)
    assert errors == {}
    # a fresh process only resyncs rules after ensure_rules; the agent's does both
    assert ok(node, "ensure_rules", **kw) == 1
    assert ip in netns.run(node, "ip", "addr", "show", "nodelocaldns").stdout
    assert_each_rule_once(node, backend, [ip])

    ok(node, "teardown", **kw)
    ok(node, "teardown", **kw)  # idempotent
    assert netns.link_snapshot(node) == links_before
    assert netns.ruleset_snapshot(node) == rules_before


def _delete_one_rule(ns: str, backend: str, ip: str) -> None:
    rule = notrack_rules([ip], 53, HEALTH)[1]  # PREROUTING udp NOTRACK
    if backend == "nftables":
        out = netns.run(ns, "nft", "-a", "list", "chain", "inet", "nodecache", "prerouting").stdout
        line = next(ln for ln in out.splitlines() if rule.comment in ln)
        netns.run(ns, "nft", "delete", "rule", "inet", "nodecache", "prerouting", "handle",
                  line.rsplit("handle", 1)[1].strip())
    else:
        tool = ("ip6tables-" if ":" in ip else "iptables-") + backend.split("-")[1]
        netns.run(ns, tool, "-t", "raw", "-D", "PREROUTING", *rule.iptables_spec())
    assert f'"{rule.comment}"' not in rule_texts(ns, backend)


def test_resync_in_one_process(topo: netns.NodePod) -> None:
    """The agent's way: one HostNetwork; resync restores the rule and the address."""
    def scenario() -> dict[str, Any]:
        stats = AgentStats()
        h = HostNetwork(local_ips=[V4, V6], health_port=HEALTH, firewall="iptables-legacy",
                        stats=stats)
        h.check_prerequisites()
        h.adopt_leftovers()
        h.ensure_interface()
        h.resync()  # before ensure_rules: rules must not appear yet
        early = subprocess.run(["iptables-legacy-save"], capture_output=True, text=True).stdout
        added = h.ensure_rules()
        rule = notrack_rules([V4], 53, HEALTH)[3]  # filter INPUT udp ACCEPT
        subprocess.run(["iptables-legacy", "-D", "INPUT", *rule.iptables_spec()], check=True)
        subprocess.run(["ip", "addr", "del", f"{V6}/128", "dev", "nodelocaldns"], check=True)
        h.resync()
        after = subprocess.run(["iptables-legacy-save"], capture_output=True, text=True).stdout
        addrs = subprocess.run(["ip", "addr", "show", "nodelocaldns"], capture_output=True,
                               text=True).stdout
        h.teardown()
        return dict(early=early, added=added, after=after, addrs=addrs,
                    errors=dict(stats.setup_errors), comment=rule.comment)

    precreate_link(topo.node)
    r = netns.call(topo.node, scenario)
    assert "nodecache" not in r["early"]
    assert r["added"] == 24 and r["errors"] == {}
    assert r["after"].count(f'"{r["comment"]}"') == 1
    assert V6 in r["addrs"]


def test_duplicates_are_removed(topo: netns.NodePod) -> None:
    kw = dict(local_ips=[V4], firewall="iptables-nft")
    assert ok(topo.node, "ensure_rules", **kw) == 12
    rule = notrack_rules([V4], 53, HEALTH)[0]
    for _ in range(2):  # as a flaky "-C" would (kubernetes/dns#568)
        netns.run(topo.node, "iptables-nft", "-t", "raw", "-I", "PREROUTING", *rule.iptables_spec())
    assert rule_texts(topo.node, "iptables-nft").count(rule.comment) == 3
    assert ok(topo.node, "ensure_rules", **kw) == 0
    assert_each_rule_once(topo.node, "iptables-nft", [V4])
    ok(topo.node, "teardown", **kw)
    assert "nodecache" not in rule_texts(topo.node, "iptables-nft")


def test_both_families_one_process(topo: netns.NodePod, responder_factory: Any) -> None:
    """IPv4 and IPv6 local IPs together (node-cache needs one process per family)."""
    kw = dict(local_ips=[V4, V6], firewall="iptables-nft")
    netns.activate_conntrack(topo.node, "iptables-nft")
    precreate_link(topo.node)
    ok(topo.node, "ensure_interface", **kw)
    responder_factory(V4)
    responder_factory(V6)
    assert ok(topo.node, "ensure_rules", **kw) == 24
    netns.run(topo.node, "conntrack", "-F")
    assert query(topo.pod, V4) == query(topo.pod, V6, tcp=True) == "192.0.2.53"
    assert dns_entries(topo.node, V4) == dns_entries(topo.node, V6) == []
    ok(topo.node, "teardown", **kw)


def test_auto_follows_kubelet_hint(topo: netns.NodePod) -> None:
    """kubelet's KUBE-IPTABLES-HINT in legacy mangle -> legacy; nothing -> nft (the default)."""
    def chosen() -> str:
        return HostNetwork(local_ips=[V4], health_port=HEALTH, stats=AgentStats()).firewall.name
    assert netns.call(topo.node, chosen) == "iptables-nft"
    netns.run(topo.node, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    assert netns.call(topo.node, chosen) == "iptables-legacy"
    netns.run(topo.node, "ip6tables-nft", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
    assert netns.call(topo.node, chosen) == "iptables-nft"  # nft is looked at first


def test_auto_without_net_raw_on_a_legacy_node_names_the_capability(topo: netns.NodePod) -> None:
    """Unreadable legacy tables are an error, not a silent guess of nft."""
    netns.run(topo.node, "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    code = ("from nodecache.core.stats import AgentStats; from nodecache.hostnet.host import HostNetwork; "
            f"print(HostNetwork(local_ips=['{V4}'], health_port={HEALTH}, "
            "stats=AgentStats()).firewall.name)")
    res = netns.run(topo.node, "setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw",
                    sys.executable, "-c", code, check=False)
    assert res.returncode != 0
    assert "NET_RAW capability" in res.stderr and "iptables-legacy-save" in res.stderr, res.stderr
    # With NET_RAW the same node is detected as legacy.
    assert netns.run(topo.node, sys.executable, "-c", code).stdout.strip() == "iptables-legacy"


def test_auto_does_not_create_legacy_tables(topo: netns.NodePod) -> None:
    """Looking for hints or leftovers must not load legacy tables (iptables-nft would warn)."""
    ok(topo.node, "adopt_leftovers", local_ips=[V4])
    assert netns.run(topo.node, "cat", "/proc/net/ip_tables_names").stdout.strip() == ""


# -- adoption, crashes and leftovers ---------------------------------------------

def test_adopted_link_keeps_its_alias_and_addresses(topo: netns.NodePod) -> None:
    node = topo.node
    precreate_link(node)
    netns.run(node, "ip", "link", "set", "nodelocaldns", "alias", "owned by the operator")
    netns.run(node, "ip", "addr", "add", "192.0.2.1/32", "dev", "nodelocaldns")
    before = netns.link_snapshot(node)

    def scenario() -> str:
        h = HostNetwork(local_ips=[V4], health_port=HEALTH, stats=AgentStats(),
                        setup_rules=False)
        h.ensure_interface()
        h.ensure_interface()
        mid = subprocess.run(["ip", "-d", "addr", "show", "nodelocaldns"], capture_output=True,
                             text=True).stdout
        h.teardown()
        return mid
    mid = netns.call(node, scenario)
    assert "owned by the operator" in mid and V4 in mid and "192.0.2.1" in mid
    assert netns.link_snapshot(node) == before


def test_crash_then_restart_with_other_ips(topo: netns.NodePod) -> None:
    """A run dies without teardown; the next run (other IPs) adopts the link and
    removes the stale rules, in its backend and in any other."""
    node = topo.node
    precreate_link(node)
    links_before, rules_before = netns.link_snapshot(node), netns.ruleset_snapshot(node)
    old = dict(local_ips=[V4, "10.96.0.10"], firewall="iptables-legacy")
    ok(node, "ensure_interface", **old)
    ok(node, "ensure_rules", **old)
    ok(node, "ensure_rules", local_ips=[V4], firewall="nftables")  # an even older run
    # "crash": nothing torn down. The new run: only V4, iptables-nft.
    new = dict(local_ips=[V4], firewall="iptables-nft")
    ok(node, "adopt_leftovers", **new)
    assert "nodecache" not in rule_texts(node, "iptables-legacy")
    assert "nodecache" not in rule_texts(node, "nftables")
    ok(node, "ensure_interface", **new)
    assert ok(node, "ensure_rules", **new) == 12
    ok(node, "teardown", **new)
    # the adopted link is back as it was: its marker listed both addresses the old
    # run added (169.254.20.10 and 10.96.0.10), so both are gone
    assert netns.link_snapshot(node) == links_before
    assert netns.ruleset_snapshot(node) == rules_before


def test_created_link_survives_restart_and_is_removed(topo: netns.NodePod) -> None:
    """A link we created is marked, so a later process deletes it (not an adopted one)."""
    node = topo.node
    precreate_link(node)
    netns.run(node, "ip", "link", "set", "nodelocaldns", "alias", "nodecache: created")
    ok(node, "teardown", local_ips=[V4], setup_rules=False)
    assert "nodelocaldns" not in netns.run(node, "ip", "link").stdout


# -- errors ------------------------------------------------------------------------

def test_missing_dummy_support(topo: netns.NodePod) -> None:
    if dummy_supported():
        pytest.skip("this kernel has the dummy link type")
    result, errors = host(topo.node, "ensure_interface", local_ips=[V4])
    assert isinstance(result, HostNetworkError)
    assert "\n" not in str(result)
    assert str(result).startswith(
        "cannot create interface nodelocaldns: this kernel has no dummy link type")
    assert errors == {"interface_add": 1}


def test_create_dummy(topo: netns.NodePod) -> None:
    if not dummy_supported():
        pytest.skip("`ip link add type dummy` fails here: the kernel has no dummy link type")
    ok(topo.node, "ensure_interface", local_ips=[V4])
    assert "alias nodecache: created" in netns.run(topo.node, "ip", "-d", "link").stdout
    ok(topo.node, "teardown", local_ips=[V4])
    assert "nodelocaldns" not in netns.run(topo.node, "ip", "link").stdout


def test_ip_on_another_interface(topo: netns.NodePod) -> None:
    precreate_link(topo.node)
    netns.run(topo.node, "ip", "addr", "add", f"{V4}/32", "dev", "lo")
    result, errors = host(topo.node, "ensure_interface", local_ips=[V4])
    assert str(result) == (f"local IP {V4} is already on interface lo; "
                           "it must be on nodelocaldns only")
    assert errors == {"interface_add": 1}


CHECK = ("import sys; from nodecache.hostnet.commands import setup; "
         "setup(sys.argv[1:], prog_name='nodecache setup')")


@pytest.mark.parametrize(("firewall", "path_has", "message"), [
    ("iptables-legacy", ["iptables-nft-save", "iptables-nft-restore", "nft"],
     "iptables-legacy-save not found in PATH (needed for the iptables-legacy firewall backend)"),
    ("nftables", ["iptables-nft-save"],
     "nft not found in PATH (needed for the nftables firewall backend)"),
    ("auto", [], "no iptables or nft program found in PATH (needed for --setupiptables)"),
])
def test_missing_binary(topo: netns.NodePod, tmp_path: Any, firewall: str,
                        path_has: list[str], message: str) -> None:
    for name in path_has:
        os.symlink(f"/usr/sbin/{name}", tmp_path / name)
    res = netns.run(topo.node, "env", f"PATH={tmp_path}", f"PYTHONPATH={netns.REPO_ROOT}",
                    sys.executable, "-c", CHECK, "--localip", V4, "--firewall", firewall,
                    check=False)
    assert res.returncode == 1
    assert res.stderr.strip() == f"Error: {message}"


def test_missing_cap_net_admin(topo: netns.NodePod) -> None:
    res = netns.run(topo.node, "setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
                    sys.executable, "-c", CHECK, "--localip", V4,
                    env=netns.python_env(), check=False)
    assert res.returncode == 1
    assert res.stderr.strip().startswith("Error: missing CAP_NET_ADMIN")
    assert res.stderr.count("\n") == 1


def test_xtables_lock_is_counted_not_fatal(topo: netns.NodePod, tmp_path: Any) -> None:
    import fcntl
    lock = tmp_path / "xtables.lock"
    with open(lock, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        result, errors = host(topo.node, "ensure_rules", env={"XTABLES_LOCKFILE": str(lock)},
                              local_ips=[V4], firewall="iptables-legacy", lock_wait=1)
    assert result == 0
    assert errors == {"iptables_lock": 3}
    result, errors = host(topo.node, "ensure_rules", env={"XTABLES_LOCKFILE": str(lock)},
                          local_ips=[V4], firewall="iptables-legacy", lock_wait=1)
    assert result == 12 and errors == {}


# -- one-shot commands -----------------------------------------------------------

def test_setup_and_teardown_commands(topo: netns.NodePod) -> None:
    precreate_link(topo.node)
    links_before, rules_before = netns.link_snapshot(topo.node), netns.ruleset_snapshot(topo.node)
    for cmd in ("setup", "setup", "teardown", "teardown"):
        code = (f"import sys; from nodecache.hostnet.commands import {cmd}; "
                f"{cmd}(sys.argv[1:], prog_name='nodecache {cmd}')")
        netns.python(topo.node, "-c", code, "--localip", f"{V4},{V6}", "--firewall", "nftables",
                     "--health-port", str(HEALTH))
        if cmd == "setup":
            assert_each_rule_once(topo.node, "nftables", [V4, V6])
    assert netns.link_snapshot(topo.node) == links_before
    assert netns.ruleset_snapshot(topo.node) == rules_before
