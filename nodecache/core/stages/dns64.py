"""dns64: synthesize AAAA answers from A records (RFC 6147).

Syntax::

    dns64 [PREFIX]
    dns64 {
        prefix PREFIX          # an IPv6 /32, /40, /48, /56, /64 or /96; default 64:ff9b::/96
        translate_all          # synthesize even when AAAA records exist
        allow_ipv4             # also for IPv4 clients
    }

Behaviour (CoreDNS 1.13): dns64 runs before the cache. An AAAA question of
class IN from an IPv6 client (any client with ``allow_ipv4``) is answered as
usual first; unless that answer is NXDOMAIN or (without ``translate_all``)
holds AAAA records, the name's A records are looked up through the whole
server (cache included) and every A record becomes an AAAA record with the
IPv4 address embedded in PREFIX (RFC 6052 section 2.2), TTL the smaller of
the A record's and the AAAA answer's SOA TTL (600 without SOA; RFC 6147
section 5.1.7). Other records of the A answer (CNAMEs) are kept, its
authority and additional sections are used, and the RCODE is NOERROR.

Metrics: :attr:`DNS64.translated` counts what ``coredns_dns64_requests_translated_total``
counts.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from nodecache.core import wire

DEFAULT_PREFIX = "64:ff9b::/96"
DEFAULT_SOA_TTL = 600  # s, CoreDNS's TTL bound when the AAAA answer has no SOA


@dataclass(frozen=True)
class DNS64Settings:
    prefix: str = DEFAULT_PREFIX
    translate_all: bool = False
    allow_ipv4: bool = False


def embed(prefix: ipaddress.IPv6Network, address: ipaddress.IPv4Address) -> ipaddress.IPv6Address:
    """RFC 6052 section 2.2: the IPv4 bytes after the prefix, skipping bits 64..71 (the u octet)."""
    out = bytearray(16)
    length = prefix.prefixlen // 8
    out[:length] = prefix.network_address.packed[:length]
    position = length
    for byte in address.packed:
        if position == 8:
            position += 1
        out[position] = byte
        position += 1
    return ipaddress.IPv6Address(bytes(out))


class DNS64:
    """The dns64 plugin of one server block (pure: it judges and synthesizes messages)."""

    name = "dns64"

    def __init__(self, settings: DNS64Settings) -> None:
        self.settings = settings
        self.prefix = ipaddress.IPv6Network(settings.prefix)
        self.translated = 0

    def intercepts(self, qtype: int, qclass: int, family: int) -> bool:
        """Whether a question is dns64's (AAAA, IN, IPv6 client unless allow_ipv4)."""
        return qtype == wire.TYPE_AAAA and qclass == wire.CLASS_IN \
            and (family == 2 or self.settings.allow_ipv4)

    def wants(self, answer: wire.Response) -> bool:
        """Whether this AAAA answer is to be replaced by a synthesized one."""
        if answer.rcode == wire.NXDOMAIN:
            return False
        if self.settings.translate_all:
            return True
        return not any(r.rtype == wire.TYPE_AAAA for r in answer.answers)

    def synthesize(self, aaaa_answer: bytes, a_answer: bytes) -> bytes:
        """The reply to the client: its AAAA reply's ID and question, records from the A reply."""
        original = dns.message.from_wire(aaaa_answer)
        found = dns.message.from_wire(a_answer)
        soa_ttl = DEFAULT_SOA_TTL
        for rrset in original.authority:
            if rrset.rdtype == dns.rdatatype.SOA:
                soa_ttl = rrset.ttl
        out = dns.message.Message(id=original.id)
        out.flags = (original.flags & (dns.flags.RD | dns.flags.CD)) | dns.flags.QR \
            | (found.flags & dns.flags.TC)
        out.question = original.question
        for rrset in found.answer:
            if rrset.rdtype != dns.rdatatype.A:
                out.answer.append(rrset)
                continue
            synthesized = dns.rrset.RRset(rrset.name, rrset.rdclass, dns.rdatatype.AAAA)
            for rdata in rrset:
                address = embed(self.prefix, ipaddress.IPv4Address(rdata.address))
                synthesized.add(dns.rdata.from_text(rrset.rdclass, dns.rdatatype.AAAA,
                                                    str(address)), min(rrset.ttl, soa_ttl))
            out.answer.append(synthesized)
        out.authority = found.authority
        out.additional = found.additional
        if found.opt is not None:
            out.use_edns(found.edns, found.ednsflags, found.payload)
        self.translated += 1
        return out.to_wire()
