"""The answering plugins of the chain (:mod:`nodecache.core.chain`), one module each."""
from __future__ import annotations

from nodecache.config.settings import ServerBlock
from nodecache.core.chain import Chain, Stage
from nodecache.core.stages.dns64 import DNS64
from nodecache.core.stages.hosts import HostsStage
from nodecache.core.stages.rewrite import RewriteStage
from nodecache.core.stages.template import TemplateStage
from nodecache.core.stages.whoami import WhoamiStage


def chain_for(block: ServerBlock) -> Chain:
    """The stages of ``block``, in CoreDNS's order (:data:`nodecache.core.chain.ORDER`)."""
    stages: list[Stage] = []
    if block.rewrite:
        stages.append(RewriteStage(block.rewrite))
    if block.template:
        stages.append(TemplateStage(block.template))
    if block.hosts is not None:
        stages.append(HostsStage(block.hosts))
    tail: list[Stage] = [WhoamiStage()] if block.whoami else []
    return Chain(stages, tail)


def dns64_for(block: ServerBlock) -> DNS64 | None:
    return DNS64(block.dns64) if block.dns64 is not None else None
