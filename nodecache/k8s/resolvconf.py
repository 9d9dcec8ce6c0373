"""The node's resolvers, for ``__PILLAR__UPSTREAM__SERVERS__``.

With ``hostNetwork: true`` and ``dnsPolicy: Default`` the pod's
``/etc/resolv.conf`` is the kubelet's ``resolvConf`` file, usually the node's.
On nodes running systemd-resolved that file often names only the local stub
(127.0.0.53, or 127.0.0.54 in "proxy" mode). Forwarding to the stub sends
cluster names back to us through the node, and the ``loop`` check then stops
the agent, which crash-loops (NODELOCAL.md section 5, #21). systemd-resolved
writes the real upstream servers to ``/run/systemd/resolve/resolv.conf``, so a
stub entry is replaced by what that file lists.
"""
from __future__ import annotations

import ipaddress

from nodecache.errors import ConfigError

RESOLV_CONF = "/etc/resolv.conf"
#: systemd-resolved's list of the real upstream servers.
SYSTEMD_RESOLV_CONF = "/run/systemd/resolve/resolv.conf"
#: systemd-resolved's stub listeners (``DNSStubListener``; .54 is the proxy-only one).
SYSTEMD_STUBS = frozenset({"127.0.0.53", "127.0.0.54"})


def parse_nameservers(text: str, *, source: str = "<string>") -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf text, in order, without duplicates.

    :raises ConfigError: a ``nameserver`` line that is not an IP address.
    """
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            ip = str(ipaddress.ip_address(fields[1]))
        except ValueError:
            raise ConfigError(f"nameserver {fields[1]!r} is not an IP address", source, lineno) from None
        if ip not in out:
            out.append(ip)
    return out


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def node_upstreams(path: str = RESOLV_CONF, *,
                   systemd_path: str = SYSTEMD_RESOLV_CONF) -> list[str]:
    """The node's upstream DNS servers, with systemd-resolved's stub replaced by its upstreams.

    :param path: The resolv.conf to read (the pod's, which is the kubelet's ``resolvConf``).
    :param systemd_path: Where systemd-resolved lists its upstream servers.
    :raises ConfigError: a file cannot be read, or no usable server remains.
    """
    try:
        servers = parse_nameservers(_read(path), source=path)
    except OSError as exc:
        raise ConfigError(f"cannot read the node's resolvers: {exc}", path) from None
    if any(s in SYSTEMD_STUBS for s in servers):
        try:
            real = [s for s in parse_nameservers(_read(systemd_path), source=systemd_path)
                    if s not in SYSTEMD_STUBS]
        except FileNotFoundError:
            raise ConfigError(
                f"{path} names the systemd-resolved stub, which would make the loop check fail, "
                f"and {systemd_path} is not there to read the real servers from: mount "
                f"/run/systemd/resolve into the pod, or set the kubelet's resolvConf to that file",
                path) from None
        except OSError as exc:
            raise ConfigError(f"cannot read systemd-resolved's servers: {exc}", systemd_path) from None
        expanded: list[str] = []
        for s in servers:
            for t in real if s in SYSTEMD_STUBS else [s]:
                if t not in expanded:
                    expanded.append(t)
        servers = expanded
    if not servers:
        raise ConfigError(
            "no upstream nameserver found for '.'; the node's resolv.conf must list at least one "
            "(or set upstreamNameservers in the kube-dns ConfigMap)", path)
    return servers
