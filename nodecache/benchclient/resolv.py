"""The pod's resolv.conf, and the queries glibc's stub resolver makes for one name.

A kubelet writes, for ``dnsPolicy: ClusterFirst``::

    search <ns>.svc.cluster.local svc.cluster.local cluster.local
    nameserver 10.96.0.10
    options ndots:5

glibc (``res_nsearch``): a name ending in a dot is asked as is. A name with at
least ``ndots`` dots is asked as is first, then with each search suffix; one
with fewer dots gets the suffixes first and is asked as is last. The next
candidate is tried when the answer is NXDOMAIN, NODATA or SERVFAIL; a timeout
or any other answer ends the lookup.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from nodecache.errors import ConfigError

#: glibc's defaults (resolv.conf(5)).
DEFAULT_NDOTS = 1
DEFAULT_TIMEOUT = 5.0  # s
DEFAULT_ATTEMPTS = 2
#: glibc caps ndots at 15 and the search list at 6 domains (resolv.h MAXDNSRCH).
MAX_NDOTS = 15
MAX_SEARCH = 6


@dataclass(frozen=True)
class ResolvConf:
    """What the pod's stub resolver is configured with."""

    nameservers: tuple[str, ...] = ()
    #: Search suffixes, in order, without trailing dots.
    search: tuple[str, ...] = ()
    ndots: int = DEFAULT_NDOTS
    #: Seconds glibc waits for one answer before retrying.
    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    #: ``options edns0``: glibc then adds an OPT record to its queries.
    edns0: bool = False
    #: ``options`` glibc knows that this model ignores (single-request, rotate, ...).
    other_options: tuple[str, ...] = field(default=())

    @property
    def cluster_domain(self) -> str | None:
        """``cluster.local`` from a kubelet search list (``<ns>.svc.<domain>`` first)."""
        for s in self.search:
            labels = s.split(".")
            if len(labels) >= 3 and labels[1] == "svc":
                return ".".join(labels[2:])
        return None

    @property
    def namespace(self) -> str | None:
        """The pod's namespace, the first label of ``<ns>.svc.<domain>``."""
        for s in self.search:
            labels = s.split(".")
            if len(labels) >= 3 and labels[1] == "svc":
                return labels[0]
        return None


def parse(text: str, *, source: str = "<string>") -> ResolvConf:
    """Parse resolv.conf text the way glibc does: the last ``search`` line wins.

    :raises ConfigError: a malformed ``nameserver`` or ``options`` value, with its line.
    """
    servers: list[str] = []
    search: list[str] = []
    ndots, timeout, attempts, edns0 = DEFAULT_NDOTS, DEFAULT_TIMEOUT, DEFAULT_ATTEMPTS, False
    other: list[str] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if not words:
            continue
        key, args = words[0], words[1:]
        if key == "nameserver" and args:
            try:
                servers.append(str(ipaddress.ip_address(args[0])))
            except ValueError:
                raise ConfigError(f"nameserver {args[0]!r} is not an IP address", source, lineno) from None
        elif key in ("search", "domain"):
            search = [a.rstrip(".") for a in args][:MAX_SEARCH]
        elif key == "options":
            for opt in args:
                name, _, value = opt.partition(":")
                try:
                    if name == "ndots":
                        ndots = min(int(value), MAX_NDOTS)
                    elif name == "timeout":
                        timeout = float(int(value))
                    elif name == "attempts":
                        attempts = int(value)
                    elif name == "edns0":
                        edns0 = True
                    else:
                        other.append(opt)
                except ValueError:
                    raise ConfigError(f"option {opt!r}: expected {name}:<number>", source, lineno) from None
    return ResolvConf(tuple(servers), tuple(search), ndots, timeout, attempts, edns0, tuple(other))


def read(path: str) -> ResolvConf:
    """:func:`parse` the file at *path*.

    :raises ConfigError: it cannot be read or is malformed.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the pod's resolv.conf: {exc.strerror}", path) from None
    return parse(text, source=path)


def candidates(name: str, conf: ResolvConf) -> list[str]:
    """The absolute names glibc asks for *name*, in order (each ends in a dot)."""
    if name.endswith("."):
        return [name]
    suffixed = [f"{name}.{s}." for s in conf.search]
    if name.count(".") >= conf.ndots:
        return [f"{name}.", *suffixed]
    return [*suffixed, f"{name}."]
