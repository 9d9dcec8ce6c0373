"""The serving process: what ``nodecache run`` becomes once its arguments are checked.

``nodecache run`` (click, the whole Corefile checker, the host-network set-up
commands) validates its flags and the Corefile, then replaces itself (``execv``,
same PID) with ``python -m nodecache.serve OPTIONS``, or, with host networking,
with the supervisor, which starts this module as its worker. Every module a
process imports stays in its memory for its whole life, and that memory is the
container's working set: click and the command-line code alone are about
1.5 MB of it (bench/nodebench/memory.py). This module imports only what
serving needs; the options come as one JSON object that ``run`` wrote.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nodecache.errors import NodecacheError

log = logging.getLogger("nodecache")

#: The agent's log line format.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: In template mode, re-render this often, s (node-cache polls its ConfigMaps every 10 s).
TEMPLATE_WATCH_INTERVAL = 2.0


@dataclass(frozen=True)
class ServeOptions:
    """``nodecache run``'s flags as checked, with the defaults it resolved."""

    conf: str
    basecorefile: str | None
    kubednscm: str | None
    upstreamsvc: str
    local_ips: list[str]
    domain: str | None
    resolv_conf: str
    setupinterface: bool
    setupiptables: bool
    interfacename: str
    firewall: str
    syncinterval: float
    skipteardown: bool
    #: The health port the firewall rules let through (the Corefile's, or the flag's).
    health_port: int
    pidfile: str | None
    dns_port: int
    metrics_listen_address: str | None
    log_level: str
    cache_snapshot: str | None
    serving_lock: str | None

    @property
    def hostnet(self) -> bool:
        """Whether the agent manages host networking (an interface or rules)."""
        return bool(self.local_ips) and (self.setupinterface or self.setupiptables)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ServeOptions:
        return cls(**json.loads(text))


def argv(options: ServeOptions, *, worker: bool = False) -> list[str]:
    """The command line that serves ``options`` (as the supervisor's worker with ``worker``)."""
    return [sys.executable, "-m", "nodecache.serve", options.to_json(), *(["--worker"] if worker else [])]


def event_loop_policy() -> None:
    """uvloop where installed: its datagram path is several times faster (bench/)."""
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        log.info("uvloop not installed; using the standard asyncio loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def setup_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format=LOG_FORMAT)


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on the fastest loop available."""
    event_loop_policy()
    asyncio.run(main())


def config_source(options: ServeOptions, stats: Any) -> Callable[[], Any]:
    """Where the running Corefile comes from: the file, or the template rendered into it."""
    from nodecache.configsource import FileSource, TemplateSource  # noqa: PLC0415
    if options.basecorefile:
        # As node-cache: every -localip is bound; __PILLAR__DNS__SERVER__ becomes "".
        return TemplateSource(
            basecorefile=options.basecorefile, conf=options.conf, local_ips=options.local_ips,
            dns_server_ips=[], upstreamsvc=options.upstreamsvc, kubednscm=options.kubednscm,
            resolv_conf=options.resolv_conf, domain=options.domain, dns_port=options.dns_port,
            stats=stats)
    return FileSource(options.conf, default_port=options.dns_port)


def host_network(options: ServeOptions, stats: Any) -> Any:
    """The host networking ``options`` ask for, or None."""
    if not options.hostnet:
        return None
    from nodecache.hostnet.host import HostNetwork  # noqa: PLC0415
    return HostNetwork(local_ips=options.local_ips, interface=options.interfacename,
                       dns_port=options.dns_port, health_port=options.health_port,
                       firewall=options.firewall, setup_interface=options.setupinterface,
                       setup_rules=options.setupiptables, stats=stats, link_in_child=True)


def serve(options: ServeOptions, *, worker: bool = False) -> None:
    """Serve until SIGTERM/SIGINT; as the supervisor's worker with ``worker``.

    :raises NodecacheError: if the agent cannot start (or the Corefile became invalid
        since ``run`` checked it).
    """
    from nodecache.aio.agent import Agent  # noqa: PLC0415
    from nodecache.core.stats import AgentStats  # noqa: PLC0415
    from nodecache.hostnet.ifaddrs import interface_addresses  # noqa: PLC0415
    from nodecache.supervisor import WorkerChannel  # noqa: PLC0415

    setup_logging(options.log_level)
    stats = AgentStats()
    source = config_source(options, stats)
    hostnet = host_network(options, stats)
    channel = WorkerChannel.from_env() if worker else None
    if channel is not None and hostnet is not None:
        channel.send_rules(local_ips=hostnet.local_ips, dns_port=options.dns_port,
                           health_port=options.health_port, firewall=options.firewall,
                           lock_wait=hostnet.lock_wait, setup_rules=hostnet.setup_rules,
                           serving_lock=options.serving_lock)

    async def main() -> None:
        agent = Agent(source, hostnet=hostnet, stats=stats, syncinterval=options.syncinterval,
                      skipteardown=options.skipteardown, pidfile=options.pidfile,
                      extra_metrics_address=options.metrics_listen_address,
                      watch_interval=TEMPLATE_WATCH_INTERVAL if options.basecorefile else None,
                      cache_snapshot=options.cache_snapshot, serving_lock=options.serving_lock,
                      interfaces=interface_addresses)
        if channel is None:
            await agent.run()
            return
        running = asyncio.ensure_future(agent.run())
        while not agent.ready and not running.done():  # tell the supervisor once serving
            await asyncio.wait({running}, timeout=0.02)
        if agent.ready and hostnet is not None:
            channel.send_ready(hostnet.firewall.name if hostnet.setup_rules else "")
        await running

    run_async(main)


def become_server(options: ServeOptions) -> None:
    """Replace this process (same PID) with one serving ``options``."""
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv(options))


def main(args: Sequence[str]) -> int:
    """``python -m nodecache.serve OPTIONS [--worker]``: errors as ``nodecache run``'s."""
    if len(args) not in (1, 2) or args[1:] not in ([], ["--worker"]):
        print("usage: python -m nodecache.serve OPTIONS_JSON [--worker] "
              "(started by 'nodecache run')", file=sys.stderr)
        return 2
    try:
        options = ServeOptions.from_json(args[0])
    except (ValueError, TypeError) as exc:
        print(f"nodecache: unreadable serving options: {exc}", file=sys.stderr)
        return 2
    try:
        serve(options, worker=args[1:] == ["--worker"])
    except NodecacheError as exc:
        print(f"nodecache: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
