"""DNS wire-format helpers that work on bytes, without building message objects.

The hit path cannot afford ``dns.message.from_wire`` (about 300 us a query);
everything here reads offsets and slices instead. Section numbers refer to
RFC 1035 unless another RFC is named.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import NamedTuple

from nodecache.errors import ClientProtocolError

HEADER_LEN = 12  # bytes, section 4.1.1
MAX_UDP_PLAIN = 512  # bytes, section 2.3.4, for clients without EDNS
#: Our advertised EDNS UDP payload size (DNS Flag Day 2020: avoids IP fragmentation).
OUR_UDP_PAYLOAD = 1232  # bytes
MAX_MESSAGE = 65535  # bytes, the TCP length prefix limit (RFC 7766 section 8)

# Header flag bits (section 4.1.1), in the 16-bit flags word.
QR = 0x8000
OPCODE_MASK = 0x7800
AA = 0x0400
TC = 0x0200
RD = 0x0100
RA = 0x0080
AD = 0x0020  # RFC 4035 section 3.2.3
CD = 0x0010  # RFC 4035 section 3.2.2

# RCODEs (section 4.1.1; RFC 6891 section 9 for BADVERS).
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16
OPCODE_QUERY, OPCODE_NOTIFY = 0, 4  # RFC 1035 section 4.1.1, RFC 1996

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_SOA, TYPE_AAAA, TYPE_OPT = 1, 2, 5, 6, 28, 41
TYPE_RRSIG = 46
CLASS_IN = 1
EDNS_DO = 0x8000  # RFC 3225 section 3, in the OPT TTL's low 16 bits

_U16 = struct.Struct("!H")
_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")  # type, class, ttl, rdlength


@dataclass(slots=True)
class Question:
    """What the slow path learns from a client's query."""

    #: The question's name as sent (exact case), in wire form.
    qname: bytes
    qtype: int
    qclass: int
    #: Offset just past the question (QNAME, QTYPE, QCLASS).
    end: int
    flags: int
    #: Client EDNS: None without OPT, else (payload size as sent, version, DO bit);
    #: the size is echoed in our OPT, as CoreDNS's ``SizeAndDo`` does, and read as
    #: at least 512 where it limits a reply (RFC 6891 section 6.2.5).
    edns: tuple[int, int, bool] | None
    #: The client OPT's RDATA: its EDNS options as sent (RFC 6891 section 6.1.2).
    options: bytes = b""

    @property
    def key_name(self) -> bytes:
        return self.qname.lower()


def read_u16(data: bytes, offset: int) -> int:
    return _U16.unpack_from(data, offset)[0]


def skip_name(data: bytes, offset: int) -> int:
    """Return the offset just past the (possibly compressed) name at ``offset``.

    Raises ``ValueError`` on a name that runs past the message or uses an
    undefined label type (section 4.1.4; 0x40/0x80 are extended label types).
    """
    end = len(data)
    while True:
        if offset >= end:
            raise ValueError("name runs past the message")
        length = data[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > end:
                raise ValueError("truncated compression pointer")
            return offset + 2
        if length & 0xC0:
            raise ValueError("unsupported label type")
        offset += 1 + length


def check_name(data: bytes, offset: int) -> int:
    """Like :func:`skip_name`, but also follow compression pointers and validate them.

    Every pointer must point strictly backwards (before the name or the
    previous pointer's target, as dnspython and BIND require), so a chain
    always ends; the expanded name must fit 255 octets (section 2.3.4).
    Raises ``ValueError``. Used on upstream answers (the miss path), so that
    a broken pointer is never relayed to a client.
    """
    end = len(data)
    result = None
    limit = offset  # a pointer must point before this
    total = 0
    while True:
        if offset >= end:
            raise ValueError("name runs past the message")
        length = data[offset]
        if length == 0:
            return offset + 1 if result is None else result
        if length & 0xC0 == 0xC0:
            if offset + 2 > end:
                raise ValueError("truncated compression pointer")
            target = (length & 0x3F) << 8 | data[offset + 1]
            if result is None:
                result = offset + 2
            if target >= limit:
                raise ValueError("compression pointer does not point backwards")
            offset = limit = target
            continue
        if length & 0xC0:
            raise ValueError("unsupported label type")
        total += 1 + length
        if total > 254:
            raise ValueError("name longer than 255 octets")
        offset += 1 + length


#: RDATA layouts that embed names (section 3.3; RFC 2782 for SRV): type -> offset of
#: the first name, and whether a second one follows it (SOA's MNAME, RNAME).
_RDATA_NAMES = {TYPE_NS: (0, False), TYPE_CNAME: (0, False), 12: (0, False),  # PTR
                39: (0, False), 15: (2, False), 33: (6, False),  # DNAME, MX, SRV
                TYPE_SOA: (0, True)}


def _check_rdata(data: bytes, rtype: int, start: int, end: int) -> None:
    layout = _RDATA_NAMES.get(rtype)
    if layout is None:
        return
    offset, two = layout
    if start + offset >= end:
        raise ValueError("RDATA too short for its type")
    after = check_name(data, start + offset)
    if two:
        after = check_name(data, after)
    if after > end:
        raise ValueError("name runs past the RDATA")


def read_qname(data: bytes, offset: int) -> int:
    """Return the end of an uncompressed question name; validate its length (section 2.3.4)."""
    start = offset
    end = len(data)
    while True:
        if offset >= end:
            raise ClientProtocolError("question name runs past the message")
        length = data[offset]
        if length == 0:
            offset += 1
            break
        if length > 63:
            # A compression pointer in the question of a query points at
            # nothing useful; treat it (and extended label types) as malformed.
            raise ClientProtocolError("compressed or invalid label in question")
        offset += 1 + length
    if offset - start > 255:
        raise ClientProtocolError("question name longer than 255 octets")
    return offset


def parse_query(data: bytes) -> Question:
    """Parse a client's query fully and strictly (the slow path).

    Raises ``ClientProtocolError`` for anything malformed; the caller answers
    FORMERR when at least a header was readable. Its ``question_end`` is set
    when the question was read and a record after it was not. As node-cache
    (miekg/dns) does, bytes after the last record are ignored, and so are
    record counts that run past the end of the message.
    """
    if len(data) < HEADER_LEN:
        raise ClientProtocolError("shorter than a DNS header")
    _id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1:
        # RFC 9619: QDCOUNT must be 1 for QUERY.
        raise ClientProtocolError(f"QDCOUNT is {qdcount}, expected 1")
    end = read_qname(data, HEADER_LEN)
    if end + 4 > len(data):
        raise ClientProtocolError("question truncated")
    qtype, qclass = struct.unpack_from("!HH", data, end)
    offset = end + 4
    edns: tuple[int, int, bool] | None = None
    options = b""
    try:
        for index in range(ancount + nscount + arcount):
            if offset == len(data):
                break  # the counts promised more records than came
            name_start = offset
            offset = skip_name(data, offset)
            if offset + 10 > len(data):
                raise ClientProtocolError("resource record truncated", question_end=end + 4)
            rtype, rclass, ttl, rdlength = _RR_FIXED.unpack_from(data, offset)
            offset += 10 + rdlength
            if offset > len(data):
                raise ClientProtocolError("RDATA runs past the message", question_end=end + 4)
            if rtype == TYPE_OPT:
                # RFC 6891 section 6.1.1: one OPT, in the additional section, owner root.
                if edns is not None or index < ancount + nscount or data[name_start] != 0:
                    raise ClientProtocolError("misplaced or repeated OPT record",
                                              question_end=end + 4)
                edns = (rclass, (ttl >> 16) & 0xFF, bool(ttl & EDNS_DO))
                options = data[offset - rdlength:offset]
    except ValueError as exc:
        raise ClientProtocolError(str(exc), question_end=end + 4) from None
    return Question(data[HEADER_LEN:end], qtype, qclass, end + 4, flags, edns, options)


def header_rcode(data: bytes) -> int:
    """What the header alone makes of a query (at least 12 bytes, QR clear):
    NOTIMP for an opcode other than QUERY or NOTIFY, FORMERR for counts no
    query has, else NOERROR (read on). These are miekg/dns's checks, which
    node-cache makes before it reads the question: QDCOUNT 1 (RFC 9619), at
    most one answer (a NOTIFY's SOA, RFC 1996 section 3.7), one authority
    record (an IXFR's SOA, RFC 1995 section 3) and two additional ones.
    """
    opcode = (data[2] >> 3) & 0xF
    if opcode != OPCODE_QUERY and opcode != OPCODE_NOTIFY:
        return NOTIMP
    _id, _flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1 or ancount > 1 or nscount > 1 or arcount > 2:
        return FORMERR
    return NOERROR


def reject_response(data: bytes, rcode: int, question_end: int | None = None) -> bytes:
    """node-cache's reply to a query it cannot take (``rcode`` FORMERR or NOTIMP).

    The query's own header comes back with QR set, AA and Z clear, its TC, RD,
    RA, AD and CD bits as they were, opcode QUERY for FORMERR (the query's
    for NOTIMP); the question only when it was read (``question_end``), and
    no records and no OPT, whatever the query had.
    """
    qid, flags = struct.unpack_from("!HH", data)
    kept = TC | RD | RA | AD | CD | (OPCODE_MASK if rcode == NOTIMP else 0)
    question = data[HEADER_LEN:question_end] if question_end else b""
    return _HEADER.pack(qid, QR | (flags & kept) | rcode, 1 if question else 0, 0, 0, 0) \
        + question


def opt_record(do: bool, payload: int = OUR_UDP_PAYLOAD, ext_rcode: int = 0,
               options: bytes = b"") -> bytes:
    """Our OPT pseudo-RR (RFC 6891 section 6.1.2): root owner, ``options`` as RDATA."""
    ttl = (ext_rcode << 24) | (EDNS_DO if do else 0)
    return b"\x00" + _RR_FIXED.pack(TYPE_OPT, payload, ttl, len(options)) + options


def error_response(data: bytes, rcode: int, question_end: int | None,
                   edns: tuple[int, int, bool] | None) -> bytes:
    """A reply with ``rcode`` and no records, echoing ID, opcode, RD, CD and the question.

    RA stays clear, as in the errors node-cache makes itself (CoreDNS's
    ``SetRcode``): the error is ours, not the recursion's.

    ``question_end`` is None when the question could not be read; the reply
    then carries no question (QDCOUNT 0), as FORMERR replies may.
    ``edns`` is the client's (:attr:`Question.edns`): the OPT echoes its size and DO bit.
    ``rcode`` may be an extended RCODE (e.g. BADVERS), split per RFC 6891 section 6.1.3.
    """
    qid, flags = struct.unpack_from("!HH", data)
    flags = QR | (flags & (OPCODE_MASK | RD | CD)) | (rcode & 0xF)
    question = data[HEADER_LEN:question_end] if question_end else b""
    additional = b""
    if edns is not None:
        additional = opt_record(edns[2], edns[0], ext_rcode=rcode >> 4)
    header = _HEADER.pack(qid, flags, 1 if question else 0, 0, 0, 1 if additional else 0)
    return header + question + additional


def build_query(qname: bytes, qtype: int, qclass: int, *, do: bool, cd: bool,
                options: bytes = b"", payload: int = OUR_UDP_PAYLOAD, qid: int = 0,
                edns: bool = True, rd: bool = True) -> bytes:
    """A query with RD set (unless ``rd=False``) and our OPT; ID 0 unless given
    (the forwarder sets its own).

    ``options`` are the client's EDNS options, passed on as CoreDNS's forward
    does (client subnet, cookies, padding...); the payload size is ours
    (``bufsize``'s when the block has it). ``edns=False``: no OPT at all.
    """
    if qid == 0 and edns and rd:
        return query_from(qname + struct.pack("!HH", qtype, qclass), do=do, cd=cd,
                          options=options, payload=payload)
    flags = (RD if rd else 0) | (CD if cd else 0)
    header = _HEADER.pack(qid, flags, 1, 0, 0, 1 if edns else 0)
    question = header + qname + struct.pack("!HH", qtype, qclass)
    return question + opt_record(do, payload, options=options) if edns else question


#: Our query header (ID 0, RD, one question, our OPT), by CD bit.
_QUERY_HEADS = (_HEADER.pack(0, RD, 1, 0, 0, 1), _HEADER.pack(0, RD | CD, 1, 0, 0, 1))
#: Our OPT without options, by (DO, payload): a handful of values.
_OPTS: dict[tuple[bool, int], bytes] = {}


def query_from(question: bytes, *, do: bool, cd: bool, options: bytes = b"",
               payload: int = OUR_UDP_PAYLOAD) -> bytes:
    """:func:`build_query` (ID 0, with OPT) around a question already in wire form."""
    if options:
        opt = opt_record(do, payload, options=options)
    else:
        opt = _OPTS.get((do, payload)) or _OPTS.setdefault((do, payload), opt_record(do, payload))
    return _QUERY_HEADS[cd] + question + opt


class Record(NamedTuple):
    """Where one resource record sits in a message."""

    start: int
    rtype: int
    ttl: int
    #: Offset of the 4-byte TTL field.
    ttl_offset: int
    end: int


class Response(NamedTuple):
    """An upstream answer, indexed (not decoded), with what caching it needs."""

    flags: int
    rcode: int
    #: Offset just past the question.
    question_end: int
    #: Every record but OPT, in message order: ``ancount`` answers, ``nscount``
    #: authority records, then the additional ones.
    records: list[Record]
    ancount: int
    nscount: int
    #: The OPT record in the additional section, if any.
    opt: Record | None
    #: The smallest TTL over ``records``, s; None without records.
    min_ttl: int | None
    #: The first SOA record of the authority section (RFC 2308 section 5).
    soa: Record | None
    #: Bytes of ``records``, as they are in the message.
    records_length: int

    @property
    def arcount(self) -> int:
        """Additional records, OPT not counted."""
        return len(self.records) - self.ancount - self.nscount

    @property
    def answers(self) -> list[Record]:
        return self.records[:self.ancount]

    @property
    def authority(self) -> list[Record]:
        return self.records[self.ancount:self.ancount + self.nscount]

    @property
    def additional(self) -> list[Record]:
        return self.records[self.ancount + self.nscount:]


#: Record and Response built as the tuples they are: a NamedTuple's own
#: constructor is a Python call, this is not (about 0.15 us less a record).
_new_tuple = tuple.__new__


def index_response(data: bytes, question_end: int = 0) -> Response:
    """Index an upstream response. Raises ``ValueError`` when it is malformed.

    ``question_end`` is where the question ends when the caller has already
    matched it against its own query (``core.upstream.InFlight.match``): it is
    then not walked again. Owner names that point at the question (0xC00C,
    nearly every record of an answer) are known good without following them.
    The one walk also notes what the cache decides on (the smallest TTL, the
    authority's SOA), so nothing walks the records again.
    """
    size = len(data)
    if size < HEADER_LEN:
        raise ValueError("shorter than a DNS header")
    _id, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if qdcount != 1:
        raise ValueError(f"QDCOUNT is {qdcount}")
    if question_end:
        offset = question_end
    else:
        offset = check_name(data, HEADER_LEN) + 4
    if offset > size:
        raise ValueError("question truncated")
    question_end = offset
    records: list[Record] = []
    opt = soa = None
    ext_rcode = 0
    min_ttl: int | None = None
    unpack = _RR_FIXED.unpack_from
    authority_end = ancount + nscount
    misplaced_an = misplaced_ns = 0  # OPT records counted as answers or authority (ignored)
    for index in range(authority_end + arcount):
        start = offset
        if data[offset:offset + 2] == b"\xc0\x0c":
            offset += 2  # a pointer to the question's name (offset 12), checked already
        else:
            offset = check_name(data, offset)
        if offset + 10 > size:
            raise ValueError("resource record truncated")
        rtype, _rclass, ttl, rdlength = unpack(data, offset)
        end = offset + 10 + rdlength
        if end > size:
            raise ValueError("RDATA runs past the message")
        if rtype in _RDATA_NAMES:
            _check_rdata(data, rtype, offset + 10, end)
        record = _new_tuple(Record, (start, rtype, ttl, offset + 4, end))
        offset = end
        if rtype == TYPE_OPT:
            opt = record
            ext_rcode = ttl >> 24
            if index < ancount:
                misplaced_an += 1
            elif index < authority_end:
                misplaced_ns += 1
            continue
        records.append(record)
        if min_ttl is None or ttl < min_ttl:
            min_ttl = ttl
        if rtype == TYPE_SOA and soa is None and ancount <= index < authority_end:
            soa = record
    if offset != size:
        raise ValueError("trailing bytes")
    rcode = (ext_rcode << 4) | (flags & 0xF)
    length = size - question_end - (opt.end - opt.start if opt is not None else 0)
    return _new_tuple(Response, (flags, rcode, question_end, records, ancount - misplaced_an,
                                 nscount - misplaced_ns, opt, min_ttl, soa, length))


def zone_to_wire(zone: str) -> bytes:
    """Lower-case wire form of a text zone name (``"cluster.local."``, ``"."``)."""
    if zone == ".":
        return b"\x00"
    labels = zone.rstrip(".").lower().split(".")
    return b"".join(bytes((len(label),)) + label.encode("ascii") for label in labels) + b"\x00"


def is_subdomain(name: bytes, zone: bytes) -> bool:
    """True if wire name ``name`` equals or is below wire zone ``zone`` (both lower-case)."""
    if zone == b"\x00" or name == zone:
        return True
    if not name.endswith(zone):
        return False
    # The suffix must start on a label boundary (b"\x01xcluster..." is not under "cluster").
    offset = 0
    cut = len(name) - len(zone)
    while offset < cut:
        offset += 1 + name[offset]
    return offset == cut


#: A label printed as it is: printable ASCII but '.' and '\\' (RFC 4343 section 2.1).
_PLAIN_LABEL = re.compile(rb"[!-\-/-\[\]-~]*")


def name_text(qname: bytes) -> str:
    """Text form of a wire name (for logs and zone checks); non-printable bytes escaped."""
    labels = []
    offset = 0
    plain = []
    while qname[offset]:
        length = qname[offset]
        plain.append(qname[offset + 1:offset + 1 + length])
        offset += 1 + length
    if all(_PLAIN_LABEL.fullmatch(label) for label in plain):
        return b".".join(plain).decode("ascii") + "."
    offset = 0
    while qname[offset]:
        length = qname[offset]
        raw = qname[offset + 1:offset + 1 + length]
        labels.append("".join(chr(b) if 0x21 <= b <= 0x7E and b not in b".\\" else f"\\{b:03d}"
                              for b in raw))
        offset += 1 + length
    return ".".join(labels) + "."


# Mnemonics of the IANA DNS parameter registries (RFC 6895 section 3), spelled as
# dnspython and miekg/dns print them; a number without one prints as TYPE<n>,
# CLASS<n> or plain <n> for an RCODE (RFC 3597 section 5 for types and classes).
_TYPE_NAMES: dict[int, str] = {
    1: "A", 2: "NS", 3: "MD", 4: "MF", 5: "CNAME", 6: "SOA", 7: "MB", 8: "MG", 9: "MR",
    10: "NULL", 11: "WKS", 12: "PTR", 13: "HINFO", 14: "MINFO", 15: "MX", 16: "TXT", 17: "RP",
    18: "AFSDB", 19: "X25", 20: "ISDN", 21: "RT", 22: "NSAP", 23: "NSAP-PTR", 24: "SIG",
    25: "KEY", 26: "PX", 27: "GPOS", 28: "AAAA", 29: "LOC", 30: "NXT", 33: "SRV", 35: "NAPTR",
    36: "KX", 37: "CERT", 38: "A6", 39: "DNAME", 41: "OPT", 42: "APL", 43: "DS", 44: "SSHFP",
    45: "IPSECKEY", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 49: "DHCID", 50: "NSEC3",
    51: "NSEC3PARAM", 52: "TLSA", 53: "SMIMEA", 55: "HIP", 56: "NINFO", 59: "CDS", 60: "CDNSKEY",
    61: "OPENPGPKEY", 62: "CSYNC", 63: "ZONEMD", 64: "SVCB", 65: "HTTPS", 66: "DSYNC", 67: "HHIT",
    68: "BRID", 99: "SPF", 103: "UNSPEC", 104: "NID", 105: "L32", 106: "L64", 107: "LP",
    108: "EUI48", 109: "EUI64", 128: "NXNAME", 249: "TKEY", 250: "TSIG", 251: "IXFR", 252: "AXFR",
    253: "MAILB", 254: "MAILA", 255: "ANY", 256: "URI", 257: "CAA", 258: "AVC", 260: "AMTRELAY",
    261: "RESINFO", 262: "WALLET", 32768: "TA", 32769: "DLV",
}
_CLASS_NAMES = {0: "RESERVED0", 1: "IN", 3: "CH", 4: "HS", 254: "NONE", 255: "ANY"}
_RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP",
                5: "REFUSED", 6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH",
                10: "NOTZONE", 11: "DSOTYPENI", 16: "BADVERS", 17: "BADKEY", 18: "BADTIME",
                19: "BADMODE", 20: "BADNAME", 21: "BADALG", 22: "BADTRUNC", 23: "BADCOOKIE"}
# Text -> number, with the other spellings the parsers have always accepted.
_TYPE_VALUES = {name: value for value, name in _TYPE_NAMES.items()} | {"NSAP_PTR": 23, "NONE": 0}
_CLASS_VALUES = {name: value for value, name in _CLASS_NAMES.items()} | {
    "INTERNET": 1, "CHAOS": 3, "HESIOD": 4}
_RCODE_VALUES = {name: value for value, name in _RCODE_NAMES.items()} | {"BADSIG": 16}


def type_name(rdtype: int) -> str:
    """Mnemonic of an RR type (``A``, ``TYPE65280``); for logs and metric labels."""
    return _TYPE_NAMES.get(rdtype) or f"TYPE{rdtype}"


def class_name(rdclass: int) -> str:
    """Mnemonic of a class (``IN``, ``CH``, ``CLASS42``)."""
    return _CLASS_NAMES.get(rdclass) or f"CLASS{rdclass}"


def rcode_name(rcode: int) -> str:
    """Mnemonic of an RCODE (``NOERROR``, ``BADVERS``), the number for an unnamed one."""
    return _RCODE_NAMES.get(rcode) or str(rcode)


def _mnemonic_value(text: str, values: dict[str, int], prefix: str, maximum: int) -> int:
    upper = text.upper()
    value = values.get(upper)
    if value is not None:
        return value
    digits = upper[len(prefix):]
    if upper.startswith(prefix) and digits.isascii() and digits.isdigit() \
            and int(digits) <= maximum:
        return int(digits)
    raise ValueError(text)


def type_value(text: str) -> int:
    """An RR type from its mnemonic, any case, or ``TYPE<n>``; ValueError if neither."""
    return _mnemonic_value(text, _TYPE_VALUES, "TYPE", 0xFFFF)


def class_value(text: str) -> int:
    """A class from its mnemonic, any case, or ``CLASS<n>``; ValueError if neither."""
    return _mnemonic_value(text, _CLASS_VALUES, "CLASS", 0xFFFF)


def rcode_value(text: str) -> int:
    """An RCODE from its mnemonic, any case, or its number (up to 4095, RFC 6891 section 6.1.3)."""
    return _mnemonic_value(text, _RCODE_VALUES, "", 0xFFF)
