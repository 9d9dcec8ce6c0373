"""rewrite edns0: the options a rule leaves in the query (sans I/O)."""
from __future__ import annotations

import dns.edns
import dns.message
import pytest

from nodecache.config import parse_text
from nodecache.core import wire
from nodecache.core.chain import Request, Rewritten
from nodecache.core.stages.edns0 import join_options, split_options
from nodecache.core.stages.rewrite import RewriteStage
from tests.kit.coredriver import Driver, answer_a

LOCAL = (0xFFEE, b"old")
OTHER = (0xFFED, b"\x01")
NSID = (3, b"")
SUBNET = (8, bytes.fromhex("00011800c00002"))  # 192.0.2.0/24


def options_after(rules: str, options: list[tuple[int, bytes]], remote: str = "192.0.2.77",
                  port: int = 40000, proto: str = "udp") -> list[tuple[int, bytes]] | None:
    """The options upstream gets; None when no rule applied."""
    settings = parse_text(".:53 {\n " + rules + "\n}\n", default_port=53).blocks[0]
    request = Request("a.example.", 16, 1, "A.example.", remote, port, proto,
                      options=join_options(options))
    step = RewriteStage(settings.rewrite).serve(request)
    if step is None:
        return None
    assert isinstance(step, Rewritten)
    return split_options(step.request.options)


@pytest.mark.parametrize("rules, before, after", [
    ("rewrite edns0 local set 0xffee new", [], [(0xFFEE, b"new")]),
    ("rewrite edns0 local set 0xffee new", [OTHER, LOCAL, LOCAL], [OTHER, (0xFFEE, b"new"), LOCAL]),
    ("rewrite edns0 local set 0xffee 0x00ff", [], [(0xFFEE, b"\x00\xff")]),
    ("rewrite edns0 local append 0xffee new", [LOCAL], [LOCAL, (0xFFEE, b"new")]),
    ("rewrite edns0 local replace 0xffee new", [OTHER], None),
    ("rewrite edns0 local unset 0xffee", [LOCAL, OTHER, LOCAL], [OTHER]),
    ("rewrite edns0 local unset 0xffee", [], []),  # unset always applies
    ("rewrite edns0 local set 0xffee {qname}", [], [(0xFFEE, b"A.example.")]),
    ("rewrite edns0 local set 0xffee {qtype}", [], [(0xFFEE, b"\x00\x10")]),
    ("rewrite edns0 local set 0xffee {client_ip}", [], [(0xFFEE, bytes([192, 0, 2, 77]))]),
    ("rewrite edns0 local set 0xffee {client_port}", [], [(0xFFEE, b"\x9c\x40")]),
    ("rewrite edns0 local set 0xffee {protocol}", [], [(0xFFEE, b"udp")]),
    # A variable rule with the option there already: append does not apply.
    ("rewrite edns0 local append 0xffee {protocol}", [LOCAL], None),
    ("rewrite edns0 local set 0xffee {meta/label}", [], None),  # no metadata: no value
    ("rewrite edns0 nsid set", [NSID], [NSID]),
    ("rewrite edns0 nsid append", [NSID], [NSID, NSID]),
    ("rewrite edns0 nsid replace", [], None),
    ("rewrite edns0 nsid unset", [NSID, OTHER], [OTHER]),
    ("rewrite edns0 subnet set 24 56", [SUBNET], [(8, bytes.fromhex("00011800c00002"))]),
    ("rewrite edns0 subnet set 16 56", [], [(8, bytes.fromhex("00011000c000"))]),
    ("rewrite edns0 subnet set 0 0", [], [(8, bytes.fromhex("00010000"))]),
    ("rewrite edns0 subnet set 32 128 revert", [], [(8, bytes.fromhex("00012000c000024d"))]),
    ("rewrite edns0 subnet append 24 56", [SUBNET], None),
    ("rewrite edns0 subnet unset", [SUBNET, OTHER], [OTHER]),
    # continue: both rules; stop: the first that applies; one that does not apply is passed.
    ("rewrite continue edns0 nsid set\n rewrite edns0 local set 0xffee x", [], [NSID, (0xFFEE, b"x")]),
    ("rewrite edns0 nsid set\n rewrite edns0 local set 0xffee x", [], [NSID]),
    ("rewrite edns0 nsid replace\n rewrite edns0 local set 0xffee x", [], [(0xFFEE, b"x")]),
])
def test_edns0_options(rules: str, before: list[tuple[int, bytes]],
                       after: list[tuple[int, bytes]] | None) -> None:
    assert options_after(rules, before) == after


@pytest.mark.parametrize("remote, rules, after", [
    ("2001:db8:1:2::7", "rewrite edns0 subnet set 24 56", bytes.fromhex("0002380020010db8000100")),
    ("2001:db8:1:2::7", "rewrite edns0 local set 1 {client_ip}",
     bytes.fromhex("20010db8000100020000000000000007")),
    # An IPv4-mapped address is IPv4, as Go's To4 makes it.
    ("::ffff:192.0.2.77", "rewrite edns0 subnet set 24 56", bytes.fromhex("00011800c00002")),
])
def test_edns0_ipv6_clients(remote: str, rules: str, after: bytes) -> None:
    found = options_after(rules, [], remote=remote)
    assert found is not None and found[0][1] == after


def test_edns0_needs_the_client_address() -> None:
    # A prefetch has no client: subnet and {client_ip} rules do not apply.
    assert options_after("rewrite edns0 subnet set 24 56", [], remote="") is None
    assert options_after("rewrite edns0 local set 1 {client_port}", [], remote="") is None


def test_split_options_round_trip() -> None:
    data = join_options([OTHER, NSID, SUBNET])
    assert split_options(data) == [OTHER, NSID, SUBNET]
    assert split_options(data + b"\x00\x01") == [OTHER, NSID, SUBNET]  # a short tail


@pytest.mark.parametrize("bufsize, payload", [("", wire.OUR_UDP_PAYLOAD), ("bufsize 1100", 1100)])
def test_edns0_rule_in_the_upstream_query(bufsize: str, payload: int) -> None:
    """The handler sends the rule's options with the block's size, the client's other
    options kept; a second client asking is a hit (the options are not in the key)."""
    driver = Driver(".:53 {\n cache 30\n " + bufsize + "\n rewrite edns0 local set 0xffee {client_ip}"
                    "\n forward . 127.0.0.1\n}\n", answer_a())
    query = dns.message.make_query("a.example.", "A", use_edns=0,
                                   options=[dns.edns.GenericOption(0xFFED, b"\x01")])
    reply = driver.ask(query, addr=("192.0.2.7", 5300))
    assert reply is not None and reply.answer
    (sent,) = driver.upstream_queries
    assert sent.payload == payload
    assert [(o.otype, o.to_wire()) for o in sent.options] == [(0xFFED, b"\x01"),
                                                             (0xFFEE, bytes([192, 0, 2, 7]))]
    assert driver.ask(query, addr=("192.0.2.8", 5300)) is not None
    assert len(driver.upstream_queries) == 1
