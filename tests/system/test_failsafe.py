"""The fail-safe: a serving process killed without teardown never black-holes DNS.

Topology (``netns.node_and_pod``): the node runs ``nodecache run`` on
169.254.20.10 and the kube-dns ClusterIP 10.96.0.10 (iptables mode), an
upstream for the agent on 127.0.0.1:5399 that answers every name with
10.0.0.1, and a "kube-dns" on 10.200.0.1:5300 that answers with 10.0.0.2,
reached as kube-proxy (iptables mode) reaches it: ``nat`` PREROUTING and OUTPUT
jump to KUBE-SERVICES, which sends 10.96.0.10:53 and the kube-dns-upstream
ClusterIP 10.96.0.11:53 to a KUBE-SVC chain that DNATs to the endpoint. The
answer says who answered. The pod queries both IPs every 20 ms while the test
SIGKILLs the serving worker, or the whole agent with the guard beside it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodecache.hostnet.rules import notrack_rules
from tests.kit import netns
from tests.kit.netns import precreate_link, rule_texts

pytestmark = pytest.mark.privileged

LINK_LOCAL = "169.254.20.10"
CLUSTER_IP = "10.96.0.10"
#: The kube-dns-upstream Service (-upstreamsvc kube-dns-upstream).
UPSTREAM_SVC = "10.96.0.11"
HEALTH = 9053
AGENT_ANSWER = "10.0.0.1"
FALLBACK_ANSWER = "10.0.0.2"
FALLBACK_PORT = 5300
UPSTREAM_PORT = 5399
#: The bounds documented in docs/upgrades.md, s.
CLUSTER_IP_BOUND = 1.0
LINK_LOCAL_BOUND = 3.0
COREFILE = f"""\
.:53 {{
    bind {LINK_LOCAL} {CLUSTER_IP}
    cache 30
    forward . 127.0.0.1:{UPSTREAM_PORT}
    health {LINK_LOCAL}:{HEALTH}
}}
"""
RULES = 2 * len(notrack_rules([LINK_LOCAL], 53, HEALTH))


def _dnsmasq(ns: str, address: str, port: int, answer: str) -> subprocess.Popen[bytes]:
    proc = netns.popen(ns, "dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                       "--bind-interfaces", f"--listen-address={address}", f"--port={port}",
                       f"--address=/#/{answer}", "--user=root", "--cache-size=0",
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        res = netns.run(ns, "dig", f"@{address}", "-p", str(port), "+tries=1", "+time=1",
                        "+short", "probe.example.", check=False)
        if answer in res.stdout:
            return proc
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"dnsmasq on {address}:{port} did not answer")


def _kube_proxy(topo: netns.NodePod, ipvs: bool) -> None:
    """kube-proxy's part: the ClusterIPs go to a kube-dns endpoint unless NOTRACK skips them.

    ``ipvs``: kube-dns-upstream as IPVS serves it: an address of the node answered
    locally after ``nat``, with no KUBE-SVC chain for it (this kernel has no IPVS, so a
    server listening on that address stands in for the balancer).
    """
    nat = ("iptables-nft", "-t", "nat")
    netns.run(topo.node, *nat, "-N", "KUBE-SERVICES")
    for chain in ("PREROUTING", "OUTPUT"):
        netns.run(topo.node, *nat, "-A", chain, "-m", "comment", "--comment",
                  "kubernetes service portals", "-j", "KUBE-SERVICES")
    for proto in ("udp", "tcp"):
        svc = f"KUBE-SVC-DNS{proto.upper()}"
        netns.run(topo.node, *nat, "-N", svc)
        netns.run(topo.node, *nat, "-A", svc, "-p", proto, "-j", "DNAT",
                  "--to-destination", f"{topo.node_ip4}:{FALLBACK_PORT}")
        for ip in (CLUSTER_IP,) if ipvs else (CLUSTER_IP, UPSTREAM_SVC):
            netns.run(topo.node, *nat, "-A", "KUBE-SERVICES", "-d", f"{ip}/32", "-p", proto,
                      "-m", proto, "--dport", "53", "-j", svc)
    if ipvs:
        # kube-ipvs0 is a dummy link; lo holds a local address just the same here
        # (this kernel has no dummy links either).
        netns.run(topo.node, "ip", "addr", "add", f"{UPSTREAM_SVC}/32", "dev", "lo")


@contextlib.contextmanager
def node(tmp: Path, *, ipvs: bool = False) -> Iterator[netns.NodePod]:
    netns.sweep_stale()
    (tmp / "Corefile").write_text(COREFILE)
    procs: list[subprocess.Popen[bytes]] = []
    with netns.node_and_pod(routes_via_node=(LINK_LOCAL, CLUSTER_IP)) as topo:
        try:
            netns.activate_conntrack(topo.node, "iptables-nft")
            precreate_link(topo.node)
            procs.append(_dnsmasq(topo.node, "127.0.0.1", UPSTREAM_PORT, AGENT_ANSWER))
            procs.append(_dnsmasq(topo.node, topo.node_ip4, FALLBACK_PORT, FALLBACK_ANSWER))
            _kube_proxy(topo, ipvs)
            if ipvs:
                procs.append(_dnsmasq(topo.node, UPSTREAM_SVC, 53, FALLBACK_ANSWER))
            yield topo
        finally:
            for proc in procs:
                proc.kill()
                proc.wait(10)


def start_agent(topo: netns.NodePod, tmp: Path, *extra: str) -> subprocess.Popen[bytes]:
    log = open(tmp / "agent.log", "ab")
    proc = netns.python(
        topo.node, "-m", "nodecache", "run", "--conf", str(tmp / "Corefile"),
        "--localip", f"{LINK_LOCAL},{CLUSTER_IP}", "--firewall", "iptables-nft",
        "--health-port", str(HEALTH), "--syncinterval", "1", "--pidfile", str(tmp / "pid"),
        *extra, background=True, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def worker_pid(proc: subprocess.Popen[bytes], tmp: Path, *, not_pid: int = 0,
               timeout: float = 20) -> int:
    """The serving worker's PID, from the pidfile (written once the rules are in place)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"nodecache exited {proc.returncode}:\n{log_text(tmp)}")
        with contextlib.suppress(OSError, ValueError):
            pid = int((tmp / "pid").read_text())
            if pid != not_pid:
                return pid
        time.sleep(0.02)
    raise AssertionError(f"no serving worker:\n{log_text(tmp)}")


def log_text(tmp: Path) -> str:
    return (tmp / "agent.log").read_text(errors="replace")


def stop(proc: subprocess.Popen[bytes], tmp: Path) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
            raise AssertionError(f"nodecache ignored SIGTERM:\n{log_text(tmp)}") from None
    return proc.returncode


def rule_count(ns: str) -> int:
    """The agent's rules (NOTRACK/ACCEPT)."""
    text = rule_texts(ns, "iptables-nft")
    return text.count('"nodecache: ') - text.count('"nodecache: fallback')


def fallback_count(ns: str) -> int:
    """The guard's fallback rules."""
    return rule_texts(ns, "iptables-nft").count('"nodecache: fallback')


def _ask(ip: str, qid: int, timeout: float) -> str:
    """One UDP query from a fresh socket: ``agent``, ``fallback``, ``refused`` or ``timeout``."""
    name = b"".join(bytes((len(x),)) + x for x in (f"q{qid}".encode(), b"example")) + b"\0"
    query = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + name + struct.pack("!HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((ip, 53))
        try:
            sock.send(query)
            while True:
                reply = sock.recv(4096)
                if reply[:2] == query[:2]:
                    break
        except socket.timeout:
            return "timeout"
        except OSError as exc:
            if exc.errno == errno.ECONNREFUSED:
                return "refused"
            raise
    address = socket.inet_ntoa(reply[-4:]) if struct.unpack("!H", reply[6:8])[0] else ""
    return {AGENT_ANSWER: "agent", FALLBACK_ANSWER: "fallback"}.get(address, f"other:{address}")


def probe_through_kill(pids: tuple[int, ...], before: float,
                       limit: float) -> list[tuple[float, str, str]]:
    """In the pod: query both IPs every 20 ms; SIGKILL ``pids`` after ``before`` s; go on until
    both IPs have been answered by the agent for 0.5 s again (or ``limit`` s).

    Returns (seconds since the kill, IP, outcome); negative times are before the kill.
    """
    raw: list[tuple[float, str, str]] = []
    start = time.monotonic()
    killed_at = float("inf")
    agent_since = float("inf")  # both IPs answered by the agent from then on
    qid = 0
    while time.monotonic() - start < limit:
        if killed_at == float("inf") and time.monotonic() - start >= before:
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
        outcomes = []
        for ip in (CLUSTER_IP, LINK_LOCAL):
            qid = (qid + 1) % 65536
            sent = time.monotonic()
            outcomes.append(_ask(ip, qid, 0.2))
            raw.append((sent, ip, outcomes[-1]))
        if sent > killed_at:
            if outcomes == ["agent", "agent"]:
                agent_since = min(agent_since, sent)
                if sent - agent_since > 0.5:
                    break
            else:
                agent_since = float("inf")
        time.sleep(0.02)
    return [(t - killed_at if killed_at != float("inf") else t - start - limit, ip, o)
            for t, ip, o in raw]


def _outage(events: list[tuple[float, str, str]], ip: str) -> float:
    """Seconds from the kill until queries to ``ip`` are answered again for good: the send
    time of the first answered query after the last unanswered one."""
    after = [(t, o) for t, i, o in events if i == ip and t >= 0]
    failed = [t for t, o in after if o in ("timeout", "refused")]
    if not failed:
        return 0.0
    return min((t for t, o in after if t > max(failed) and o in ("agent", "fallback")),
               default=float("inf"))


def test_sigkill_of_the_worker_fails_over_to_kube_dns_then_restarts(tmp_path: Path) -> None:
    with node(tmp_path) as topo:
        links, before_rules = netns.link_snapshot(topo.node), netns.ruleset_snapshot(topo.node)
        proc = start_agent(topo, tmp_path)
        try:
            first = worker_pid(proc, tmp_path)
            assert rule_count(topo.node) == RULES
            # The parent stays small: no asyncio, no event loop, no firewall code.
            status = Path(f"/proc/{proc.pid}/status").read_text()
            rss_kb = int(next(ln.split()[1] for ln in status.splitlines()
                              if ln.startswith("VmRSS:")))
            maps = Path(f"/proc/{proc.pid}/maps").read_text()
            assert "_asyncio" not in maps and "uvloop" not in maps
            assert rss_kb < 16 * 1024, rss_kb
            events = netns.call(topo.pod, probe_through_kill, (first,), 0.5, 12.0, timeout=30)
            second = worker_pid(proc, tmp_path, not_pid=first)
            assert rule_count(topo.node) == RULES
        finally:
            code = stop(proc, tmp_path)
        log = log_text(tmp_path)
        summary = "\n".join(f"{t:+.3f} {ip} {o}" for t, ip, o in events
                            if o != "agent" or t > -0.1)
        # Before the kill every query is answered by the agent.
        assert {o for t, _, o in events if t < 0} == {"agent"}, summary
        # The ClusterIP: kube-dns answers while no worker serves; the outage is the rule
        # removal (a helper process, about 0.2 s).
        cluster = [o for t, ip, o in events if ip == CLUSTER_IP and t >= 0]
        assert "fallback" in cluster, summary
        assert _outage(events, CLUSTER_IP) < CLUSTER_IP_BOUND, summary
        # The link-local IP: nothing listens until the new worker serves: ICMP port
        # unreachable (the kernel rate-limits those per host, so some are timeouts).
        link_local = [o for t, ip, o in events if ip == LINK_LOCAL and t >= 0]
        assert "refused" in link_local and "fallback" not in link_local, summary
        assert _outage(events, LINK_LOCAL) < LINK_LOCAL_BOUND, summary
        # Both end on the restarted agent, and nothing else ever answered.
        assert cluster[-1] == link_local[-1] == "agent", summary
        assert {o for _, _, o in events} <= {"agent", "fallback", "refused", "timeout"}, summary
        assert second != first
        assert f"worker {first} killed by SIGKILL without teardown" in log
        assert "rules removed in" in log
        print(f"\nfailover: ClusterIP outage {_outage(events, CLUSTER_IP):.3f}s, "
              f"link-local outage {_outage(events, LINK_LOCAL):.3f}s, parent RSS {rss_kb} kB")
        # SIGTERM to the parent: the worker shuts down as usual and the node is as before.
        assert code == 0, log
        assert netns.link_snapshot(topo.node) == links, log
        assert netns.ruleset_snapshot(topo.node) == before_rules, log


def test_killing_the_parent_stops_the_worker_with_teardown(tmp_path: Path) -> None:
    with node(tmp_path) as topo:
        links, before_rules = netns.link_snapshot(topo.node), netns.ruleset_snapshot(topo.node)
        proc = start_agent(topo, tmp_path)
        try:
            worker = worker_pid(proc, tmp_path)
            proc.kill()
            proc.wait(10)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and Path(f"/proc/{worker}").exists():
                time.sleep(0.05)
            assert not Path(f"/proc/{worker}").exists(), log_text(tmp_path)
        finally:
            stop(proc, tmp_path)
        assert netns.link_snapshot(topo.node) == links, log_text(tmp_path)
        assert netns.ruleset_snapshot(topo.node) == before_rules, log_text(tmp_path)


def test_a_worker_that_fails_at_start_is_not_restarted(tmp_path: Path) -> None:
    with node(tmp_path) as topo:
        before_rules = netns.ruleset_snapshot(topo.node)
        # Something else holds the DNS port on the link-local IP (no SO_REUSEPORT).
        netns.run(topo.node, "ip", "addr", "add", f"{LINK_LOCAL}/32", "dev", "lo")
        holder = netns.popen(topo.node, "python3", "-c",
                             "import socket,time;s=socket.socket(socket.AF_INET,"
                             f"socket.SOCK_DGRAM);s.bind(('{LINK_LOCAL}',53));print(1,flush=True);"
                             "time.sleep(60)", stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == b"1"
            proc = start_agent(topo, tmp_path)
            try:
                code = proc.wait(30)
            finally:
                stop(proc, tmp_path)
        finally:
            holder.kill()
            holder.wait(10)
        log = log_text(tmp_path)
        assert code == 1, log
        assert log.count("started worker") == 1, log
        assert "failed before it served; not restarting" in log
        assert netns.ruleset_snapshot(topo.node) == before_rules, log


def test_supervisor_holds_no_agent_libraries() -> None:
    """The parent imports only the basics: no DNS, metrics, netlink, asyncio or logging code."""
    # Started as `nodecache run` starts it (supervisor.become_supervisor): no site, isolated.
    import nodecache
    root = str(Path(nodecache.__file__).resolve().parent.parent)
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); import nodecache.supervisor as s; "
            "s.log.info('worker %d %s', 7, 'is serving'); print(' '.join(sorted(sys.modules)))")
    res = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", code, root], capture_output=True,
                         text=True, timeout=60, env=netns.python_env(), check=True)
    modules = set(res.stdout.split())
    for heavy in ("asyncio", "logging", "typing", "dns", "prometheus_client", "pyroute2", "click",
                  "uvloop", "nodecache.config", "nodecache.core", "nodecache.hostnet",
                  "site", "json", "re", "enum", "signal", "collections"):
        assert heavy not in modules, f"the supervisor imports {heavy}"
    # Its lines look like the worker's (logging.basicConfig with the agent's format).
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO nodecache.supervisor: "
                        r"worker 7 is serving\n", res.stderr), res.stderr


# -- the whole agent dies: the guard beside it ------------------------------------------

#: The bound documented in docs/deploy.md for both IPs with the guard, s.
GUARD_BOUND = 3.0
#: When the "kubelet" restarts the killed container, s after the kill.
RESTART_DELAY = 3.0


def start_guard(topo: netns.NodePod, tmp: Path) -> subprocess.Popen[bytes]:
    """``nodecache guard`` as the DaemonSet runs it beside the agent (same serving lock)."""
    log = open(tmp / "guard.log", "ab")
    proc = netns.python(
        topo.node, "-m", "nodecache", "guard", "--serving-lock", str(tmp / "serving.lock"),
        "--localip", LINK_LOCAL, "--upstreamsvc", "kube-dns-upstream",
        "--firewall", "iptables-nft", env={"KUBE_DNS_UPSTREAM_SERVICE_HOST": UPSTREAM_SVC},
        background=True, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def _wait_until(what: str, cond: Callable[[], bool], tmp: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f}s:\n{log_text(tmp)}\n"
                                 f"{(tmp / 'guard.log').read_text(errors='replace')}")
        time.sleep(0.05)


def _dig(ns: str, ip: str, name: str, tcp: bool = False) -> str:
    """The answer; retried for 5 s while the route is not there yet (a fresh veth)."""
    deadline = time.monotonic() + 5
    while True:
        out = netns.run(ns, "dig", f"@{ip}", "+short", "+tries=1", "+time=2",
                        *(["+tcp"] if tcp else []), name, check=False).stdout.strip()
        if "unreachable" not in out or time.monotonic() > deadline:
            return out
        time.sleep(0.1)


@pytest.mark.parametrize("ipvs", [False, True], ids=["iptables", "ipvs"])
def test_whole_agent_death_with_the_guard_keeps_both_ips_answered(tmp_path: Path,
                                                                  ipvs: bool) -> None:
    with node(tmp_path, ipvs=ipvs) as topo:
        links, before_rules = netns.link_snapshot(topo.node), netns.ruleset_snapshot(topo.node)
        guard = start_guard(topo, tmp_path)
        agent: subprocess.Popen[bytes] | None = None
        try:
            # No agent yet (a new pod): the link-local IP goes to the cluster DNS at once.
            _wait_until("fallback", lambda: fallback_count(topo.node) == 4, tmp_path)
            for tcp in (False, True):
                assert _dig(topo.pod, LINK_LOCAL, f"s{tcp}.example.", tcp) == FALLBACK_ANSWER
            agent = start_agent(topo, tmp_path)
            first = worker_pid(agent, tmp_path)
            _wait_until("hand-back", lambda: fallback_count(topo.node) == 0, tmp_path)
            assert rule_count(topo.node) == RULES
            assert _dig(topo.pod, LINK_LOCAL, "a.example.") == AGENT_ANSWER
            # The whole container dies (an OOM kill of its cgroup): supervisor and worker.
            probed: dict[str, list[tuple[float, str, str]]] = {}
            prober = threading.Thread(target=lambda: probed.update(events=netns.call(
                topo.pod, probe_through_kill, (agent.pid, first), 0.5, 25.0, timeout=60)))
            prober.start()
            _wait_until("kill", lambda: not Path(f"/proc/{first}").exists(), tmp_path)
            killed = time.monotonic()
            _wait_until("fallback", lambda: fallback_count(topo.node) == 4
                        and rule_count(topo.node) == 0, tmp_path, timeout=10)
            # Pods (nat PREROUTING) over TCP too, and the node's own clients (nat OUTPUT).
            for ns, tcp in ((topo.pod, True), (topo.node, False), (topo.node, True)):
                assert _dig(ns, LINK_LOCAL, f"k{tcp}.example.", tcp) == FALLBACK_ANSWER, ns
            agent.wait(10)
            time.sleep(max(0.0, RESTART_DELAY - (time.monotonic() - killed)))
            agent = start_agent(topo, tmp_path)  # the kubelet restarts the container
            second = worker_pid(agent, tmp_path, not_pid=first)
            prober.join(60)
            _wait_until("hand-back", lambda: fallback_count(topo.node) == 0, tmp_path)
            assert rule_count(topo.node) == RULES
        finally:
            guard.send_signal(signal.SIGTERM)
            guard.wait(10)
            if agent is not None:
                stop(agent, tmp_path)
        events = probed["events"]
        guard_log = (tmp_path / "guard.log").read_text(errors="replace")
        summary = "\n".join(f"{t:+.3f} {ip} {o}" for t, ip, o in events
                            if o != "agent" or t > -0.1) + "\n" + guard_log
        assert {o for t, _, o in events if t < 0} == {"agent"}, summary
        assert {o for _, _, o in events} <= {"agent", "fallback", "refused", "timeout"}, summary
        outages, taken = {}, {}
        for ip in (CLUSTER_IP, LINK_LOCAL):
            after = [(t, o) for t, i, o in events if i == ip and t >= 0]
            taken_over = min((t for t, o in after if o == "fallback"), default=float("inf"))
            failed = [t for t, o in after if o in ("timeout", "refused")]
            # Answered by the cluster DNS soon after the kill, and from then on every query
            # is answered: by the cluster DNS, then across the hand-back by the new agent.
            assert taken_over < GUARD_BOUND, summary
            assert not failed or max(failed) < taken_over, summary
            assert after[-1][1] == "agent", summary
            outages[ip], taken[ip] = _outage(events, ip), taken_over
        assert second != first
        assert "removed the 4 fallback rules" in guard_log, guard_log
        assert "via KUBE-SVC-DNS" in guard_log if not ipvs else f"via DNAT {UPSTREAM_SVC}" \
            in guard_log, guard_log
        # The switch itself, from the lock's release by the kernel to the rules removed.
        switch_ms = [int(m) for m in re.findall(r"removed \d+ rules in (\d+) ms", guard_log)]
        print(f"\nwhole-agent SIGKILL with the guard ({'ipvs' if ipvs else 'iptables'}): "
              f"fallback in and rules out {switch_ms[-1]} ms after the lock was free; "
              f"first cluster-DNS answer after the kill: ClusterIP {taken[CLUSTER_IP]:.3f}s, "
              f"link-local {taken[LINK_LOCAL]:.3f}s; answered for good from "
              f"{outages[CLUSTER_IP]:.3f}s / {outages[LINK_LOCAL]:.3f}s; agent restarted "
              f"after {RESTART_DELAY:.0f}s, no query lost at the hand-back")
        assert netns.link_snapshot(topo.node) == links
        assert netns.ruleset_snapshot(topo.node) == before_rules
