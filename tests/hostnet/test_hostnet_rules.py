"""The rule set as data, the link marker and node-cache flag rewriting: no kernel needed."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodecache.core.stats import AgentStats
from nodecache.errors import HostNetworkError
from nodecache.hostnet.firewall import NftablesFirewall
from nodecache.hostnet.flags import normalize_nodecache_argv
from nodecache.hostnet.host import HostNetwork, has_cap_net_admin
from nodecache.hostnet.link import LinkRecord, format_marker, parse_marker
from nodecache.hostnet.rules import COMMENT_PREFIX, notrack_rules, parse_local_ips

# node-cache's 12 rules (NODELOCAL.md section 1.3): table, chain, proto, to_ip, port, target
NODE_CACHE_RULES = {
    ("raw", "PREROUTING", "tcp", True, 53, "NOTRACK"),
    ("raw", "PREROUTING", "udp", True, 53, "NOTRACK"),
    ("filter", "INPUT", "tcp", True, 53, "ACCEPT"),
    ("filter", "INPUT", "udp", True, 53, "ACCEPT"),
    ("raw", "OUTPUT", "tcp", False, 53, "NOTRACK"),
    ("raw", "OUTPUT", "udp", False, 53, "NOTRACK"),
    ("filter", "OUTPUT", "tcp", False, 53, "ACCEPT"),
    ("filter", "OUTPUT", "udp", False, 53, "ACCEPT"),
    ("raw", "OUTPUT", "tcp", True, 53, "NOTRACK"),
    ("raw", "OUTPUT", "udp", True, 53, "NOTRACK"),
    ("raw", "OUTPUT", "tcp", True, 8080, "NOTRACK"),
    ("raw", "OUTPUT", "tcp", False, 8080, "NOTRACK"),
}


def test_twelve_rules_per_ip_as_node_cache() -> None:
    rules = notrack_rules(["169.254.20.10", "10.96.0.10"], 53, 8080)
    assert len(rules) == 24
    for ip in ("169.254.20.10", "10.96.0.10"):
        got = {(r.table, r.chain, r.proto, r.to_ip, r.port, r.target) for r in rules if r.ip == ip}
        assert got == NODE_CACHE_RULES


def test_ipv4_and_ipv6_together() -> None:
    rules = notrack_rules(["169.254.20.10", "FD00:53:0::10"], 53, 9053)
    assert {r.family for r in rules} == {4, 6}
    assert {r.ip for r in rules} == {"169.254.20.10", "fd00:53::10"}
    assert all(r.port in (53, 9053) for r in rules)


def test_comments_identify_nodecache_and_are_unique() -> None:
    rules = notrack_rules(["169.254.20.10", "fd00:53::10"], 53, 8080)
    comments = [r.comment for r in rules]
    assert all(c.startswith(COMMENT_PREFIX) for c in comments)
    assert len(set(comments)) == len(comments)
    assert all(len(c) < 256 and '"' not in c for c in comments)  # xt_comment limit


def test_pure_and_deterministic() -> None:
    assert notrack_rules(["169.254.20.10"], 53, 8080) == notrack_rules(["169.254.20.10"], 53, 8080)


def test_iptables_spec() -> None:
    rule = notrack_rules(["169.254.20.10"], 53, 8080)[1]
    assert rule.iptables_spec() == [
        "-p", "udp", "-d", "169.254.20.10/32", "--dport", "53", "-m", "comment", "--comment",
        "nodecache: skip conntrack: PREROUTING udp to 169.254.20.10 port 53", "-j", "NOTRACK"]
    assert rule.iptables_restore_line().startswith("-I PREROUTING 1 -p udp -d 169.254.20.10/32 ")
    assert '--comment "nodecache: skip conntrack: PREROUTING' in rule.iptables_restore_line()
    v6 = notrack_rules(["fd00:53::10"], 53, 8080)[6]
    assert v6.iptables_spec()[:6] == ["-p", "tcp", "-s", "fd00:53::10/128", "--sport", "53"]


def test_nft_rules_and_table() -> None:
    rules = notrack_rules(["169.254.20.10", "fd00:53::10"], 53, 8080)
    assert rules[0].nft_rule().startswith("ip daddr 169.254.20.10 tcp dport 53 notrack comment ")
    assert rules[14].nft_rule().startswith("ip6 daddr fd00:53::10 tcp dport 53 accept comment ")
    script = NftablesFirewall.table_script(rules)
    assert script.startswith("table inet nodecache {")
    assert "type filter hook prerouting priority raw;" in script
    assert "type filter hook input priority filter;" in script
    assert script.count("notrack comment") == 16 and script.count("accept comment") == 8


@pytest.mark.parametrize("bad", ["", "169.254.20", "nodelocal", "10.0.0.1/32"])
def test_invalid_local_ip(bad: str) -> None:
    with pytest.raises(ValueError, match="invalid localip"):
        parse_local_ips([bad])
    with pytest.raises(HostNetworkError, match="invalid localip"):
        HostNetwork(local_ips=[bad], health_port=8080, stats=AgentStats())


def test_unknown_firewall() -> None:
    with pytest.raises(HostNetworkError, match="unknown firewall 'ipfw'"):
        HostNetwork(local_ips=["169.254.20.10"], health_port=8080, firewall="ipfw",
                    stats=AgentStats())


def test_duplicate_local_ips_collapse() -> None:
    assert parse_local_ips(["169.254.20.10", " 169.254.20.10"]) == ("169.254.20.10",)


@pytest.mark.parametrize("rec", [
    LinkRecord(created=True),
    LinkRecord(),
    LinkRecord(was_down=True),
    LinkRecord(was_down=True, added=["169.254.20.10", "fd00:53::10"]),
])
def test_marker_round_trip(rec: LinkRecord) -> None:
    text = format_marker(rec)
    assert text.startswith("nodecache:") and len(text.encode()) < 256
    assert parse_marker(text) == rec


@pytest.mark.parametrize("alias", [None, "", "uplink to rack 3", "nodecache: something else"])
def test_foreign_alias_is_not_a_marker(alias: str | None) -> None:
    assert parse_marker(alias) is None


def test_cap_net_admin_from_status(tmp_path) -> None:  # type: ignore[no-untyped-def]
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapEff:\t0000000000001000\n")
    assert has_cap_net_admin(str(status))
    status.write_text("Name:\tx\nCapEff:\t00000000a80405fb\n")  # a container default: no bit 12
    assert not has_cap_net_admin(str(status))


# -- node-cache flags -----------------------------------------------------

FLAG_CASES = [
    (["-localip", "169.254.20.10,10.96.0.10"], ["--localip", "169.254.20.10,10.96.0.10"]),
    (["-localip=169.254.20.10"], ["--localip=169.254.20.10"]),
    (["-setupiptables=false"], ["--no-setupiptables"]),
    (["-setupiptables=true"], ["--setupiptables"]),
    (["-setupiptables"], ["--setupiptables"]),
    (["-setupinterface=0", "-skipteardown=1"], ["--no-setupinterface", "--skipteardown"]),
    (["-skipteardown=FALSE"], ["--no-skipteardown"]),
    (["--setupiptables=false"], ["--no-setupiptables"]),
    (["--localip", "x", "--no-setupiptables"], ["--localip", "x", "--no-setupiptables"]),
    (["-interfacename", "nodelocaldns", "-health-port", "8080", "-conf", "/etc/Corefile"],
     ["--interfacename", "nodelocaldns", "--health-port", "8080", "--conf", "/etc/Corefile"]),
    (["-pidfile=/run/x.pid", "-syncinterval", "60"], ["--pidfile=/run/x.pid", "--syncinterval", "60"]),
    # a Go duration that node-cache multiplies by a second again (Helm charts pass 1ns)
    (["-syncinterval", "1ns"], ["--syncinterval", "1"]),
    (["-syncinterval=90ns", "-quiet"], ["--syncinterval=90", "--quiet"]),
    (["-syncinterval", "1.5us"], ["--syncinterval", "1500"]),
    (["-h"], ["-h"]),
    (["-p53"], ["-p53"]),
    (["-somethingelse"], ["-somethingelse"]),
    (["--", "-localip"], ["--", "-localip"]),
    (["run", "-localip", "169.254.20.10", "-setupiptables=false"],
     ["run", "--localip", "169.254.20.10", "--no-setupiptables"]),
]


@pytest.mark.parametrize(("argv", "want"), FLAG_CASES)
def test_normalize_nodecache_argv(argv: list[str], want: list[str]) -> None:
    assert normalize_nodecache_argv(argv) == want


@given(st.lists(st.text(min_size=1).filter(lambda s: not s.startswith("-"))))
def test_non_flags_untouched(argv: list[str]) -> None:
    assert normalize_nodecache_argv(argv) == argv


@given(st.lists(st.sampled_from(["--localip", "x", "--no-setupiptables", "-localip",
                                 "-setupiptables=false", "10.0.0.1", "-skipteardown"])))
def test_idempotent(argv: list[str]) -> None:
    once = normalize_nodecache_argv(argv)
    assert normalize_nodecache_argv(once) == once
