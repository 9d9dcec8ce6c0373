"""whoami: tell the client its own address, port and transport.

Syntax::

    whoami

Behaviour (CoreDNS 1.13): every question that reaches it (whoami comes after
forward, so only names forward does not take) gets NOERROR, AA, no answer,
and in the additional section an A (IPv4 client) or AAAA (IPv6) record with
the client's address and an SRV record ``_udp.NAME`` or ``_tcp.NAME`` with
its port and target ``.``, both TTL 0, owned by the question's name as sent.

Metrics: none.
"""
from __future__ import annotations

import ipaddress

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from nodecache.core.chain import Answer, Request, Step, reply_to


class WhoamiStage:
    name = "whoami"

    def serve(self, request: Request) -> Step:
        message = reply_to(request)
        owner = request.qname or request.name
        rdclass = dns.rdataclass.RdataClass.make(request.qclass)
        if request.remote:
            address = ipaddress.ip_address(request.remote)
            rdtype = dns.rdatatype.A if address.version == 4 else dns.rdatatype.AAAA
            rrset = dns.rrset.RRset(dns.name.from_text(owner), rdclass, rdtype)
            rrset.add(dns.rdata.from_text(rdclass, rdtype, str(address)), 0)
            message.additional.append(rrset)
        srv_name = f"_{request.proto}." + ("" if owner == "." else owner)
        srv = dns.rrset.RRset(dns.name.from_text(srv_name), rdclass, dns.rdatatype.SRV)
        srv.add(dns.rdata.from_text(rdclass, dns.rdatatype.SRV, f"0 0 {request.port} ."), 0)
        message.additional.append(srv)
        return Answer(message)
