"""Truncation to the client's UDP size: whole records, in order, TC set, OPT kept (sans I/O).

The counts in NODE_CACHE were read from node-cache's replies to the same
questions over UDP (a knot upstream serving these records).
"""
from __future__ import annotations

from collections.abc import Sequence

import dns.flags
import dns.message
import dns.rrset
import pytest

from nodecache.core.truncate import truncate

SVC = "default.svc.cluster.local."


Records = Sequence[tuple[str, str, str]]


def reply(name: str, answers: Records, *, payload: int | None = None, authority: Records = (),
          additional: Records = (), do: bool = False) -> dns.message.Message:
    """An answer to ``name`` with (owner, type, rdata) records, as the cache would send it."""
    query = dns.message.make_query(name, answers[0][1] if answers else "A")
    msg = dns.message.make_response(query)
    msg.flags |= dns.flags.AA
    if payload:
        msg.use_edns(0, dns.flags.DO if do else 0, payload)
    for section, records in ((msg.answer, answers), (msg.authority, authority),
                             (msg.additional, additional)):
        for owner, rdtype, rdata in records:
            section.append(dns.rrset.from_text(owner, 30, "IN", rdtype, rdata))
    return msg


def addresses(n: int, rdtype: str) -> list[str]:
    if rdtype == "A":
        return [f"10.{n}.{i // 256}.{i % 256}" for i in range(n)]
    return [f"fd00::{n}:{i}" for i in range(n)]


def service(n: int, rdtype: str = "A", cname: bool = False) -> list[tuple[str, str, str]]:
    target = f"big{n}.{SVC}"
    head = [(f"mix.{SVC}", "CNAME", target)] if cname else []
    return head + [(target, rdtype, a) for a in addresses(n, rdtype)]


def wire(msg: dns.message.Message) -> bytes:
    return msg.to_wire(max_size=65535)


def cut(data: bytes, limit: int) -> bytes:
    """``truncate`` with the OPT record (11 bytes, no options) the reply ends with, if any."""
    has_opt = dns.message.from_wire(data).edns >= 0
    return truncate(data, limit, data[-11:] if has_opt else b"")


def parse(data: bytes) -> dns.message.Message:
    return dns.message.from_wire(data, one_rr_per_rrset=True)


# (question, records, client EDNS payload or None, answer records node-cache sent)
NODE_CACHE = [
    (f"big40.{SVC}", service(40), None, 28),
    (f"big40.{SVC}", service(40), 512, 28),
    (f"big40.{SVC}", service(40, "AAAA"), None, 16),
    (f"big100.{SVC}", service(100), None, 28),
    (f"big100.{SVC}", service(100), 1232, 73),
    (f"big100.{SVC}", service(100, "AAAA"), 1232, 41),
    (f"mix.{SVC}", service(40, cname=True), None, 28),  # the CNAME and 27 A
    (f"mix.{SVC}", service(40, "AAAA", cname=True), 512, 16),
]


@pytest.mark.parametrize("name, records, payload, count", NODE_CACHE)
def test_counts_match_node_cache(name: str, records: list[tuple[str, str, str]],
                                 payload: int | None, count: int) -> None:
    full = reply(name, records, payload=payload)
    limit = max(payload or 512, 512)
    data = cut(wire(full), limit)
    assert len(data) <= limit
    short = parse(data)
    assert short.flags & dns.flags.TC and short.flags & dns.flags.AA and short.id == full.id
    assert [rr[0].to_text() for rr in short.answer] == [r[2] for r in records[:count]]
    assert (short.edns, short.payload if payload else None) == \
        ((0, payload) if payload else (-1, None))


def test_a_reply_that_fits_is_returned_unchanged() -> None:
    data = wire(reply(f"big40.{SVC}", service(40), payload=1232))
    assert cut(data, 1232) is data


def test_a_record_ending_exactly_at_the_limit_is_kept() -> None:
    data = wire(reply(f"big40.{SVC}", service(40)))
    first = parse(cut(data, 512))
    exact = len(cut(data, 512))
    assert len(parse(cut(data, exact)).answer) == len(first.answer)
    assert len(parse(cut(data, exact - 1)).answer) == len(first.answer) - 1


SECTIONS = [
    ("answer whole, authority cut", 240, (3, 2, 0)),
    ("answer cut: nothing after it", 100, (1, 0, 0)),
    ("all but the last glue", 330, (3, 4, 3)),
]


@pytest.mark.parametrize("case, limit, counts", SECTIONS, ids=[c[0] for c in SECTIONS])
def test_sections_are_kept_in_order_up_to_the_first_record_that_does_not_fit(
        case: str, limit: int, counts: tuple[int, int, int]) -> None:
    ns = [f"ns{i}.example." for i in range(4)]
    full = reply("www.example.", [("www.example.", "TXT", f'"{"x" * 40}{i}"') for i in range(3)],
                 authority=[("example.", "NS", n) for n in ns],
                 additional=[(n, "A", f"192.0.2.{i}") for i, n in enumerate(ns)],
                 payload=1232, do=True)
    data = wire(full)
    short = parse(cut(data, limit))
    assert (len(short.answer), len(short.authority), len(short.additional)) == counts
    assert short.flags & dns.flags.TC and short.ednsflags & dns.flags.DO  # the OPT survives whole
    # The kept records are the leading ones, byte for byte.
    head = cut(data, limit)
    assert data[12:len(head) - 11] == head[12:len(head) - 11]


def test_a_first_record_too_big_leaves_the_question_alone() -> None:
    full = reply("txt.example.", [("txt.example.", "TXT", " ".join(['"' + "y" * 250 + '"'] * 3))])
    short = parse(cut(wire(full), 512))
    assert short.flags & dns.flags.TC and not short.answer and short.question == full.question
