"""The kube-dns ConfigMap: stub domains and upstream nameservers.

Clusters configure custom DNS with the ``kube-dns`` ConfigMap in ``kube-system``
(two JSON-valued keys, ``stubDomains`` and ``upstreamNameservers``). The
DaemonSet mounts it, optionally, as a directory: one file per key, each key a
symlink into a ``..data`` directory that the kubelet swaps atomically.

This module reads such a directory the way node-cache does (NODELOCAL.md 1.8):
no recursion, names starting with ``.`` skipped, symlinks followed, UTF-8
required, and a SHA-256 over names and contents as the version. Nothing here
touches the Corefile; :func:`nodecache.k8s.template.render_corefile` turns a
:class:`KubeDNSConfig` into server blocks.

:class:`DirectoryWatcher` has no timer of its own: the agent calls
:meth:`DirectoryWatcher.poll` every :attr:`DirectoryWatcher.period` seconds.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from nodecache.config.values import domain_name
from nodecache.errors import ConfigError

#: Where node-cache looks when ``-kubednscm`` is not given.
DEFAULT_KUBEDNS_DIR = "/etc/kube-dns"

#: node-cache's ``ConfigPeriod``: how often the directory is read, s.
DEFAULT_PERIOD = 10.0

#: kube-dns accepts at most this many ``upstreamNameservers`` (``validateUpstreamNameserver``).
MAX_UPSTREAM_NAMESERVERS = 3

STUB_DOMAINS_KEY = "stubDomains"
UPSTREAM_NAMESERVERS_KEY = "upstreamNameservers"


class KubeDNSConfigError(ConfigError):
    """The kube-dns ConfigMap is invalid; the last good configuration stays in use."""

    #: The ``errortype`` label of ``coredns_nodecache_setup_errors_total`` to count this under.
    errortype = "configmap"


@dataclass(frozen=True)
class StubDomain:
    """One ``stubDomains`` entry: names under ``domain`` are sent to ``servers``."""

    #: Lower-case, no trailing dot (``"acme.local"``), as it appears in a Corefile block key.
    domain: str
    #: Forward targets in Corefile form: ``"10.0.0.1"``, ``"10.0.0.1:5353"``, ``"[fd00::1]:5353"``.
    servers: tuple[str, ...]


@dataclass(frozen=True)
class KubeDNSConfig:
    """What nodecache uses of the kube-dns ConfigMap. The empty default means "none"."""

    #: Sorted by domain, so that rendering is deterministic.
    stub_domains: tuple[StubDomain, ...] = ()
    #: Replace the node's resolvers for ``.`` when not empty (at most three).
    upstream_nameservers: tuple[str, ...] = ()
    #: The directory version this was read from (see :func:`directory_version`).
    version: str = field(default="", compare=False)


def parse_server(text: str) -> str:
    """Validate one kube-dns server entry (``IP`` or ``IP:PORT``) and return its Corefile form.

    ``dns://`` is accepted and dropped; IPv6 with a port must be bracketed
    (``[fd00::1]:53``), as Go's ``net.SplitHostPort`` requires.

    :raises KubeDNSConfigError: not an IP address with an optional port.
    """
    raw = text.strip()
    value = raw[len("dns://"):] if raw.lower().startswith("dns://") else raw
    if "://" in value:
        raise KubeDNSConfigError(f"{raw!r}: only plain DNS servers are supported (IP or IP:PORT)")
    host, port = value, None
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or (value[end + 1:] and not value[end + 1:].startswith(":")):
            raise KubeDNSConfigError(f"{raw!r}: not IP or IP:PORT")
        host, rest = value[1:end], value[end + 1:]
        port = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port = value.split(":")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise KubeDNSConfigError(f"{raw!r}: not IP or IP:PORT") from None
    if port is None:
        return str(ip)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise KubeDNSConfigError(f"{raw!r}: port must be 1-65535")
    return f"[{ip}]:{int(port)}" if ip.version == 6 else f"{ip}:{int(port)}"


def _parse_domain(text: object) -> str:
    if not isinstance(text, str) or not text.strip(".").strip():
        raise KubeDNSConfigError(f"{STUB_DOMAINS_KEY}: {text!r} is not a domain name")
    try:
        name = domain_name(text.strip())
    except ValueError as exc:
        raise KubeDNSConfigError(f"{STUB_DOMAINS_KEY}: {text!r} is not a domain name: {exc}") from None
    return name[:-1] or "@"  # dnspython's spelling of the root


def _load_json(key: str, text: str) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise KubeDNSConfigError(f"{key}: invalid JSON: {exc}") from None


def _servers(where: str, values: list[str]) -> tuple[str, ...]:
    try:
        return tuple(parse_server(v) for v in values)
    except KubeDNSConfigError as exc:
        raise KubeDNSConfigError(f"{where}: {exc.message}") from None


def parse_files(files: Mapping[str, str], *, version: str = "") -> KubeDNSConfig:
    """Build a :class:`KubeDNSConfig` from the ConfigMap's keys (file name -> text).

    Keys other than ``stubDomains`` and ``upstreamNameservers`` (``federations``,
    anything else) are ignored; an empty or blank value counts as absent.

    :raises KubeDNSConfigError: invalid JSON, a bad domain or server, more than
        three upstream nameservers.
    """
    stubs: dict[str, tuple[str, ...]] = {}
    text = files.get(STUB_DOMAINS_KEY, "")
    if text.strip():
        data = _load_json(STUB_DOMAINS_KEY, text)
        if not isinstance(data, dict):
            raise KubeDNSConfigError(f"{STUB_DOMAINS_KEY}: expected a JSON object of domain -> [servers]")
        for key, servers in data.items():
            domain = _parse_domain(key)
            if domain in stubs:
                raise KubeDNSConfigError(f"{STUB_DOMAINS_KEY}: {domain!r} is given twice")
            if (not isinstance(servers, list) or not servers
                    or not all(isinstance(s, str) for s in servers)):
                raise KubeDNSConfigError(
                    f"{STUB_DOMAINS_KEY}: {key!r}: expected a non-empty list of servers")
            stubs[domain] = _servers(f"{STUB_DOMAINS_KEY}: {domain}", servers)

    upstreams: tuple[str, ...] = ()
    text = files.get(UPSTREAM_NAMESERVERS_KEY, "")
    if text.strip():
        data = _load_json(UPSTREAM_NAMESERVERS_KEY, text)
        if not isinstance(data, list) or not all(isinstance(s, str) for s in data):
            raise KubeDNSConfigError(f"{UPSTREAM_NAMESERVERS_KEY}: expected a JSON list of servers")
        if len(data) > MAX_UPSTREAM_NAMESERVERS:
            raise KubeDNSConfigError(
                f"{UPSTREAM_NAMESERVERS_KEY}: {len(data)} given, at most {MAX_UPSTREAM_NAMESERVERS} allowed")
        upstreams = _servers(UPSTREAM_NAMESERVERS_KEY, data)

    return KubeDNSConfig(
        stub_domains=tuple(StubDomain(d, stubs[d]) for d in sorted(stubs)),
        upstream_nameservers=upstreams,
        version=version,
    )


def read_config_dir(path: str) -> dict[str, bytes]:
    """Read a mounted ConfigMap directory: regular files (symlinks followed), dotfiles skipped.

    A missing directory reads as empty: the ConfigMap is optional.
    """
    out: dict[str, bytes] = {}
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return out
    for name in names:
        if name.startswith("."):
            continue  # ..data, ..2024_01_01_..., the kubelet's atomic-swap machinery
        full = os.path.join(path, name)
        if not os.path.isfile(full):  # follows symlinks; skips directories and dangling links
            continue
        with open(full, "rb") as f:
            out[name] = f.read()
    return out


def directory_version(files: Mapping[str, bytes]) -> str:
    """SHA-256 over the sorted names and contents, hex; equal contents give equal versions."""
    digest = hashlib.sha256()
    for name in sorted(files):
        for part in (name.encode(), files[name]):
            digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguity
            digest.update(part)
    return digest.hexdigest()


def kubedns_dir(flag: str, *, isdir: Callable[[str], bool] = os.path.isdir) -> str | None:
    """The directory to watch for ``-kubednscm FLAG``: the flag, else ``/etc/kube-dns`` if present."""
    if flag:
        return flag
    return DEFAULT_KUBEDNS_DIR if isdir(DEFAULT_KUBEDNS_DIR) else None


class DirectoryWatcher:
    """Reports the kube-dns ConfigMap each time its directory's content changes.

    Driven by the caller: call :meth:`poll` every :attr:`period` seconds. It
    returns the new :class:`KubeDNSConfig` when the version changed and parsed,
    ``None`` when nothing changed, and raises :class:`KubeDNSConfigError` (once
    per bad version) when the new content is invalid; the caller then keeps the
    config it has and counts ``setup_errors_total{errortype="configmap"}``.
    The first :meth:`poll` always reports (an empty config if the directory is
    empty or missing).

    :param path: The mounted ConfigMap directory.
    :param period: Seconds between polls, for the caller's timer.
    :param read: Reads the directory into name -> bytes (tests pass a fake).
    """

    def __init__(self, path: str, period: float = DEFAULT_PERIOD, *,
                 read: Callable[[str], Mapping[str, bytes]] = read_config_dir) -> None:
        self.path = path
        self.period = period
        self._read = read
        self._version: str | None = None
        #: The last config :meth:`poll` returned, ``None`` before the first good one.
        self.current: KubeDNSConfig | None = None

    def poll(self) -> KubeDNSConfig | None:
        """Read the directory; return a new config, ``None`` if unchanged, or raise.

        :raises KubeDNSConfigError: the changed content is unreadable or invalid.
        """
        try:
            raw = self._read(self.path)
        except OSError as exc:
            raise KubeDNSConfigError(f"{self.path}: cannot read: {exc}") from None
        version = directory_version(raw)
        if version == self._version:
            return None
        self._version = version  # a bad version is reported once, not every period
        try:
            files = {name: data.decode("utf-8") for name, data in raw.items()}
        except UnicodeDecodeError as exc:
            raise KubeDNSConfigError(f"{self.path}: not UTF-8: {exc}") from None
        try:
            config = parse_files(files, version=version)
        except KubeDNSConfigError as exc:
            raise KubeDNSConfigError(f"{self.path}: {exc.message}") from None
        if config == self.current:
            return None  # e.g. only whitespace or an ignored key changed
        self.current = config
        return config
