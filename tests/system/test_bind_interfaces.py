"""``bind IFACE { except ... }`` on a real veth, side by side with node-cache.

A node namespace holds one end of a veth with three addresses (two IPv4, one
IPv6, plus its IPv6 link-local one); a client namespace holds the other end.
The same Corefile runs through nodecache and node-cache in turn; the client
asks every address and notes which answer. Then an address is added and the
Corefile touched: both pick it up on reload.
"""
from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest

from nodecache.hostnet.ifaddrs import interface_addresses
from tests.kit import netns
from tests.kit.refnodecache import node_cache

pytestmark = pytest.mark.privileged

PORT = 53
NODE_V4, EXCEPTED_V4, ADDED_V4 = "10.53.0.1", "10.53.0.2", "10.53.0.3"
NODE_V6 = "fd53::1"


def corefile(interval: str = "2s") -> str:
    # Changing the interval is a change both notice (CoreDNS compares the parsed
    # Corefile, so a comment would not do).
    return (f".:{PORT} {{\n    bind vnode {{\n        except {EXCEPTED_V4}\n    }}\n"
            f"    reload {interval} 1s\n}}\n")


def answering(addresses: list[str], port: int) -> list[str]:
    """Which of ``addresses`` answer a query (any rcode) within a short wait; run in the client."""
    wire = dns.message.make_query("probe.example.", "A").to_wire()
    out = []
    for address in addresses:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(0.5)
            try:
                sock.sendto(wire, (address, port))
                sock.recv(4096)
            except OSError:
                continue
            out.append(address)
    return out


def link_local(ns: str, dev: str) -> str:
    for _ in range(50):  # DAD is off, but the address appears once the link is up
        text = netns.run(ns, "ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link").stdout
        if text and "tentative" not in text:
            return text.split()[3].split("/")[0]
        time.sleep(0.1)
    raise AssertionError(f"no link-local address on {dev}")


@pytest.fixture
def topo() -> Iterator[tuple[str, str, list[str]]]:
    """(node namespace, client namespace, the addresses the client asks)."""
    netns.sweep_stale()
    with netns.namespace("bnode") as node, netns.namespace("bcli") as client:
        for ns in (node, client):
            netns.run(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        with netns.veth_pair(node, "vnode", client, "vcli"):
            for ns, dev, v4, v6 in ((node, "vnode", [NODE_V4, EXCEPTED_V4], NODE_V6),
                                    (client, "vcli", ["10.53.0.100"], "fd53::100")):
                for address in v4:
                    netns.run(ns, "ip", "addr", "add", f"{address}/24", "dev", dev)
                netns.run(ns, "ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            peer_ll = link_local(node, "vnode") + "%vcli"
            yield node, client, [NODE_V4, EXCEPTED_V4, ADDED_V4, NODE_V6, peer_ll]


def wait_answering(client: str, addresses: list[str], expected: set[str],
                   timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    got: list[str] = []
    while time.monotonic() < deadline:
        got = netns.call(client, answering, addresses, PORT)
        if set(got) == expected:
            return got
        time.sleep(0.2)
    return got


def probe(node: str, client: str, conf: Path,
          addresses: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(answering at start, on loopback inside the node, after an address is added and a reload)."""
    expected = {addresses[0], addresses[3], addresses[4]}
    first = wait_answering(client, addresses, expected)
    loopback = netns.call(node, answering, ["127.0.0.1", "::1"], PORT)
    netns.run(node, "ip", "addr", "add", f"{ADDED_V4}/24", "dev", "vnode")
    try:
        conf.write_text(corefile("3s"))  # a reload resolves vnode again
        after = wait_answering(client, addresses, expected | {ADDED_V4})
    finally:
        netns.run(node, "ip", "addr", "del", f"{ADDED_V4}/24", "dev", "vnode", check=False)
    return first, loopback, after


@contextlib.contextmanager
def nodecache(node: str, conf: Path, workdir: Path) -> Iterator[None]:
    proc = netns.python(node, "-m", "nodecache", "run", "--conf", str(conf), "--localip", "",
                        "--pidfile", str(workdir / "pid"), "--serving-lock",
                        str(workdir / "lock"), background=True,
                        stdout=(workdir / "nodecache.log").open("wb"), stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_bind_interface_except_and_reload_match_node_cache(
        topo: tuple[str, str, list[str]], tmp_path: Path) -> None:
    node, client, addresses = topo
    (tmp_path / "theirs").mkdir()
    with node_cache(corefile(), tmp_path / "theirs", host=NODE_V4, port=PORT, ns=node):
        theirs = probe(node, client, tmp_path / "theirs" / "Corefile", addresses)
    conf = tmp_path / "Corefile"
    conf.write_text(corefile())
    with nodecache(node, conf, tmp_path):
        ours = probe(node, client, conf, addresses)
    link = addresses[4]
    logs = {name: path.read_text()[-3000:] for name, path in (
        ("node-cache", tmp_path / "theirs" / "node-cache.log"),
        ("nodecache", tmp_path / "nodecache.log"))}
    # Every address of vnode but the excepted one, the link-local one included
    # (bound with its scope), nothing on loopback; the added one after reload.
    assert sorted(theirs[0]) == sorted([NODE_V4, NODE_V6, link]), (theirs, logs)
    assert theirs[1] == [], (theirs, logs)
    assert sorted(theirs[2]) == sorted([NODE_V4, ADDED_V4, NODE_V6, link]), (theirs, logs)
    assert ours == theirs, (ours, logs)


def test_interface_addresses_leave_out_tentative_ipv6() -> None:
    """An address in duplicate address detection cannot be bound yet: not listed until settled."""
    netns.sweep_stale()
    with netns.namespace("dada") as a, netns.namespace("dadb") as b, \
            netns.veth_pair(a, "vdad", b, "vpeer"):
        netns.run(a, "sysctl", "-qw", "net.ipv6.conf.vdad.accept_dad=1",
                  "net.ipv6.conf.vdad.dad_transmits=3")
        netns.run(a, "ip", "addr", "add", "10.54.0.1/24", "dev", "vdad")
        netns.run(a, "ip", "addr", "add", "fd54::1/64", "dev", "vdad")  # DAD: about 3 s
        first = netns.call(a, interface_addresses, "vdad")
        assert "10.54.0.1" in first and "fd54::1" not in first, first
        settled: list[str] = []
        for _ in range(100):
            settled = netns.call(a, interface_addresses, "vdad")
            if "fd54::1" in settled:
                break
            time.sleep(0.1)
        assert "fd54::1" in settled, settled
        assert netns.call(a, interface_addresses, "nosuch0") is None
