"""Queries as clients send them: a dnspython message, its wire form, or struct-built bytes."""
from __future__ import annotations

import struct
from typing import Any

import dns.flags
import dns.message


def make_query(name: str, rdtype: str | int = "A", *, qid: int | None = None,
               edns: int | None = None, payload: int = 1232, dnssec: bool = False,
               cd: bool = False, rd: bool = True) -> dns.message.QueryMessage:
    """A query as a client would send it; ``edns=None`` sends no OPT (unless ``dnssec``)."""
    if dnssec and edns is None:
        edns = 0
    q = dns.message.make_query(name, rdtype, use_edns=edns if edns is not None else False,
                               payload=payload, want_dnssec=dnssec)
    if qid is not None:
        q.id = qid
    if cd:
        q.flags |= dns.flags.CD
    if not rd:
        q.flags &= ~dns.flags.RD
    return q


def query_wire(name: str, rdtype: str | int = "A", *, qid: int = 0x4242, **kw: Any) -> bytes:
    """:func:`make_query` in wire form, with a fixed ID."""
    return make_query(name, rdtype, qid=qid, **kw).to_wire()


def plain_query(qid: int, name: str) -> bytes:
    """An A query (RD set, no EDNS) built with struct alone: cheap in a load loop."""
    labels = b"".join(bytes((len(x),)) + x.encode() for x in name.rstrip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\0\x00\x01\x00\x01"
