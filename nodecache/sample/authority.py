"""An authoritative server for the sample zones: the answering logic, then thin sockets.

:class:`ZoneAnswerer` turns query bytes into response bytes and knows nothing
about sockets; :class:`SampleAuthority` feeds it from asyncio UDP and TCP
listeners. It answers like an authoritative server should:

- names in a zone: the records with AA set; a CNAME is returned for any type;
- a name with no records of the type, or an empty non-terminal: NODATA
  (NOERROR, empty answer) with the zone's SOA in authority (RFC 2308 section 2.2,
  RFC 8020 for empty non-terminals);
- a name that does not exist: NXDOMAIN with the SOA in authority;
- the SOA in a negative answer carries min(SOA TTL, SOA MINIMUM) as its TTL
  (RFC 2308 section 3), so a cache in front derives the negative TTL from it;
- names outside every zone: REFUSED; other opcodes: NOTIMP; other classes: REFUSED.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataset
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.SOA
import dns.rrset
import dns.zone

from nodecache.core.upstream import frame
from nodecache.core.wire import read_u16

from .zones import build_zones

log = logging.getLogger(__name__)

#: EDNS UDP payload size we advertise (DNS flag day 2020).
EDNS_PAYLOAD = 1232  # bytes
#: UDP answers to a query without EDNS must fit in this (RFC 1035 section 4.2.1).
CLASSIC_UDP_SIZE = 512  # bytes
#: A TCP connection idle this long is closed (CoreDNS's default idle timeout).
TCP_IDLE_TIMEOUT = 10.0  # s
#: Queries answered on one TCP connection before it is closed.
TCP_MAX_QUERIES = 1000


class ZoneAnswerer:
    """Answers queries from a set of zones; bytes in, bytes out, no I/O.

    :param zones: Zones keyed by origin, as :func:`build_zones` returns them.
    """

    def __init__(self, zones: dict[str, dns.zone.Zone]) -> None:
        self.zones = {dns.name.from_text(k): z for k, z in zones.items()}
        # Every name that owns records or lies between a record and its zone
        # apex: those exist (RFC 8020), the rest are NXDOMAIN.
        self._existing: set[dns.name.Name] = set()
        for origin, zone in self.zones.items():
            for name in zone.nodes:
                full = name.derelativize(origin)
                while full != origin and full.is_subdomain(origin):
                    self._existing.add(full)
                    full = full.parent()
                self._existing.add(origin)

    def zone_for(self, qname: dns.name.Name) -> tuple[dns.name.Name, dns.zone.Zone] | None:
        """The closest enclosing zone of ``qname``, if any."""
        best = None
        for origin, zone in self.zones.items():
            if qname.is_subdomain(origin) and (best is None or len(origin) > len(best[0])):
                best = (origin, zone)
        return best

    def answer(self, wire: bytes, *, max_size: int | None = None) -> bytes | None:
        """The response to one query message.

        :param wire: The query as received.
        :param max_size: The transport's limit (``None`` for TCP): UDP answers
            larger than the client's EDNS buffer (or 512) are truncated with TC set.
        :returns: The response, or ``None`` for input that is not worth answering
            (shorter than a header, or itself a response).
        """
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return self._formerr(wire)
        if query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query, our_payload=EDNS_PAYLOAD)
        response.flags &= ~dns.flags.RA  # authoritative only, no recursion
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._resolve(query.question[0], response)
        limit = 65535
        if max_size is not None:
            limit = max(CLASSIC_UDP_SIZE, query.payload if query.edns >= 0 else 0)
            limit = min(limit, max_size)
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # RFC 2181 section 9: TC with what fits; the client retries over TCP.
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            return response.to_wire(max_size=limit)

    def _formerr(self, wire: bytes) -> bytes | None:
        if len(wire) < 12 or wire[2] & 0x80:
            return None
        # Echo the ID and opcode/RD, set QR, rcode FORMERR, no sections.
        flags = 0x8000 | (wire[2] & 0x79) << 8 | dns.rcode.FORMERR
        return wire[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)

    def _resolve(self, question: dns.rrset.RRset, response: dns.message.Message) -> None:
        qname, qtype = question.name, question.rdtype
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return
        found = self.zone_for(qname)
        if found is None:
            response.set_rcode(dns.rcode.REFUSED)
            return
        origin, zone = found
        response.flags |= dns.flags.AA
        node = zone.get_node(qname)
        if node is not None:
            cname = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.CNAME)
            if cname is not None and qtype != dns.rdatatype.CNAME:
                response.answer.append(_rrset(qname, cname))
                return
            if qtype == dns.rdatatype.ANY:
                rdatasets = list(node.rdatasets)
            else:
                rdataset = node.get_rdataset(dns.rdataclass.IN, qtype)
                rdatasets = [rdataset] if rdataset is not None else []
            if rdatasets:
                for rdataset in rdatasets:
                    response.answer.append(_rrset(qname, rdataset))
                self._add_glue(response)
                return
        if node is None and qname not in self._existing:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.authority.append(_negative_soa(origin, zone))

    def _add_glue(self, response: dns.message.Message) -> None:
        """Addresses of in-zone SRV and NS targets go in additional, as CoreDNS does."""
        for rrset in list(response.answer):
            if rrset.rdtype not in (dns.rdatatype.SRV, dns.rdatatype.NS):
                continue
            for rdata in rrset:
                target = rdata.target
                found = self.zone_for(target)
                if found is None:
                    continue
                node = found[1].get_node(target)
                if node is None:
                    continue
                for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                    rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype)
                    if rdataset is not None and response.get_rrset(
                            response.additional, target, dns.rdataclass.IN, rdtype) is None:
                        response.additional.append(_rrset(target, rdataset))


def _rrset(name: dns.name.Name, rdataset: dns.rdataset.Rdataset) -> dns.rrset.RRset:
    rrset = dns.rrset.RRset(name, rdataset.rdclass, rdataset.rdtype)
    rrset.update(rdataset)
    return rrset


def _negative_soa(origin: dns.name.Name, zone: dns.zone.Zone) -> dns.rrset.RRset:
    """The zone's SOA with TTL min(SOA TTL, MINIMUM) (RFC 2308 section 3)."""
    rdataset = zone.find_rdataset(origin, dns.rdatatype.SOA)
    soa: dns.rdtypes.ANY.SOA.SOA = rdataset[0]
    rrset = dns.rrset.RRset(origin, dns.rdataclass.IN, dns.rdatatype.SOA)
    rrset.add(soa, ttl=min(rdataset.ttl, soa.minimum))
    return rrset


class _UDPProtocol(asyncio.DatagramProtocol):
    def __init__(self, answerer: ZoneAnswerer) -> None:
        self.answerer = answerer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        try:
            reply = self.answerer.answer(data, max_size=65535)
        except Exception:  # a bug here must not stop the listener
            log.exception("sample authority failed to answer a UDP query")
            return
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


class SampleAuthority:
    """The sample cluster DNS over UDP and TCP on one address.

    :param zones: Zones to serve; defaults to :func:`build_zones` ().
    """

    def __init__(self, zones: dict[str, dns.zone.Zone] | None = None) -> None:
        self.answerer = ZoneAnswerer(zones if zones is not None else build_zones())
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._conns: set[asyncio.Task[None]] = set()
        #: (host, port) actually bound; the port is filled in when 0 was asked for.
        self.address: tuple[str, int] | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 5354) -> None:
        """Listen on ``host:port`` over UDP and TCP (port 0: pick one, same for both)."""
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bind TCP first; on port 0 reuse its port for UDP (retry if taken).
        for _ in range(10):
            self._tcp = await asyncio.start_server(
                self._serve_tcp, host, port, family=family, reuse_address=True)
            bound = self._tcp.sockets[0].getsockname()[1]
            try:
                self._udp, _ = await loop.create_datagram_endpoint(
                    lambda: _UDPProtocol(self.answerer), local_addr=(host, bound),
                    family=family)
            except OSError:
                self._tcp.close()
                await self._tcp.wait_closed()
                self._tcp = None
                if port:
                    raise
                continue
            self.address = (host, bound)
            return
        raise OSError(f"no free port for UDP and TCP on {host}")

    @property
    def port(self) -> int:
        assert self.address is not None, "start() first"
        return self.address[1]

    async def close(self) -> None:
        """Stop listening and drop open TCP connections."""
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            for task in list(self._conns):
                task.cancel()
            await asyncio.gather(*self._conns, return_exceptions=True)
            await self._tcp.wait_closed()
            self._tcp = None

    async def _serve_tcp(self, reader: asyncio.StreamReader,
                         writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        try:
            for _ in range(TCP_MAX_QUERIES):
                try:
                    head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE_TIMEOUT)
                    length = read_u16(head, 0)
                    data = await asyncio.wait_for(reader.readexactly(length), TCP_IDLE_TIMEOUT)
                except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                    break
                try:
                    reply = self.answerer.answer(data)
                except Exception:
                    log.exception("sample authority failed to answer a TCP query")
                    reply = None
                if reply is None:
                    break
                writer.write(frame(reply))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self._conns.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
