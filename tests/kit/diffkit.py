"""Run one Corefile through nodecache and through node-cache, and compare the answers.

Usage::

    async with Zone({"www.example.org. A": ["www.example.org. 300 IN A 192.0.2.1"]}) as up, \\
            Pair(COREFILE.format(upstream=up.spec), tmp_path) as pair:
        await pair.check("www.example.org.", "A")

What it does:

* The reference is node-cache (:mod:`tests.refnodecache`), serving only on
  127.0.0.1 on a port picked free (every ``:53 {`` key of the Corefile gets
  it). nodecache runs in-process (:class:`agentkit.AgentKit`).
* Both forward to the same :class:`Zone` upstream, a loopback fake answering
  whole record sets from a table (so CNAME chains and SOAs are possible).
* :meth:`Pair.check` sends the same query to both, twice (the second answer
  comes from the cache), and asserts that the replies are equal after
  normalising: TTLs are dropped, records sorted within each section. Of the
  OPT record, its version, UDP size and DO bit are compared (both echo the
  client's size). :meth:`Pair.both_raw` and :func:`wire_view` compare all of
  a reply to a query given as bytes, its header's counts and OPT options too.
"""
from __future__ import annotations

import asyncio
import contextlib
import struct
from pathlib import Path
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.kit.agentkit import AgentKit, tcp_exchange, udp_exchange
from tests.kit.fakeupstream import FakeUpstream
from tests.kit.queries import make_query
from tests.kit.refnodecache import free_port, node_cache

LOOPBACK = "127.0.0.1"
QUERY_TIMEOUT = 3.0  # s
START_ATTEMPTS = 3


class Zone(FakeUpstream):
    """A fake upstream answering whole record sets: ``{"NAME TYPE": [RR lines]}``.

    A name in the table with another type gets NODATA with the SOA of
    ``soa`` (when given), an unknown name NXDOMAIN with that SOA.
    """

    def __init__(self, table: dict[str, list[str]], soa: str | None = None) -> None:
        rrsets = {}
        for key, lines in table.items():
            name, rdtype = key.split()
            rrsets[(name.lower(), dns.rdatatype.from_text(rdtype))] = [
                dns.rrset.from_text(*line.split(None, 4)) for line in lines]
        names = {name for name, _ in rrsets}
        authority = [dns.rrset.from_text(*soa.split(None, 4))] if soa else []

        def handler(query: dns.message.Message, proto: str) -> dns.message.Message:
            reply = dns.message.make_response(query)
            # AA, and CD copied from the query (RFC 4035 section 3.2.2), as servers do
            reply.flags |= dns.flags.AA | (query.flags & dns.flags.CD)
            question = query.question[0]
            name = question.name.to_text().lower()
            found = rrsets.get((name, question.rdtype))
            if found is not None:
                reply.answer = list(found)
            else:
                if name not in names and name != ".":
                    reply.set_rcode(dns.rcode.NXDOMAIN)
                reply.authority = list(authority)
            return reply

        super().__init__(handler=handler)

    @property
    def spec(self) -> str:
        return f"{self.address[0]}:{self.port}"


def normalise(message: dns.message.Message | None) -> Any:
    """What is compared: RCODE, flags, question, EDNS (version, size, DO) and each
    section without TTLs."""
    if message is None:
        return None
    flags = dns.flags.to_text(message.flags)
    sections = []
    for section in (message.answer, message.authority, message.additional):
        records = sorted(f"{rrset.name.to_text().lower()} {dns.rdataclass.to_text(rrset.rdclass)}"
                         f" {dns.rdatatype.to_text(rrset.rdtype)} {_canonical(rdata)}"
                         for rrset in section for rdata in rrset)
        sections.append(records)
    question = [q.to_text() for q in message.question]
    edns = (message.edns, message.payload, bool(message.ednsflags & dns.flags.DO)) \
        if message.edns >= 0 else None
    return (dns.rcode.to_text(message.rcode()), flags, question, edns, *sections)


def wire_view(raw: bytes | None) -> Any:
    """All of a reply but its ID, TTLs, compression and record order: the header's
    flags and counts, the full RCODE, the question, the OPT (version, size, DO,
    options) and each section's records."""
    if raw is None:
        return None
    try:
        message = dns.message.from_wire(raw)
    except dns.exception.DNSException:
        return ("undecodable", raw[2:].hex())
    edns = None
    if message.opt is not None:
        edns = (message.edns, message.payload, bool(message.ednsflags & dns.flags.DO),
                [option.to_wire().hex() for option in message.options])
    return (dns.flags.to_text(message.flags), struct.unpack_from("!4H", raw, 4),
            dns.rcode.to_text(message.rcode()), [q.to_text().lower() for q in message.question],
            edns, *normalise(message)[4:])


def _canonical(rdata: dns.rdata.Rdata) -> str:
    """RDATA text with its names in lower case (RFC 4034 section 6.2).

    Names in a reply may be compressed against the question, which carries
    the client's case; both servers answer a name case-insensitively.
    """
    digest = rdata.to_digestable()
    return dns.rdata.from_wire(rdata.rdclass, rdata.rdtype, digest, 0, len(digest)).to_text()


class Pair:
    """nodecache and node-cache serving the same Corefile."""

    def __init__(self, corefile: str, workdir: Path, host: str = LOOPBACK) -> None:
        self.corefile = corefile
        self.workdir = workdir
        #: Both servers listen here (``"::1"``: the clients are IPv6).
        self.host = host
        self.kit = AgentKit(corefile, host=host)
        self.port = free_port(host)
        self._reference: contextlib.AbstractContextManager[object] | None = None

    async def __aenter__(self) -> Pair:
        await self.kit.start()
        try:
            for attempt in range(START_ATTEMPTS):
                try:
                    self._reference = node_cache(
                        self.corefile.replace(":53 {", f":{self.port} {{"), self.workdir,
                        host=self.host, port=self.port)
                    self._reference.__enter__()
                    break
                except RuntimeError as exc:
                    # Another process took a port between free_port() and the bind.
                    if "address already in use" not in str(exc) or attempt == START_ATTEMPTS - 1:
                        raise
                    self.port = free_port(self.host)
        except BaseException:
            await self.kit.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if self._reference is not None:
                self._reference.__exit__(None, None, None)
        finally:
            await self.kit.close()

    async def reference(self, query: dns.message.Message, tcp: bool = False) -> dns.message.Message | None:
        try:
            if tcp:
                return await dns.asyncquery.tcp(query, self.host, port=self.port,
                                                timeout=QUERY_TIMEOUT)
            return await dns.asyncquery.udp(query, self.host, port=self.port,
                                            timeout=QUERY_TIMEOUT)
        except dns.exception.Timeout:
            return None

    async def ours(self, query: dns.message.Message, tcp: bool = False) -> dns.message.Message | None:
        return await self.kit.ask(query, tcp=tcp)

    async def both_raw(self, data: bytes, *, tcp: bool = False,
                       timeout: float = QUERY_TIMEOUT) -> tuple[bytes | None, bytes | None]:
        """Send the bytes ``data`` as a query to both; their replies' bytes (None: none)."""
        async def ask(address: tuple[str, int]) -> bytes | None:
            if not tcp:
                return await udp_exchange(address, data, timeout)
            try:
                return await tcp_exchange(address, data, timeout)
            except asyncio.TimeoutError:
                return None
        return await ask(self.kit.address), await ask((self.host, self.port))

    async def both(self, name: str, rdtype: str = "A", *, tcp: bool = False,
                   edns: int | None = 0, **query: Any) -> tuple[dns.message.Message | None,
                                                                dns.message.Message | None]:
        """Ask both; ``query``: more of :func:`make_query`'s arguments (payload, dnssec)."""
        message = make_query(name, rdtype, edns=edns, **query)
        return await self.ours(message, tcp), await self.reference(message, tcp)

    async def check(self, name: str, rdtype: str = "A", *, tcp: bool = False,
                    edns: int | None = 0, times: int = 2,
                    **query: Any) -> dns.message.Message | None:
        """Assert both answer alike, ``times`` times in a row; nodecache's last answer."""
        ours = None
        for attempt in range(times):
            ours, theirs = await self.both(name, rdtype, tcp=tcp, edns=edns, **query)
            assert theirs is not None, f"node-cache did not answer {name} {rdtype}"
            assert normalise(ours) == normalise(theirs), \
                f"{name} {rdtype} (query {attempt + 1}):\nnodecache:\n{ours}\n\nnode-cache:\n{theirs}"
        return ours
