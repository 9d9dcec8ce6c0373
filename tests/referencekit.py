"""Run the reference node-cache binary on loopback, for differential tests.

Usage::

    async with FakeUpstream(...) as up, NodeCache(body) as ref, AgentKit(corefile) as kit:
        theirs = await ask(ref.address, query)
        ours = await ask(kit.address, query)

``body`` is the inside of one server block (plugins, one per line);
:class:`NodeCache` wraps it in a ``.:PORT { bind ADDRESS ... }`` block on an
address of its own in 127.0.0.0/8, so parallel tests and other processes on
the machine never collide. The binary comes from ``../shared/anchors``
beside the repository (see its README); it is unpacked once per test run.
"""
from __future__ import annotations

import asyncio
import gzip
import os
import random
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import dns.message

REPO_ROOT = Path(__file__).resolve().parent.parent
ANCHOR = REPO_ROOT.parent / "shared" / "anchors" / "node-cache.gz"
#: How long node-cache may take to answer its first query, s.
START_TIMEOUT = 20.0
_unpacked: Path | None = None


def binary() -> Path:
    """The unpacked node-cache executable (in a temporary directory kept for the run)."""
    global _unpacked
    if _unpacked is None or not _unpacked.exists():
        if not ANCHOR.exists():
            raise FileNotFoundError(f"the reference binary is missing: {ANCHOR}")
        target = Path(tempfile.mkdtemp(prefix="node-cache-")) / "node-cache"
        with gzip.open(ANCHOR, "rb") as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        target.chmod(0o755)
        _unpacked = target
    return _unpacked


def free_loopback() -> tuple[str, int]:
    """An address in 127.0.0.0/8 with a port free for UDP and TCP."""
    for _ in range(100):
        host = f"127.{random.randint(100, 254)}.{random.randint(1, 254)}.{random.randint(1, 254)}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp, \
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                udp.bind((host, 0))
                port = udp.getsockname()[1]
                tcp.bind((host, port))
            except OSError:
                continue
            return host, port
    raise OSError("no free loopback address")


def udp_ask_sync(address: tuple[str, int], wire: bytes, timeout: float) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(wire, address)
        try:
            return sock.recv(65535)
        except OSError:
            return None


async def ask(address: tuple[str, int], query: dns.message.Message, *, tcp: bool = False,
              timeout: float = 3.0) -> dns.message.Message | None:
    """One query over UDP or a fresh TCP connection; None when nothing came back."""
    wire = query.to_wire()
    if not tcp:
        raw = await asyncio.to_thread(udp_ask_sync, address, wire, timeout)
        return None if raw is None else dns.message.from_wire(raw)
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*address), timeout)
    try:
        writer.write(struct.pack("!H", len(wire)) + wire)
        head = await asyncio.wait_for(reader.readexactly(2), timeout)
        data = await asyncio.wait_for(reader.readexactly(struct.unpack("!H", head)[0]), timeout)
        return dns.message.from_wire(data)
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.TimeoutError):
        return None
    finally:
        writer.close()


class NodeCache:
    """node-cache serving one server block on a loopback address of its own."""

    def __init__(self, body: str, *, bind: str | None = None) -> None:
        self.host, self.port = free_loopback()
        self.body = body
        #: What follows ``bind``: the address by default (tests in a namespace name interfaces).
        self.bind = bind or self.host
        self.process: subprocess.Popen[bytes] | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix="node-cache-run-"))
        self.log = self.workdir / "node-cache.log"

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def corefile(self) -> str:
        return f".:{self.port} {{\n    bind {self.bind}\n{self.body}\n}}\n"

    def argv(self) -> list[str]:
        metrics_host, metrics_port = free_loopback()
        return [str(binary()), "-localip", self.host, "-conf", str(self.workdir / "Corefile"),
                "-setupinterface=false", "-setupiptables=false", "-skipteardown",
                "-metrics-listen-address", f"{metrics_host}:{metrics_port}",
                "-basecorefile", str(self.workdir / "no-base-corefile")]

    def start(self, prefix: list[str] | None = None) -> NodeCache:
        """Start it (``prefix``: e.g. ``ip netns exec NS``) and wait until it answers."""
        (self.workdir / "Corefile").write_text(self.corefile())
        env = {**os.environ, "KUBE_DNS_SERVICE_HOST": self.host}
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([*(prefix or []), *self.argv()], cwd=self.workdir,
                                            stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_serving(self, address: tuple[str, int] | None = None) -> None:
        """Until a query to ``address`` (default ours) gets any reply."""
        # A header without a question: answered at once (SERVFAIL), no upstream asked.
        probe = struct.pack("!6H", 0x5EED, 0, 0, 0, 0, 0)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"node-cache exited: {self.log.read_text()[-2000:]}")
            if udp_ask_sync(address or self.address, probe, 0.2) is not None:
                return
        raise RuntimeError(f"node-cache did not answer in {START_TIMEOUT}s:"
                           f" {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> NodeCache:
        self.start()
        try:
            await asyncio.to_thread(self.wait_serving)
        except BaseException:
            self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> NodeCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
