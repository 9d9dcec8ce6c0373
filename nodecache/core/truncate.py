"""Fitting a reply into the client's UDP size (RFC 1035 section 4.2.1, RFC 2181 section 9).

A reply too large for the client's UDP size (512 bytes without EDNS, else the
size its OPT advertises) keeps as many *whole* records as fit, in message
order: the answer section first, then authority, then additional, stopping at
the first record that does not fit so that nothing after a gap is sent. TC is
set, so a client that can retry over TCP gets everything there; one that
cannot (musl before 1.2.4, busybox nslookup, drill) still gets the leading
records. This is what node-cache does (miekg/dns ``Msg.Truncate``): for a
40-address headless service, 28 A records in 512 bytes.

The OPT record is not cut: the budget for the other records is the size less
the OPT's length, and it stays the last record. Pointers (RFC 1035 section
4.1.4) in a prefix of the records only point backwards, into what is kept,
as :func:`nodecache.core.wire.check_name` made sure for every upstream answer.
"""
from __future__ import annotations

import struct

from nodecache.core import wire

_HEADER = struct.Struct("!HHHHHH")


def truncate(reply: bytes, limit: int, opt: bytes = b"") -> bytes:
    """``reply`` cut to at most ``limit`` bytes of whole records, with TC set.

    ``reply`` is one of our replies, built from an answer that
    :func:`nodecache.core.wire.index_response` checked, so it is walked
    without checking again: one question, and ``opt`` (our OPT record, or
    ``b""`` without EDNS) as its last bytes. Only the records that fit are
    walked. A reply that already fits is returned as it is.
    """
    if len(reply) <= limit:
        return reply
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(reply)
    offset = wire.skip_name(reply, wire.HEADER_LEN) + 4 if qdcount else wire.HEADER_LEN
    budget = limit - len(opt)
    records = ancount + nscount + arcount - (1 if opt else 0)
    kept = 0
    while kept < records:
        # The owner is most often a pointer (section 4.1.4): two bytes.
        end = offset + 2 if reply[offset] >= 0xC0 else wire.skip_name(reply, offset)
        end += 10 + (reply[end + 8] << 8 | reply[end + 9])  # TYPE..RDLENGTH, RDATA
        if end > budget:
            break
        offset = end
        kept += 1
    answers = min(kept, ancount)
    authority = min(kept - answers, nscount)
    additional = kept - answers - authority + (1 if opt else 0)
    header = _HEADER.pack(qid, flags | wire.TC, qdcount, answers, authority, additional)
    return header + reply[wire.HEADER_LEN:offset] + opt
