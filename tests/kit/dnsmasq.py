"""dnsmasq on loopback as a fast upstream: one address for every name, no cache."""
from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Iterator

from tests.kit.refnodecache import free_port


@contextlib.contextmanager
def dnsmasq() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(["dnsmasq", "--no-daemon", "--no-resolv", "--no-hosts",
                             "--bind-interfaces", "--listen-address=127.0.0.1", f"--port={port}",
                             "--address=/#/192.0.2.1", "--local-ttl=300", "--cache-size=0", "--user=root",
                             "--dns-forward-max=10000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        assert proc.poll() is None, "dnsmasq did not start"
        yield port
    finally:
        proc.kill()
        proc.wait(10)
