"""`nodecache run` as a process: reload under load, lameduck on SIGTERM, bounded exit."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import pytest

from tests.kit.fakeupstream import FakeUpstream, answer_from

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


COREFILE = """.:{port} {{
    bind 127.0.0.1
    errors
    cache 30
    reload 2s 1s
    forward . 127.0.0.1:{upstream}
    health 127.0.0.1:{health} {{
        lameduck {lameduck}
    }}
    ready 127.0.0.1:{ready}
    prometheus 127.0.0.1:{metrics}
}}
"""


class Agent:
    def __init__(self, tmp: Path, upstream: int, lameduck: str = "2s") -> None:
        self.ports = {k: free_port() for k in ("port", "health", "ready", "metrics")}
        self.conf = tmp / "Corefile"
        self.lameduck = lameduck
        self.write(upstream)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodecache", "run", "--conf", str(self.conf),
             "--log-level", "info"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def write(self, upstream: int, text: str | None = None) -> None:
        body = text if text is not None else COREFILE.format(
            upstream=upstream, lameduck=self.lameduck, **self.ports)
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(body)
        os.replace(tmp, self.conf)

    def http(self, what: str) -> int:
        port = self.ports["health" if what == "health" else what]
        path = {"health": "/health", "ready": "/ready", "metrics": "/metrics"}[what]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                return int(r.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except OSError:
            return 0

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.ports['metrics']}/metrics",
                                    timeout=2) as r:
            return str(r.read().decode())

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited: {self.proc.stdout.read()}")  # type: ignore
            if await asyncio.to_thread(self.http, "ready") == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError("agent not ready in 20 s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.kill()
        out, _ = self.proc.communicate(timeout=10)
        return out


async def ask(port: int, name: str) -> dns.message.Message:
    return await dns.asyncquery.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                                    timeout=2)


class Load:
    """Queries at a steady rate, counting answers by address and failures."""

    def __init__(self, port: int, names: list[str], rate: float = 100) -> None:
        self.port, self.names, self.rate = port, names, rate
        self.sent = 0
        self.failed: list[str] = []
        self.answers: dict[str, int] = {}
        self.stop = asyncio.Event()

    async def one(self, name: str) -> None:
        try:
            reply = await ask(self.port, name)
            if reply.rcode() != dns.rcode.NOERROR:
                self.failed.append(f"{name}: {dns.rcode.to_text(reply.rcode())}")
                return
            address = reply.answer[0][0].address
            self.answers[address] = self.answers.get(address, 0) + 1
        except Exception as exc:  # noqa: BLE001 - every failure is counted
            self.failed.append(f"{name}: {exc!r}")

    async def run(self, seconds: float) -> None:
        tasks = []
        end = time.monotonic() + seconds
        while time.monotonic() < end and not self.stop.is_set():
            tasks.append(asyncio.create_task(self.one(self.names[self.sent % len(self.names)])))
            self.sent += 1
            await asyncio.sleep(1 / self.rate)
        await asyncio.gather(*tasks)


@pytest.mark.asyncio
async def test_reload_under_load(tmp_path: Path) -> None:
    names = [f"n{i}.example." for i in range(50)]
    old = answer_from({f"{n} A": "192.0.2.1" for n in names})
    new = answer_from({f"{n} A": "192.0.2.2" for n in names})
    async with FakeUpstream(handler=old) as up1, FakeUpstream(handler=new) as up2:
        agent = Agent(tmp_path, up1.port)
        try:
            await agent.wait_ready()
            load = Load(agent.ports["port"], names, rate=100)
            runner = asyncio.create_task(load.run(14))
            await asyncio.sleep(2)
            # A broken Corefile: rejected, the old one keeps serving.
            agent.write(up1.port, "this is { not a corefile\n")
            await asyncio.sleep(4)
            assert "coredns_reload_failed_total 1.0" in await asyncio.to_thread(agent.metrics)
            assert load.answers.get("192.0.2.2", 0) == 0
            # A new upstream, and a cache that may not keep the old answers.
            agent.write(up2.port, COREFILE.format(upstream=up2.port, lameduck="2s",
                                                  **agent.ports).replace("cache 30", "cache 1"))
            await runner
            assert load.failed == []
            assert load.answers.get("192.0.2.2", 0) > 0, load.answers
            assert sum(load.answers.values()) == load.sent
            # The new settings are in force: the last answers come from the new upstream.
            assert (await ask(agent.ports["port"], names[0])).answer[0][0].address == "192.0.2.2"
        finally:
            out = agent.stop()
        assert "keeping the running configuration" in out


@pytest.mark.asyncio
async def test_sigterm_lameduck_then_exit(tmp_path: Path) -> None:
    names = [f"n{i}.example." for i in range(20)]
    async with FakeUpstream(handler=answer_from({f"{n} A": "192.0.2.1" for n in names})) as up:
        agent = Agent(tmp_path, up.port, lameduck="3s")
        try:
            await agent.wait_ready()
            assert await asyncio.to_thread(agent.http, "health") == 200
            load = Load(agent.ports["port"], names, rate=100)
            runner = asyncio.create_task(load.run(2.5))
            await asyncio.sleep(0.5)
            stopped_at = time.monotonic()
            agent.proc.send_signal(signal.SIGTERM)
            # /ready fails first, within a moment of the signal...
            ready = 200
            while time.monotonic() - stopped_at < 1.0 and ready == 200:
                ready = await asyncio.to_thread(agent.http, "ready")
            assert ready == 503
            # ...while /health stays 200 (the liveness probe must not kill a
            # draining agent) and queries keep being answered through lameduck.
            assert await asyncio.to_thread(agent.http, "health") == 200
            await runner
            assert await asyncio.to_thread(agent.http, "health") == 200
            assert load.failed == [] and sum(load.answers.values()) == load.sent
            assert agent.proc.poll() is None  # still in lameduck (3 s)
            exit_code = await asyncio.to_thread(agent.proc.wait, 10)
            elapsed = time.monotonic() - stopped_at
            assert exit_code == 0
            assert 3.0 <= elapsed < 3.0 + 5.0  # lameduck plus the shutdown bound
        finally:
            agent.stop()


TEMPLATE = """__PILLAR__DNS__DOMAIN__:{port} {{
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    cache 30
    forward . __PILLAR__CLUSTER__DNS__ {{
        force_tcp
    }}
    ready __PILLAR__LOCAL__DNS__:{ready}
    prometheus 127.0.0.1:{metrics}
}}
.:{port} {{
    bind __PILLAR__LOCAL__DNS__ __PILLAR__DNS__SERVER__
    forward . __PILLAR__UPSTREAM__SERVERS__
}}
"""


@pytest.mark.asyncio
async def test_template_mode_follows_the_kubedns_configmap(tmp_path: Path) -> None:
    """stubDomains changes apply within seconds; a broken ConfigMap keeps the last good one."""
    ports = {k: free_port() for k in ("port", "ready", "metrics")}
    base = tmp_path / "Corefile.base"
    base.write_text(TEMPLATE.format(**ports))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.4\n")  # never queried by this test
    cm = tmp_path / "kube-dns"
    cm.mkdir()
    env = dict(os.environ, KUBE_DNS_UPSTREAM_SERVICE_HOST="127.0.0.2")
    async with FakeUpstream(records={"a.stub.example. A": "192.0.2.7"}) as stub:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodecache", "run", "-localip", "127.0.0.1",
             "-basecorefile", str(base), "-conf", str(tmp_path / "Corefile"),
             "-kubednscm", str(cm), "-upstreamsvc", "kube-dns-upstream", "-setupinterface=false",
             "-setupiptables=false", "--resolv-conf", str(resolv), "--domain", "cluster.local",
             "-dns.port", str(ports["port"])],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            agent = Agent.__new__(Agent)
            agent.ports, agent.proc = {**ports, "health": ports["ready"]}, proc
            await agent.wait_ready()
            rendered = (tmp_path / "Corefile").read_text()
            assert "forward . 127.0.0.2 {" in rendered and "forward . 127.0.0.4" in rendered
            (cm / "stubDomains").write_text(json.dumps({"stub.example": [f"127.0.0.1:{stub.port}"]}))
            applied_at = time.monotonic()
            reply = None
            while time.monotonic() - applied_at < 8:
                try:
                    # Before the re-render the name goes to "." (a resolver that is not there).
                    reply = await ask(ports["port"], "a.stub.example.")
                except dns.exception.Timeout:
                    continue
                if reply.rcode() == dns.rcode.NOERROR:
                    break
                await asyncio.sleep(0.2)
            assert reply is not None and reply.answer[0][0].address == "192.0.2.7"
            assert time.monotonic() - applied_at < 6  # re-rendered every 2 s
            (cm / "stubDomains").write_text("{not json")
            await asyncio.sleep(3)
            text = await asyncio.to_thread(agent.metrics)
            assert 'coredns_nodecache_setup_errors_total{errortype="configmap"} 1.0' in text
            assert (await ask(ports["port"], "a.stub.example.")).answer[0][0].address == "192.0.2.7"
        finally:
            out = Agent.stop(agent)
        assert "invalid" in out
