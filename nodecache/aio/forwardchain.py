"""Several ``forward`` lines in one block: one :class:`Forwarder` each, chained.

The routing rules are :mod:`nodecache.core.forwards`'; this module only
hands a query from one forwarder to the next when an answer's rcode is in
the forward's ``next`` list.
"""
from __future__ import annotations

from typing import Any

from nodecache.aio.forwarder import Forwarder
from nodecache.aio.resolver import Done
from nodecache.config.settings import ServerBlock
from nodecache.core import forwards
from nodecache.core.stats import ForwardStats
from nodecache.core.upstream import question_key
from nodecache.errors import ClientProtocolError, UpstreamError


class _ChainQuery:
    """One query and the forwarder it is with now."""

    __slots__ = ("request", "tcp", "done", "question", "index", "query")

    def __init__(self, request: bytes, tcp: bool, done: Done, question: bytes) -> None:
        self.request = request
        self.tcp = tcp
        self.done: Done | None = done
        self.question = question
        self.index = 0
        self.query: Any = None


class ForwardChain:
    """The forwarders of one block's ``forward`` lines, in the order written."""

    def __init__(self, members: list[Forwarder]) -> None:
        self.members = members
        self.routes = forwards.routes_of([m.settings for m in members])

    @property
    def stats(self) -> ForwardStats:
        return self.members[0].stats

    async def start(self) -> None:
        for member in self.members:
            await member.start()

    async def close(self) -> None:
        for member in self.members:
            await member.close()

    def submit(self, request: bytes, *, tcp: bool, done: Done,
               question: bytes | None = None) -> _ChainQuery:
        if question is None:
            question = question_key(request)
            if question is None:
                raise ClientProtocolError("query has no single well-formed question")
        index = forwards.first_taker(self.routes, question[:-4])
        if index is None:  # the handler checked; a reload may have raced it
            raise UpstreamError("no forward takes this name")
        q = _ChainQuery(request, tcp, done, question)
        self._send(q, index)
        return q

    def _send(self, q: _ChainQuery, index: int) -> None:
        q.index = index

        def answered(answer: bytes | None, error: Exception | None) -> None:
            done = q.done
            if done is None:
                return
            if answer is not None:
                after = forwards.hand_on(self.routes, index, q.question[:-4], answer[3] & 0x0F)
                if after == forwards.NONE_TAKES:
                    answer, error = None, UpstreamError("no next forward takes this name")
                elif after is not None:
                    try:
                        self._send(q, after)
                    except Exception as exc:  # max_concurrent, closed
                        q.done = None
                        done(None, exc)
                    return
            q.done = None
            done(answer, error)

        q.query = self.members[index].submit(q.request, tcp=q.tcp, done=answered,
                                             question=q.question)

    def cancel(self, q: _ChainQuery) -> None:
        if q.done is not None:
            q.done = None
            self.members[q.index].cancel(q.query)


def forwarder_for(block: ServerBlock, zone: str) -> Forwarder | ForwardChain:
    """The forwarder of ``block`` (which has a ``forward``), for its zone ``zone``."""
    assert block.forward is not None
    if not block.later_forwards:
        return Forwarder(block.forward, ForwardStats(block.server, zone))
    return ForwardChain([Forwarder(f, ForwardStats(block.server, zone))
                         for f in (block.forward, *block.later_forwards)])


def stats_of(forwarder: Forwarder | ForwardChain) -> list[ForwardStats]:
    if isinstance(forwarder, ForwardChain):
        return [m.stats for m in forwarder.members]
    return [forwarder.stats]
