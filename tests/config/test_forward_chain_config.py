"""Configuration of forward chains: several forward lines, next, failover, max_connect_attempts.

Every error is located at the offending token (``file:line:column``), as in
tests/config/test_config_errors.py.
"""
from __future__ import annotations

import dns.rcode
import pytest

from nodecache.config import parse_text
from nodecache.errors import ConfigError


def _block(body: str) -> str:
    return ".:53 {\n" + body + "}\n"


ERRORS: list[tuple[str, str]] = [
    (_block("  forward . 10.0.0.1 {\n    next\n  }\n"),
     "Corefile:3:5: forward: expected an RCODE name such as NXDOMAIN, SERVFAIL or REFUSED"
     " after 'next', found end of line"),
    (_block("  forward . 10.0.0.1 {\n    next NXDOMAIN NOSUCH\n  }\n"),
     "Corefile:3:19: forward: expected an RCODE name such as NXDOMAIN, SERVFAIL or REFUSED"
     " after 'next NXDOMAIN', found 'NOSUCH'"),
    (_block("  forward . 10.0.0.1 {\n    next 3\n  }\n"),
     "Corefile:3:10: forward: expected an RCODE name such as NXDOMAIN, SERVFAIL or REFUSED"
     " after 'next', found '3'"),
    (_block("  forward . 10.0.0.1 {\n    failover\n  }\n"),
     "Corefile:3:5: forward: expected an RCODE name such as NXDOMAIN, SERVFAIL or REFUSED"
     " after 'failover', found end of line"),
    (_block("  forward . 10.0.0.1 {\n    failover SERVFAIL NOERROR\n  }\n"),
     "Corefile:3:23: forward: expected an RCODE name such as NXDOMAIN, SERVFAIL or REFUSED"
     " after 'failover SERVFAIL', found 'NOERROR' (NOERROR cannot be a failover rcode)"),
    (_block("  forward . 10.0.0.1 {\n    max_connect_attempts\n  }\n"),
     "Corefile:3:5: forward: expected a non-negative integer (0: no limit)"
     " after 'max_connect_attempts', found end of line"),
    (_block("  forward . 10.0.0.1 {\n    max_connect_attempts -1\n  }\n"),
     "Corefile:3:26: forward: expected a non-negative integer (0: no limit)"
     " after 'max_connect_attempts', found '-1'"),
    (_block("  forward . 10.0.0.1 {\n    max_connect_attempts 2 3\n  }\n"),
     "Corefile:3:28: forward: expected end of line after 'max_connect_attempts 2', found '3'"),
    (_block("  forward . 10.0.0.1 {\n    max_idle_conns many\n  }\n"),
     "Corefile:3:20: forward: expected a non-negative integer (0: no limit)"
     " after 'max_idle_conns', found 'many'"),
    (_block("  forward . 10.0.0.1\n  forward example.org\n"),
     "Corefile:3:11: forward: expected at least one TO: an upstream (IP, IP:PORT, [IPv6]:PORT,"
     " dns://IP[:PORT], tls://IP[:PORT]) or a resolv.conf file after 'forward example.org',"
     " found end of line"),
    (_block("  forward . 10.0.0.1\n  forward example..org 10.0.0.2\n"),
     "Corefile:3:11: forward: expected a FROM zone after 'forward', found 'example..org'"),
]


@pytest.mark.parametrize(("text", "expected"), ERRORS)
def test_error(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_text(text, path="Corefile", env={})
    assert str(info.value) == expected


def test_forward_lines_in_order_with_their_options() -> None:
    config = parse_text(_block(
        "  forward example.org 10.0.0.1 {\n    next nxdomain REFUSED NXDOMAIN\n"
        "    failover SERVFAIL refused\n    max_connect_attempts 3\n    max_idle_conns 2\n  }\n"
        "  forward . 10.0.0.2\n  forward example.net 10.0.0.3\n"), path="Corefile", env={})
    block = config.blocks[0]
    assert block.forward is not None
    assert block.forward.zone == "example.org."
    assert block.forward.next_rcodes == (dns.rcode.NXDOMAIN, dns.rcode.REFUSED)
    assert block.forward.failover_rcodes == (dns.rcode.SERVFAIL, dns.rcode.REFUSED)
    assert block.forward.max_connect_attempts == 3
    assert block.forward.max_idle_conns == 2
    assert [f.zone for f in block.later_forwards] == [".", "example.net."]
    assert [str(f.upstreams[0]) for f in block.later_forwards] == ["10.0.0.2:53", "10.0.0.3:53"]
    assert block.later_forwards[0].next_rcodes == ()
    assert block.later_forwards[0].max_connect_attempts == 0


def test_one_forward_has_no_later_ones() -> None:
    block = parse_text(_block("  forward . 10.0.0.1\n"), path="Corefile", env={}).blocks[0]
    assert block.later_forwards == ()


def test_check_config_names_the_rcodes_that_hand_on() -> None:
    from nodecache.config.describe import describe
    text = describe(parse_text(_block("  forward . 10.0.0.1 {\n    next nxdomain\n"
                                      "    failover SERVFAIL refused\n  }\n"),
                               path="Corefile", env={}))
    assert "next forward on NXDOMAIN" in text
    assert "next upstream on SERVFAIL REFUSED" in text
