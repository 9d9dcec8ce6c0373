"""Wire helpers: strict query parsing, error replies, response indexing."""
from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rrset
import pytest

from nodecache.core import wire
from nodecache.errors import ClientProtocolError
from tests.kit.queries import make_query


# A query for "a.example. A" with ID 0x1234 and RD, as hex (no EDNS).
PLAIN_HEX = "123401000001000000000000" "0161076578616d706c6500" "00010001"


def test_parse_plain_query_from_hex() -> None:
    q = wire.parse_query(bytes.fromhex(PLAIN_HEX))
    assert (q.qname, q.qtype, q.qclass, q.edns) == (b"\x01a\x07example\x00", 1, 1, None)
    assert q.end == len(bytes.fromhex(PLAIN_HEX))


@pytest.mark.parametrize("kw, edns", [
    ({"edns": 0, "payload": 1232}, (1232, 0, False)),
    ({"edns": 0, "payload": 100}, (100, 0, False)),  # as sent; limits read it as 512
    ({"edns": 0, "dnssec": True}, (1232, 0, True)),
    ({"edns": 1}, (1232, 1, False)),
])
def test_parse_edns(kw: dict[str, object], edns: tuple[int, int, bool]) -> None:
    kw.setdefault("payload", 1232)
    assert wire.parse_query(make_query("a.example.", **kw).to_wire()).edns == edns


MALFORMED = {
    "short header": b"\x12\x34\x01\x00",
    "no question": bytes.fromhex("123401000000000000000000"),
    "two questions": bytes.fromhex("123401000002000000000000") + b"\x01a\x00\x00\x01\x00\x01" * 2,
    "name runs past end": bytes.fromhex("123401000001000000000000") + b"\x05ab",
    "pointer in question": bytes.fromhex("123401000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01",
    "type missing": bytes.fromhex("123401000001000000000000") + b"\x01a\x00\x00",
    "label too long": bytes.fromhex("123401000001000000000000") + b"\x40" + b"a" * 64
    + b"\x00\x00\x01\x00\x01",
    "name over 255": bytes.fromhex("123401000001000000000000") + (b"\x3f" + b"a" * 63) * 5
    + b"\x00\x00\x01\x00\x01",
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_queries_raise_client_error(data: bytes) -> None:
    with pytest.raises(ClientProtocolError):
        wire.parse_query(data)


#: What miekg/dns (so node-cache) reads as the query before it: bytes after the
#: last record, and counts that promise records past the end of the message.
LENIENT = {
    "trailing garbage": bytes.fromhex(PLAIN_HEX) + b"\x00",
    "additional count without record": bytes.fromhex("123401000001000000000001")
    + b"\x01a\x00\x00\x01\x00\x01",
}


@pytest.mark.parametrize("data", LENIENT.values(), ids=LENIENT.keys())
def test_lenient_queries_parse(data: bytes) -> None:
    question = wire.parse_query(data)
    assert (question.qtype, question.qclass, question.edns) == (1, 1, None)


def test_two_opt_records_are_malformed() -> None:
    """RFC 6891 section 6.1.1 (miekg/dns takes the last); the question was read."""
    msg = dns.message.make_query("a.", "A", use_edns=0)
    raw = msg.to_wire()
    opt = raw[-11:]
    doubled = raw[:10] + b"\x00\x02" + raw[12:] + opt
    with pytest.raises(ClientProtocolError) as raised:
        wire.parse_query(doubled)
    assert raised.value.question_end == len(raw) - 11


@pytest.mark.parametrize("rcode", [wire.FORMERR, wire.NOTIMP, wire.REFUSED, wire.SERVFAIL])
def test_error_response_echoes_id_question_and_flags(rcode: int) -> None:
    query = dns.message.make_query("Mixed.Case.example.", "AAAA", use_edns=0)
    query.flags |= dns.flags.CD
    data = query.to_wire()
    q = wire.parse_query(data)
    reply = dns.message.from_wire(wire.error_response(data, rcode, q.end, q.edns))
    assert reply.id == query.id and reply.rcode() == rcode
    assert reply.flags & dns.flags.QR and reply.flags & dns.flags.RD and reply.flags & dns.flags.CD
    assert not reply.flags & dns.flags.RA  # node-cache's own errors (CoreDNS's SetRcode)
    assert str(reply.question[0].name) == "Mixed.Case.example."
    assert reply.edns == 0


def test_badvers_uses_extended_rcode() -> None:
    data = make_query("a.example.", edns=1, payload=1232).to_wire()
    q = wire.parse_query(data)
    reply = dns.message.from_wire(wire.error_response(data, wire.BADVERS, q.end, q.edns))
    assert reply.rcode() == dns.rcode.BADVERS


def test_formerr_without_question_has_none() -> None:
    data = bytes.fromhex("123401000002000000000000")
    reply = dns.message.from_wire(wire.reject_response(data, wire.FORMERR))
    assert reply.rcode() == dns.rcode.FORMERR and not reply.question


def test_build_query_sets_rd_cd_do() -> None:
    raw = wire.build_query(b"\x01a\x00", 28, 1, do=True, cd=True)
    msg = dns.message.from_wire(raw)
    assert msg.flags & dns.flags.RD and msg.flags & dns.flags.CD
    assert msg.ednsflags & dns.flags.DO and msg.payload == wire.OUR_UDP_PAYLOAD
    assert msg.question[0].rdtype == 28


def test_index_response_finds_records_and_opt() -> None:
    query = dns.message.make_query("svc.cluster.local.", "A", use_edns=0)
    resp = dns.message.make_response(query)
    resp.answer.append(dns.rrset.from_text("svc.cluster.local.", 30, "IN", "A", "10.0.0.1",
                                           "10.0.0.2"))
    resp.authority.append(dns.rrset.from_text("cluster.local.", 60, "IN", "NS", "ns.cluster.local."))
    data = resp.to_wire()
    idx = wire.index_response(data)
    assert [r.rtype for r in idx.answers] == [1, 1]
    assert [r.ttl for r in idx.answers + idx.authority] == [30, 30, 60]
    assert idx.opt is not None and idx.rcode == 0
    for record in idx.answers:
        assert int.from_bytes(data[record.ttl_offset:record.ttl_offset + 4], "big") == 30
    # what the cache decides on, noted in the same walk (OPT neither counted nor measured)
    assert (idx.ancount, idx.nscount, idx.arcount, idx.min_ttl, idx.soa) == (2, 1, 0, 30, None)
    assert idx.records_length == sum(r.end - r.start for r in idx.records) \
        == idx.opt.start - idx.question_end


def test_index_response_notes_the_authority_soa() -> None:
    query = dns.message.make_query("gone.cluster.local.", "A")
    resp = dns.message.make_response(query)
    resp.set_rcode(dns.rcode.NXDOMAIN)
    resp.authority.append(dns.rrset.from_text(
        "cluster.local.", 20, "IN", "SOA", "ns.cluster.local. host.cluster.local. 1 7200 1800 86400 5"))
    resp.additional.append(dns.rrset.from_text("ns.cluster.local.", 40, "IN", "A", "10.0.0.53"))
    idx = wire.index_response(resp.to_wire())
    assert idx.soa is not None and idx.soa is idx.authority[0] and idx.soa.rtype == wire.TYPE_SOA
    assert (idx.ancount, idx.nscount, idx.arcount, idx.min_ttl) == (0, 1, 1, 20)
    assert idx.rcode == wire.NXDOMAIN and idx.opt is None


@pytest.mark.parametrize("do,cd,options,payload", [(False, False, b"", 1232), (True, True, b"", 4096),
                                                   (False, False, b"\x00\x0a\x00\x02ab", 1232)])
def test_query_from_a_question_is_build_query(do: bool, cd: bool, options: bytes,
                                              payload: int) -> None:
    qname = wire.zone_to_wire("svc.cluster.local.")
    # an ID other than 0 takes build_query's own path: the same bytes but the ID
    built = wire.build_query(qname, 28, 1, do=do, cd=cd, options=options, payload=payload, qid=7)
    assert wire.query_from(qname + b"\x00\x1c\x00\x01", do=do, cd=cd, options=options,
                           payload=payload) == b"\x00\x00" + built[2:]


@pytest.mark.parametrize("data", [b"", b"\x00" * 11, bytes.fromhex(PLAIN_HEX)[:-1],
                                  bytes.fromhex("123481800001000100000000") + b"\x00\x00\x01\x00\x01"])
def test_index_response_rejects_malformed(data: bytes) -> None:
    with pytest.raises(ValueError):
        wire.index_response(data)


def test_mnemonics_are_dnspythons_for_every_number() -> None:
    import dns.rdataclass
    import dns.rdatatype
    for value in range(65536):
        assert wire.type_name(value) == dns.rdatatype.to_text(value)
        assert wire.class_name(value) == dns.rdataclass.to_text(value)
    for value in range(4096):
        assert wire.rcode_name(value) == dns.rcode.to_text(value)
    assert wire.rcode_name(4096) == "4096"  # an extended RCODE has 12 bits


@pytest.mark.parametrize("text", [
    "A", "aaaa", "NSAP-PTR", "nsap_ptr", "NONE", "TYPE0", "type65535", "TYPE65536", "TYPE",
    "TYPE-1", "TYPE\u0661", "TYPE 1", "IN", "internet", "chaos", "HS", "hesiod", "ANY",
    "CLASS5", "class65535", "CLASS65536", "RESERVED0", "noerror", "BADSIG", "badvers",
    "12", "4095", "4096", "", "0", "x", "\u0131n"])
def test_mnemonic_values_accept_what_dnspython_accepts(text: str) -> None:
    import dns.exception
    import dns.rdataclass
    import dns.rdatatype
    for ours, theirs in ((wire.type_value, dns.rdatatype.from_text),
                         (wire.class_value, dns.rdataclass.from_text),
                         (wire.rcode_value, dns.rcode.from_text)):
        try:
            expected: int | None = int(theirs(text))
        except (dns.exception.DNSException, ValueError):
            expected = None
        try:
            got: int | None = ours(text)
        except ValueError:
            got = None
        assert got == expected, (ours.__name__, text)
