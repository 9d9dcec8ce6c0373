"""Cache snapshots: written at shutdown, read back at start, aging across the gap."""
from __future__ import annotations

import logging
import struct
from pathlib import Path

import dns.rcode
import pytest

from nodecache.core import snapshot
from nodecache.core.cache import Entry, Kind, RotatingEntry
from tests.kit.agentkit import AgentKit
from tests.kit.answers import ttls
from tests.kit.coredriver import Driver, answer_a
from tests.kit.fakeupstream import FakeUpstream
from tests.kit.queries import make_query

NAMES = [f"n{i}.example." for i in range(200)]


def entry(key: bytes = b"\x01a\x00\x00\x01\x00\x01", stored: float = 100.0) -> Entry:
    headers = tuple(bytes(10) for _ in range(4))
    return Entry.from_segments(key, Kind.SUCCESS, 0, headers,
                               ((b"\xc0\x0c\x00\x01\x00\x01", b"\x00\x04\x0a\x00\x00\x01"),), 300, stored)


def test_round_trip_keeps_aging() -> None:
    data = snapshot.dump([("example.@53", entry(stored=100.0))], now=160.0, wall=5000.0)
    # Restored 30 s of wall time later, into a loop whose clock reads 7.0.
    (item,) = snapshot.load(data, now=7.0, wall=5030.0)
    assert item.zone == "example.@53"
    assert item.entry.remaining(7.0) == 300 - 60 - 30
    assert item.entry.segments() == entry().segments()
    assert item.entry.kind is Kind.SUCCESS


@pytest.mark.parametrize("options", ["", "    loadbalance\n", "    cache 30 {\n keepttl\n }\n"])
def test_round_trip_keeps_every_entry_shape(options: str) -> None:
    """Three A records, plain, rotated by loadbalance, or with keepttl: restored, the
    entry answers as the stored one did."""
    cache = "" if "cache" in options else "    cache 30\n"
    corefile = f"cluster.local:53 {{\n{cache}{options}    forward . 127.0.0.1\n}}\n"
    d = Driver(corefile, answer_a(20, "10.0.0.1", "10.0.0.2", "10.0.0.3"))
    d.ask(make_query("svc.cluster.local."))
    (stored,) = d.handler.index.values()
    assert stored.keep == ("keepttl" in options)
    assert isinstance(stored, RotatingEntry) == ("loadbalance" in options)
    data = snapshot.dump([("cluster.local.@53", stored)], now=d.now + 5.0, wall=500.0)
    (item,) = snapshot.load(data, now=d.now + 5.0, wall=500.0)
    restored = item.entry
    assert type(restored) is type(stored) and restored.tag is stored.tag
    assert restored.kind is Kind.SUCCESS and restored.keep == stored.keep
    assert sorted(restored.segments()) == sorted(stored.segments())
    assert restored.renew(d.now + 5.0) and stored.renew(d.now + 5.0)
    assert restored.remaining(d.now + 5.0) == 15
    assert {restored.body_with(9) for _ in range(3)} == {stored.body_with(9) for _ in range(3)}


@pytest.mark.parametrize("mangle", [
    lambda d: d[:-1],  # truncated
    lambda d: d[:20] + bytes([d[20] ^ 1]) + d[21:],  # one bit flipped (CRC)
    lambda d: b"NOTASNAP" + d[8:],  # foreign file
    lambda d: d[:8] + struct.pack("!H", 99) + d[10:],  # another version
    lambda d: b"",
    lambda d: b"{\"json\": true}",
])
def test_corrupt_or_foreign_snapshots_are_refused(mangle) -> None:  # type: ignore[no-untyped-def]
    data = snapshot.dump([("example.@53", entry())], now=160.0, wall=5000.0)
    with pytest.raises(snapshot.SnapshotError):
        snapshot.load(mangle(data), now=0.0, wall=5000.0)


COREFILE = ". {\n cache 300\n forward . 127.0.0.1:%d\n}\n"


async def test_restart_with_snapshot_starts_warm(tmp_path: Path) -> None:
    path = str(tmp_path / "cache.snap")
    records = {f"{n} A": "192.0.2.7" for n in NAMES}
    async with FakeUpstream(records=records) as up:
        async with AgentKit(COREFILE % up.port, cache_snapshot=path) as kit:
            for name in NAMES:
                reply = await kit.query(name, "A")
                assert reply is not None and reply.rcode() == dns.rcode.NOERROR
            before = len(up.queries)
        assert Path(path).stat().st_size > 0
        async with AgentKit(COREFILE % up.port, cache_snapshot=path) as kit:
            hits = 0
            for name in NAMES:
                reply = await kit.query(name, "A")
                assert reply is not None and reply.answer[0][0].address == "192.0.2.7"
                assert 0 < ttls(reply)[0] <= 300
            hits = len(NAMES) - (len(up.queries) - before)
    # Hit rate right after the restart: every name was cached before it.
    assert hits == len(NAMES)


async def test_corrupt_snapshot_is_ignored_with_a_log_line(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cache.snap"
    path.write_bytes(b"NCSNAP\r\n" + b"\x00" * 40)
    async with FakeUpstream(records={"a.example. A": "192.0.2.1"}) as up:
        with caplog.at_level(logging.WARNING):
            async with AgentKit(COREFILE % up.port, cache_snapshot=str(path)) as kit:
                reply = await kit.query("a.example.", "A")
                assert reply is not None and reply.rcode() == dns.rcode.NOERROR
    assert any("ignoring the cache snapshot" in r.getMessage() for r in caplog.records)
    # The agent wrote a good snapshot over the corrupt one at shutdown.
    assert snapshot.load(path.read_bytes(), 0.0, 0.0)
