"""The answering plugins of the chain (:mod:`nodecache.core.chain`), one module each."""
from __future__ import annotations

from collections.abc import Callable

from nodecache.config.settings import ServerBlock
from nodecache.core.chain import Chain, Stage
from nodecache.core.stages.dns64 import DNS64
from nodecache.core.stages.hosts import HostsStage
from nodecache.core.stages.rewrite import RewriteStage
from nodecache.core.stages.template import TemplateStage
from nodecache.core.stages.whoami import WhoamiStage

#: The plugins around a cache miss, in CoreDNS's plugin.cfg order (whatever
#: order a Corefile lists them in). dns64, cache and forward are the query
#: handler's own steps: dns64 wraps the cache, forward ends the first part of
#: the chain; what forward does not take goes on to the rest.
ORDER = ("dns64", "cache", "rewrite", "template", "hosts", "forward", "whoami")

#: Plugin name -> its stage for a server block (None when the block has none).
STAGES: dict[str, Callable[[ServerBlock], Stage | None]] = {
    "rewrite": lambda block: RewriteStage(block.rewrite) if block.rewrite else None,
    "template": lambda block: TemplateStage(block.template) if block.template else None,
    "hosts": lambda block: HostsStage(block.hosts) if block.hosts is not None else None,
    "whoami": lambda block: WhoamiStage() if block.whoami else None,
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
    return DNS64(block.dns64) if block.dns64 is not None else None
