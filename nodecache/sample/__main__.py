"""``python -m nodecache.sample``: run the sample cluster DNS until interrupted."""
from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from .authority import SampleAuthority
from .zones import build_zones


async def _serve(host: str, port: int, domain: str, services: int) -> None:
    authority = SampleAuthority(build_zones(domain, services))
    await authority.start(host, port)
    click.echo(f"sample cluster DNS for {domain}. on {host}:{authority.port} (udp, tcp)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await authority.close()


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=5354, show_default=True, type=click.IntRange(0, 65535),
              help="UDP and TCP port.")
@click.option("--domain", default="cluster.local", show_default=True, help="Cluster domain.")
@click.option("--services", default=8, show_default=True, type=click.IntRange(0, 10000),
              help="Services with a ClusterIP.")
def main(host: str, port: int, domain: str, services: int) -> None:
    """Serve a generated sample cluster DNS zone (authoritative, UDP and TCP)."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(host, port, domain, services))


if __name__ == "__main__":
    main()
