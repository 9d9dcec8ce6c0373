"""Helpers shared by the forwarder tests: quick settings and a started Forwarder."""
from __future__ import annotations

from typing import Any

from nodecache.aio.forwarder import Forwarder
from nodecache.config.settings import ForwardSettings, Upstream
from nodecache.core.stats import ForwardStats


def settings(upstreams: tuple[Upstream, ...], defaults: dict[str, Any],
             overrides: dict[str, Any]) -> ForwardSettings:
    """ForwardSettings for zone ".", ``defaults`` (short timeouts) updated by ``overrides``."""
    return ForwardSettings(zone=".", upstreams=upstreams, **{**defaults, **overrides})


async def forwarder(settings: ForwardSettings, **kw: Any) -> tuple[Forwarder, ForwardStats]:
    """A started Forwarder and its stats; ``kw`` goes to Forwarder (pool knobs)."""
    stats = ForwardStats("dns://:53", ".")
    fwd = Forwarder(settings, stats, **kw)
    await fwd.start()
    return fwd, stats
