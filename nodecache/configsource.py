"""Where the running Corefile comes from: a plain file, or the node-local template.

Template mode (``--basecorefile``) does what node-cache does on every change:
render the template with the local IPs, the cluster DNS ClusterIP, the node's
resolvers and the kube-dns ConfigMap, write the result to ``--conf`` and load
that. A broken ConfigMap is counted and the last good one is used instead.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from nodecache import config as corefile
from nodecache.config.settings import Config
from nodecache.core.stats import AgentStats
from nodecache.errors import ConfigError

if TYPE_CHECKING:
    from nodecache.k8s import kubedns

log = logging.getLogger(__name__)


class FileSource:
    """Load a Corefile as it is."""

    def __init__(self, path: str, *, default_port: int = 53,
                 env: Mapping[str, str] | None = None) -> None:
        self.path = path
        self.default_port = default_port
        self.env = env

    def __call__(self) -> Config:
        return corefile.load(self.path, env=self.env, default_port=self.default_port)


class TextSource:
    """Load a Corefile held in memory (the demo's rendered template)."""

    def __init__(self, text: str, *, name: str = "<embedded Corefile>", default_port: int = 53) -> None:
        self.text = text
        self.name = name
        self.default_port = default_port

    def __call__(self) -> Config:
        return corefile.parse_text(self.text, path=self.name, default_port=self.default_port)


class TemplateSource:
    """Render ``basecorefile`` into ``conf`` and load it (node-cache's updateCorefile)."""

    def __init__(self, *, basecorefile: str, conf: str, local_ips: Sequence[str],
                 dns_server_ips: Sequence[str], upstreamsvc: str, kubednscm: str | None,
                 resolv_conf: str, domain: str | None, dns_port: int, stats: AgentStats,
                 env: Mapping[str, str] | None = None) -> None:
        self.basecorefile = basecorefile
        self.conf = conf
        self.local_ips = list(local_ips)
        self.dns_server_ips = list(dns_server_ips)
        self.upstreamsvc = upstreamsvc
        self.kubednscm = kubednscm
        self.resolv_conf = resolv_conf
        self.domain = domain
        self.dns_port = dns_port
        self.stats = stats
        self.env = dict(os.environ if env is None else env)
        self._kubedns: kubedns.KubeDNSConfig | None = None
        self._kubedns_version: str | None = None
        #: The last rendering that loaded, and its Config: the agent asks every 2 s, and
        #: the same text is the same Config (a parse costs ~1 ms; a render a tenth of it).
        self._last: tuple[str, Config] | None = None

    def _kubedns_config(self) -> kubedns.KubeDNSConfig | None:
        from nodecache.k8s import kubedns  # noqa: PLC0415 - template mode only
        if not self.kubednscm or not os.path.isdir(self.kubednscm):
            return None
        try:
            files = kubedns.read_config_dir(self.kubednscm)
            version = kubedns.directory_version(files)
            if version == self._kubedns_version:
                return self._kubedns
            texts = {k: v.decode("utf-8") for k, v in files.items()}
            parsed = kubedns.parse_files(texts, version=version)
        except (ConfigError, OSError, UnicodeDecodeError) as exc:
            self.stats.setup_errors["configmap"] += 1
            log.error("kube-dns ConfigMap in %s is invalid, keeping the last good one: %s",
                      self.kubednscm, exc)
            return self._kubedns
        self._kubedns, self._kubedns_version = parsed, version
        return parsed

    def render(self) -> str:
        from nodecache.k8s import resolvconf, template  # noqa: PLC0415 - template mode only
        with open(self.basecorefile, encoding="utf-8") as f:
            base = f.read()
        text = base
        cluster_dns = template.cluster_dns_ip(self.upstreamsvc, self.env) \
            if template.CLUSTER_DNS in base else ""
        upstreams = resolvconf.node_upstreams(self.resolv_conf) \
            if template.UPSTREAM_SERVERS in base else []
        return template.render_corefile(
            text, local_ips=self.local_ips, dns_server_ips=self.dns_server_ips,
            cluster_dns=cluster_dns, upstream_servers=upstreams, domain=self.domain,
            kubedns=self._kubedns_config(), dns_port=self.dns_port)

    def __call__(self) -> Config:
        from nodecache.k8s import kubedns, template  # noqa: PLC0415 - template mode only
        try:
            text = self.render()
        except kubedns.KubeDNSConfigError:
            # E.g. a stub domain clashing with a template zone: the ConfigMap's fault.
            self.stats.setup_errors["configmap"] += 1
            raise
        if self._last is not None and self._last[0] == text:
            template.write_corefile(self.conf, text)  # put it back if someone changed the file
            return self._last[1]
        # Parse before writing: a rendering that does not parse never replaces a good file.
        corefile.parse_text(text, path=self.conf, default_port=self.dns_port)
        template.write_corefile(self.conf, text)
        config = corefile.load(self.conf, default_port=self.dns_port)
        self._last = (text, config)
        return config
