"""Malformed and unsupported queries over real sockets, and which server block answers."""
from __future__ import annotations

import struct

import dns.message
import dns.rcode
import pytest

from tests.kit.agentkit import AgentKit
from tests.kit.answers import rcode_text
from tests.kit.corefiles import corefile
from tests.kit.fakeupstream import FakeUpstream, loop_errors
from tests.kit.queries import make_query

__all__ = ["loop_errors"]
pytestmark = pytest.mark.usefixtures("loop_errors")

RECORDS = {"a.example. A": "192.0.2.1"}
QUESTION = b"\x01a\x07example\x00\x00\x01\x00\x01"


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0,
           ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


# (id, datagram, expected rcode or None for "no reply"); NOERROR: forwarded and answered, as
# node-cache (miekg/dns) reads it
CASES = [
    ("empty", b"", None),
    ("one byte", b"\x00", None),
    ("eleven bytes", header()[:11], None),
    ("header only", header(), "FORMERR"),
    ("header, qdcount 0", header(qd=0), "FORMERR"),
    ("garbage after header", header() + b"\xff\xfe\xfd\xfc", "FORMERR"),
    ("question cut short", header() + QUESTION[:-2], "FORMERR"),
    ("label past end", header() + b"\x3f" + b"a" * 10, "FORMERR"),
    ("pointer in question", header() + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),
    ("trailing bytes", header() + QUESTION + b"\x00", "NOERROR"),
    ("qdcount 2", header(qd=2) + QUESTION + QUESTION, "FORMERR"),
    ("ancount lies", header(an=1) + QUESTION, "NOERROR"),
    ("ancount 2", header(an=2) + QUESTION, "FORMERR"),
    ("two OPTs", header(ar=2) + QUESTION + (b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00") * 2,
     "FORMERR"),
    ("name too long", header() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 3 + b"\x00"
     + b"\x00\x01\x00\x01", "FORMERR"),
    ("opcode IQUERY", header(flags=0x0900) + QUESTION, "NOTIMP"),
    ("opcode STATUS", header(flags=0x1100) + QUESTION, "NOTIMP"),
    ("opcode NOTIFY", header(flags=0x2100) + QUESTION, "NOTIMP"),
    ("opcode UPDATE", header(flags=0x2900) + QUESTION, "NOTIMP"),
    ("opcode 15", header(flags=0x7900) + QUESTION, "NOTIMP"),
    ("a response (QR set)", header(flags=0x8180) + QUESTION, None),
    ("AXFR", header() + b"\x01a\x07example\x00\x00\xfc\x00\x01", "REFUSED"),
]


@pytest.mark.parametrize("data,rcode", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
async def test_malformed_and_unsupported(data: bytes, rcode: str | None, tcp: bool) -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        if tcp:
            raw = await kit.tcp_raw(data, timeout=1.0)
        else:
            raw = await kit.udp_raw(data, timeout=0.3 if rcode is None else 2.0)
        if rcode is None:
            assert raw is None
        else:
            assert raw is not None
            assert raw[:2] == data[:2]  # the ID is echoed
            assert raw[2] & 0x80  # QR
            assert raw[3] & 0x0F == dns.rcode.from_text(rcode)
            assert raw[2] & 0x78 == data[2] & 0x78  # opcode echoed
            assert not raw[3] & 0x80  # RA: the error is ours
            if rcode != "NOERROR":
                assert struct.unpack_from("!HHH", raw, 6) == (0, 0, 0)
            if rcode == "REFUSED":
                assert raw[12:12 + len(data) - 12] == data[12:]  # the question is echoed
            elif rcode == "NOTIMP":  # the header alone, as node-cache's
                assert struct.unpack_from("!H", raw, 4) == (0,)
        assert bool(up.queries) == (rcode == "NOERROR")
        # And the agent keeps answering, on both transports.
        assert rcode_text(await kit.query("a.example.")) == "NOERROR"
        assert rcode_text(await kit.query("a.example.", tcp=True)) == "NOERROR"
        assert kit.agent.stats.panics == 0


async def test_tcp_stream_keeps_going_after_a_formerr() -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        client = await kit.tcp_client()
        try:
            await client.send(header(qid=1) + b"\xff\xff")
            await client.send(make_query("a.example.", qid=2))
            first, second = await client.recv(), await client.recv()
            assert first is not None and first.id == 1
            assert first.rcode() == dns.rcode.FORMERR
            assert second is not None and second.id == 2
            assert second.rcode() == dns.rcode.NOERROR
        finally:
            await client.close()


async def test_tcp_frame_without_header_closes_the_connection() -> None:
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        client = await kit.tcp_client()
        try:
            await client.send(b"\x00\x01\x02")
            assert await client.closed_by_peer(2.0)
        finally:
            await client.close()
        assert rcode_text(await kit.query("a.example.", tcp=True)) == "NOERROR"


async def test_garbage_burst_then_answers() -> None:
    import random
    rng = random.Random(2)
    async with FakeUpstream(records=RECORDS) as up, AgentKit(corefile(up.port)) as kit:
        for _ in range(200):
            size = rng.randrange(0, 80)
            data = bytes(rng.randrange(256) for _ in range(size))
            await kit.udp_raw(data, timeout=0.001)
        assert rcode_text(await kit.query("a.example.")) == "NOERROR"
        assert kit.agent.stats.panics == 0


# -- routing -----------------------------------------------------------------------


async def test_longest_suffix_block_answers_and_others_refused() -> None:
    async with FakeUpstream(records={"x.a.example. A": "192.0.2.1"}) as root_up, \
            FakeUpstream(records={"x.svc.cluster.local. A": "192.0.2.2",
                                  "svc.cluster.local. A": "192.0.2.2"}) as svc_up, \
            FakeUpstream(records={"x.cluster.local. A": "192.0.2.3",
                                  "x.other-svc.cluster.local. A": "192.0.2.3"}) as cl_up:
        text = (f"cluster.local {{\n cache 30\n forward . 127.0.0.1:{cl_up.port}\n}}\n"
                f"svc.cluster.local {{\n cache 30\n forward . 127.0.0.1:{svc_up.port}\n}}\n"
                f"example {{\n forward . 127.0.0.1:{root_up.port}\n}}\n")
        # (name, upstream expected to be asked, or None for REFUSED)
        table = [("x.svc.cluster.local.", svc_up), ("Y.SVC.Cluster.Local.", svc_up),
                 ("svc.cluster.local.", svc_up), ("x.cluster.local.", cl_up),
                 ("x.other-svc.cluster.local.", cl_up),  # not a label-boundary suffix
                 ("x.a.example.", root_up), ("example.", root_up),
                 ("kubernetes.io.", None), ("local.", None), ("xexample.", None), (".", None)]
        async with AgentKit(text) as kit:
            for name, upstream in table:
                before = {id(u): len(u.queries) for u in (root_up, svc_up, cl_up)}
                reply = await kit.query(name)
                after = {id(u): len(u.queries) for u in (root_up, svc_up, cl_up)}
                asked = [u for u in (root_up, svc_up, cl_up) if after[id(u)] > before[id(u)]]
                if upstream is None:
                    assert rcode_text(reply) == "REFUSED", name
                    assert asked == [], name
                else:
                    assert rcode_text(reply) != "REFUSED", name
                    assert asked == [upstream], name


async def test_forward_from_and_except() -> None:
    async with FakeUpstream(records={"a.cluster.local. A": "192.0.2.1"}) as up:
        text = (f". {{\n cache 30\n forward cluster.local 127.0.0.1:{up.port} {{\n"
                f"  except skip.cluster.local\n }}\n}}\n")
        async with AgentKit(text) as kit:
            assert rcode_text(await kit.query("a.cluster.local.")) == "NOERROR"
            # forward does not take them and no plugin follows: SERVFAIL, as node-cache
            assert rcode_text(await kit.query("a.skip.cluster.local.")) == "SERVFAIL"
            assert rcode_text(await kit.query("example.com.")) == "SERVFAIL"
            assert [q.qname for q in up.queries] == ["a.cluster.local."]
