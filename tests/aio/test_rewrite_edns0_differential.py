"""rewrite edns0: the upstream sees the EDNS options node-cache would send it.

The upstream here writes the options of each query it gets into its answer
(one TXT string per option, ``CODE:HEX``, in order), so comparing the two
servers' replies compares what each sent upstream. Every client query goes to
both servers twice (the second answer is a cache hit).
"""
from __future__ import annotations

from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.rrset
import pytest

from tests.kit.diffkit import Pair, normalise
from tests.kit.fakeupstream import FakeUpstream

CLIENT_SUBNET = dns.edns.ECSOption("192.0.2.0", 24)
NSID = dns.edns.GenericOption(dns.edns.OptionType.NSID, b"")
LOCAL = dns.edns.GenericOption(0xFFEE, b"client")
OTHER = dns.edns.GenericOption(0xFFED, b"\x01\x02")

#: (name, the client's options or None for no OPT); each name its own cache entry.
QUESTIONS = [
    ("plain.example.", None),
    ("empty.example.", []),
    ("local.example.", [LOCAL]),
    ("local-other.example.", [OTHER, LOCAL]),
    ("two-locals.example.", [LOCAL, LOCAL]),
    ("subnet.example.", [CLIENT_SUBNET]),
    ("nsid.example.", [NSID]),
    ("all.example.", [NSID, CLIENT_SUBNET, OTHER, LOCAL]),
    ("Mixed-Case.example.", None),
]


def echo(query: dns.message.Message, proto: str) -> dns.message.Message:
    reply = dns.message.make_response(query)
    strings = [f'"{option.otype}:{option.to_wire().hex()}"' for option in query.options]
    reply.answer = [dns.rrset.from_text(query.question[0].name, 60, "IN", "TXT",
                                        " ".join(strings) or '"none"')]
    return reply


def corefile(rules: str, upstream: FakeUpstream) -> str:
    return (".:53 {\n  bind 127.0.0.1\n  cache 30\n  " + rules
            + f"\n  forward . {upstream.address[0]}:{upstream.port}\n}}\n")


@pytest.mark.parametrize("rules", [
    "rewrite edns0 local set 0xffee abcd",
    "rewrite edns0 local set 65518 0x00ff10",
    "rewrite edns0 local append 0xffee abcd",
    "rewrite edns0 local replace 0xffee abcd",
    "rewrite edns0 local unset 0xffee",
    "rewrite edns0 local set 0xffee {qname}",
    "rewrite edns0 local set 0xffee {qtype}",
    "rewrite edns0 local set 0xffee {client_ip}",
    "rewrite edns0 local append 0xffee {protocol}",
    "rewrite edns0 local replace 0xffee {protocol}",  # ({client_port}: each query its own)
    "rewrite edns0 nsid set",
    "rewrite edns0 nsid append",
    "rewrite edns0 nsid replace",
    "rewrite edns0 nsid unset",
    "rewrite edns0 subnet set 24 56",
    "rewrite edns0 subnet append 16 48",
    "rewrite edns0 subnet replace 0 0",
    "rewrite edns0 subnet set 32 128",
    "rewrite edns0 subnet unset",
    "rewrite edns0 local set 0xffee abcd revert",
    # continue runs the next rule too; stop (the default) ends at the first that applies.
    "rewrite continue edns0 local set 0xffee abcd\n  rewrite edns0 nsid set",
    "rewrite edns0 local set 0xffee abcd\n  rewrite edns0 nsid set",
    "rewrite continue name suffix .example. .example.\n  rewrite edns0 local set 0xffee {qname}",
    "rewrite stop {\n    edns0 local set 0xffee abcd\n  }",
])
async def test_rewrite_edns0(rules: str, tmp_path: Path) -> None:
    async with FakeUpstream(handler=echo) as upstream:
        async with Pair(corefile(rules, upstream), tmp_path) as pair:
            for name, options in QUESTIONS:
                query = dns.message.make_query(name, "TXT", use_edns=options is not None,
                                               options=options or None)
                for attempt in range(2):
                    ours, theirs = await pair.ours(query), await pair.reference(query)
                    assert theirs is not None, f"node-cache did not answer {name}"
                    assert normalise(ours) == normalise(theirs), \
                        f"{name} (query {attempt + 1}):\nnodecache:\n{ours}\n\nnode-cache:\n{theirs}"


@pytest.mark.parametrize("rules", [
    "rewrite edns0 subnet set 24 56",
    "rewrite edns0 subnet set 24 128",
    "rewrite edns0 local set 0xffee {client_ip}",
])
async def test_rewrite_edns0_ipv6_clients(rules: str, tmp_path: Path) -> None:
    async with FakeUpstream(handler=echo) as upstream:
        text = corefile(rules, upstream).replace("bind 127.0.0.1", "bind ::1")
        async with Pair(text, tmp_path, host="::1") as pair:
            for name, options in QUESTIONS[:6]:
                query = dns.message.make_query(name, "TXT", use_edns=options is not None,
                                               options=options or None)
                ours, theirs = await pair.ours(query), await pair.reference(query)
                assert theirs is not None and normalise(ours) == normalise(theirs), \
                    f"{name}:\nnodecache:\n{ours}\n\nnode-cache:\n{theirs}"
