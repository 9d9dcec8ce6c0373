"""Render the node-local Corefile template (``Corefile.nodelocal``).

What node-cache's ``updateCorefile`` does (NODELOCAL.md 1.7), as a pure
function, plus what it leaves to ``sed`` at install time:

``__PILLAR__LOCAL__DNS__``
    On a ``bind`` line: every local IP (``-localip``). Anywhere else (the
    ``health`` and ``ready`` addresses): the first local IP, bracketed when it
    is IPv6 and a port follows (``[fd00::10]:8099``).
``__PILLAR__DNS__SERVER__``
    The extra addresses to bind (the kube-dns ClusterIP in iptables mode), or
    nothing: node-cache's "replace what is left by an empty string".
``__PILLAR__CLUSTER__DNS__``
    The ClusterIP of ``-upstreamsvc`` (see :func:`cluster_dns_ip`).
``__PILLAR__UPSTREAM__SERVERS__``
    ``upstreamNameservers`` from the kube-dns ConfigMap if set, else the node's
    resolvers. With ``upstreamNameservers`` a ``forward`` to this placeholder
    that has a ``force_tcp``-only block loses the block: custom resolvers are
    often UDP-only (kubernetes/dns#377).
``__PILLAR__DNS__DOMAIN__``
    The cluster domain (node-cache leaves this to the installer).

Each stub domain becomes one more server block, forwarded over UDP as
node-cache does. Unlike node-cache, a placeholder without a value is an
error, never an empty or ``<nil>`` address in a running config.
"""
from __future__ import annotations

import ipaddress
import os
import re
import tempfile
from collections.abc import Mapping, Sequence

from nodecache.errors import ConfigError
from nodecache.k8s.kubedns import KubeDNSConfig, KubeDNSConfigError

LOCAL_DNS = "__PILLAR__LOCAL__DNS__"
DNS_SERVER = "__PILLAR__DNS__SERVER__"
CLUSTER_DNS = "__PILLAR__CLUSTER__DNS__"
UPSTREAM_SERVERS = "__PILLAR__UPSTREAM__SERVERS__"
DNS_DOMAIN = "__PILLAR__DNS__DOMAIN__"

#: node-cache's cache TTL for stub-domain blocks, s.
STUB_CACHE_TTL = 30

_PLACEHOLDER = re.compile(r"__PILLAR__[A-Z_]+?__")
# forward . __PILLAR__UPSTREAM__SERVERS__ { force_tcp }, any layout (node-cache
# matches one exact spacing; a re-indented template should behave the same).
_TCP_UPSTREAM_BLOCK = re.compile(
    r"forward(\s+)\.(\s+)" + UPSTREAM_SERVERS + r"[ \t]*\{\s*force_tcp\s*\}")
_PROMETHEUS = re.compile(r"^[ \t]*prometheus[ \t]+(\S+)[ \t]*$", re.MULTILINE)
_DOMAIN = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)(\.(?!-)[a-z0-9_-]{1,63}(?<!-))*$")


def cluster_dns_ip(upstreamsvc: str, env: Mapping[str, str]) -> str:
    """The ClusterIP of Service ``upstreamsvc``, from the kubelet's ``<NAME>_SERVICE_HOST`` variable.

    ``kube-dns-upstream`` -> ``KUBE_DNS_UPSTREAM_SERVICE_HOST``. The kubelet sets
    these only for Services that existed when the pod was created.

    :raises ConfigError: the variable is missing or is not an IP address.
    """
    var = upstreamsvc.upper().replace("-", "_").replace(".", "_") + "_SERVICE_HOST"
    value = env.get(var, "").strip()
    if not value:
        raise ConfigError(
            f"cannot find the ClusterIP of Service {upstreamsvc!r}: ${var} is not set. "
            f"Create the Service in the pod's namespace before the DaemonSet (the kubelet sets "
            f"the variable only for Services that exist when a pod starts), or check -upstreamsvc")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ConfigError(f"${var}={value!r} is not an IP address") from None


def _ips(what: str, values: Sequence[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        try:
            ip = str(ipaddress.ip_address(v.strip()))
        except ValueError:
            raise ConfigError(f"{what}: {v!r} is not an IP address") from None
        if ip not in out:
            out.append(ip)
    return out


def _host(ip: str, *, port_follows: bool) -> str:
    return f"[{ip}]" if port_follows and ":" in ip else ip


def _substitute_local(line: str, first: str) -> str:
    # [__PILLAR__LOCAL__DNS__]:port (the IPv6 form in the k8s docs) and
    # __PILLAR__LOCAL__DNS__:port both become a valid host:port for either family.
    line = line.replace(f"[{LOCAL_DNS}]", _host(first, port_follows=True))
    line = line.replace(f"{LOCAL_DNS}:", _host(first, port_follows=True) + ":")
    return line.replace(LOCAL_DNS, first)


def _stub_block(domain: str, servers: Sequence[str], *, port: int, bind: Sequence[str],
                prometheus: str | None) -> str:
    lines = [
        f"{domain}:{port} {{",
        "    errors",
        f"    cache {STUB_CACHE_TTL}",
        f"    bind {' '.join(bind)}",
        f"    forward . {' '.join(servers)}",
    ]
    if prometheus:
        lines.append(f"    prometheus {prometheus}")  # so stub-domain queries are counted too
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_corefile(template: str, *, local_ips: Sequence[str], dns_server_ips: Sequence[str],
                    cluster_dns: str, upstream_servers: Sequence[str], domain: str | None,
                    kubedns: KubeDNSConfig | None, dns_port: int = 53) -> str:
    """Fill in the template's placeholders and append the stub-domain blocks.

    :param template: The template text (``-basecorefile``).
    :param local_ips: The ``-localip`` addresses; the first one is where
        ``health`` and ``ready`` listen. IPv4 and IPv6 may be mixed (``bind``
        takes both; node-cache itself needs one agent per family).
    :param dns_server_ips: More addresses to bind, for ``__PILLAR__DNS__SERVER__``; may be empty.
    :param cluster_dns: The cluster DNS address (:func:`cluster_dns_ip`); may be
        ``""`` if the template does not use it.
    :param upstream_servers: The node's resolvers (:func:`nodecache.k8s.resolvconf.node_upstreams`).
    :param domain: The cluster domain, or ``None`` if it was substituted at install time.
    :param kubedns: The kube-dns ConfigMap, or ``None``.
    :param dns_port: The port of the stub-domain blocks (``-dns.port``).
    :returns: The Corefile text, ending with a newline.
    :raises ConfigError: a bad address or domain, or a placeholder without a value.
    :raises KubeDNSConfigError: a stub domain that the template already serves
        (a ConfigMap problem: count it as ``errortype="configmap"``).
    """
    local = _ips("-localip", local_ips)
    if not local:
        raise ConfigError("-localip: at least one local IP is needed")
    extra = [ip for ip in _ips("dns server IP", dns_server_ips) if ip not in local]
    bind_all = local + extra
    kubedns = kubedns or KubeDNSConfig()

    text = template
    if kubedns.upstream_nameservers:
        upstreams = list(kubedns.upstream_nameservers)
        text = _TCP_UPSTREAM_BLOCK.sub(rf"forward\1.\2{UPSTREAM_SERVERS}", text)
    else:
        upstreams = list(upstream_servers)

    values: dict[str, str | None] = {
        CLUSTER_DNS: _ips("cluster DNS", [cluster_dns])[0] if cluster_dns else None,
        UPSTREAM_SERVERS: " ".join(upstreams) or None,
        DNS_DOMAIN: _check_domain(domain) if domain else None,
    }
    needed = {
        CLUSTER_DNS: "the cluster DNS IP (-upstreamsvc)",
        UPSTREAM_SERVERS: "upstream servers (the node's resolv.conf or upstreamNameservers)",
        DNS_DOMAIN: "the cluster domain",
    }

    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if words and words[0] == "bind":
            addrs: list[str] = []
            for w in words[1:]:
                new = bind_all if w == LOCAL_DNS else extra if w == DNS_SERVER else [w]
                addrs.extend(a for a in new if a not in addrs)
            line = line[: len(line) - len(line.lstrip())] + " ".join(["bind", *addrs])
        else:
            line = _substitute_local(line, local[0])
            line = line.replace(DNS_SERVER, " ".join(extra))
        for name, value in values.items():
            if name in line:
                if value is None:
                    raise ConfigError(f"{name} is in the template but no value was given: "
                                      f"pass {needed[name]}", "<template>", lineno)
                line = line.replace(name, value)
        left = _PLACEHOLDER.search(line) or re.search(r"<nil>", line)
        if left:
            raise ConfigError(f"{left.group(0)} is not a known placeholder", "<template>", lineno)
        out.append(line.rstrip())

    rendered = "\n".join(out).rstrip("\n") + "\n"
    if kubedns.stub_domains:
        served = _served_zones(rendered)
        prom = _PROMETHEUS.search(rendered)
        for stub in kubedns.stub_domains:
            if (stub.domain, dns_port) in served:
                raise KubeDNSConfigError(f"stubDomains: {stub.domain!r} is already served by the "
                                         f"Corefile template; remove it from the kube-dns ConfigMap")
            rendered += _stub_block(stub.domain, stub.servers, port=dns_port, bind=bind_all,
                                    prometheus=prom.group(1) if prom else None)
    return rendered


def _served_zones(text: str) -> set[tuple[str, int]]:
    """(zone, port) of each top-level server block key: ``cluster.local:53 {``."""
    out: set[tuple[str, int]] = set()
    for line in text.splitlines():
        head = line.split("#", 1)[0].rstrip()
        if not head.endswith("{") or head[:1].isspace():
            continue
        for key in head[:-1].split():
            key = key.split("://", 1)[-1]
            zone, _, port = key.rpartition(":") if key.count(":") == 1 else (key, "", "")
            out.add((zone.lower().rstrip(".") or ".", int(port) if port.isdigit() else 53))
    return out


def _check_domain(domain: str) -> str:
    value = domain.strip().rstrip(".").lower()
    if not _DOMAIN.match(value):
        raise ConfigError(f"{domain!r} is not a valid cluster domain")
    return value


def split_localip(value: str) -> list[str]:
    """``-localip 169.254.20.10,10.96.0.10`` -> ``["169.254.20.10", "10.96.0.10"]``.

    :raises ConfigError: an empty entry (``"169.254.20.10,"``) or a non-IP.
    """
    parts = [p.strip() for p in value.split(",")]
    if not value.strip() or any(not p for p in parts):
        raise ConfigError(f"-localip {value!r}: expected comma-separated IP addresses")
    return _ips("-localip", parts)


def write_corefile(path: str, text: str) -> bool:
    """Write ``text`` to ``path`` atomically unless it already holds exactly that.

    A rename means a reload never reads half a file. Returns whether it wrote.
    """
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".Corefile.", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True
