"""Resolve cache misses: coalesce identical ones, forward, hand replies back.

Identical misses in flight (same cache key) share one upstream query, as
CoreDNS's singleflight does for its own upstream traffic; each waiting client
still gets a reply with its own ID, question case and EDNS.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable


from nodecache.core import wire
from nodecache.core.handler import Miss, Outcome, QueryHandler, name_text
from nodecache.errors import UpstreamError

log = logging.getLogger(__name__)


class Forwarding:
    """What the resolver needs from a forwarder (``nodecache.aio.forwarder.Forwarder``)."""

    async def query(self, request: bytes, *, tcp: bool) -> bytes:  # pragma: no cover
        raise NotImplementedError


class Resolver:
    """Runs misses for one handler; ``forwarders`` maps a Zone to its forwarder."""

    def __init__(self, handler: QueryHandler, forwarders: dict[object, Forwarding]) -> None:
        self.handler = handler
        self.forwarders = forwarders
        self.inflight: dict[bytes, asyncio.Future[Outcome]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        handler.refresh = lambda miss: self.submit(miss, _discard, None)

    def submit(self, miss: Miss, deliver: Callable[[bytes], None], addr: object) -> None:
        task = self._loop.create_task(self._resolve(miss, deliver, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _resolve(self, miss: Miss, deliver: Callable[[bytes], None], addr: object) -> None:
        handler = self.handler
        loop = self._loop
        try:
            shared = self.inflight.get(miss.key)
            if shared is not None:
                if miss.background:
                    handler.fail(miss, UpstreamError("refresh already in flight"), loop.time())
                    return
                try:
                    outcome = await asyncio.shield(shared)
                except Exception as error:
                    deliver(handler.fail(miss, error, loop.time(), addr))
                    return
                deliver(handler.reply(miss, outcome, loop.time(), addr))
                return
            future: asyncio.Future[Outcome] = loop.create_future()
            self.inflight[miss.key] = future
            try:
                forwarder = self.forwarders[miss.zone]
                answer = await forwarder.query(handler.upstream_query(miss), tcp=miss.slot >= 2)
                outcome = handler.absorb(miss, answer, loop.time())
            except Exception as error:
                future.set_exception(error)
                future.exception()  # retrieved: followers may not exist
                if miss.zone.block.errors:
                    log.error("[ERROR] plugin/errors: 2 %s %s: %s", name_text(miss.qname),
                              wire.type_name(miss.qtype), error)
                deliver(handler.fail(miss, error, loop.time(), addr))
                return
            finally:
                if self.inflight.get(miss.key) is future:
                    del self.inflight[miss.key]
            future.set_result(outcome)
            deliver(handler.reply(miss, outcome, loop.time(), addr))
        except Exception:
            log.exception("resolving %s failed", name_text(miss.qname))

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)


def _discard(reply: bytes) -> None:
    """Background refreshes have no client."""
