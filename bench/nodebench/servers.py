"""Configurations and start-up of every server in the bench.

The cluster DNS is Knot (``knotd``) behind the delaying relay. The node caches
are nodecache and, as references, node-cache itself (the Kubernetes NodeLocal
DNSCache binary, given with ``--node-cache``, run with nodecache's Corefile),
unbound and dnsmasq, the last two configured as the official node-local
Corefile configures node-cache:

* ``cluster.local`` and ``in-addr.arpa`` forwarded to the cluster DNS over TCP
  (``force_tcp``), everything else (``.``) over UDP;
* positive answers kept at most 30 s, negative answers 5 s in the cluster
  domain (unbound and dnsmasq have one negative TTL for all zones, so 5 s);
* about 10,000 cached names;
* no recursion and no root hints: every query goes to the cluster DNS address.

dnsmasq cannot forward over TCP, so its cluster-domain misses go over UDP; the
report says so next to its miss figures. The Python floor (:mod:`nodebench.floor`)
runs in the hit scenarios only.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import topology as T
from .host import BenchError, Cleanup, Daemon, in_ns, log, sh, start_daemon
from .memory import MemoryCgroup

REPO = Path(__file__).resolve().parents[2]
#: The node-cache build used when ``--node-cache`` is not given (beside the project).
NODE_CACHE_ANCHOR = REPO.parent / "shared" / "anchors" / "node-cache.gz"
#: Corefile directives nodecache has and node-cache's build has not (``node-cache -plugins``).
NOT_IN_NODE_CACHE = ("ready",)
#: The load generator's core; servers under test get the other one.
LOADGEN_CPU = 0
SERVER_CPU = 1


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def dig_ok(ns: str | None, server: str, name: str, qtype: str = "A", *, tcp: bool = False,
           port: int = 53) -> bool:
    """One query with ``dig`` from namespace *ns* (None: this one); true when it is answered NOERROR."""
    argv = ["dig", "+time=1", "+tries=1", "-p", str(port), f"@{server}", name, qtype]
    if tcp:
        argv.append("+tcp")
    cp = sh(argv, ns=ns, check=False, timeout=10)
    return cp.returncode == 0 and "status: NOERROR" in cp.stdout


def wait_answer(ns: str, server: str, name: str, daemon: Daemon, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not daemon.alive():
            raise BenchError(f"{daemon.name} exited during start-up:\n{daemon.tail()}")
        if dig_ok(ns, server, name):
            return
        time.sleep(0.2)
    raise BenchError(f"{daemon.name} did not answer {name} within {seconds:.0f} s:\n{daemon.tail()}")


# --- cluster DNS -------------------------------------------------------------

def knot_config(d: Path, listen: str, zone_files: dict[str, Path]) -> str:
    """knot.conf for one knotd worker each way, serving ``zone_files`` (zone -> file) on ``listen``."""
    zones = "\n".join(f"  - domain: {z}.\n    file: \"{p}\"" for z, p in zone_files.items())
    return f"""\
server:
  rundir: "{d}"
  listen: {listen}
  udp-workers: 1
  tcp-workers: 1
  background-workers: 1
log:
  - target: stderr
    any: warning
database:
  storage: "{d / 'db'}"
template:
  - id: default
    storage: "{d}"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
{zones}
"""


def start_knot(cleanup: Cleanup, topo: T.Topology, work: Path, zone_files: dict[str, Path]) -> Daemon:
    d = work / "knot"
    (d / "db").mkdir(parents=True, exist_ok=True)
    (d / "knot.conf").write_text(knot_config(d, f"{T.AUTH_DNS}@53", zone_files))
    daemon = start_daemon(cleanup, "knotd", ["knotd", "-c", str(d / "knot.conf")], ns=topo.dns, log_dir=work)
    wait_answer(topo.pod, T.AUTH_DNS, "kube-dns.kube-system.svc.cluster.local", daemon, 60)
    return daemon


def start_relay(cleanup: Cleanup, topo: T.Topology, work: Path, *, listen: str, delay_ms: float,
                name: str) -> tuple[Daemon, Path]:
    stats = work / f"{name}.json"
    daemon = start_daemon(
        cleanup, name,
        [python(), "-m", "nodebench.relay", "--listen", listen, "--upstream", T.AUTH_DNS,
         "--delay-ms", str(delay_ms), "--stats", str(stats), "--max-seconds", "3600"],
        ns=topo.dns, log_dir=work, env=_env(),
    )
    wait_answer(topo.pod, listen, "kube-dns.kube-system.svc.cluster.local", daemon)
    return daemon, stats


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{REPO / 'bench'}:{REPO}"
    return env


def relay_counters(daemon: Daemon, stats: Path) -> dict[str, int]:
    """Ask the relay to dump its counters (SIGUSR1) and read them."""
    import json
    import signal
    before = json.loads(stats.read_text())["seq"] if stats.exists() else 0
    daemon.proc.send_signal(signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            data = json.loads(stats.read_text())
            if data["seq"] > before:
                return data
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    raise BenchError("the relay did not report its counters")


# --- node caches -------------------------------------------------------------

@dataclass
class Cache:
    """One node cache under test."""

    name: str
    ip: str
    #: nodecache installs its own NOTRACK rules; the bench adds them for the others.
    own_notrack: bool
    #: Upstream transport for cluster-domain misses.
    cluster_transport: str
    daemon: Daemon | None = None
    notes: list[str] = field(default_factory=list)
    #: Measured in the hit scenarios only (the Python floor).
    hit_only: bool = False
    #: The memory cgroup of the running process, when one could be made.
    cgroup: MemoryCgroup | None = None
    #: Starts so far (each start gets a fresh cgroup).
    starts: int = 0
    #: The program, for node-cache.
    binary: Path | None = None


def unbound_conf(work: Path, *, interface: str = T.UNBOUND_IP, port: int = 53,
                 upstream: str = T.CLUSTER_DNS) -> Path:
    """unbound.conf configured like the node-local Corefile; ``upstream`` is IP or IP@PORT."""
    d = work / "unbound"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "unbound.conf"
    fwd = ""
    for zone, tcp in (("cluster.local.", "yes"), ("in-addr.arpa.", "yes"), (".", "no")):
        fwd += f"forward-zone:\n  name: \"{zone}\"\n  forward-addr: {upstream}\n  forward-tcp-upstream: {tcp}\n"
    loopback_upstream = "no" if upstream.startswith("127.") else "yes"
    conf.write_text(f"""\
server:
  interface: {interface}
  port: {port}
  do-daemonize: no
  use-systemd: no
  username: ""
  chroot: ""
  directory: "{d}"
  pidfile: ""
  logfile: ""
  use-syslog: no
  verbosity: 0
  num-threads: 1
  do-ip6: no
  access-control: 0.0.0.0/0 allow
  module-config: "iterator"
  root-hints: ""
  do-not-query-localhost: {loopback_upstream}
  qname-minimisation: no
  prefetch: no
  minimal-responses: yes
  cache-min-ttl: 5
  cache-max-ttl: 30
  cache-max-negative-ttl: 5
  # 9984 entries of about 200 bytes in each cache, as node-cache's two caches
  msg-cache-size: 4m
  rrset-cache-size: 4m
  # serve 10.in-addr.arpa and friends from upstream, not as local empty zones
  unblock-lan-zones: yes
  insecure-lan-zones: yes
  local-zone: "10.in-addr.arpa." nodefault
  local-zone: "254.169.in-addr.arpa." nodefault
{fwd}""")
    return conf


def dnsmasq_conf(work: Path) -> Path:
    d = work / "dnsmasq"
    d.mkdir(parents=True, exist_ok=True)
    conf = d / "dnsmasq.conf"
    conf.write_text(f"""\
keep-in-foreground
no-resolv
no-hosts
no-poll
bind-interfaces
listen-address={T.DNSMASQ_IP}
port=53
user=root
pid-file=
log-facility=-
cache-size=10000
max-cache-ttl=30
min-cache-ttl=5
neg-ttl=5
dns-forward-max=1000
server=/cluster.local/{T.CLUSTER_DNS}
server=/in-addr.arpa/{T.CLUSTER_DNS}
server={T.CLUSTER_DNS}
""")
    return conf


def corefile(work: Path, ip: str = T.NODECACHE_IP, name: str = "Corefile") -> tuple[Path, str]:
    """The repo's ``Corefile.nodelocal`` rendered for the bench (IPVS mode: only the
    link-local address *ip* is bound), or the bench's own copy of the official one when
    the repo has none yet. Returns the path and where it came from."""
    src = REPO / "Corefile.nodelocal"
    origin = "Corefile.nodelocal"
    if not src.exists():
        src = Path(__file__).with_name("Corefile.bench")
        origin = "bench/nodebench/Corefile.bench"
    template = src.read_text()
    try:
        sys.path.insert(0, str(REPO))
        from nodecache.k8s.template import render_corefile  # type: ignore[import-not-found]

        text = render_corefile(
            template, local_ips=[ip], dns_server_ips=[], cluster_dns=T.CLUSTER_DNS,
            upstream_servers=[T.CLUSTER_DNS], domain="cluster.local", kubedns=None,
        )
        origin += " rendered by nodecache.k8s.template"
    except Exception:  # the renderer is missing or changed: do what the installer's sed does
        text = (template.replace(" __PILLAR__DNS__SERVER__", "").replace(",__PILLAR__DNS__SERVER__", "")
                .replace("__PILLAR__LOCAL__DNS__", ip)
                .replace("__PILLAR__DNS__DOMAIN__", "cluster.local")
                .replace("__PILLAR__CLUSTER__DNS__", T.CLUSTER_DNS)
                .replace("__PILLAR__UPSTREAM__SERVERS__", T.CLUSTER_DNS))
        origin += " with the installer's substitutions"
    path = work / name
    path.write_text(text)
    return path, origin


def node_cache_corefile(work: Path) -> tuple[Path, list[str]]:
    """nodecache's Corefile for node-cache's address, without the directives its build
    lacks; returns the path and the lines dropped."""
    path, _ = corefile(work, T.NODE_CACHE_IP, "Corefile.node-cache")
    kept, dropped = [], []
    for line in path.read_text().splitlines():
        (dropped if line.split()[:1] and line.split()[0] in NOT_IN_NODE_CACHE else kept).append(line)
    path.write_text("\n".join(kept) + "\n")
    return path, [line.strip() for line in dropped]


def node_cache_binary(given: Path | None, work: Path) -> tuple[Path | None, str]:
    """The node-cache binary to run: *given*, else the anchor beside the project; a
    ``.gz`` is unpacked into *work*. Returns (path or None, where it came from or why not)."""
    src = given or NODE_CACHE_ANCHOR
    if not src.exists():
        why = f"{src} does not exist" if given else "no --node-cache and no anchor build beside the project"
        return None, why
    if src.suffix != ".gz":
        return src, str(src)
    out = work / "node-cache"
    with gzip.open(src) as fin, open(out, "wb") as fout:
        shutil.copyfileobj(fin, fout)
    out.chmod(0o755)
    return out, f"{src} (unpacked)"


def node_cache_version(binary: Path) -> str:
    """The build's sha256, abbreviated (its ``-version`` says only ``UNKNOWN``)."""
    return "sha256:" + hashlib.sha256(binary.read_bytes()).hexdigest()[:16]


def byte_compile(tree: Path = REPO) -> None:
    """Compile *tree*'s ``nodecache`` package to bytecode, as installing the image's wheel does.

    The bench runs a source tree, and the environment may say PYTHONDONTWRITEBYTECODE: a
    process that compiles its modules as it imports them keeps part of the compiler's
    garbage (about 1.2 MB of the supervisor's memory and 0.5 MB of the worker's), which a
    deployed agent never pays.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([python(), "-m", "compileall", "-q", str(tree / "nodecache")], env=env,
                   capture_output=True, timeout=300, check=False)


def nodecache_runnable() -> tuple[bool, str, str]:
    """(runnable, why not, ``run --help`` text)."""
    byte_compile()
    try:
        cp = subprocess.run([python(), "-m", "nodecache", "run", "--help"], capture_output=True,
                            text=True, timeout=30, cwd=REPO, env=_env())
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc), ""
    if cp.returncode != 0:
        last = (cp.stderr.strip().splitlines() or ["no output"])[-1]
        return False, f"`python -m nodecache run --help` failed: {last}", ""
    return True, "", cp.stdout


def nodecache_argv(corefile_path: Path, help_text: str, *, notrack: bool = True) -> list[str]:
    argv = [python(), "-m", "nodecache", "run", "--conf", str(corefile_path), "--localip", T.NODECACHE_IP]
    if re.search(r"--interfacename\b", help_text):
        argv += ["--interfacename", "nodelocaldns"]
    if "--serving-lock" in help_text:
        # The default lock is host-wide: an agent serving elsewhere on this machine
        # (another namespace) would make ours skip its teardown and leave its rules.
        argv += ["--serving-lock", str(corefile_path.with_name("serving.lock"))]
    if not notrack:
        if "--no-setupiptables" not in help_text:
            raise BenchError("nodecache run has no --no-setupiptables: cannot measure it without its rules")
        argv.append("--no-setupiptables")
    return argv


def start_cache(cleanup: Cleanup, topo: T.Topology, work: Path, cache: Cache,
                nodecache_help: str = "", *, notrack: bool = True) -> Daemon:
    """Start *cache* pinned to the server core and wait until it answers.

    With *notrack* false the cache runs without NOTRACK rules (nodecache is told
    not to install its own; the bench installs none for the others).
    """
    env = _env()
    if cache.name == "unbound":
        argv = ["unbound", "-d", "-p", "-c", str(unbound_conf(work))]
    elif cache.name == "dnsmasq":
        argv = ["dnsmasq", "-C", str(dnsmasq_conf(work))]
    elif cache.name == "node-cache":
        path, _ = node_cache_corefile(work)
        # Serving only (the bench installs the rules, as for unbound): the
        # anchor README's flags, and no template (-basecorefile missing).
        assert cache.binary is not None
        argv = [str(cache.binary), "-localip", cache.ip, "-conf", str(path),
                "-setupinterface=false", "-setupiptables=false", "-skipteardown",
                "-metrics-listen-address", f"{cache.ip}:9353", "-basecorefile", "/nonexistent"]
        env["KUBE_DNS_SERVICE_HOST"] = T.CLUSTER_DNS
    elif cache.name == "floor":
        argv = [python(), "-m", "nodebench.floor", "--listen", cache.ip, "--upstream", T.CLUSTER_DNS]
    else:
        path, _ = corefile(work)
        argv = nodecache_argv(path, nodecache_help, notrack=notrack)
    cache.starts += 1
    cache.cgroup = MemoryCgroup.create(cleanup, f"ncb{os.getpid()}-{cache.name}-{cache.starts}")
    daemon = start_daemon(cleanup, cache.name, argv, ns=topo.node, log_dir=work, cpu=SERVER_CPU,
                          env=env, outer=cache.cgroup.prefix() if cache.cgroup else ())
    cache.daemon = daemon
    wait_answer(topo.pod, cache.ip, "kube-dns.kube-system.svc.cluster.local", daemon, 60)
    if not cache.own_notrack and notrack:
        T.add_notrack(topo, cache.ip)
        cleanup.push(f"remove NOTRACK rules for {cache.ip}", lambda: T.del_notrack(topo, cache.ip))
    return daemon


def stop_cache(topo: T.Topology, cache: Cache) -> None:
    if cache.daemon is not None:
        cache.daemon.stop()
        cache.daemon = None
    if cache.cgroup is not None:
        cache.cgroup.remove()
        cache.cgroup = None
    if cache.own_notrack:
        left = T.remove_nodecache_rules(topo)
        if left:
            log(f"{cache.name} left {left} of its rules behind at exit; removed them")
    if not cache.own_notrack:
        T.del_notrack(topo, cache.ip)


def restart_cache(cleanup: Cleanup, topo: T.Topology, work: Path, cache: Cache, nodecache_help: str,
                  *, notrack: bool = True) -> Daemon:
    """A fresh process: an empty cache."""
    stop_cache(topo, cache)
    return start_cache(cleanup, topo, work, cache, nodecache_help, notrack=notrack)


def dnsperf_argv(ns: str | None, server: str, datafile: Path, *args: str) -> list[str]:
    return in_ns(ns, ["taskset", "-c", str(LOADGEN_CPU), "dnsperf", "-s", server, "-d", str(datafile), *args])
