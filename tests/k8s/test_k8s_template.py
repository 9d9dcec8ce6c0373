"""Rendering Corefile.nodelocal: environment, flags, resolv.conf and ConfigMap in, Corefile text out."""
from __future__ import annotations

import os
import pathlib
import textwrap
from dataclasses import dataclass, field
from typing import Any

import pytest

from nodecache.errors import ConfigError
from nodecache.k8s.kubedns import KubeDNSConfig, parse_files
from nodecache.k8s.resolvconf import node_upstreams
from nodecache.k8s.template import (
    cluster_dns_ip,
    render_corefile,
    split_localip,
    write_corefile,
)
from tests.kit import ROOT

TEMPLATE = (ROOT / "Corefile.nodelocal").read_text()


def _blocks(text: str) -> str:
    """The rendered text without the template's leading comment lines."""
    return "".join(line + "\n" for line in text.splitlines() if not line.startswith("#"))


def _cluster_blocks(*, bind: str, cluster: str, host: str, dot_forward: str) -> str:
    return textwrap.dedent(f"""\
        cluster.local:53 {{
            errors
            cache {{
                success 9984 30
                denial 9984 5
            }}
            reload
            loop
            bind {bind}
            forward . {cluster} {{
                force_tcp
            }}
            prometheus :9253
            health {host}:8099 {{
                lameduck 5s
            }}
            ready {host}:8181
        }}
        in-addr.arpa:53 {{
            errors
            cache 30
            reload
            loop
            bind {bind}
            forward . {cluster} {{
                force_tcp
            }}
            prometheus :9253
        }}
        ip6.arpa:53 {{
            errors
            cache 30
            reload
            loop
            bind {bind}
            forward . {cluster} {{
                force_tcp
            }}
            prometheus :9253
        }}
        .:53 {{
            errors
            cache 30
            reload
            loop
            bind {bind}
            {dot_forward}
            prometheus :9253
        }}
        """)


@dataclass
class Case:
    id: str
    #: -localip
    localip: str = "169.254.20.10,10.96.0.10"
    dns_server: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=lambda: {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"})
    resolv_conf: str = "nameserver 10.0.0.2\n"
    systemd_resolv_conf: str | None = None
    configmap: dict[str, str] = field(default_factory=dict)
    dns_port: int = 53
    expected: str = ""


CASES = [
    Case(
        id="iptables-mode",
        expected=_cluster_blocks(bind="169.254.20.10 10.96.0.10", cluster="10.96.0.11",
                                 host="169.254.20.10", dot_forward="forward . 10.0.0.2"),
    ),
    Case(
        id="ipvs-mode",
        localip="169.254.20.10",
        resolv_conf="search example.com\nnameserver 10.0.0.2\nnameserver 10.0.0.3  # second\noptions ndots:1\n",
        expected=_cluster_blocks(bind="169.254.20.10", cluster="10.96.0.11", host="169.254.20.10",
                                 dot_forward="forward . 10.0.0.2 10.0.0.3"),
    ),
    Case(
        id="dns-server-ips-given-apart",
        localip="169.254.20.10",
        dns_server=("10.96.0.10",),
        expected=_cluster_blocks(bind="169.254.20.10 10.96.0.10", cluster="10.96.0.11",
                                 host="169.254.20.10", dot_forward="forward . 10.0.0.2"),
    ),
    Case(
        id="systemd-resolved-stub",
        resolv_conf="# This is /run/systemd/resolve/stub-resolv.conf\nnameserver 127.0.0.53\noptions edns0 trust-ad\n",
        systemd_resolv_conf="nameserver 192.168.1.1\nnameserver 192.168.1.2\nnameserver 127.0.0.54\n",
        expected=_cluster_blocks(bind="169.254.20.10 10.96.0.10", cluster="10.96.0.11",
                                 host="169.254.20.10", dot_forward="forward . 192.168.1.1 192.168.1.2"),
    ),
    Case(
        id="ipv6-local-ip",
        localip="fd00::10,fd00:10:96::a",
        env={"KUBE_DNS_UPSTREAM_SERVICE_HOST": "fd00:10:96::b"},
        resolv_conf="nameserver 2001:db8::53\n",
        expected=_cluster_blocks(bind="fd00::10 fd00:10:96::a", cluster="fd00:10:96::b",
                                 host="[fd00::10]", dot_forward="forward . 2001:db8::53"),
    ),
    Case(
        id="dual-stack-local-ips",
        localip="169.254.20.10,fd00::10",
        expected=_cluster_blocks(bind="169.254.20.10 fd00::10", cluster="10.96.0.11",
                                 host="169.254.20.10", dot_forward="forward . 10.0.0.2"),
    ),
    Case(
        id="upstream-nameservers-replace-resolv-conf",
        configmap={"upstreamNameservers": '["8.8.8.8", "8.8.4.4:5353"]'},
        expected=_cluster_blocks(bind="169.254.20.10 10.96.0.10", cluster="10.96.0.11",
                                 host="169.254.20.10", dot_forward="forward . 8.8.8.8 8.8.4.4:5353"),
    ),
    Case(
        id="stub-domains",
        configmap={"stubDomains": '{"corp.example": ["10.1.0.1", "10.1.0.2:5353"], "Acme.Local.": ["[fd00::1]:53"]}',
                   "federations": '{"ignored": "yes"}'},
        dns_port=53,
        expected=_cluster_blocks(bind="169.254.20.10 10.96.0.10", cluster="10.96.0.11",
                                 host="169.254.20.10", dot_forward="forward . 10.0.0.2")
        + textwrap.dedent("""\
            acme.local:53 {
                errors
                cache 30
                bind 169.254.20.10 10.96.0.10
                forward . [fd00::1]:53
                prometheus :9253
            }
            corp.example:53 {
                errors
                cache 30
                bind 169.254.20.10 10.96.0.10
                forward . 10.1.0.1 10.1.0.2:5353
                prometheus :9253
            }
            """),
    ),
    Case(
        id="stub-domains-on-dns-port",
        localip="169.254.20.10",
        configmap={"stubDomains": '{"corp.example": ["10.1.0.1"]}'},
        dns_port=5353,
        expected=_cluster_blocks(bind="169.254.20.10", cluster="10.96.0.11",
                                 host="169.254.20.10", dot_forward="forward . 10.0.0.2")
        + textwrap.dedent("""\
            corp.example:5353 {
                errors
                cache 30
                bind 169.254.20.10
                forward . 10.1.0.1
                prometheus :9253
            }
            """),
    ),
]


def _render(case: Case, tmp_path: pathlib.Path, template: str = TEMPLATE) -> str:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(case.resolv_conf)
    systemd = tmp_path / "systemd-resolv.conf"
    if case.systemd_resolv_conf is not None:
        systemd.write_text(case.systemd_resolv_conf)
    return render_corefile(
        template,
        local_ips=split_localip(case.localip),
        dns_server_ips=case.dns_server,
        cluster_dns=cluster_dns_ip("kube-dns-upstream", case.env),
        upstream_servers=node_upstreams(str(resolv), systemd_path=str(systemd)),
        domain="cluster.local",
        kubedns=parse_files(case.configmap),
        dns_port=case.dns_port,
    )


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_render(case: Case, tmp_path: pathlib.Path) -> None:
    rendered = _render(case, tmp_path)
    assert _blocks(rendered) == case.expected
    assert "__PILLAR__" not in rendered and "<nil>" not in rendered


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_rendered_corefile_parses(case: Case, tmp_path: pathlib.Path) -> None:
    from nodecache.config import parse_text

    parsed = parse_text(_render(case, tmp_path))
    zones = {z for block in parsed.blocks for z in block.zones}
    assert {"cluster.local.", "in-addr.arpa.", "ip6.arpa.", "."} <= zones
    cluster = next(b for b in parsed.blocks if "cluster.local." in b.zones)
    assert cluster.forward is not None and cluster.forward.force_tcp
    assert cluster.health is not None and cluster.health.lameduck == 5.0
    assert cluster.health.address.endswith(":8099")
    dot = next(b for b in parsed.blocks if "." in b.zones)
    assert dot.forward is not None and not dot.forward.force_tcp
    for stub in parse_files(case.configmap).stub_domains:
        block = next(b for b in parsed.blocks if stub.domain + "." in b.zones)
        assert block.port == case.dns_port and block.forward is not None
        assert not block.forward.force_tcp  # stub domains go over UDP, as node-cache does


def test_upstream_nameservers_drop_force_tcp_block() -> None:
    template = textwrap.dedent("""\
        .:53 {
            bind __PILLAR__LOCAL__DNS__
            forward . __PILLAR__UPSTREAM__SERVERS__ {
                    force_tcp
            }
        }
        """)
    common: dict[str, Any] = dict(local_ips=["169.254.20.10"], dns_server_ips=[], cluster_dns="",
                                  upstream_servers=["10.0.0.2"], domain=None)
    # The node's resolvers keep the template's TCP block...
    assert "force_tcp" in render_corefile(template, kubedns=None, **common)
    # ...custom upstreamNameservers are asked over UDP (kubernetes/dns#377).
    out = render_corefile(template, kubedns=KubeDNSConfig(upstream_nameservers=("1.1.1.1",)), **common)
    assert out == ".:53 {\n    bind 169.254.20.10\n    forward . 1.1.1.1\n}\n"


def test_domain_substituted_at_install_time_needs_no_domain() -> None:
    template = TEMPLATE.replace("__PILLAR__DNS__DOMAIN__", "k8s.example")
    out = render_corefile(template, local_ips=["169.254.20.10"], dns_server_ips=[],
                          cluster_dns="10.96.0.11", upstream_servers=["10.0.0.2"], domain=None,
                          kubedns=None)
    assert "\nk8s.example:53 {" in out


def test_bracketed_local_dns_in_template() -> None:
    template = "x:53 {\n    health [__PILLAR__LOCAL__DNS__]:8099\n}\n"
    kw: dict[str, Any] = dict(dns_server_ips=[], cluster_dns="", upstream_servers=[], domain=None,
                              kubedns=None)
    assert "health [fd00::10]:8099" in render_corefile(template, local_ips=["fd00::10"], **kw)
    assert "health 169.254.20.10:8099" in render_corefile(template, local_ips=["169.254.20.10"], **kw)


ERRORS = [
    ("no-domain", dict(domain=None), "__PILLAR__DNS__DOMAIN__"),
    ("bad-domain", dict(domain="not a domain"), "cluster domain"),
    ("no-cluster-dns", dict(cluster_dns=""), "__PILLAR__CLUSTER__DNS__"),
    ("no-upstreams", dict(upstream_servers=[]), "__PILLAR__UPSTREAM__SERVERS__"),
    ("no-local-ip", dict(local_ips=[]), "at least one"),
    ("bad-local-ip", dict(local_ips=["169.254.20.300"]), "not an IP"),
    ("stub-is-cluster-domain",
     dict(kubedns=parse_files({"stubDomains": '{"cluster.local": ["10.1.0.1"]}'})), "already served"),
]


@pytest.mark.parametrize("overrides,message", [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_render_errors(overrides: dict[str, Any], message: str) -> None:
    kw: dict[str, Any] = dict(local_ips=["169.254.20.10"], dns_server_ips=[], cluster_dns="10.96.0.11",
                                 upstream_servers=["10.0.0.2"], domain="cluster.local", kubedns=None)
    kw.update(overrides)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        render_corefile(TEMPLATE, **kw)


def test_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(ConfigError, match="__PILLAR__SOMETHING__"):
        render_corefile(".:53 {\n    forward . __PILLAR__SOMETHING__\n}\n", local_ips=["169.254.20.10"],
                        dns_server_ips=[], cluster_dns="", upstream_servers=[], domain=None, kubedns=None)


ENV_CASES = [
    ("kube-dns-upstream", {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "10.96.0.11"}, "10.96.0.11"),
    ("kube-dns", {"KUBE_DNS_SERVICE_HOST": " 10.96.0.10 "}, "10.96.0.10"),
    ("kube-dns", {"KUBE_DNS_SERVICE_HOST": "fd00:10:96::000a"}, "fd00:10:96::a"),
]


@pytest.mark.parametrize("svc,env,expected", ENV_CASES)
def test_cluster_dns_ip(svc: str, env: dict[str, str], expected: str) -> None:
    assert cluster_dns_ip(svc, env) == expected


def test_cluster_dns_ip_missing_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match=r"\$KUBE_DNS_UPSTREAM_SERVICE_HOST is not set"):
        cluster_dns_ip("kube-dns-upstream", {"KUBE_DNS_SERVICE_HOST": "10.96.0.10"})
    with pytest.raises(ConfigError, match="not an IP"):
        cluster_dns_ip("kube-dns-upstream", {"KUBE_DNS_UPSTREAM_SERVICE_HOST": "<nil>"})


@pytest.mark.parametrize("value", ["", "169.254.20.10,", ",10.96.0.10", "a.b.c.d"])
def test_split_localip_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        split_localip(value)


def test_write_corefile(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "Corefile"
    assert write_corefile(str(path), "a\n") is True
    assert write_corefile(str(path), "a\n") is False
    assert write_corefile(str(path), "b\n") is True
    assert path.read_text() == "b\n"
    assert os.listdir(tmp_path) == ["Corefile"]  # no temporary left behind
