"""A DNS over TLS server for tests: unbound on a loopback port, with a throwaway CA.

:func:`dot_server` makes a CA and a server certificate (for ``dns.test`` and
the loopback address) with openssl in the test's folder, starts unbound
serving a few local records over TLS only, waits until it answers, and stops
it again.
"""
from __future__ import annotations

import contextlib
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.kit.refnodecache import free_port

HOST = "127.0.0.1"
SERVER_NAME = "dns.test"
#: How long unbound may take to start answering, s.
START_TIMEOUT = 10.0
RECORDS = ("www.example.org. 300 IN A 192.0.2.80", "www.example.org. 300 IN AAAA 2001:db8::80",
           "svc.example.org. 300 IN A 192.0.2.81")


@dataclass(frozen=True)
class DoT:
    host: str
    port: int
    ca: Path
    #: A certificate and key the CA signed, for a client that presents one.
    client_cert: Path
    client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_certs(d: Path) -> None:
    """ca.pem, server.pem/server.key (dns.test, 127.0.0.1), client.pem/client.key."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "2", "-subj", "/CN=nodecache test CA", cwd=d)
    for name, ext in (("server", f"subjectAltName=DNS:{SERVER_NAME},IP:{HOST}"),
                      ("client", "extendedKeyUsage=clientAuth")):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                 f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        (d / f"{name}.ext").write_text(ext + "\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext",
                 cwd=d)


def _answers(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as raw, \
                context.wrap_socket(raw, server_hostname=SERVER_NAME) as tls:
            return tls.version() is not None
    except OSError:
        return False


@contextlib.contextmanager
def dot_server(workdir: Path) -> Iterator[DoT]:
    d = workdir / "dot"
    d.mkdir()
    make_certs(d)
    port = free_port(HOST)
    local = "".join(f'  local-data: "{rr}"\n' for rr in RECORDS)
    conf = d / "unbound.conf"
    conf.write_text(f"""\
server:
  interface: {HOST}@{port}
  tls-port: {port}
  tls-service-key: "{d / 'server.key'}"
  tls-service-pem: "{d / 'server.pem'}"
  do-udp: no
  do-ip6: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  directory: "{d}"
  username: ""
  chroot: ""
  pidfile: ""
  logfile: ""
  use-syslog: no
  do-daemonize: no
  local-zone: "example.org." static
{local}remote-control:
  control-enable: no
""")
    proc = subprocess.Popen(["unbound", "-d", "-p", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers(port, d / "ca.pem"):
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode() if proc.poll() is not None and proc.stderr else ""
                raise RuntimeError(f"unbound did not serve DoT on {HOST}:{port}: {err}")
            time.sleep(0.05)
        yield DoT(HOST, port, d / "ca.pem", d / "client.pem", d / "client.key")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
