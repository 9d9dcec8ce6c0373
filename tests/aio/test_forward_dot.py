"""``tls://`` upstreams (DNS over TLS, RFC 7858) against unbound serving DoT on loopback.

A throwaway CA signs unbound's certificate (tests/kit/dotkit.py). Checked: answers
over pooled, pipelined TLS connections with sessions resumed, the name check
(``tls_servername``, or the IP address), client certificates, config errors,
and the same answers as node-cache forwarding to the same server.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import dns.message
import pytest

from nodecache.config import parse_text
from nodecache.config.settings import Upstream
from nodecache.errors import ConfigError, UpstreamError
from tests.kit.corefiles import corefile
from tests.kit.diffkit import Pair
from tests.kit.dotkit import RECORDS, SERVER_NAME, DoT, dot_server
from tests.kit.queries import query_wire
from tests.kit.forwarderkit import forwarder, quick


@pytest.fixture
def dot(tmp_path: Path) -> object:
    with dot_server(tmp_path) as server:
        yield server


def address_of(answer: bytes) -> str:
    return dns.message.from_wire(answer).answer[0][0].to_text()


async def test_pooled_pipelined_with_sessions_resumed(dot: DoT) -> None:
    conf = quick(try_timeout=2.0, budget=3.0)(Upstream(dot.host, dot.port, tls=True),
                                              tls_files=(str(dot.ca),), tls_servername=SERVER_NAME)
    fwd, stats = await forwarder(conf, max_connections=3, max_in_flight=4)
    try:
        # a UDP client's query still goes over TLS
        assert address_of(await fwd.query(query_wire("www.example.org."), tcp=False)) == "192.0.2.80"
        answers = await asyncio.gather(*(fwd.query(query_wire("svc.example.org."), tcp=False)
                                         for _ in range(12)))
        assert {address_of(a) for a in answers} == {"192.0.2.81"}
        opened = sum(stats.conn_opened.values())
        assert 1 <= opened <= 3 and sum(stats.conn_reused.values()) >= 13 - opened  # pipelined
        context = fwd._upstreams[0].tls
        assert context is not None and context.full == 1  # one full handshake ...
        assert context.resumed == opened - 1                # ... the others resumed it
    finally:
        await fwd.close()


async def test_ip_address_is_checked_without_servername(dot: DoT) -> None:
    conf = quick(try_timeout=2.0, budget=3.0)(
        Upstream(dot.host, dot.port, tls=True),
        tls_files=(str(dot.client_cert), str(dot.client_key), str(dot.ca)))
    fwd, _ = await forwarder(conf)
    try:  # the certificate carries 127.0.0.1; the client certificate is presented too
        assert address_of(await fwd.query(query_wire("www.example.org."), tcp=True)) == "192.0.2.80"
    finally:
        await fwd.close()


@pytest.mark.parametrize("tls_files,servername", [
    ("ca", "other.test"),   # the certificate does not name it
    ("", SERVER_NAME),      # the system CAs do not trust the test CA
])
async def test_unverified_upstream_is_not_used(dot: DoT, tls_files: str, servername: str) -> None:
    files = (str(dot.ca),) if tls_files else ()
    conf = quick(try_timeout=0.5, budget=1.0, max_fails=0)(
        Upstream(dot.host, dot.port, tls=True), tls_files=files, tls_servername=servername)
    fwd, _ = await forwarder(conf)
    try:
        with pytest.raises(UpstreamError):
            await fwd.query(query_wire("www.example.org."), tcp=True)
    finally:
        await fwd.close()


@pytest.mark.parametrize("options", [
    f"    tls CA\n    tls_servername {SERVER_NAME}\n",
    "    tls CERT KEY CA\n",
])
async def test_answers_match_node_cache(dot: DoT, options: str, tmp_path: Path) -> None:
    options = options.replace("CERT", str(dot.client_cert)).replace("KEY", str(dot.client_key)) \
        .replace("CA", str(dot.ca))
    text = corefile(f"tls://{dot.host}:{dot.port}", "bind 127.0.0.1", forward_options=options.rstrip("\n"),
                    server=".:53")
    async with Pair(text, tmp_path) as pair:
        for rr in RECORDS:
            name, _, _, rdtype, _ = rr.split(None, 4)
            await pair.check(name, rdtype)
        await pair.check("nothing.example.org.", "A")  # NXDOMAIN from the static zone
        await pair.check("www.example.org.", "A", tcp=True)


def test_config(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    block = parse_text(".:53 {\n  forward . tls://10.0.0.1 tls://[2001:db8::1]:8853 {\n"
                       "    tls_servername dns.test\n  }\n}\n", path="Corefile", env={}).blocks[0]
    assert block.forward is not None
    assert block.forward.upstreams == (Upstream("10.0.0.1", 853, tls=True),
                                       Upstream("2001:db8::1", 8853, tls=True))
    assert block.forward.tls_servername == "dns.test"
    path = tmp_path / "Corefile"
    cases = [
        ("  forward . tls://dns.test\n",
         "Corefile:2:13: forward: expected an upstream (IP, IP:PORT, [IPv6]:PORT, dns://IP[:PORT],"
         " tls://IP[:PORT]) or a resolv.conf file, found 'tls://dns.test' (not an IP address)"),
        ("  forward . tls://10.0.0.1 {\n    tls missing.pem\n  }\n",
         "Corefile:3:9: forward: tls: no such file 'missing.pem'"),
        ("  forward . tls://10.0.0.1 {\n    tls ca.pem\n  }\n",
         "Corefile:3:9: forward: tls: cannot load"),
        ("  forward . tls://10.0.0.1 {\n    tls a b c d\n  }\n",
         "Corefile:3:15: forward: expected end of line after 'tls CERT KEY CA', found 'd'"),
        ("  forward . tls://10.0.0.1 {\n    tls_servername\n  }\n",
         "Corefile:3:5: forward: expected a server NAME after 'tls_servername', found end of line"),
    ]
    for body, expected in cases:
        with pytest.raises(ConfigError) as info:
            parse_text(f".:53 {{\n{body}}}\n", path=str(path), env={})
        assert str(info.value).replace(str(tmp_path) + "/", "").startswith(expected), str(info.value)
