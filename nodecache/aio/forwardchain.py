"""Several ``forward`` lines in one block: one :class:`Forwarder` each, chained.

The routing rules are :mod:`nodecache.core.forwards`'; this module only
hands a query from one forwarder to the next when an answer's rcode is in
the forward's ``next`` list.
"""
from __future__ import annotations

from nodecache.aio.forwarder import Forwarder, Query
from nodecache.config.settings import ServerBlock
from nodecache.core import forwards
from nodecache.core.stats import ForwardStats
from nodecache.core.upstream import question_key
from nodecache.errors import ClientProtocolError, UpstreamError


class _ChainQuery(Query):
    """One query through the chain: the member forwarder's record for it, handed on
    to the next member when an answer's rcode says so; its end is ``outer``'s."""

    __slots__ = ("chain", "outer", "tcp", "member")

    def __init__(self, chain: ForwardChain, outer: Query, tcp: bool) -> None:
        Query.__init__(self)
        self.chain = chain
        self.outer = outer
        self.tcp = tcp
        #: The index of the member forwarding it now.
        self.member = 0

    def done(self, answer: bytes | None, error: Exception | None) -> None:
        chain = self.chain
        if answer is not None:
            after = forwards.hand_on(chain.routes, self.member, self.question[:-4], answer[3] & 0x0F)
            if after == forwards.NONE_TAKES:
                answer, error = None, UpstreamError("no next forward takes this name")
            elif after is not None:
                try:
                    chain.send(self, after)
                    return
                except Exception as exc:  # max_concurrent, closed
                    answer, error = None, exc
        chain.inner.pop(self.outer, None)
        self.outer.done(answer, error)


class ForwardChain:
    """The forwarders of one block's ``forward`` lines, in the order written."""

    def __init__(self, members: list[Forwarder]) -> None:
        self.members = members
        self.routes = forwards.routes_of([m.settings for m in members])
        #: The caller's record -> the chain's record for it, while in flight (to cancel it).
        self.inner: dict[Query, _ChainQuery] = {}

    @property
    def stats(self) -> ForwardStats:
        return self.members[0].stats

    async def start(self) -> None:
        for member in self.members:
            await member.start()

    async def close(self) -> None:
        for member in self.members:
            await member.close()

    def submit(self, q: Query, request: bytes, *, tcp: bool,
               question: bytes | None = None) -> None:
        """Forward ``request`` through the first member that takes its name; ``q.done``
        gets the answer."""
        if question is None:
            question = question_key(request)
            if question is None:
                raise ClientProtocolError("query has no single well-formed question")
        index = forwards.first_taker(self.routes, question[:-4])
        if index is None:  # the handler checked; a reload may have raced it
            raise UpstreamError("no forward takes this name")
        cq = _ChainQuery(self, q, tcp)
        cq.request, cq.question = request, question
        self.inner[q] = cq  # before the send: a try may fail, and the query end, within it
        try:
            self.send(cq, index)
        except Exception:  # refused at once: done is not called
            del self.inner[q]
            raise

    def send(self, q: _ChainQuery, index: int) -> None:
        """Hand ``q`` to member ``index``."""
        q.member = index
        self.members[index].submit(q, q.request, tcp=q.tcp, question=q.question)

    def cancel(self, q: Query) -> None:
        cq = self.inner.pop(q, None)
        if cq is not None:
            self.members[cq.member].cancel(cq)


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
