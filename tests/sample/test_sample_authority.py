"""The sample cluster DNS: answering logic without sockets, then over loopback UDP and TCP."""
from __future__ import annotations

import socket
import struct

import dns.asyncquery
import dns.flags
import dns.message
import dns.rdataset
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest

from nodecache.sample import SampleAuthority, ZoneAnswerer, build_zones
from nodecache.sample.zones import NEGATIVE_TTL, RECORD_TTL

D = "cluster.local."


@pytest.fixture(scope="module")
def answerer() -> ZoneAnswerer:
    return ZoneAnswerer(build_zones())


def ask(answerer: ZoneAnswerer, name: str, rdtype: str = "A") -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    wire = answerer.answer(query.to_wire())
    assert wire is not None
    return dns.message.from_wire(wire)


def addresses(msg: dns.message.Message) -> set[str]:
    return {rd.to_text() for rrset in msg.answer for rd in rrset}


# (qname, qtype, rcode, answer texts, SOA in authority)
CASES = [
    (f"kubernetes.default.svc.{D}", "A", "NOERROR", {"10.96.0.1"}, False),
    (f"kube-dns.kube-system.svc.{D}", "A", "NOERROR", {"10.96.0.10"}, False),
    (f"KUBE-DNS.Kube-System.svc.{D}", "A", "NOERROR", {"10.96.0.10"}, False),
    (f"db.default.svc.{D}", "A", "NOERROR", {"10.244.1.10", "10.244.1.11", "10.244.1.12"}, False),
    (f"db-1.db.default.svc.{D}", "A", "NOERROR", {"10.244.1.11"}, False),
    (f"10-244-2-3.default.pod.{D}", "A", "NOERROR", {"10.244.2.3"}, False),
    (f"_http._tcp.web.default.svc.{D}", "SRV", "NOERROR", {f"0 100 80 web.default.svc.{D}"}, False),
    (f"search.default.svc.{D}", "A", "NOERROR", {"example.com."}, False),
    ("1.0.96.10.in-addr.arpa.", "PTR", "NOERROR", {f"kubernetes.default.svc.{D}"}, False),
    ("11.1.244.10.in-addr.arpa.", "PTR", "NOERROR", {f"db-1.db.default.svc.{D}"}, False),
    (D, "NS", "NOERROR", {f"ns.dns.{D}"}, False),
    # NODATA: the name exists, not the type.
    (f"kubernetes.default.svc.{D}", "AAAA", "NOERROR", set(), True),
    # NODATA: empty non-terminals exist (RFC 8020).
    (f"svc.{D}", "A", "NOERROR", set(), True),
    (f"default.svc.{D}", "A", "NOERROR", set(), True),
    # NXDOMAIN
    (f"nope.default.svc.{D}", "A", "NXDOMAIN", set(), True),
    (f"x.kubernetes.default.svc.{D}", "A", "NXDOMAIN", set(), True),
    ("9.9.9.10.in-addr.arpa.", "PTR", "NXDOMAIN", set(), True),
    # Outside every zone.
    ("example.com.", "A", "REFUSED", set(), False),
    ("cluster.local.example.", "A", "REFUSED", set(), False),
]


@pytest.mark.parametrize(("qname", "qtype", "rcode", "answers", "soa"), CASES)
def test_answers(answerer: ZoneAnswerer, qname: str, qtype: str, rcode: str,
                 answers: set[str], soa: bool) -> None:
    msg = ask(answerer, qname, qtype)
    assert dns.rcode.to_text(msg.rcode()) == rcode
    assert addresses(msg) == answers
    assert bool(msg.flags & dns.flags.AA) == (rcode != "REFUSED")
    assert not msg.flags & dns.flags.RA
    soas = [r for r in msg.authority if r.rdtype == dns.rdatatype.SOA]
    assert bool(soas) == soa
    if soa:
        # RFC 2308 section 3: TTL of the SOA is min(SOA TTL, MINIMUM).
        assert soas[0].ttl == min(RECORD_TTL, NEGATIVE_TTL)
        assert soas[0][0].minimum == NEGATIVE_TTL
    for rrset in msg.answer:
        assert rrset.ttl == RECORD_TTL


def test_srv_headless_has_glue(answerer: ZoneAnswerer) -> None:
    msg = ask(answerer, f"_postgres._tcp.db.default.svc.{D}", "SRV")
    targets = {rd.target.to_text() for rd in msg.answer[0]}
    assert targets == {f"db-{i}.db.default.svc.{D}" for i in range(3)}
    glue = {rrset.name.to_text(): rrset[0].address for rrset in msg.additional
            if rrset.rdtype == dns.rdatatype.A}
    assert glue[f"db-0.db.default.svc.{D}"] == "10.244.1.10"


def test_every_service_ip_has_ptr(answerer: ZoneAnswerer) -> None:
    zones = build_zones(services=20)
    fwd = zones[D]
    generated = ZoneAnswerer(zones)
    count = 0
    for name, node in fwd.nodes.items():
        rdataset = node.get_rdataset(1, dns.rdatatype.A)
        if rdataset is None or not name.to_text().endswith(f".svc.{D}"):
            continue
        for rd in rdataset:
            msg = ask(generated, dns.reversename.from_address(rd.address).to_text(), "PTR")
            assert msg.rcode() == dns.rcode.NOERROR
            count += 1
    assert count >= 20


def test_other_domain() -> None:
    zones = build_zones("k8s.example", services=3)
    assert set(zones) == {"k8s.example.", "in-addr.arpa."}
    msg = ask(ZoneAnswerer(zones), "kubernetes.default.svc.k8s.example.")
    assert addresses(msg) == {"10.96.0.1"}


def test_edns_echoed_and_id_kept(answerer: ZoneAnswerer) -> None:
    query = dns.message.make_query(f"web.default.svc.{D}", "A", use_edns=0, payload=4096)
    msg = dns.message.from_wire(answerer.answer(query.to_wire()) or b"")
    assert msg.id == query.id
    assert msg.edns == 0
    assert msg.flags & dns.flags.QR


def test_truncated_over_udp_without_edns(answerer: ZoneAnswerer) -> None:
    zones = build_zones(services=5)
    # A headless service with many endpoints does not fit in 512 bytes.
    zones[D].replace_rdataset(f"big.default.svc.{D}", dns.rdataset.from_text_list(
        "IN", "A", 30, [f"10.244.9.{i}" for i in range(1, 60)]))
    big = ZoneAnswerer(zones)
    query = dns.message.make_query(f"big.default.svc.{D}", "A", use_edns=False)
    udp = dns.message.from_wire(big.answer(query.to_wire(), max_size=65535) or b"")
    assert udp.flags & dns.flags.TC and not udp.answer
    tcp = dns.message.from_wire(big.answer(query.to_wire()) or b"")
    assert not tcp.flags & dns.flags.TC and len(tcp.answer[0]) == 59


def test_malformed_and_odd_input(answerer: ZoneAnswerer) -> None:
    assert answerer.answer(b"\x12") is None
    # A header claiming one question that is not there: FORMERR with the same ID.
    reply = answerer.answer(b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00")
    assert reply is not None and reply[:2] == b"\xab\xcd"
    assert reply[3] & 0x0F == dns.rcode.FORMERR and reply[2] & 0x80
    # Responses are never answered.
    response = dns.message.make_response(dns.message.make_query(D, "A"))
    assert answerer.answer(response.to_wire()) is None
    # NOTIFY (opcode 4): NOTIMP.
    notify = dns.message.make_query(D, "SOA")
    notify.set_opcode(4)
    assert dns.message.from_wire(answerer.answer(notify.to_wire()) or b"").rcode() == \
        dns.rcode.NOTIMP
    # CHAOS class: REFUSED.
    chaos = dns.message.make_query("version.bind.", "TXT", rdclass="CH")
    assert dns.message.from_wire(answerer.answer(chaos.to_wire()) or b"").rcode() == \
        dns.rcode.REFUSED


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_loopback_udp_and_tcp(host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    authority = SampleAuthority()
    try:
        await authority.start(host, 0)
    except OSError:
        if host == "::1":
            pytest.skip("IPv6 loopback unavailable")
        raise
    try:
        port = authority.port
        q = dns.message.make_query(f"kubernetes.default.svc.{D}", "A")
        r = await dns.asyncquery.udp(q, host, port=port, timeout=2)
        assert addresses(r) == {"10.96.0.1"} and r.flags & dns.flags.AA
        q = dns.message.make_query(f"_http._tcp.web.default.svc.{D}", "SRV")
        r = await dns.asyncquery.tcp(q, host, port=port, timeout=2)
        assert addresses(r) == {f"0 100 80 web.default.svc.{D}"}
        q = dns.message.make_query(f"missing.{D}", "A")
        r = await dns.asyncquery.tcp(q, host, port=port, timeout=2)
        assert r.rcode() == dns.rcode.NXDOMAIN
        assert r.authority[0].rdtype == dns.rdatatype.SOA
    finally:
        await authority.close()


async def test_tcp_several_queries_on_one_connection() -> None:
    import asyncio

    authority = SampleAuthority(build_zones(services=3))
    await authority.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", authority.port)
        names = [f"kubernetes.default.svc.{D}", f"web.default.svc.{D}", f"nope.{D}"]
        for name in names:
            wire = dns.message.make_query(name, "A").to_wire()
            writer.write(struct.pack("!H", len(wire)) + wire)
        await writer.drain()
        rcodes = []
        for _ in names:
            (length,) = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), 2))
            msg = dns.message.from_wire(await asyncio.wait_for(reader.readexactly(length), 2))
            rcodes.append(msg.rcode())
        assert rcodes == [dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.NXDOMAIN]
        writer.close()
        # close() with a connection still open must not hang.
        reader2, writer2 = await asyncio.open_connection("127.0.0.1", authority.port)
        await asyncio.sleep(0.01)
    finally:
        await asyncio.wait_for(authority.close(), 3)
    writer2.close()
