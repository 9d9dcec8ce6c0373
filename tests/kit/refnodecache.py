"""The reference node-cache binary, serving a Corefile on loopback, for comparisons.

The binary is ``../shared/anchors/node-cache.gz`` beside the repository root
(CI has it); see that folder's README for the flags that keep it off the
host's interfaces and firewall. :func:`node_cache` unpacks it into a test's
temporary folder, starts it and stops it again.
"""
from __future__ import annotations

import contextlib
import gzip
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from tests.kit import ROOT
from tests.kit import netns

ANCHOR = ROOT.parent / "shared" / "anchors" / "node-cache.gz"
#: How long node-cache may take to start answering, s.
START_TIMEOUT = 15.0


def closed_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, below the ephemeral range: no socket of a forwarder
    can get it as its own source port and so talk to itself."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        first = int(f.read().split()[0])
    rng = random.Random()
    for _ in range(50):
        port = rng.randrange(max(1024, first - 8000), first)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp, \
                    socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                tcp.bind((host, port))
                udp.bind((host, port))
        except OSError:
            continue
        return port
    raise OSError("no closed port found")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``host`` (nothing listens on it afterwards)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(20):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        return port
    raise OSError("no free port")


#: node-cache reads the upstream Service's address from the environment.
ENV = {**os.environ, "KUBE_DNS_SERVICE_HOST": "127.0.0.254"}


def unpack(workdir: Path) -> Path:
    """The binary, unpacked into ``workdir``."""
    assert ANCHOR.is_file(), f"reference binary missing: {ANCHOR}"
    binary = workdir / "node-cache"
    with gzip.open(ANCHOR) as src, open(binary, "wb") as dst:
        shutil.copyfileobj(src, dst)
    binary.chmod(0o755)
    return binary


def serving_argv(binary: Path, host: str, conf: Path, metrics: str) -> list[str]:
    """node-cache serving ``conf`` on ``host``, touching no interface or firewall (run with ENV)."""
    return [str(binary), "-localip", host, "-conf", str(conf), "-setupinterface=false",
            "-setupiptables=false", "-skipteardown", "-metrics-listen-address", metrics,
            "-basecorefile", str(conf.parent / "none")]


@contextlib.contextmanager
def node_cache(corefile: str, workdir: Path, *, host: str = "127.0.0.1",
               port: int, ns: str | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """node-cache serving ``corefile`` (which must bind ``host``:``port``).

    :param ns: run it inside this network namespace (``tests.netns``) instead
        of the test's own; its metrics then listen on ``host``:9353.
    """
    binary = unpack(workdir)
    (workdir / "Corefile").write_text(corefile)
    argv = serving_argv(binary, host, workdir / "Corefile",
                        f"{f'[{host}]' if ':' in host else host}:"
                        f"{free_port(host) if ns is None else 9353}")
    if ns is not None:
        argv = ["ip", "netns", "exec", ns, *argv]
    proc = subprocess.Popen(argv, stdout=open(workdir / "node-cache.log", "wb"),
                            stderr=subprocess.STDOUT, env=ENV)
    try:
        _wait_serving(proc, host, port, workdir, ns)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _accepts(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _wait_serving(proc: subprocess.Popen[bytes], host: str, port: int, workdir: Path,
                  ns: str | None) -> None:
    """Until the TCP listener accepts (no query: one would reach the upstream)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node-cache exited: {(workdir / 'node-cache.log').read_text()}")
        if (_accepts(host, port) if ns is None else netns.call(ns, _accepts, host, port)):
            return
        time.sleep(0.05)
    raise RuntimeError("node-cache did not start listening")
