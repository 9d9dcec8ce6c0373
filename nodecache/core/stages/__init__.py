"""The answering plugins of the chain (:mod:`nodecache.core.chain`), one module each.

A stage's module is imported only for a server block that uses the plugin:
the stages build their answers with dnspython, which an agent that only
caches and forwards never loads (about 2 MB of each worker's memory, bench/missrate.py).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from nodecache.config.settings import ServerBlock
from nodecache.core.chain import Chain, Stage

if TYPE_CHECKING:
    from nodecache.core.stages.dns64 import DNS64

#: The plugins around a cache miss, in CoreDNS's plugin.cfg order (whatever
#: order a Corefile lists them in). dns64, cache and forward are the query
#: handler's own steps: dns64 wraps the cache, forward ends the first part of
#: the chain; what forward does not take goes on to the rest.
ORDER = ("dns64", "cache", "rewrite", "template", "hosts", "forward", "whoami")


def _rewrite(block: ServerBlock) -> Stage | None:
    if not block.rewrite:
        return None
    from nodecache.core.stages.rewrite import RewriteStage  # noqa: PLC0415
    return RewriteStage(block.rewrite)


def _template(block: ServerBlock) -> Stage | None:
    if not block.template:
        return None
    from nodecache.core.stages.template import TemplateStage  # noqa: PLC0415
    return TemplateStage(block.template)


def _hosts(block: ServerBlock) -> Stage | None:
    if block.hosts is None:
        return None
    from nodecache.core.stages.hosts import HostsStage  # noqa: PLC0415
    return HostsStage(block.hosts)


def _whoami(block: ServerBlock) -> Stage | None:
    if not block.whoami:
        return None
    from nodecache.core.stages.whoami import WhoamiStage  # noqa: PLC0415
    return WhoamiStage()


#: Plugin name -> its stage for a server block (None when the block has none).
STAGES: dict[str, Callable[[ServerBlock], Stage | None]] = {
    "rewrite": _rewrite, "template": _template, "hosts": _hosts, "whoami": _whoami,
}


def chain_for(block: ServerBlock) -> Chain:
    """The stages of ``block`` in :data:`ORDER`: those before forward, and those after."""
    parts: tuple[list[Stage], list[Stage]] = ([], [])
    after = 0
    for name in ORDER:
        if name == "forward":
            after = 1
        build = STAGES.get(name)
        stage = build(block) if build is not None else None
        if stage is not None:
            parts[after].append(stage)
    return Chain(*parts)


def dns64_for(block: ServerBlock) -> DNS64 | None:
    if block.dns64 is None:
        return None
    from nodecache.core.stages.dns64 import DNS64  # noqa: PLC0415
    return DNS64(block.dns64)
