"""The dummy interface that holds the local IPs, over netlink (pyroute2).

Rules of this module:

1. ``ensure`` is idempotent: it adds only what is missing (link, addresses,
   UP), so running it twice, or every sync interval, changes nothing.
2. A link that already exists under our name is *adopted*: we add our
   addresses and bring it UP, and teardown undoes exactly that (addresses we
   added, UP if it was DOWN). A link we created is deleted on teardown.
3. What we did is written on the link itself, in its ``ifalias``, so a later
   run after a crash knows it too: ``nodecache: created`` or
   ``nodecache: adopted; was-down; added IP,IP``. An adopted link that already
   has an alias of its own keeps it; then only this process remembers.
4. Unlike node-cache we bring the link UP (node monitors flag a DOWN link,
   kubernetes/dns#666), and IPv6 addresses get ``nodad`` so they can be bound
   at once instead of after duplicate address detection.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from nodecache.errors import HostNetworkError

log = logging.getLogger(__name__)

MARKER_PREFIX = "nodecache:"
_IFF_UP = 0x1
#: linux/if_addr.h: no duplicate address detection (IPv6).
_IFA_F_NODAD = 0x02


class InterfaceError(HostNetworkError):
    """The local-IP interface could not be set up."""

    #: ``setup_errors`` label: ``interface_add`` (changing the link) or ``interface_check`` (reading it).
    errortype = "interface_add"


class InterfaceCheckError(InterfaceError):
    """The local-IP interface could not be read."""

    errortype = "interface_check"


@dataclass
class LinkRecord:
    """What nodecache did to the link (the content of the ifalias marker)."""

    #: We created the link, so teardown deletes it.
    created: bool = False
    #: The adopted link was DOWN before we brought it UP.
    was_down: bool = False
    #: Addresses we added to an adopted link.
    added: list[str] = field(default_factory=list)


def format_marker(rec: LinkRecord) -> str:
    """The ifalias text for ``rec`` (at most 255 bytes, plenty for a few IPs)."""
    if rec.created:
        return f"{MARKER_PREFIX} created"
    parts = [f"{MARKER_PREFIX} adopted"]
    if rec.was_down:
        parts.append("was-down")
    if rec.added:
        parts.append("added " + ",".join(rec.added))
    return "; ".join(parts)


def parse_marker(alias: str | None) -> LinkRecord | None:
    """Inverse of :func:`format_marker`; None when ``alias`` is not ours."""
    if not alias or not alias.startswith(MARKER_PREFIX):
        return None
    parts = [p.strip() for p in alias[len(MARKER_PREFIX):].split(";")]
    if parts[0] == "created":
        return LinkRecord(created=True)
    if parts[0] != "adopted":
        return None
    rec = LinkRecord()
    for part in parts[1:]:
        if part == "was-down":
            rec.was_down = True
        elif part.startswith("added "):
            rec.added = [a for a in part[6:].split(",") if a]
    return rec


@contextlib.contextmanager
def _ipr() -> Iterator[Any]:
    """A netlink route socket on a private stdlib event loop.

    pyroute2's synchronous IPRoute makes its event loop through the global
    policy, which the agent sets to uvloop, and uvloop cannot open AF_NETLINK
    sockets; so we hand it a plain selector loop, and close it afterwards.
    """
    from pyroute2 import IPRoute  # imported late: only nodes that set up links need it
    loop = asyncio.SelectorEventLoop()
    try:
        with IPRoute(use_event_loop=loop, groups=0) as ipr:
            yield ipr
    finally:
        loop.close()


def _netlink_error() -> type[Exception]:
    from pyroute2.netlink.exceptions import NetlinkError
    return NetlinkError


class LinkManager:
    """Keeps one link holding ``ips`` as host routes (/32, /128), UP."""

    def __init__(self, name: str, ips: Sequence[str]) -> None:
        self.name = name
        self.ips = tuple(str(ipaddress.ip_address(ip)) for ip in ips)
        #: None until we have looked at (or made) the link.
        self.record: LinkRecord | None = None
        #: The link's alias is our marker (so we keep it up to date).
        self._alias_ours = False

    # -- reading ---------------------------------------------------------

    def _lookup(self, ipr: Any) -> Any | None:
        try:
            found = ipr.link_lookup(ifname=self.name)
            return ipr.get_links(found[0])[0] if found else None
        except _netlink_error() as exc:
            raise InterfaceCheckError(f"cannot read interface {self.name}: {exc}") from None

    def _addresses(self, ipr: Any) -> dict[str, tuple[int, str]]:
        """address -> (link index, link name) for every address on the node."""
        try:
            names = {ln["index"]: ln.get("ifname") for ln in ipr.get_links()}
            return {str(ipaddress.ip_address(a.get("address"))): (a["index"], names.get(a["index"], "?"))
                    for a in ipr.get_addr() if a.get("address")}
        except _netlink_error() as exc:
            raise InterfaceCheckError(f"cannot list addresses: {exc}") from None

    def _load_record(self, link: Any) -> None:
        alias = link.get("ifalias")
        rec = parse_marker(alias)
        if rec is not None:
            self.record, self._alias_ours = rec, True
        else:
            self.record = LinkRecord(was_down=not link["flags"] & _IFF_UP)
            self._alias_ours = not alias

    def adopt_leftovers(self) -> None:
        """Read the marker an earlier run left on the link, if any."""
        with _ipr() as ipr:
            link = self._lookup(ipr)
            if link is None:
                self.record, self._alias_ours = None, False
                return
            if parse_marker(link.get("ifalias")) is not None:
                self._load_record(link)
                log.info("interface %s: found %r from an earlier run", self.name,
                         link.get("ifalias"))

    # -- changing --------------------------------------------------------

    def ensure(self) -> int:
        """Make the link exist, be UP and hold every IP; return how many things changed."""
        changes = 0
        err = _netlink_error()
        with _ipr() as ipr:
            link = self._lookup(ipr)
            addrs = self._addresses(ipr)
            index = link["index"] if link is not None else None
            for ip in self.ips:
                if ip in addrs and addrs[ip][0] != index:
                    raise InterfaceError(
                        f"local IP {ip} is already on interface {addrs[ip][1]}; "
                        f"it must be on {self.name} only")
            try:
                if link is None:
                    index = self._create(ipr)
                    changes += 1
                    link = ipr.get_links(index)[0]
                elif self.record is None:
                    self._load_record(link)
                    log.info("interface %s exists; adopting it", self.name)
                assert self.record is not None
                if not link["flags"] & _IFF_UP:
                    ipr.link("set", index=index, state="up")
                    changes += 1
                for ip in self.ips:
                    if ip in addrs:
                        continue
                    v6 = ":" in ip
                    ipr.addr("add", index=index, address=ip, prefixlen=128 if v6 else 32,
                             flags=_IFA_F_NODAD if v6 else 0)
                    changes += 1
                    if not self.record.created and ip not in self.record.added:
                        self.record.added.append(ip)
                if self._alias_ours:
                    marker = format_marker(self.record)
                    if link.get("ifalias") != marker:
                        ipr.link("set", index=index, ifalias=marker)
            except err as exc:
                raise InterfaceError(f"cannot set up interface {self.name}: {exc}") from None
        return changes

    def _create(self, ipr: Any) -> int:
        try:
            ipr.link("add", ifname=self.name, kind="dummy")
        except _netlink_error() as exc:
            if getattr(exc, "code", None) == errno.EOPNOTSUPP:
                raise InterfaceError(
                    f"cannot create interface {self.name}: this kernel has no dummy link type "
                    f"(load the dummy module, or create {self.name} beforehand to be adopted)"
                ) from None
            raise InterfaceError(f"cannot create interface {self.name}: {exc}") from None
        index: int = ipr.link_lookup(ifname=self.name)[0]
        self.record, self._alias_ours = LinkRecord(created=True), True
        ipr.link("set", index=index, ifalias=format_marker(self.record))
        log.info("interface %s created", self.name)
        return index

    def teardown(self) -> None:
        """Undo what we did: delete a link we created; on an adopted link remove the
        addresses we added and restore DOWN. Idempotent; a link we know nothing about
        is left alone."""
        err = _netlink_error()
        with _ipr() as ipr:
            link = self._lookup(ipr)
            if link is None:
                self.record = None
                return
            rec = self.record
            marker = parse_marker(link.get("ifalias"))
            if marker is not None:
                rec, self._alias_ours = marker, True
            if rec is None:
                return
            index = link["index"]
            try:
                if rec.created:
                    ipr.link("del", index=index)
                    log.info("interface %s removed", self.name)
                else:
                    have = {str(ipaddress.ip_address(a.get("address")))
                            for a in ipr.get_addr(index=index) if a.get("address")}
                    for ip in rec.added:
                        if ip in have:
                            ipr.addr("del", index=index, address=ip,
                                     prefixlen=128 if ":" in ip else 32)
                    if self._alias_ours:
                        ipr.link("set", index=index, ifalias="")
                    if rec.was_down:
                        ipr.link("set", index=index, state="down")
                    log.info("interface %s restored as it was", self.name)
            except err as exc:
                raise InterfaceError(f"cannot tear down interface {self.name}: {exc}") from None
            self.record, self._alias_ours = None, False
