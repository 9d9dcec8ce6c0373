"""Answers as an upstream sends them, and what a test reads back from a reply."""
from __future__ import annotations

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset


def rcode_text(message: dns.message.Message) -> str:
    return dns.rcode.to_text(message.rcode())


def ttls(message: dns.message.Message) -> list[int]:
    """Every record TTL in answer, authority and additional (OPT excluded)."""
    return [rrset.ttl for section in (message.answer, message.authority, message.additional)
            for rrset in section if rrset.rdtype != dns.rdatatype.OPT]


def soa_record(zone: str, ttl: int, minimum: int) -> dns.rrset.RRset:
    """The zone's SOA with the given RR TTL and MINIMUM field."""
    return dns.rrset.from_text(zone, ttl, "IN", "SOA",
                               f"ns.{zone} hostmaster.{zone} 1 7200 900 1209600 {minimum}")


def negative(query: dns.message.Message, *, rcode: int = dns.rcode.NXDOMAIN,
             zone: str = "example.", soa_ttl: int | None = 60,
             minimum: int = 60) -> dns.message.Message:
    """An NXDOMAIN (or NODATA with ``rcode=NOERROR``) answer; ``soa_ttl=None``: no SOA."""
    resp = dns.message.make_response(query)
    resp.set_rcode(rcode)
    if soa_ttl is not None:
        resp.authority.append(soa_record(zone, soa_ttl, minimum))
    return resp
