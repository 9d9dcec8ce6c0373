"""The ``nodecache bench-client`` command: options, signals, and writing the report."""
from __future__ import annotations

import asyncio
import datetime
import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from nodecache.errors import ConfigError

from .settings import HARD_MAX_RATE, Settings, Target

if TYPE_CHECKING:
    from . import names, resolv

log = logging.getLogger("nodecache.benchclient")

PHASES = ("cold", "hit", "miss", "searchpath", "steady", "throughput")
#: Exit status when SIGTERM or SIGINT ended the run (the report is partial).
EXIT_INTERRUPTED = 130


def _target(value: str) -> Target:
    label, sep, addr = value.partition("=")
    if not sep or not label or not addr:
        raise click.BadParameter(f"{value!r}: expected LABEL=ADDRESS or LABEL=ADDRESS:PORT", param_hint="--target")
    p = "53"
    if addr.count(":") == 1:  # IPv4 or a name with a port; IPv6 takes [addr]:port
        addr, p = addr.split(":")
    elif addr.startswith("[") and "]:" in addr:
        addr, p = addr[1:].split("]:")
    if not p.isdigit() or not 0 < int(p) < 65536:
        raise click.BadParameter(f"{value!r}: port {p!r} is not a port number", param_hint="--target")
    return Target(label, addr, int(p))


def _resolve(t: Target) -> Target:
    """A target given by name (a Service: ``kube-dns-upstream.kube-system``) resolved as the
    pod's applications resolve it, through getaddrinfo and the pod's resolv.conf."""
    import ipaddress  # noqa: PLC0415
    import socket  # noqa: PLC0415
    try:
        ipaddress.ip_address(t.address)
        return t
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(t.address, t.port, type=socket.SOCK_DGRAM)
    except socket.gaierror as exc:
        raise click.BadParameter(f"{t.label}={t.address}: cannot resolve {t.address!r}: {exc.strerror}",
                                 param_hint="--target") from None
    addr = str(infos[0][4][0])
    log.info("%s: %s is %s", t.label, t.address, addr)
    return Target(t.label, addr, t.port)


def _read(path: str | None) -> str:
    if not path:
        return ""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror}") from None


_rate = click.FloatRange(min=0.1, max=HARD_MAX_RATE)


@click.command("bench-client")
@click.option("--target", "targets", multiple=True, required=True, metavar="LABEL=ADDRESS[:PORT]",
              help="A DNS server to measure, e.g. kube-dns-upstream=10.96.0.11 or node-cache=169.254.20.10; "
                   "a name (kube-dns-upstream.kube-system) is resolved through the pod's resolver "
                   "(repeat; measured in turn, the report divides each by the first).")
@click.option("--resolv-conf", default="/etc/resolv.conf", show_default=True,
              help="The pod's resolv.conf: search list and ndots for the search-path lookups.")
@click.option("--cluster-domain", help="Default: from the resolv.conf search list, else cluster.local.")
@click.option("--discover-via", metavar="IP", help="Server for discovery. Default: the first nameserver "
              "of the resolv.conf (the cluster DNS as the pod sees it).")
@click.option("--service", "services", multiple=True, metavar="NAME.NAMESPACE",
              help="A service to include in the sample (repeat).")
@click.option("--names-file", type=click.Path(dir_okay=False),
              help="More names in dnsperf's format, NAME [TYPE] per line (e.g. a ConfigMap key).")
@click.option("--lookups-file", type=click.Path(dir_okay=False),
              help="Names for the search-path lookups, one per line, as applications write them.")
@click.option("--walk", "walk_cidrs", multiple=True, metavar="CIDR",
              help="Service range for the PTR walk (repeat). Default: the /24s of kubernetes.default "
                   "and kube-dns.")
@click.option("--walk-max", type=click.IntRange(0, 65536), default=512, show_default=True,
              help="PTR queries in the walk, at most.")
@click.option("--discover-rate", type=_rate, default=100.0, show_default=True,
              help="q/s of the discovery queries.")
@click.option("--rate", type=_rate, default=100.0, show_default=True,
              help=f"q/s for the latency phases and the steady run (at most {HARD_MAX_RATE:g}).")
@click.option("--max-rate", type=_rate, default=1000.0, show_default=True,
              help=f"Top of the throughput ramp, q/s (at most {HARD_MAX_RATE:g}).")
@click.option("--sample", type=click.IntRange(1, 100_000), default=300, show_default=True,
              help="Names in the hit sample, at most.")
@click.option("--misses", type=click.IntRange(0, 100_000), default=300, show_default=True,
              help="Fresh names asked once each, per target.")
@click.option("--lookups", type=click.IntRange(0, 10_000), default=100, show_default=True,
              help="Search-path lookups per target, at most.")
@click.option("--lookup-rate", type=click.FloatRange(0.1, 1000), default=20.0, show_default=True,
              help="Search-path lookups started per second, at most.")
@click.option("--lookup-types", type=click.Choice(["A,AAAA", "A", "AAAA"]), default="A,AAAA",
              show_default=True, help="Query types per candidate name (A,AAAA: getaddrinfo AF_UNSPEC).")
@click.option("--steady-seconds", type=click.FloatRange(0, 3600), default=10.0, show_default=True)
@click.option("--step-seconds", type=click.FloatRange(0.5, 600), default=3.0, show_default=True,
              help="Length of each throughput step.")
@click.option("--timeout", type=click.FloatRange(0.05, 30), default=2.0, show_default=True,
              help="Seconds before an unanswered query counts as a timeout.")
@click.option("--sockets", type=click.IntRange(1, 256), default=8, show_default=True,
              help="UDP sockets (source ports) the queries are spread over.")
@click.option("--max-seconds", type=click.FloatRange(1, 86_400), default=600.0, show_default=True,
              help="The whole run stops after this long, report written.")
@click.option("--phases", default=",".join(PHASES), show_default=True,
              help="Comma-separated phases to run.")
@click.option("--seed", type=int, help="Seed for the sample and the fresh names.")
@click.option("--out", "out_dir", default="bench-client-results", show_default=True,
              type=click.Path(file_okay=False), help="Where report.md, results.json and the plots go.")
@click.option("--compare", "compare_dir", type=click.Path(file_okay=False, exists=True),
              help="An earlier run's --out: its targets come first in this report, and its "
                   "sample is asked again (no discovery).")
@click.option("--node", envvar="NODE_NAME", help="Node name for the report [env NODE_NAME].")
@click.option("--pod", envvar="POD_NAME", help="Pod name for the report [env POD_NAME].")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="info", show_default=True)
def bench_client(**o: Any) -> None:
    """Measure DNS as this pod sees it: each target's hits, misses, search-path lookups,
    errors at a steady rate and throughput up to a capped rate.

    Meant for a pod on the node under test (manifests/bench/). Defaults are gentle:
    100 q/s, a ramp to 1,000 q/s, about a minute per target. SIGTERM or SIGINT stops at
    once and writes what was measured (exit status 130).
    """
    logging.basicConfig(level=getattr(logging, o["log_level"].upper()), stream=sys.stderr,
                        format="%(asctime)s %(message)s")
    targets = tuple(_resolve(_target(t)) for t in o["targets"])
    if len({t.label for t in targets}) != len(targets):
        raise click.BadParameter("labels must differ", param_hint="--target")
    phases = tuple(p.strip() for p in o["phases"].split(",") if p.strip())
    bad = set(phases) - set(PHASES)
    if bad:
        raise click.BadParameter(f"unknown phase(s) {', '.join(sorted(bad))}; known: {', '.join(PHASES)}",
                                 param_hint="--phases")
    from . import names, resolv  # noqa: PLC0415
    try:
        conf = resolv.read(o["resolv_conf"])
        file_queries = names.parse_names_file(_read(o["names_file"]), source=o["names_file"] or "")
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    file_lookups = names.parse_lookups_file(_read(o["lookups_file"]))
    domain = (o["cluster_domain"] or conf.cluster_domain or "cluster.local").strip(".")
    via_addr = o["discover_via"] or (conf.nameservers[0] if conf.nameservers else targets[0].address)
    via = _resolve(_target(f"via={via_addr}"))
    previous = _load_previous(o["compare_dir"]) if o["compare_dir"] else None
    if previous and set(previous[0]["targets"]) & {t.label for t in targets}:
        raise click.BadParameter("labels must differ from the compared run's", param_hint="--target")
    settings = Settings(
        targets=targets, rate=o["rate"], max_rate=max(o["max_rate"], o["rate"]), sample=o["sample"],
        misses=o["misses"], lookups=o["lookups"], lookup_rate=o["lookup_rate"],
        lookup_types=tuple(o["lookup_types"].split(",")), steady_seconds=o["steady_seconds"],
        step_seconds=o["step_seconds"], timeout=o["timeout"], sockets=o["sockets"],
        max_seconds=o["max_seconds"], walk_max=o["walk_max"], walk_cidrs=tuple(o["walk_cidrs"]),
        discover_rate=o["discover_rate"],
        phases=phases, seed=o["seed"],
    )
    from nodecache.serve import event_loop_policy  # noqa: PLC0415
    event_loop_policy()
    reuse = None
    if previous:  # the same names as the run it is compared with
        ps = previous[0]["sample"]
        reuse = ([tuple(n.split()[:2]) for n in ps["names"]], list(ps["lookup_names"]))
    res, samples = asyncio.run(_main(settings, conf, via, domain, list(o["services"]), file_queries,
                                     file_lookups, reuse))
    res["meta"].update(node=o["node"], pod=o["pod"], resolv_conf_path=o["resolv_conf"])
    if previous:
        res, samples = _merge(previous, res, samples)
    from . import report  # noqa: PLC0415
    out = Path(o["out_dir"])
    try:
        text = report.write(res, samples, out)
        (out / "samples.json").write_text(json.dumps({k: [round(v, 7) for v in vs] for k, vs in samples.items()}))
    except OSError as exc:  # the log still gets the report
        click.echo(report.render(res, []))
        click.echo(json.dumps(report.clean(res)))
        raise click.ClickException(f"cannot write the report to {out}: {exc.strerror}") from None
    click.echo(text)
    click.echo("results.json:")
    click.echo((out / "results.json").read_text())
    log.info("report written to %s", out)
    if res["meta"]["status"] == "interrupted":
        sys.exit(EXIT_INTERRUPTED)
    if any(v["status"] != "ok" for v in res["targets"].values()):
        sys.exit(1)


async def _main(settings: Settings, conf: resolv.ResolvConf, via: Target, domain: str,
                services: list[str], file_queries: list[names.Query],
                file_lookups: list[str], reuse: tuple[list[Any], list[str]] | None,
                ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    from .runner import Runner, Sample  # noqa: PLC0415
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stopper(stop, sig))
    t0 = time.monotonic()
    runner = Runner(settings, conf, stop, progress=log.info)
    namespace = conf.namespace or "default"
    try:
        if reuse is not None:
            sample = Sample(reuse[0], reuse[1], {"the compared run's sample": len(reuse[0])})
        else:
            log.info("discovering names via %s (cluster domain %s)", via.address, domain)
            try:
                sample = await runner.discover(via, domain, services, file_queries, file_lookups)
            except OSError as exc:
                raise click.ClickException(f"discovery via {via.address}: {exc}") from None
        log.info("sample: %d names, %d lookups", len(sample.queries), len(sample.lookups))
        for t in settings.targets:
            if runner.out_of_time():
                runner.results["targets"][t.label] = {"address": t.address, "port": t.port,
                                                      "status": "not measured (stopped)"}
                continue
            await runner.measure(t, sample, domain, namespace)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    res = runner.results
    res["sample"] = {"queries": len(sample.queries), "lookups": len(sample.lookups),
                     "sources": sample.sources,
                     # dnsperf's datafile format, to repeat a phase with dnsperf
                     "names": [f"{n} {t}" for n, t in sample.queries], "lookup_names": sample.lookups}
    res["meta"] = _meta(settings, conf, domain, t0, "interrupted" if stop.is_set() else
                        "out of time" if runner.remaining() <= 0 else "complete")
    return res, runner.samples


def _stopper(stop: asyncio.Event, sig: signal.Signals) -> Any:
    def handler() -> None:
        log.warning("%s: stopping now; the report will have what was measured", sig.name)
        stop.set()
    return handler


def _meta(settings: Settings, conf: resolv.ResolvConf, domain: str, t0: float, status: str) -> dict[str, Any]:
    from dataclasses import asdict  # noqa: PLC0415

    from nodecache import __version__  # noqa: PLC0415
    st = asdict(settings)
    st["targets"] = [f"{t.label}={t.address}:{t.port}" for t in settings.targets]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "elapsed_s": time.monotonic() - t0, "status": status, "version": __version__,
        "cluster_domain": domain, "hard_max_rate": HARD_MAX_RATE, "settings": st,
        "resolv_conf": {"nameservers": list(conf.nameservers), "search": list(conf.search),
                        "ndots": conf.ndots, "edns0": conf.edns0},
    }


def _load_previous(directory: str) -> tuple[dict[str, Any], dict[str, list[float]]]:
    d = Path(directory)
    try:
        res = json.loads((d / "results.json").read_text())
        samples = json.loads((d / "samples.json").read_text()) if (d / "samples.json").exists() else {}
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{directory}: cannot read an earlier run: {exc}") from None
    return res, samples


def _merge(previous: tuple[dict[str, Any], dict[str, list[float]]], res: dict[str, Any],
           samples: dict[str, list[float]]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The earlier run's targets first, then this run's; the earlier meta kept under ``compared``."""
    prev_res, prev_samples = previous
    merged = dict(res)
    merged["targets"] = {**prev_res["targets"], **res["targets"]}
    merged["meta"] = {**res["meta"], "compared": prev_res.get("meta")}
    if prev_res.get("meta", {}).get("status") == "interrupted":
        merged["meta"]["status"] = "interrupted"
    return merged, {**prev_samples, **samples}
