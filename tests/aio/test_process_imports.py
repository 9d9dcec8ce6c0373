"""What a serving worker holds in memory: the modules it imports.

A process pays for every module it imports, for its whole life (dnspython and
prometheus_client are about 2 and 3 MB of a worker's PSS, bench/missrate.py).
A worker that caches and forwards builds its answers with ``core.wire`` and
its /metrics with ``nodecache.exposition``; the answering plugins load
dnspython where a block uses them. (The supervisor's imports:
tests/system/test_failsafe.py.)
"""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dns.asyncquery
import dns.message
import dns.rcode
import pytest

from tests.aio.test_lifecycle import free_port
from tests.kit.fakeupstream import FakeUpstream
from tests.kit.servekit import serving_argv

pytestmark = pytest.mark.timeout(60)

#: The serving process's whole life, modules written at exit (atexit runs after a SIGTERM
#: shutdown): ``python -m nodecache.serve``, which ``nodecache run`` becomes.
WORKER = """
import atexit, json, sys
atexit.register(lambda: open(sys.argv[1], "w").write(json.dumps(sorted(sys.modules))))
from nodecache.serve import main
sys.exit(main(sys.argv[2:]))
"""

COREFILE = """.:{port} {{
    bind 127.0.0.1
    errors
    log
    cache 30
    loop
    reload
    forward . 127.0.0.1:{upstream} {{
        max_fails 0
    }}
    prometheus 127.0.0.1:{metrics}
    health 127.0.0.1:{health}
    ready 127.0.0.1:{ready}
}}
"""


def imported(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys\n"
                          "print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=30, check=True)
    return list(json.loads(out.stdout))


def under(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)]


def test_a_corefile_without_answering_plugins_loads_no_dnspython(tmp_path: Path) -> None:
    conf = tmp_path / "Corefile"
    conf.write_text(COREFILE.format(port=5353, upstream=5354, metrics=9153, health=8080,
                                    ready=8181))
    modules = imported(f"from nodecache import config\nconfig.load({str(conf)!r})")
    assert "nodecache.config.forward" in modules
    assert under(modules, ("dns",)) == []
    # ...while one with such a plugin does.
    conf.write_text(".:5353 {\n    rewrite name a.example. b.example.\n}\n")
    modules = imported(f"from nodecache import config\nconfig.load({str(conf)!r})")
    assert "dns.name" in modules


async def _ask(port: int, name: str, rdtype: str) -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, rdtype), "127.0.0.1",
                                    port=port, timeout=2)


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
            return int(r.status), r.read().decode()
    except OSError:
        return 0, ""


async def _until_ready(proc: subprocess.Popen[str], port: int) -> None:
    """Wait up to 20 s for the agent's /ready on ``port``; fail with its output if it exits."""
    deadline = time.monotonic() + 20
    while (await asyncio.to_thread(_get, port, "/ready"))[0] != 200:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "agent not ready in 20 s"
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_a_serving_worker_loads_no_dnspython_nor_prometheus(tmp_path: Path) -> None:
    records = {"a.example. A": "192.0.2.1", "a.example. AAAA": "2001:db8::1"}
    async with FakeUpstream(records=records) as up:
        ports = {k: free_port() for k in ("port", "metrics", "health", "ready")}
        conf = tmp_path / "Corefile"
        conf.write_text(COREFILE.format(upstream=up.port, **ports))
        dump = tmp_path / "modules.json"
        argv = serving_argv("--conf", str(conf), "--localip", "")
        proc = subprocess.Popen([sys.executable, "-c", WORKER, str(dump), *argv[3:]],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            await _until_ready(proc, ports["ready"])
            # A miss, a hit, NXDOMAIN, other types: answers, log lines, metric labels.
            for name, rdtype, rcode in (("a.example.", "A", dns.rcode.NOERROR),
                                        ("a.example.", "A", dns.rcode.NOERROR),
                                        ("a.example.", "AAAA", dns.rcode.NOERROR),
                                        ("nx.example.", "A", dns.rcode.NXDOMAIN),
                                        ("a.example.", "TYPE65280", dns.rcode.NOERROR),
                                        ("a.example.", "CAA", dns.rcode.NOERROR)):
                reply = await _ask(ports["port"], name, rdtype)
                assert reply.rcode() == rcode, (name, rdtype, reply)
            status, text = await asyncio.to_thread(_get, ports["metrics"], "/metrics")
            assert status == 200
            assert 'rcode="NXDOMAIN"' in text
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert proc.returncode == 0, out
    assert "A IN a.example." in out and "NXDOMAIN" in out  # the log plugin ran
    modules = json.loads(dump.read_text())
    assert "nodecache.aio.agent" in modules
    assert under(modules, ("dns", "prometheus_client")) == [], out
    # Nor the command line (click), the one-shot commands or, without host networking,
    # the host-network code: each is part of the container's working set for good.
    assert under(modules, ("click", "nodecache.cli", "nodecache.benchclient",
                           "nodecache.hostnet.host", "nodecache.hostnet.commands")) == [], out


@pytest.mark.asyncio
async def test_run_becomes_the_serving_module_in_the_same_process(tmp_path: Path) -> None:
    # `nodecache run` checks, then execs `python -m nodecache.serve` (same PID: the
    # container's PID 1 stays the agent, and SIGTERM reaches it).
    async with FakeUpstream(records={"a.example. A": "192.0.2.1"}) as up:
        ports = {k: free_port() for k in ("port", "metrics", "health", "ready")}
        conf = tmp_path / "Corefile"
        conf.write_text(COREFILE.format(upstream=up.port, **ports))
        proc = subprocess.Popen([sys.executable, "-m", "nodecache", "run", "--conf", str(conf),
                                 "--localip", ""], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            await _until_ready(proc, ports["ready"])
            cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
            reply = await _ask(ports["port"], "a.example.", "A")
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)
    assert cmdline[1:3] == [b"-m", b"nodecache.serve"], cmdline
    assert reply.rcode() == dns.rcode.NOERROR and reply.answer, reply
    assert proc.returncode == 0, out
