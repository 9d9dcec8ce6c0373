"""The sans-I/O handler driven by hand: a query in, a miss answered by a fake upstream function, a reply out."""
from __future__ import annotations

from collections.abc import Callable

import dns.message
import dns.rrset

from nodecache.config import parse_text
from nodecache.core.handler import Miss, QueryHandler
from nodecache.core.runtime import single_handler
from tests.kit import answers

#: Answers the upstream query the handler built.
Upstream = Callable[[dns.message.Message], dns.message.Message]


def make_handler(corefile: str) -> QueryHandler:
    return single_handler(parse_text(corefile, default_port=53))


class Driver:
    """Runs queries through a handler, answering misses with ``upstream``."""

    def __init__(self, corefile: str, upstream: Upstream) -> None:
        self.handler = make_handler(corefile)
        self.upstream = upstream
        self.upstream_queries: list[dns.message.Message] = []
        #: Every background refresh the handler queued, in order (the agent resolves them).
        self.refreshes: list[Miss] = []
        self.now = 1000.0

    def ask(self, query: dns.message.Message | bytes, *, tcp: bool = False,
            fail: Exception | None = None, ipv6: bool = False,
            addr: object = None) -> dns.message.Message | None:
        data = query if isinstance(query, bytes) else query.to_wire()
        result = self.handler.handle(data, self.now, (2 if tcp else 0) | (1 if ipv6 else 0), addr)
        self.refreshes.extend(self.handler.take_refreshes())
        if isinstance(result, Miss):
            result = self.resolve(result, fail)
        return None if result is None else dns.message.from_wire(result)

    def resolve(self, miss: Miss, fail: Exception | None = None) -> bytes:
        if fail is not None:
            return self.handler.fail(miss, fail, self.now)
        upstream_query = dns.message.from_wire(self.handler.upstream_query(miss))
        self.upstream_queries.append(upstream_query)
        answer = self.upstream(upstream_query)
        outcome = self.handler.absorb(miss, answer.to_wire(), self.now)
        result = self.handler.reply(miss, outcome, self.now)
        return self.resolve(result) if isinstance(result, Miss) else result


def answer_a(ttl: int = 30, *addresses: str) -> Upstream:
    def upstream(q: dns.message.Message) -> dns.message.Message:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, ttl, "IN", "A",
                                            *(addresses or ("10.0.0.1",))))
        return r
    return upstream


def negative(rcode: int, soa_ttl: int | None, minimum: int = 3600) -> Upstream:
    """A denial from cluster.local. (:func:`tests.kit.answers.negative`; ``soa_ttl=None``: no SOA)."""
    return lambda q: answers.negative(q, rcode=rcode, zone="cluster.local.", soa_ttl=soa_ttl, minimum=minimum)
