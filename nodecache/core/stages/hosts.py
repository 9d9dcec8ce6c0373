"""hosts: answer A, AAAA and PTR from hosts-file entries.

Syntax::

    hosts [FILE [ZONES...]] {
        [INLINE]                 # lines in hosts-file format: ADDRESS NAME...
        ttl SECONDS              # 1..65535, default 3600
        no_reverse               # no PTR answers from the entries
        reload DURATION          # re-read FILE when its mtime or size changed; 0s never
        fallthrough [ZONES...]
    }

FILE defaults to /etc/hosts; the names it holds outside ZONES (default: the
server block's zones) are ignored. The agent reads FILE (``nodecache.aio``)
and hands the text to :meth:`HostsStage.load`; a file it cannot read keeps
the last entries loaded.

Behaviour (CoreDNS 1.13):

- A/AAAA for a name with addresses of that family: the file's entries, then
  the inline ones, TTL ``ttl``, AA set.
- A name it has but a type it has not (AAAA of an IPv4-only name, MX):
  NOERROR with no records (NODATA), never handed on.
- A name it does not have: handed on if ``fallthrough`` covers it, else
  SERVFAIL (hosts has no SOA to deny with).
- PTR for an address of an entry: the entry's names, whatever ZONES say;
  PTR for an unknown address is always handed on.
- Names outside ZONES (other than PTR questions) are always handed on.

Metrics: ``coredns_hosts_entries`` (the agent exports :attr:`HostsStage.entries`).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from nodecache.core.chain import Answer, Failure, Request, Step, is_under, longest_zone, reply_to
from nodecache.core.wire import SERVFAIL

_IN = dns.rdataclass.IN
_A, _AAAA, _PTR = dns.rdatatype.A, dns.rdatatype.AAAA, dns.rdatatype.PTR


@dataclass(frozen=True)
class HostsSettings:
    """The ``hosts`` plugin of one server block."""

    #: The hosts file; read by the agent, not here.
    path: str = "/etc/hosts"
    #: Only names under these zones are answered (the block's zones by default).
    zones: tuple[str, ...] = (".",)
    #: Inline entries, one hosts-file line each.
    inline: tuple[str, ...] = ()
    #: TTL of the answers, s.
    ttl: int = 3600
    #: How often the file is checked for changes, s; 0 never re-reads it.
    reload: float = 5.0
    #: Answer PTR questions from the entries.
    reverse: bool = True
    #: Zones whose unknown names are handed on; None: none are.
    fallthrough: tuple[str, ...] | None = None


@dataclass
class HostsMap:
    """Entries of one source (the file or the inline lines), in the order read."""

    name4: dict[str, list[str]] = field(default_factory=dict)
    name6: dict[str, list[str]] = field(default_factory=dict)
    #: Canonical address text -> names.
    addr: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(len(v) for m in (self.name4, self.name6, self.addr) for v in m.values())


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A hosts-file address as Go's ``net.ParseIP`` reads it (``%zone`` dropped)."""
    try:
        address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # Go treats ::ffff:a.b.c.d as IPv4
    return address


def parse_hosts(text: str, zones: tuple[str, ...], reverse: bool) -> HostsMap:
    """Hosts-file text -> entries. Lines that do not parse are skipped, as CoreDNS does."""
    hosts = HostsMap()
    for line in text.splitlines():
        fields = line.partition("#")[0].split()
        if len(fields) < 2:
            continue
        address = parse_address(fields[0])
        if address is None:
            continue
        names = hosts.name4 if address.version == 4 else hosts.name6
        key = str(address)
        for raw in fields[1:]:
            name = raw.lower() if raw.endswith(".") else raw.lower() + "."
            if longest_zone(name, zones) is None:
                continue
            names.setdefault(name, []).append(key)
            if reverse:
                hosts.addr.setdefault(key, []).append(name)
    return hosts


def reverse_address(name: str) -> str | None:
    """The address a PTR name stands for (``4.3.2.1.in-addr.arpa.`` -> ``1.2.3.4``)."""
    for suffix, version in ((".in-addr.arpa.", 4), (".ip6.arpa.", 6)):
        if name.endswith(suffix):
            labels = name[:-len(suffix)].split(".")[::-1]
            if version == 4:
                text = ".".join(labels)
            else:
                if len(labels) != 32:
                    return None
                text = ":".join("".join(labels[i:i + 4]) for i in range(0, 32, 4))
            address = parse_address(text)
            return None if address is None or address.version != version else str(address)
    return None


class HostsStage:
    """The hosts plugin; see the module docstring."""

    name = "hosts"

    def __init__(self, settings: HostsSettings) -> None:
        self.settings = settings
        self.inline = parse_hosts("\n".join(settings.inline), settings.zones, settings.reverse)
        self.file = HostsMap()
        #: Address or name text -> its RDATA, made once (the text says the type).
        self._rdata: dict[str, dns.rdata.Rdata] = {}

    def load(self, text: str) -> None:
        """Replace the file's entries with those of ``text`` (the inline ones stay)."""
        self.file = parse_hosts(text, self.settings.zones, self.settings.reverse)
        self._rdata.clear()

    @property
    def entries(self) -> int:
        return len(self.file) + len(self.inline)

    def serve(self, request: Request) -> Step:
        name, qtype = request.name, request.qtype
        settings = self.settings
        if qtype == _PTR:
            address = reverse_address(name)
            names = (self.file.addr.get(address, []) + self.inline.addr.get(address, [])
                     if address else [])
            if not names:
                return None
            return self._answer(request, _PTR, names)
        if longest_zone(name, settings.zones) is None:
            return None
        v4 = self.file.name4.get(name, []) + self.inline.name4.get(name, [])
        v6 = self.file.name6.get(name, []) + self.inline.name6.get(name, [])
        found = v4 if qtype == _A else v6 if qtype == _AAAA else []
        if not v4 and not v6:
            if settings.fallthrough is not None and any(
                    is_under(name, zone) for zone in settings.fallthrough):
                return None
            return Failure(SERVFAIL)
        return self._answer(request, qtype, found)

    def _answer(self, request: Request, qtype: int, values: list[str]) -> Answer:
        message = reply_to(request)
        rdtype = dns.rdatatype.RdataType.make(qtype)
        if values:
            rrset = dns.rrset.RRset(dns.name.from_text(request.name), _IN, rdtype)
            rrset.update_ttl(self.settings.ttl)
            for value in values:
                rdata = self._rdata.get(value)
                if rdata is None:
                    rdata = self._rdata[value] = dns.rdata.from_text(_IN, rdtype, value)
                rrset.add(rdata, self.settings.ttl)
            message.answer.append(rrset)
        return Answer(message)
