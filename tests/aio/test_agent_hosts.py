"""hosts files on disk: read at start, re-read when they change, last entries kept when unreadable."""
from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.kit.agentkit import AgentKit

#: How long a changed file may take to be seen: reload 1s plus the watch tick, with margin.
SEEN_WITHIN = 10.0  # s


async def addresses(kit: AgentKit, name: str) -> list[str]:
    reply = await kit.query(name, "A")
    return sorted(r.to_text() for rrset in reply.answer for r in rrset)


async def eventually(kit: AgentKit, name: str, expected: list[str]) -> None:
    deadline = asyncio.get_running_loop().time() + SEEN_WITHIN
    while await addresses(kit, name) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{name} never became {expected}"
        await asyncio.sleep(0.2)


async def test_hosts_file_reload(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 a.example.org\n")
    corefile = f".:53 {{\n  hosts {hosts} {{\n    reload 1s\n  }}\n}}\n"
    async with AgentKit(corefile) as kit:
        assert await addresses(kit, "a.example.org.") == ["10.0.0.1"]
        hosts.write_text("10.0.0.22 a.example.org\n10.0.0.3 b.example.org\n")
        await eventually(kit, "a.example.org.", ["10.0.0.22"])
        assert await addresses(kit, "b.example.org.") == ["10.0.0.3"]
        # Bytes that are not UTF-8 spoil only their own name, as in CoreDNS.
        hosts.write_bytes(b"10.0.0.9 a.example.org \xff\xfe.example.org\n")
        await eventually(kit, "a.example.org.", ["10.0.0.9"])
        # No file at all: the last entries stay.
        hosts.unlink()
        await asyncio.sleep(2.5)
        assert await addresses(kit, "a.example.org.") == ["10.0.0.9"]
        hosts.write_text("10.0.0.4 a.example.org\n")
        await eventually(kit, "a.example.org.", ["10.0.0.4"])


async def test_hosts_file_missing_at_start_then_created(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    corefile = f".:53 {{\n  hosts {hosts} {{\n    reload 1s\n    10.0.0.8 inline.example.org\n  }}\n}}\n"
    async with AgentKit(corefile) as kit:
        assert await addresses(kit, "inline.example.org.") == ["10.0.0.8"]
        reply = await kit.query("a.example.org.", "A")
        assert reply.rcode() == 2  # SERVFAIL: hosts has no such name and no fallthrough
        hosts.write_text("10.0.0.5 a.example.org\n")
        await eventually(kit, "a.example.org.", ["10.0.0.5"])


async def test_reload_zero_reads_once(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 a.example.org\n")
    corefile = f".:53 {{\n  hosts {hosts} {{\n    reload 0s\n  }}\n}}\n"
    async with AgentKit(corefile) as kit:
        hosts.write_text("10.0.0.2 a.example.org\n")
        await asyncio.sleep(2.5)
        assert await addresses(kit, "a.example.org.") == ["10.0.0.1"]


async def test_corefile_reload_changes_the_plugins_and_their_cached_answers() -> None:
    corefile = (".:53 {\n  cache 30\n  hosts {\n    10.0.0.1 a.example.org\n  }\n"
                "  template IN A t.example {\n    answer \"{{ .Name }} 60 IN A 10.1.1.1\"\n  }\n}\n")
    async with AgentKit(corefile) as kit:
        assert await addresses(kit, "a.example.org.") == ["10.0.0.1"]
        assert await addresses(kit, "x.t.example.") == ["10.1.1.1"]
        kit.corefile = corefile.replace("10.0.0.1", "10.0.0.2").replace("10.1.1.1", "10.1.1.2")
        assert await kit.agent.reload()
        # The cache wraps hosts and template: new plugins, a new cache (no stale answer).
        assert await addresses(kit, "a.example.org.") == ["10.0.0.2"]
        assert await addresses(kit, "x.t.example.") == ["10.1.1.2"]


def test_loaded_reports_the_files_modification_time(tmp_path: Path) -> None:
    from nodecache.aio.hostsfile import HostsFiles
    from nodecache.core.stages.hosts import HostsSettings, HostsStage
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 a.example.org\n")
    os.utime(hosts, (1_700_000_000, 1_700_000_000))
    times: list[float] = []
    files = HostsFiles(times.append)
    stage = HostsStage(HostsSettings(path=str(hosts), reload=5.0))
    files.check([stage], 100.0)
    files.check([stage], 102.0)   # not due yet
    files.check([stage], 106.0)   # due, unchanged: not read again
    assert times == [1_700_000_000.0] and stage.entries == 2


async def test_reload_timestamp_metric(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("10.0.0.1 a.example.org\n")
    os.utime(hosts, (1_700_000_000, 1_700_000_000))
    corefile = f".:53 {{\n  hosts {hosts}\n  prometheus 127.0.0.1:9153\n}}\n"  # rebound to port 0
    async with AgentKit(corefile) as kit:
        samples = await kit.metrics()
        assert samples[("coredns_hosts_reload_timestamp_seconds", ())] == 1_700_000_000.0
