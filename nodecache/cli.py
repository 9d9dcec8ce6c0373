"""Command line: ``nodecache run | check-config | demo | setup | teardown``.

node-cache's Go-style arguments (``-localip a,b -setupiptables=false``) are
accepted as they are, so the image can be swapped without editing a DaemonSet.
"""
from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from nodecache import __version__
from nodecache.config.settings import Config
from nodecache.benchclient.command import bench_client as bench_client_command
from nodecache.errors import ConfigError, NodecacheError
from nodecache.hostnet.commands import setup as setup_command
from nodecache.hostnet.commands import teardown as teardown_command
from nodecache.hostnet.firewall import FIREWALLS
from nodecache.hostnet.flags import normalize_nodecache_argv

log = logging.getLogger("nodecache")

#: node-cache's default template path (the ConfigMap key mounted as Corefile.base).
DEFAULT_BASECOREFILE = "/etc/coredns/Corefile.base"
#: node-cache's default kube-dns ConfigMap mount.
DEFAULT_KUBEDNSCM = "/etc/kube-dns"


def _split_ips(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _health_port(config: Config, flag: int | None) -> int:
    """The health port from the Corefile's ``health`` line; the flag must agree with it."""
    from nodecache.aio.http import parse_address  # noqa: PLC0415
    ports = {parse_address(b.health.address)[1] for b in config.blocks if b.health}
    if len(ports) > 1:
        raise ConfigError(f"health is configured on several ports: {sorted(ports)}")
    if ports:
        port = ports.pop()
        if flag is not None and flag != port:
            raise click.BadParameter(
                f"{flag} disagrees with the Corefile's health port {port}; drop the flag or "
                f"change the Corefile", param_hint="--health-port")
        return port
    return flag if flag is not None else 8080


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="nodecache")
def cli() -> None:
    """nodecache: a node-local DNS cache agent for Kubernetes."""


@cli.command("run")
@click.option("--conf", "-conf", "conf", default="/etc/Corefile", show_default=True,
              help="Corefile to serve; in template mode the rendered Corefile is written here.")
@click.option("--basecorefile", default=None,
              help=f"Template to render into --conf (node-local mode). Default: "
                   f"{DEFAULT_BASECOREFILE} when it exists.")
@click.option("--kubednscm", default=None,
              help=f"Directory of the mounted kube-dns ConfigMap (stubDomains, "
                   f"upstreamNameservers). Default: {DEFAULT_KUBEDNSCM} when it exists.")
@click.option("--upstreamsvc", default="kube-dns", show_default=True,
              help="Service whose ClusterIP ($NAME_SERVICE_HOST) becomes __PILLAR__CLUSTER__DNS__.")
@click.option("--localip", default="",
              help="Comma-separated IPs to hold on the interface and steer to the cache; "
                   "IPv4 and IPv6 may be mixed. Empty: touch no host networking.")
@click.option("--domain", default=None,
              help="Cluster domain for __PILLAR__DNS__DOMAIN__, if the template still has it.")
@click.option("--resolv-conf", default="/etc/resolv.conf", show_default=True,
              help="The node's resolv.conf, for __PILLAR__UPSTREAM__SERVERS__.")
@click.option("--setupinterface/--no-setupinterface", default=True, show_default=True,
              help="Create and keep the interface holding the local IPs.")
@click.option("--setupiptables/--no-setupiptables", default=True, show_default=True,
              help="Install and keep the NOTRACK/ACCEPT firewall rules.")
@click.option("--interfacename", default="nodelocaldns", show_default=True,
              help="Name of the interface holding the local IPs.")
@click.option("--firewall", type=click.Choice(["auto", "iptables-legacy", "iptables-nft",
                                               "nftables"]), default="auto", show_default=True,
              help="Firewall backend; auto follows what kubelet and kube-proxy use.")
@click.option("--syncinterval", type=click.FloatRange(min=1), default=60, show_default=True,
              help="Seconds between checks that the interface and rules are still in place.")
@click.option("--skipteardown", is_flag=True, default=False,
              help="Leave the interface and rules in place on exit (for two overlapping agents).")
@click.option("--health-port", type=click.IntRange(1, 65535), default=None,
              help="Port of /health for the liveness-probe rules; defaults to the Corefile's "
                   "health port, and must agree with it when both are given.")
@click.option("--pidfile", default=None, help="Write our PID here once serving.")
@click.option("--serving-lock", default=None,
              help="Lock file every agent of the node holds while serving; at exit an agent "
                   "skips the teardown if another one holds it (upgrades, docs/upgrades.md). "
                   "Default with host networking: serving.lock next to --pidfile, else "
                   "/run/nodecache/serving.lock.")
@click.option("--cache-snapshot", default=None,
              help="Write the cache here on shutdown and read it back on start (upgrades "
                   "start warm; see docs/upgrades.md).")
@click.option("--dns.port", "--dns-port", "-p", "dns_port", type=click.IntRange(1, 65535),
              default=53, show_default=True, help="Port for server blocks that name none.")
@click.option("--metrics-listen-address", default=None,
              help="Also serve /metrics here (node-cache serves setup errors on :9353).")
@click.option("--prometheus-listen-address", default=None, hidden=True)
@click.option("--quiet", is_flag=True, default=False, hidden=True,
              help="Accepted for node-cache compatibility (CoreDNS's -quiet); logging is "
                   "set by --log-level.")
@click.option("--reloadwithsignal", is_flag=True, default=False, hidden=True,
              help="Accepted for node-cache compatibility; SIGUSR1 always reloads.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
@click.option("--dry-run", is_flag=True, default=False,
              help="Check the arguments and configuration, print the effective configuration, "
                   "and exit without serving.")
@click.option("--supervise/--no-supervise", default=True, show_default=True,
              help="With host networking, serve from a child process; if it dies without "
                   "teardown (SIGKILL, OOM) remove the rules at once and restart it "
                   "(docs/upgrades.md).")
@click.pass_obj
def run_command(run_args: list[str] | None, conf: str, basecorefile: str | None,
                kubednscm: str | None, upstreamsvc: str, localip: str, domain: str | None,
                resolv_conf: str, setupinterface: bool, setupiptables: bool,
                interfacename: str, firewall: str, syncinterval: float, skipteardown: bool,
                health_port: int | None, pidfile: str | None, dns_port: int,
                metrics_listen_address: str | None, prometheus_listen_address: str | None,
                reloadwithsignal: bool, log_level: str, dry_run: bool, quiet: bool = False,
                cache_snapshot: str | None = None, serving_lock: str | None = None,
                supervise: bool = True) -> None:
    """Serve DNS from the cache (node-cache compatible flags)."""
    from nodecache import config as corefile  # noqa: PLC0415
    from nodecache import serve as serving  # noqa: PLC0415
    from nodecache.core.stats import AgentStats  # noqa: PLC0415

    serving.setup_logging(log_level)
    local_ips = _split_ips(localip)
    if basecorefile is None and os.path.exists(DEFAULT_BASECOREFILE):
        basecorefile = DEFAULT_BASECOREFILE
    if kubednscm is None and os.path.isdir(DEFAULT_KUBEDNSCM):
        kubednscm = DEFAULT_KUBEDNSCM
    if basecorefile and not local_ips:
        raise click.BadParameter("template mode (--basecorefile) needs --localip",
                                 param_hint="--localip")
    options = serving.ServeOptions(
        conf=conf, basecorefile=basecorefile, kubednscm=kubednscm, upstreamsvc=upstreamsvc,
        local_ips=local_ips, domain=domain, resolv_conf=resolv_conf,
        setupinterface=setupinterface, setupiptables=setupiptables, interfacename=interfacename,
        firewall=firewall, syncinterval=syncinterval, skipteardown=skipteardown,
        health_port=health_port or 0, pidfile=pidfile, dns_port=dns_port,
        metrics_listen_address=metrics_listen_address or prometheus_listen_address,
        log_level=log_level, cache_snapshot=cache_snapshot, serving_lock=serving_lock)
    stats = AgentStats()
    source = serving.config_source(options, stats)
    try:
        config = source()
        options = replace(options, health_port=_health_port(config, health_port))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or conf}: {exc.strerror}") from None
    try:
        hostnet = serving.host_network(options, stats)
    except NodecacheError as exc:
        raise click.ClickException(str(exc)) from None
    if dry_run:
        click.echo(corefile.describe(config))
        click.echo(f"host networking: {'off' if hostnet is None else ', '.join(local_ips)}")
        return
    if serving_lock is None and hostnet is not None:
        from nodecache.aio.agent import DEFAULT_SERVING_LOCK  # noqa: PLC0415
        options = replace(options, serving_lock=os.path.join(
            os.path.dirname(os.path.abspath(pidfile)), "serving.lock")
            if pidfile else DEFAULT_SERVING_LOCK)
    if run_args is None:  # called in this process (click's test runner): serve here
        try:
            serving.serve(options)
        except NodecacheError as exc:
            raise click.ClickException(str(exc)) from None
        return
    # Serve from a process that imports only what serving needs (nodecache/serve.py):
    # with host networking through the supervisor, which starts it as its worker.
    from nodecache import supervisor  # noqa: PLC0415
    if hostnet is not None and supervise:
        supervisor.become_supervisor(serving.argv(options, worker=True))
    serving.become_server(options)


def _run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main`` on the fastest loop available; agent errors become one-line CLI errors."""
    from nodecache.serve import run_async  # noqa: PLC0415
    try:
        run_async(main)
    except NodecacheError as exc:
        raise click.ClickException(str(exc)) from None


@cli.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--dns-port", type=click.IntRange(1, 65535), default=53, show_default=True,
              help="Port for server blocks that name none.")
def check_config(file: str, dns_port: int) -> None:
    """Validate FILE and print the effective configuration."""
    from nodecache import config as corefile  # noqa: PLC0415
    try:
        config = corefile.load(file, default_port=dns_port)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"{file}: {exc.strerror}") from None
    click.echo(corefile.describe(config))


def _template_path() -> Path:
    """The Corefile.nodelocal shipped with the package, or the repository's."""
    for candidate in (Path(sys.prefix) / "share" / "nodecache" / "Corefile.nodelocal",
                      Path(__file__).resolve().parent.parent / "Corefile.nodelocal"):
        if candidate.is_file():
            return candidate
    raise click.ClickException("Corefile.nodelocal not found (install the package or run "
                               "from the repository)")


@cli.command("demo")
@click.option("--port", type=click.IntRange(1, 65535), default=5353, show_default=True,
              help="DNS port of the agent on 127.0.0.1.")
@click.option("--upstream-port", type=click.IntRange(1, 65535), default=5354, show_default=True,
              help="Port of the built-in sample cluster DNS on 127.0.0.1.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def demo(port: int, upstream_port: int, log_level: str) -> None:
    """Serve on loopback in front of a built-in sample cluster DNS (no cluster needed).

    The agent runs the production code path with Corefile.nodelocal rendered for
    127.0.0.1; only the upstream (an authoritative server for a sample
    cluster.local and its reverse zone) is a sample. No host networking is touched.
    """
    from nodecache.aio.agent import Agent  # noqa: PLC0415
    from nodecache.configsource import TextSource  # noqa: PLC0415
    from nodecache.serve import setup_logging  # noqa: PLC0415
    from nodecache.k8s.template import render_corefile  # noqa: PLC0415
    from nodecache.sample.authority import SampleAuthority  # noqa: PLC0415
    from nodecache.sample.zones import build_zones  # noqa: PLC0415

    setup_logging(log_level)
    upstream = f"127.0.0.1:{upstream_port}"
    text = render_corefile(_template_path().read_text(encoding="utf-8"), local_ips=["127.0.0.1"],
                           dns_server_ips=[], cluster_dns="127.0.0.1",
                           upstream_servers=["127.0.0.1"], domain="cluster.local", kubedns=None,
                           dns_port=port)
    # Both the cluster domain and "." go to the sample server (which refuses
    # names outside its zones), so the demo never sends a query off the machine.
    text = text.replace("forward . 127.0.0.1", f"forward . {upstream}")
    text = re.sub(r"^(\S+):53 \{", lambda m: f"{m.group(1)}:{port} {{", text, flags=re.M)
    source = TextSource(text, name="Corefile.nodelocal (rendered for loopback)", default_port=port)

    async def main() -> None:
        authority = SampleAuthority(build_zones("cluster.local", 8))
        await authority.start("127.0.0.1", upstream_port)
        try:
            agent = Agent(source)

            async def announce() -> None:
                while not agent.ready:  # once every listener is bound
                    await asyncio.sleep(0.05)
                click.echo(
                    f"\nnodecache is serving on 127.0.0.1:{port} (udp, tcp) in front of a sample "
                    f"cluster DNS on {upstream}.\nTry:\n"
                    f"  dig @127.0.0.1 -p {port} kubernetes.default.svc.cluster.local\n"
                    f"  dig @127.0.0.1 -p {port} -x 10.96.0.10\n"
                    f"  curl -s 127.0.0.1:9253/metrics | grep coredns_cache\n"
                    f"Ctrl-C stops it.\n", err=True)

            announcer = asyncio.get_running_loop().create_task(announce())
            try:
                await agent.run()
            finally:
                announcer.cancel()
        finally:
            await authority.close()

    _run_async(main)


@cli.command("guard")
@click.option("--serving-lock", default="/run/nodecache/serving.lock", show_default=True,
              help="The lock every agent of the node holds while serving (a shared hostPath).")
@click.option("--localip", default="",
              help="Link-local IPs (comma-separated) to send to the cluster DNS while no agent "
                   "serves; not the kube-dns ClusterIP. Default: none (rules removal only).")
@click.option("--upstreamsvc", default="kube-dns", show_default=True,
              help="Service of the cluster DNS ($NAME_SERVICE_HOST), as for `run`.")
@click.option("--firewall", type=click.Choice(FIREWALLS), default="auto", show_default=True,
              help="Where the fallback goes (auto: the iptables kubelet uses).")
def guard(serving_lock: str, localip: str, upstreamsvc: str, firewall: str) -> None:
    """Keep DNS answered whenever no agent serves (a container beside the agent).

    For when the whole agent container dies (OOM kill, SIGKILL): the firewall
    rules go, so the kube-dns ClusterIP falls back to kube-proxy's DNAT, and
    with --localip those IPs are sent to the cluster DNS until an agent serves again.
    """
    from nodecache import guard as guard_module  # noqa: PLC0415
    from nodecache.hostnet.fallback import Fallback  # noqa: PLC0415
    from nodecache.hostnet.rules import parse_local_ips  # noqa: PLC0415
    from nodecache.k8s.template import cluster_dns_ip  # noqa: PLC0415
    fallback = None
    if localip:
        try:
            ips = parse_local_ips(_split_ips(localip))
            target = cluster_dns_ip(upstreamsvc, os.environ)
        except (ValueError, ConfigError) as exc:
            raise click.UsageError(str(exc)) from None
        fallback = Fallback(ips, target, firewall=firewall)
    sys.exit(guard_module.main(serving_lock, fallback))


cli.add_command(setup_command)
cli.add_command(teardown_command)
cli.add_command(bench_client_command)


#: Options of the command group itself; any other leading option means ``run``.
_GROUP_OPTIONS = frozenset({"-h", "--help", "--version", "-version"})


def command_argv(argv: list[str]) -> list[str]:
    """``argv`` with ``run`` in front when it starts with a flag, as node-cache's image
    is given its arguments (``-localip ... -conf ...``, no command); pure."""
    if argv and argv[0].startswith("-") and argv[0] not in _GROUP_OPTIONS:
        return ["run", *argv]
    return argv


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: one line on stderr and a non-zero exit for any error."""
    args = normalize_nodecache_argv(command_argv(list(sys.argv[1:] if argv is None else argv)))
    try:
        # The context object: the normalised arguments, for the supervised worker's
        # command line (``run`` re-executes itself with them).
        cli.main(args=args, prog_name="nodecache", standalone_mode=False, obj=args)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `nodecache`: show the help
            click.echo(exc.format_message())
            sys.exit(0)
        command = exc.ctx.command_path if exc.ctx else "nodecache"
        click.echo(f"{command}: {exc.format_message()} (see '{command} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"nodecache: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
