"""HostNetwork: the node's interface and firewall rules over the agent's life.

The agent drives it (from a worker thread; every method is synchronous and
serialised by one lock):

1. ``check_prerequisites()`` - fail fast with one line (no CAP_NET_ADMIN, no iptables/nft);
2. ``adopt_leftovers()``     - take over, or clean, what a crashed run left;
3. ``ensure_interface()``    - before the listeners bind (they bind to the local IPs);
4. ``ensure_rules()``        - as soon as every listener is bound: no window in which
                               the rules point at nothing, and no 60 s wait as in node-cache;
5. ``resync()``              - every sync interval; re-adds what someone removed, counts errors;
6. ``teardown()``            - rules first (traffic falls back to kube-dns), link last.

Every failure is counted in ``AgentStats.setup_errors`` under node-cache's
errortypes (``iptables``, ``iptables_lock``, ``interface_add``, ``interface_check``).
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from nodecache.core.stats import AgentStats
from nodecache.errors import HostNetworkError
from nodecache.hostnet.firewall import (FIREWALLS, Firewall, XtablesLockBusy, all_backends,
                                        choose_firewall, which)
from nodecache.hostnet.link import LinkManager
from nodecache.hostnet.linkctl import ChildLink
from nodecache.hostnet.rules import Rule, notrack_rules, parse_local_ips

log = logging.getLogger(__name__)
T = TypeVar("T")

#: linux/capability.h
CAP_NET_ADMIN = 12
#: Attempts when the xtables lock is busy in ensure_rules (each waits ``lock_wait`` s).
LOCK_ATTEMPTS = 3


def has_cap_net_admin(status_path: str = "/proc/self/status") -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set."""
    try:
        with open(status_path) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


class HostNetwork:
    """The local-IP interface and the NOTRACK/ACCEPT rules of one node.

    :param local_ips: the IPs the cache listens on (IPv4 and IPv6 may be mixed).
    :param interface: name of the dummy link holding them.
    :param dns_port: the port the rules match for DNS.
    :param health_port: the health plugin's port (rules for the liveness probe).
    :param firewall: ``auto``, ``iptables-legacy``, ``iptables-nft`` or ``nftables``.
    :param setup_interface: manage the link (``--setupinterface``).
    :param setup_rules: manage the rules (``--setupiptables``).
    :param stats: where setup errors are counted.
    :param lock_wait: seconds to wait for the xtables lock per attempt.
    :param link_in_child: run link operations in a short-lived child process, so
        this process never loads pyroute2 (the long-running agent does this).
    """

    def __init__(self, *, local_ips: Sequence[str], interface: str = "nodelocaldns",
                 dns_port: int = 53, health_port: int, firewall: str = "auto",
                 setup_interface: bool = True, setup_rules: bool = True, stats: AgentStats,
                 lock_wait: int = 5, link_in_child: bool = False) -> None:
        if firewall not in FIREWALLS:
            raise HostNetworkError(
                f"unknown firewall {firewall!r}; use one of {', '.join(FIREWALLS)}")
        try:
            self.local_ips = parse_local_ips(local_ips)
        except ValueError as exc:
            raise HostNetworkError(str(exc)) from None
        if not self.local_ips:
            raise HostNetworkError("no local IP given")
        self.interface = interface
        self.firewall_name = firewall
        self.setup_interface = setup_interface
        self.setup_rules = setup_rules
        self.stats = stats
        self.lock_wait = lock_wait
        self.rules: tuple[Rule, ...] = notrack_rules(self.local_ips, dns_port, health_port)
        self.families = {r.family for r in self.rules}
        # The serving agent keeps pyroute2 out of its memory (see linkctl).
        self.link: LinkManager | ChildLink = (ChildLink if link_in_child else LinkManager)(
            interface, self.local_ips)
        self._firewall: Firewall | None = None
        #: Set by ensure_rules: from then on resync keeps the rules in place.
        self._rules_active = False
        self._lock = threading.RLock()

    @property
    def firewall(self) -> Firewall:
        """The chosen backend (``auto`` is resolved on first use)."""
        if self._firewall is None:
            self._firewall = choose_firewall(self.firewall_name, self.families, self.lock_wait)
            log.info("firewall backend: %s", self._firewall.name)
        return self._firewall

    def _counted(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except HostNetworkError as exc:
            self.stats.setup_errors[getattr(exc, "errortype", "iptables")] += 1
            raise

    # -- start -------------------------------------------------------------

    def check_prerequisites(self) -> None:
        """Raise :class:`HostNetworkError` with one clear line if we cannot do our job."""
        if not (self.setup_interface or self.setup_rules):
            return
        if not has_cap_net_admin():
            raise HostNetworkError(
                "missing CAP_NET_ADMIN: run as root or add NET_ADMIN to the container's "
                "capabilities (or pass --no-setupinterface --no-setupiptables)")
        if not self.setup_rules:
            return
        if self.firewall_name == "auto" and not any(
                which(p) for p in ("iptables-nft-restore", "iptables-legacy-restore",
                                          "ip6tables-nft-restore", "ip6tables-legacy-restore",
                                          "nft")):
            raise HostNetworkError("no iptables or nft program found in PATH "
                                   "(needed for --setupiptables)")
        fw = self.firewall
        missing = [b for b in fw.binaries(self.families) if which(b) is None]
        if missing:
            raise HostNetworkError(
                f"{missing[0]} not found in PATH (needed for the {fw.name} firewall backend)")

    def adopt_leftovers(self) -> None:
        """Find what an earlier run left: adopt our link (from its marker), keep our
        rules that match the current set, and delete nodecache rules that do not
        (other IPs or ports, or another backend)."""
        with self._lock:
            if self.setup_interface:
                self._counted(self.link.adopt_leftovers)
            if not self.setup_rules:
                return
            chosen = self.firewall
            for fw in all_backends(self.lock_wait):
                same = fw.name == chosen.name
                try:
                    n = self._counted(lambda: fw.remove_tagged(self.rules if same else ()))
                except HostNetworkError as exc:
                    log.warning("leftover rules in %s: %s", fw.name, exc)
                    continue
                if n:
                    log.info("removed %d leftover nodecache rules from %s", n, fw.name)

    def ensure_interface(self) -> None:
        """Create or adopt the link, bring it UP, add the local IPs (idempotent)."""
        if not self.setup_interface:
            return
        with self._lock:
            self._counted(self.link.ensure)

    def ensure_rules(self) -> int:
        """Install the rules (call once every listener is bound); return how many were added.

        A busy xtables lock is counted (``iptables_lock``) and retried a few
        times; if it stays busy this returns and the next resync tries again.
        """
        if not self.setup_rules:
            return 0
        with self._lock:
            self._rules_active = True
            for attempt in range(1, LOCK_ATTEMPTS + 1):
                try:
                    added = self._counted(lambda: self.firewall.ensure(self.rules))
                except XtablesLockBusy as exc:
                    log.warning("xtables lock busy (attempt %d of %d): %s", attempt,
                                LOCK_ATTEMPTS, exc)
                    time.sleep(0.1)
                    continue
                if added:
                    log.info("added %d nodecache rules (%s)", added, self.firewall.name)
                return added
            return 0

    def resync(self) -> None:
        """Put back whatever is missing; errors are counted and logged, never raised."""
        with self._lock:
            try:
                if self.setup_interface:
                    changed = self._counted(self.link.ensure)
                    if changed:
                        log.info("interface %s: restored %d missing settings", self.interface,
                                 changed)
            except HostNetworkError as exc:
                log.warning("resync interface: %s", exc)
            if self.setup_rules and self._rules_active:
                try:
                    added = self._counted(lambda: self.firewall.ensure(self.rules))
                    if added:
                        log.info("added back %d nodecache rules", added)
                except HostNetworkError as exc:
                    log.warning("resync rules: %s", exc)

    # -- stop --------------------------------------------------------------

    def teardown(self) -> None:
        """Remove exactly what we installed: rules first, then the link. Idempotent.

        Both steps are tried; the first error is raised after both.
        """
        with self._lock:
            self._rules_active = False
            first: HostNetworkError | None = None
            if self.setup_rules:
                try:
                    n = self._counted(lambda: self.firewall.remove(self.rules))
                    log.info("removed %d nodecache rules", n)
                except HostNetworkError as exc:
                    first = exc
            if self.setup_interface:
                try:
                    self._counted(self.link.teardown)
                except HostNetworkError as exc:
                    first = first or exc
            if first is not None:
                raise first
