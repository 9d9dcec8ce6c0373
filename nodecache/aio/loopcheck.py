"""The ``loop`` plugin: a probe sent to ourselves that comes back means a loop.

As CoreDNS's ``loop``: at start, each forwarding zone with ``loop`` gets an
HINFO query for a random name under it, sent to our own listener. The handler
counts probe names it sees (``QueryHandler.watch_probe``); once is our own
query, a second time means the upstream forwarded it back to us.
"""
from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Mapping, Sequence

from nodecache.core import wire
from nodecache.core.handler import QueryHandler, Zone, zone_wire
from nodecache.errors import NodecacheError

#: How long the loop check waits for its probe to come back, s.
LOOP_PROBE_WAIT = 2.0
#: The probe's type, as CoreDNS's loop plugin (RFC 1035 section 3.2.2).
TYPE_HINFO = 13


class LoopDetected(NodecacheError):
    """A forwarding loop was detected (the upstream sends our queries back to us)."""


async def check_loops(zones: Sequence[Zone], handlers: Mapping[tuple[str, int], QueryHandler],
                      ports: Mapping[tuple[str, int], int]) -> None:
    """Probe every zone with ``loop`` and ``forward``.

    :param handlers: Listener address (as in the Corefile) -> its handler.
    :param ports: Listener address -> the port it is bound to (differs for port 0).
    :raises LoopDetected: A probe came back through the upstream.
    """
    probes: list[tuple[QueryHandler, bytes, tuple[str, int]]] = []
    for zone in zones:
        if not zone.block.loop or zone.block.forward is None:
            continue
        address = next((a for a, h in handlers.items() if zone in h.zones.values()), None)
        if address is None:
            continue
        handler = handlers[address]
        label = f"{random.getrandbits(63)}.{random.getrandbits(63)}"
        name = zone_wire(f"{label}.{zone.name}" if zone.name != "." else f"{label}.")
        handler.watch_probe(name)
        probes.append((handler, name, (address[0], ports[address])))
    loop = asyncio.get_running_loop()
    for handler, name, (host, port) in probes:
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        query = wire.build_query(name, TYPE_HINFO, wire.CLASS_IN, do=False, cd=False,
                                 qid=random.getrandbits(16), edns=False)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            try:
                sock.connect((host, port))
                sock.send(query)  # a datagram never blocks here
                await asyncio.wait_for(loop.sock_recv(sock, 512), LOOP_PROBE_WAIT)
            except (OSError, asyncio.TimeoutError):
                pass
        seen = handler.probe_seen(name)
        if seen >= 2:
            looped = handler.route(name)
            raise LoopDetected(
                f"Loop ({host}:{port} -> upstream) detected for zone "
                f"{looped.name if looped else '?'}: the upstream "
                f"forwards our queries back to us; see the node's resolv.conf "
                f"(a systemd-resolved stub such as 127.0.0.53 is the usual cause)")
