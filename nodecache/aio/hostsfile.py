"""Read the hosts plugin's files and re-read them when they change.

CoreDNS checks a hosts file every ``reload`` interval (default 5 s) and
re-reads it when its modification time or size changed; a file that cannot
be read (missing, a directory, no permission) keeps the entries loaded last. A ``reload`` of 0 reads it
once. The parsing is :class:`nodecache.core.stages.hosts.HostsStage`'s.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from nodecache.core.handler import Zone

if TYPE_CHECKING:  # loaded only where a block has hosts (it brings dnspython)
    from nodecache.core.stages.hosts import HostsStage

log = logging.getLogger(__name__)

#: How often the watch loop wakes to see which files are due, s.
TICK = 1.0


@dataclass
class _Seen:
    #: (mtime ns, size) of the file last loaded; None before the first load.
    stamp: tuple[int, int] | None = None
    #: When the file is due to be checked again (monotonic clock), s.
    due: float = 0.0
    #: A warning was logged for the file's current failure (log each failure once).
    warned: bool = False


class HostsFiles:
    """Loads every hosts stage's file and keeps it current."""

    def __init__(self, loaded: Callable[[float], None] | None = None) -> None:
        #: Called with a file's modification time (Unix s) when it was read: what
        #: CoreDNS's ``coredns_hosts_reload_timestamp_seconds`` reports.
        self.loaded = loaded
        #: The stages of the running configuration (a stage of an old one is forgotten).
        self._seen: dict[HostsStage, _Seen] = {}

    def check(self, stages: Iterable[HostsStage], now: float) -> None:
        """Load the files that are new or due (``now``: monotonic clock, s) and changed."""
        live: dict[HostsStage, _Seen] = {}
        for stage in stages:
            seen = self._seen.get(stage)
            if seen is None:
                seen = _Seen()
            elif stage.settings.reload <= 0 or now < seen.due:
                live[stage] = seen
                continue
            live[stage] = seen
            seen.due = now + stage.settings.reload
            self._load(stage, seen)
        self._seen = live

    def _load(self, stage: HostsStage, seen: _Seen) -> None:
        path = stage.settings.path
        try:
            status = os.stat(path)
            stamp = (status.st_mtime_ns, status.st_size)
            if stamp == seen.stamp:
                return
            # Bytes that are not UTF-8 only spoil their own names (CoreDNS reads bytes).
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            if not seen.warned:
                log.warning("hosts: cannot read %s (keeping the last entries): %s", path, exc)
                seen.warned = True
            return
        stage.load(text)
        seen.stamp, seen.warned = stamp, False
        if self.loaded is not None:
            self.loaded(status.st_mtime)
        log.debug("hosts: loaded %d entries from %s", stage.entries, path)


def hosts_stages(zones: Iterable[Zone]) -> list[HostsStage]:
    """The hosts stages of these zones' chains."""
    return [cast("HostsStage", stage) for zone in zones if zone.chain is not None
            for stage in zone.chain.stages if stage.name == "hosts"]
