"""One-shot ``nodecache setup`` / ``nodecache teardown`` for operators.

``setup`` does what the agent does at start (adopt leftovers, link, rules)
and exits, leaving everything in place; ``teardown`` removes it again. The
link's ifalias marker tells ``teardown`` whether the link was created or
adopted, so the two may run in different processes.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import click

from nodecache.core.stats import AgentStats
from nodecache.errors import HostNetworkError
from nodecache.hostnet.firewall import FIREWALLS
from nodecache.hostnet.host import HostNetwork


def _options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed([
        click.option("--localip", required=True,
                     help="Comma-separated local IPs (IPv4 and IPv6 may be mixed)."),
        click.option("--interfacename", default="nodelocaldns", show_default=True,
                     help="Name of the interface holding the local IPs."),
        click.option("--firewall", type=click.Choice(FIREWALLS), default="auto",
                     show_default=True, help="Firewall backend."),
        click.option("--health-port", type=click.IntRange(1, 65535), default=8080,
                     show_default=True, help="Health port (rules for the liveness probe)."),
        click.option("--dns-port", type=click.IntRange(1, 65535), default=53,
                     show_default=True, help="DNS port the rules match."),
        click.option("--setupinterface/--no-setupinterface", default=True, show_default=True,
                     help="Manage the interface."),
        click.option("--setupiptables/--no-setupiptables", default=True, show_default=True,
                     help="Manage the NOTRACK/ACCEPT rules."),
    ]):
        fn = opt(fn)
    return fn


def _host(localip: str, interfacename: str, firewall: str, health_port: int, dns_port: int,
          setupinterface: bool, setupiptables: bool) -> HostNetwork:
    try:
        host = HostNetwork(local_ips=[ip for ip in localip.split(",")], interface=interfacename,
                           dns_port=dns_port, health_port=health_port, firewall=firewall,
                           setup_interface=setupinterface, setup_rules=setupiptables,
                           stats=AgentStats())
        host.check_prerequisites()
    except HostNetworkError as exc:
        raise click.ClickException(str(exc)) from None
    return host


@click.command("setup")
@_options
def setup(**kwargs: Any) -> None:
    """Create/adopt the interface and install the rules, then exit."""
    host = _host(**kwargs)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        host.adopt_leftovers()
        host.ensure_interface()
        added = host.ensure_rules()
    except HostNetworkError as exc:
        raise click.ClickException(str(exc)) from None
    if host.stats.setup_errors.get("iptables_lock"):
        raise click.ClickException("the xtables lock stayed busy; rules not installed")
    click.echo(f"interface {host.interface if host.setup_interface else '(not managed)'}; "
               f"{added} rules added ({host.firewall.name if host.setup_rules else 'no rules'})")


@click.command("teardown")
@_options
def teardown(**kwargs: Any) -> None:
    """Remove the rules, then the interface (only what nodecache installed)."""
    host = _host(**kwargs)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        host.adopt_leftovers()
        host.teardown()
    except HostNetworkError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("removed")
