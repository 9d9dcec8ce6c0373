"""The guard's rule: remove the rules exactly when no agent holds the serving lock."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
import time

import pytest

from nodecache import guard
from nodecache.hostnet.fallback import Fallback, kube_proxy_chains
from nodecache.hostnet.rules import fallback_rules, notrack_rules

HOLD = ("import sys, time\n"
        "from nodecache.aio.servinglock import ServingLock\n"
        "lock = ServingLock(sys.argv[1]); assert lock.try_shared(); print('held', flush=True)\n"
        "time.sleep(60)\n")


def _agent(path: pathlib.Path, started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """A stand-in agent: a process holding the serving lock shared."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                            text=True)
    started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_rules_go_only_when_the_last_agent_dies(tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "serving.lock"
    removals: list[float] = []
    monkeypatch.setattr(guard, "remove_all_rules", lambda: removals.append(time.monotonic()) or 0)
    started: list[subprocess.Popen[str]] = []
    old = _agent(lock, started)
    worker = threading.Thread(target=guard.run, args=(str(lock),),
                              kwargs={"interval": 0.05, "rounds": 2}, daemon=True)
    worker.start()
    try:
        new = _agent(lock, started)  # a rollout: the new agent takes the lock beside the old one
        old.kill()
        old.wait()
        time.sleep(0.5)
        assert removals == []  # the new agent still serves
        new.kill()
        new.wait()
        killed = time.monotonic()
        deadline = killed + 10
        while not removals and time.monotonic() < deadline:
            time.sleep(0.01)
        assert removals and removals[0] - killed < 1.0
        # The guard lets go, then waits for an agent before it may remove again.
        time.sleep(0.3)
        assert len(removals) == 1
        again = _agent(lock, started)
        time.sleep(0.3)
        assert len(removals) == 1
        again.kill()
        again.wait()
        worker.join(10)
        assert len(removals) == 2 and not worker.is_alive()
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()


#: ``iptables-save -t nat`` lines as kube-proxy (iptables mode) writes them.
KUBE_PROXY_NAT = [
    "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
    "-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment \"kube-system/kube-dns:dns "
    "cluster IP\" -m udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU",
    "-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment \"kube-system/"
    "kube-dns-upstream:dns-tcp cluster IP\" -m tcp --dport 53 -j KUBE-SVC-ERIFXISQEP7F7OF4",
    "-A KUBE-SERVICES -d 10.96.0.11/32 -p udp -m comment --comment \"kube-system/"
    "kube-dns-upstream:dns cluster IP\" -m udp --dport 53 -j KUBE-SVC-6BVOJWJGNACJNRAR",
    "-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment \"kube-system/"
    "kube-dns-upstream:metrics cluster IP\" -m tcp --dport 9153 -j KUBE-SVC-METRICS",
    "-A KUBE-SVC-6BVOJWJGNACJNRAR -j KUBE-SEP-AAAA",
]


def test_kube_proxy_chains_by_protocol() -> None:
    assert kube_proxy_chains(KUBE_PROXY_NAT, "10.96.0.11") == {
        "tcp": "KUBE-SVC-ERIFXISQEP7F7OF4", "udp": "KUBE-SVC-6BVOJWJGNACJNRAR"}
    assert kube_proxy_chains(KUBE_PROXY_NAT, "10.96.0.1") == {}  # IPVS mode: no such chains


def test_fallback_rules_jump_to_kube_proxy_or_dnat() -> None:
    jumped = fallback_rules(["169.254.20.10", "fd00::10"], "10.96.0.11",
                            jumps={"udp": "KUBE-SVC-U", "tcp": "KUBE-SVC-T"})
    # Pods (PREROUTING) and the node (OUTPUT), TCP and UDP; the IPv6 IP has no IPv4 target.
    assert [(r.table, r.chain, r.proto, r.ip, r.target) for r in jumped] == [
        ("nat", "PREROUTING", "tcp", "169.254.20.10", "KUBE-SVC-T"),
        ("nat", "PREROUTING", "udp", "169.254.20.10", "KUBE-SVC-U"),
        ("nat", "OUTPUT", "tcp", "169.254.20.10", "KUBE-SVC-T"),
        ("nat", "OUTPUT", "udp", "169.254.20.10", "KUBE-SVC-U")]
    assert jumped[1].iptables_spec()[-2:] == ["-j", "KUBE-SVC-U"]
    dnat = fallback_rules(["169.254.20.10"], "10.96.0.11")
    assert dnat[1].iptables_spec()[-4:] == ["-j", "DNAT", "--to-destination", "10.96.0.11:53"]
    assert fallback_rules(["fd00::10"], "fd00::53")[0].to == "[fd00::53]:53"
    # The same comments whatever the target: the guard finds them again to remove them.
    assert [r.comment for r in jumped] == [r.comment for r in dnat]
    assert len({r.comment for r in dnat}) == 4
    assert not {r.comment for r in dnat} & {r.comment for r in notrack_rules(["169.254.20.10"])}


def test_the_fallback_goes_only_after_the_agents_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand-back: the fallback stays until a NOTRACK rule overrides it."""
    seen: list[str] = []
    present = iter([False, False, True])

    class Recorder(Fallback):
        def agent_rules_present(self) -> bool:
            seen.append("look")
            return next(present)

        def remove(self) -> int:
            seen.append("remove")
            return 4

    guard._hand_back(Recorder(["169.254.20.10"], "10.96.0.11"), 0.01)
    assert seen == ["look", "look", "look", "remove"]


def test_no_fallback_with_nftables_and_the_agents_table_stays(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """With native nftables there is no fallback, and removing it must not touch the table
    that holds the agent's rules (NftablesFirewall.remove drops the whole table)."""
    from nodecache.errors import HostNetworkError  # noqa: PLC0415
    from nodecache.hostnet import fallback as fallback_module  # noqa: PLC0415
    from nodecache.hostnet.firewall import NftablesFirewall  # noqa: PLC0415

    class Untouchable(NftablesFirewall):
        def remove(self, rules: object) -> int:
            raise AssertionError("the agent's nftables table removed")

    monkeypatch.setattr(fallback_module, "choose_firewall", lambda *a, **k: Untouchable())
    fb = Fallback(["169.254.20.10"], "10.96.0.11", firewall="nftables")
    with pytest.raises(HostNetworkError, match="needs iptables"):
        fb.install()
    assert fb.remove() == 0
