"""Micro-benchmark of the core's hit path: bytes in, bytes out, a fake clock.

    python bench/hitpath.py [--rounds 7] [--queries 200000]

Builds a QueryHandler with one cached A answer (plain and EDNS queries) and
times ``handle()`` alone, with no socket and no event loop, so that a change to
the hit path shows apart from the kernel's and the loop's share. Prints the
best round's CPU time per query in ns: CPU time leaves out the time the
process waits for a core, and the best of several rounds is the least
disturbed by other load on the machine.
"""
from __future__ import annotations

import argparse
import time

import dns.message
import dns.rrset

from nodecache.config import parse_text
from nodecache.core.cache import BlockCache
from nodecache.core.handler import Miss, QueryHandler, Zone
from nodecache.core.stats import CacheStats, ServerStats

COREFILE = "cluster.local:53 {\n    cache 30\n    forward . 10.96.0.10\n}\n"
NAME = "kubernetes.default.svc.cluster.local."


def cached_handler() -> tuple[QueryHandler, list[bytes]]:
    """A handler whose cache holds ``NAME`` A, and queries that hit it."""
    config = parse_text(COREFILE, default_port=53)
    block = config.blocks[0]
    handler: QueryHandler | None = None
    zone = Zone("cluster.local.", block, ServerStats(block.server, "cluster.local."), None,
                CacheStats(block.server, "cluster.local."))
    assert block.cache is not None and zone.cache_stats is not None
    zone.cache = BlockCache(block.cache, zone.cache_stats, ("cluster.local.",),
                            lambda e: handler.index_add(e),  # type: ignore[union-attr]
                            lambda e: handler.index_remove(e))  # type: ignore[union-attr]
    handler = QueryHandler([zone])
    queries = [dns.message.make_query(NAME, "A", use_edns=False).to_wire(),
               dns.message.make_query(NAME, "A", use_edns=0, payload=1232).to_wire()]
    for query in queries:
        miss = handler.handle(query, 0.0, 0)
        if not isinstance(miss, Miss):
            continue  # the same key as an earlier query: already cached
        answer = dns.message.make_response(dns.message.from_wire(query))
        answer.answer.append(dns.rrset.from_text(NAME, 30, "IN", "A", "10.96.0.1"))
        handler.reply(miss, handler.absorb(miss, answer.to_wire(), 0.0), 0.0)
        assert handler.handle(query, 1.0, 0).__class__ is bytes, "not a hit"
    return handler, queries


def measure(queries_per_round: int, rounds: int) -> float:
    """Best cost of one hit over ``rounds``, ns."""
    handler, queries = cached_handler()
    handle = handler.handle
    best = float("inf")
    for _ in range(rounds):
        batch = queries * (queries_per_round // len(queries))
        began = time.process_time()
        for query in batch:
            handle(query, 1.5, 0)
        elapsed = time.process_time() - began
        best = min(best, elapsed / len(batch))
        handler.sync_stats()
    return best * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--queries", type=int, default=200_000)
    args = parser.parse_args()
    print(f"hit path: {measure(args.queries, args.rounds):.0f} ns per query "
          f"(best of {args.rounds} rounds of {args.queries})")


if __name__ == "__main__":
    main()
