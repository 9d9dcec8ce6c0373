"""Helpers shared by the forwarder tests: quick settings and a started Forwarder."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nodecache.aio.forwarder import Forwarder
from nodecache.config.settings import ForwardSettings, Upstream
from nodecache.core.stats import ForwardStats


def quick(**defaults: Any) -> Callable[..., ForwardSettings]:
    """``fast(*upstreams, **overrides)``: ForwardSettings for zone "." with ``defaults``
    (a test module's short timeouts) updated by ``overrides``."""
    def fast(*upstreams: Upstream, **overrides: Any) -> ForwardSettings:
        return ForwardSettings(zone=".", upstreams=upstreams, **{**defaults, **overrides})
    return fast


async def forwarder(settings: ForwardSettings, **kw: Any) -> tuple[Forwarder, ForwardStats]:
    """A started Forwarder and its stats; ``kw`` goes to Forwarder (pool knobs)."""
    stats = ForwardStats("dns://:53", ".")
    fwd = Forwarder(settings, stats, **kw)
    await fwd.start()
    return fwd, stats
