"""Measuring clients that dnsperf cannot stand in for; run inside the pod namespace.

``searchpath``
    What glibc does for a name with fewer dots than ``ndots``: try each search
    suffix in turn (each answered NXDOMAIN), then the name as given. Times the
    whole lookup, as the application sees it.
``fresh``
    One query per new UDP socket (a new source port each time), as pods make
    them: each is a new flow for conntrack, unlike dnsperf's few fixed sockets.

Both print one JSON object on stdout. Each query waits at most ``--timeout``;
the number of queries is bounded by the names file.
"""
from __future__ import annotations

import argparse
import json
import socket
import struct
import time

import dns.message
import dns.rcode


def _ask(server: str, wire: bytes, timeout: float, sock: socket.socket | None = None) -> bytes | None:
    own = sock is None
    s = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(wire, (server, 53))
        deadline = time.monotonic() + timeout
        while True:
            data = s.recv(65535)
            if data[:2] == wire[:2]:
                return data
            s.settimeout(max(0.001, deadline - time.monotonic()))
    except OSError:  # includes socket.timeout
        return None
    finally:
        if own:
            s.close()


def _wire(name: str, qtype: str, qid: int) -> bytes:
    q = dns.message.make_query(name, qtype)
    q.id = qid & 0xFFFF
    return q.to_wire()


def searchpath(server: str, names: list[str], search: list[str], ndots: int, timeout: float) -> dict:
    lookups: list[float] = []
    queries = nxdomain = failures = 0
    qid = 1
    for name in names:
        tries = [f"{name}.{s}." for s in search] if name.count(".") < ndots else []
        tries.append(f"{name}.")
        wires = []
        for t in tries:
            wires.append(_wire(t, "A", qid))
            qid += 1
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # one socket per lookup, as glibc
        t0 = time.perf_counter()
        ok = False
        for w in wires:
            queries += 1
            reply = _ask(server, w, timeout, s)
            if reply is None:
                break
            rcode = struct.unpack_from("!H", reply, 2)[0] & 0xF
            if rcode == dns.rcode.NXDOMAIN:
                nxdomain += 1
                continue
            ok = rcode == dns.rcode.NOERROR
            break
        elapsed = time.perf_counter() - t0
        s.close()
        if ok:
            lookups.append(elapsed)
        else:
            failures += 1
    return {"lookups_s": lookups, "queries": queries, "nxdomain": nxdomain, "failures": failures,
            "names": len(names)}


def fresh(server: str, names: list[str], count: int, timeout: float) -> dict:
    answered = 0
    t0 = time.perf_counter()
    for i in range(count):
        name, qtype = names[i % len(names)].split()[:2]
        if _ask(server, _wire(name, qtype, i + 1), timeout) is not None:
            answered += 1
    return {"sent": count, "answered": answered, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["searchpath", "fresh"])
    ap.add_argument("--server", required=True)
    ap.add_argument("--names", required=True, help="file: one name (searchpath) or 'name TYPE' per line")
    ap.add_argument("--search", default="default.svc.cluster.local svc.cluster.local cluster.local")
    ap.add_argument("--ndots", type=int, default=5)
    ap.add_argument("--count", type=int, default=10000)
    ap.add_argument("--timeout", type=float, default=2.0, help="per query, s")
    a = ap.parse_args()
    with open(a.names) as f:
        names = [line.strip() for line in f if line.strip()]
    if a.mode == "searchpath":
        out = searchpath(a.server, names, a.search.split(), a.ndots, a.timeout)
    else:
        out = fresh(a.server, names, a.count, a.timeout)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
