"""The core's hit path alone: ``QueryHandler.handle`` on cached answers, no sockets.

Run from a checkout (``python bench/corehit.py``); ``--tree DIR`` measures the
nodecache package of another checkout with the same Python, so two trees are
compared in one run. It times the plain official-template block and, when the
tree knows them, the same block with hosts, template, rewrite and dns64 in
front of the cache: a hit must cost the same (one look-up) either way.
Prints ns per hit: the fastest of ``--rounds`` rounds of ``--hits`` hits (the least
disturbed by other load), in CPU time of this process.
"""
from __future__ import annotations

import argparse
import sys
import time

PLAIN = """.:53 {
  errors
  cache 30
  forward . 127.0.0.1
}
"""
PLUGINS = """.:53 {
  errors
  cache 30
  dns64 {
    allow_ipv4
  }
  rewrite name suffix .corp. .example.org. answer auto
  template IN AAAA . {
    rcode NOERROR
  }
  hosts {
    10.0.0.1 registry.example.org
    fallthrough
  }
  forward . 127.0.0.1
}
"""


def handler_for(corefile: str):  # type: ignore[no-untyped-def]
    import dns.message
    import dns.rrset

    from nodecache.config import parse_text
    from nodecache.core.cache import BlockCache
    from nodecache.core.handler import Miss, QueryHandler, Zone
    from nodecache.core.stats import CacheStats, ServerStats

    block = parse_text(corefile, default_port=53).blocks[0]
    zone = Zone(".", block, ServerStats(block.server, "."), None, None)
    zone.cache_stats = CacheStats(block.server, ".")
    handler: QueryHandler | None = None
    zone.cache = BlockCache(block.cache, zone.cache_stats, (".",),  # type: ignore[arg-type]
                            lambda e: handler.index_add(e),  # type: ignore[union-attr]
                            lambda e: handler.index_remove(e))  # type: ignore[union-attr]
    handler = QueryHandler([zone])
    query = dns.message.make_query("www.example.org.", "A", use_edns=0).to_wire()
    miss = handler.handle(query, 1000.0, 0)
    assert isinstance(miss, Miss)
    answer = dns.message.make_response(dns.message.from_wire(query))
    answer.answer.append(dns.rrset.from_text("www.example.org.", 300, "IN", "A", "192.0.2.1"))
    handler.absorb(miss, answer.to_wire(), 1000.0)
    return handler, query


def measure(corefile: str, hits: int, rounds: int) -> float:
    handler, query = handler_for(corefile)
    handle = handler.handle
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for i in range(hits):
            reply = handle(query, 1001.0, 0)
        results.append((time.process_time() - started) / hits * 1e9)
        assert isinstance(reply, bytes)
    return min(results)  # the least disturbed round (the machine is shared)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", help="a checkout whose nodecache package to measure")
    ap.add_argument("--hits", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    if args.tree:
        sys.path.insert(0, args.tree)
    import nodecache
    print(f"tree: {nodecache.__file__.rsplit('/', 2)[0]}")
    print(f"plain block:        {measure(PLAIN, args.hits, args.rounds):7.0f} ns/hit")
    try:
        value = measure(PLUGINS, args.hits, args.rounds)
    except Exception as exc:  # an older tree refuses the plugins
        print(f"block with plugins: not supported here ({type(exc).__name__})")
    else:
        print(f"block with plugins: {value:7.0f} ns/hit")


if __name__ == "__main__":
    main()
