"""The core alone: a cache hit and a miss through ``QueryHandler``, no sockets, a fake clock.

What a query costs in nodecache's own DNS code, apart from the kernel, the
event loop and the upstream: the figure to watch while changing ``core/``,
and the part of section 3's (hits) and section 4's (misses) CPU per query that
is ours. It drives only the handler's public surface:

* hit: ``handle(query, now, slot)`` returns the reply bytes;
* miss: ``handle`` returns a Miss, then ``upstream_query(miss)``, then
  ``absorb(miss, answer, now)`` with a fake upstream answer (built before the
  clock starts), then ``reply(miss, outcome, now)``; by stage, with the pooled
  TCP connection's framing (``UpstreamConnection.send``, ``receive_data``) between;
* hit_plugins: the hit again with dns64, rewrite, template and hosts in front of
  the cache, which a hit must never reach (it should cost what a plain hit does).

The handler is built from the repository's ``Corefile.nodelocal`` (rendered for
the bench), so the cache settings are the deployed ones. Each miss round uses a
fresh handler and names never asked before; each hit round asks the names the
miss round stored. Rounds are timed in CPU time (``time.thread_time_ns``), with
the agent's garbage-collector thresholds and the earlier rounds' garbage collected first (the
agent makes none while serving). Run it with ``bench/run --core`` or ``python -m nodebench.core``
(``--profile`` prints a cProfile table; ``--rounds`` keeps it busy for py-spy; ``--tree DIR``
measures another checkout's package, for before/after figures; ``--memory`` prints the bytes
a stored name holds, by tracemalloc, and the source lines that allocate them).
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: Names per round; below the deployed cache's 9984 entries, so nothing is evicted.
NAMES = 5000
ROUNDS = 7
#: The fake clock, s (any value; it never moves during a round).
NOW = 1000.0
SLOT_UDP4 = 0


def corefile_text() -> str:
    """The repository's Corefile.nodelocal, rendered as the bench renders it."""
    from nodecache.k8s.template import render_corefile

    return render_corefile((REPO / "Corefile.nodelocal").read_text(), local_ips=["169.254.20.10"],
                           dns_server_ips=[], cluster_dns="10.96.0.10", upstream_servers=["10.96.0.10"],
                           domain="cluster.local", kubedns=None)


#: Put in front of the cache of the cluster.local block for the ``hit_plugins`` figure: none
#: of them matches the bench's A queries, and a hit must not reach them (one look-up either way).
PLUGINS = """\
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
"""


def with_plugins(text: str) -> str:
    """*text* with :data:`PLUGINS` at the top of its cluster.local block."""
    head = "cluster.local:53 {\n"
    if head not in text:
        raise RuntimeError("the Corefile has no cluster.local:53 block")
    return text.replace(head, head + PLUGINS, 1)


def build_handler(text: str) -> Any:
    """One QueryHandler over the Corefile's zones, built by the core as the agent's are."""
    from nodecache.config import parse_text
    from nodecache.core.runtime import single_handler

    return single_handler(parse_text(text, default_port=53))


def queries(tag: str, n: int) -> list[bytes]:
    """*n* A queries for distinct pod names (as dnsperf sends them: RD, no EDNS)."""
    from nodecache.core import wire

    return [wire.build_query(wire.zone_to_wire(f"10-{tag}-{i >> 8 & 255}-{i & 255}.default.pod.cluster.local"),
                             wire.TYPE_A, wire.CLASS_IN, do=False, cd=False, qid=i & 0xFFFF, edns=False)
            for i in range(n)]


def fake_answer(query: bytes) -> bytes:
    """The cluster DNS's answer to *query*: one A record, TTL 30 s, name compressed."""
    question = query[12:]
    return (query[:2] + struct.pack("!HHHHH", 0x8580, 1, 1, 0, 0) + question
            + b"\xc0\x0c\0\1\0\1" + struct.pack("!IH", 30, 4) + bytes((10, 1, query[0], query[1])))


def _best_and_median(samples: list[float]) -> dict[str, float]:
    return {"best_us": min(samples), "median_us": statistics.median(samples), "rounds": len(samples)}


def measure(names: int = NAMES, rounds: int = ROUNDS, stages: bool = True) -> dict[str, Any]:
    """CPU microseconds per operation, best and median over *rounds*; with *stages*, each
    stage of a miss over all names in turn (best round)."""
    from nodecache.core.handler import Miss

    text = corefile_text()
    _agent_gc()
    _warm_up(text)
    miss_us: list[float] = []
    hit_us: list[float] = []
    plugin_hit_us: list[float] = []
    plugins = with_plugins(text)
    stage_us: dict[str, float] = {}
    # Timed in this thread's CPU time: on a shared machine, time spent preempted by
    # other processes is not the core's cost (a read is a system call, ~1.5 us here,
    # so only whole loops are timed).
    clock = time.thread_time_ns
    for r in range(rounds):
        handler = build_handler(text)
        qs = queries(str(r), names)
        answers = [fake_answer(q) for q in qs]
        handle, upstream_query, absorb, reply = handler.handle, handler.upstream_query, handler.absorb, handler.reply
        # The last rounds' caches are garbage in cycles (entries and cache point at each
        # other); the agent makes none while serving, so none is walked in the timed loop.
        gc.collect()
        t0 = clock()
        for q, a in zip(qs, answers):
            miss = handle(q, NOW, SLOT_UDP4)
            upstream_query(miss)
            reply(miss, absorb(miss, a, NOW), NOW)
        miss_us.append((clock() - t0) / names / 1000)
        t0 = clock()
        for q in qs:
            handle(q, NOW, SLOT_UDP4)
        hit_us.append((clock() - t0) / names / 1000)
        if r == 0:
            _check(handler, qs, answers, Miss)
        plugin_hit_us.append(_hits(build_handler(plugins), qs, answers, clock))
        if stages:
            for k, v in _stages(build_handler(text), queries(f"s{r}", names), clock).items():
                stage_us[k] = min(stage_us.get(k, v), v)
    return {
        "names": names,
        "hit": _best_and_median(hit_us),
        "miss": _best_and_median(miss_us),
        "hit_plugins": _best_and_median(plugin_hit_us),
        "miss_stages_us": stage_us,
        "python": sys.version.split()[0],
        "build": _build(),
        "tree": str(Path(sys.modules["nodecache"].__file__ or "").parents[1]),
    }


def _build() -> str:
    # Imported late: the servers' modules import nodecache, and --tree must come first.
    from .servers import nodecache_build
    return nodecache_build()


def _hits(handler: Any, qs: list[bytes], answers: list[bytes], clock: Callable[[], int]) -> float:
    """Store every answer (untimed), then ask every name again: us per hit."""
    for q, a in zip(qs, answers):
        miss = handler.handle(q, NOW, SLOT_UDP4)
        handler.reply(miss, handler.absorb(miss, a, NOW), NOW)
    handle = handler.handle
    t0 = clock()
    for q in qs:
        got = handle(q, NOW, SLOT_UDP4)
    elapsed = clock() - t0
    if not isinstance(got, bytes):
        raise RuntimeError(f"a stored name was not answered from the cache: {got!r}")
    return elapsed / len(qs) / 1000


def _stages(handler: Any, qs: list[bytes], clock: Callable[[], int]) -> dict[str, float]:
    """Each stage of a miss for every query in turn, us per query: the handler's, and
    between ``upstream_query`` and ``absorb`` the pooled TCP connection's framing
    (``send`` with ``data_to_send``, ``receive`` of the answers' stream in 4 KiB reads)."""
    from nodecache.core.upstream import AnswerReceived, IdSource, UpstreamConnection, frame, question_key

    conn = UpstreamConnection(now=NOW, max_in_flight=1 << 16, max_age=0, expire=10, ids=IdSource())
    conn.connected(NOW)
    answers = [fake_answer(q) for q in qs]
    gc.collect()  # as in measure()
    t0 = clock()
    misses = [handler.handle(q, NOW, SLOT_UDP4) for q in qs]
    t1 = clock()
    requests = [handler.upstream_query(m) for m in misses]
    t2 = clock()
    ids = [conn.send(r, question_key(r) or b"", m, NOW) for r, m in zip(requests, misses)]
    conn.data_to_send()
    t3 = clock()
    stream = b"".join(frame(qid.to_bytes(2, "big") + a[2:]) for qid, a in zip(ids, answers))
    reads = [stream[i:i + 4096] for i in range(0, len(stream), 4096)]
    t4 = clock()
    events = [ev for read in reads for ev in conn.receive_data(read, NOW)]
    t5 = clock()
    answered = [(e.token, e.wire) for e in events if isinstance(e, AnswerReceived)]
    if len(answered) != len(qs):
        raise RuntimeError(f"the upstream connection did not match every answer: {events[:3]!r}")
    t5a = clock()
    outcomes = [handler.absorb(m, a, NOW) for m, a in answered]
    t6 = clock()
    for (m, _), o in zip(answered, outcomes):
        handler.reply(m, o, NOW)
    t7 = clock()
    spans = (("handle", t1 - t0), ("upstream_query", t2 - t1), ("send", t3 - t2), ("receive", t5 - t4),
             ("absorb", t6 - t5a), ("reply", t7 - t6))
    return {name: ns / len(qs) / 1000 for name, ns in spans}


def _agent_gc() -> None:
    """The collector's thresholds the agent runs with."""
    try:
        from nodecache.aio.agent import GC_THRESHOLDS
    except ImportError:  # an agent without its own thresholds runs with Python's
        return
    gc.set_threshold(*GC_THRESHOLDS)


def _warm_up(text: str) -> None:
    """One small untimed round: the first miss and hit import and build what they use lazily."""
    handler = build_handler(text)
    for q in queries("w", 200):
        handler.reply(miss := handler.handle(q, NOW, SLOT_UDP4), handler.absorb(miss, fake_answer(q), NOW), NOW)
        handler.handle(q, NOW, SLOT_UDP4)


def _check(handler: Any, qs: list[bytes], answers: list[bytes], miss_type: type) -> None:
    """The rounds measured what they claim: misses became cached answers, hits answer them."""
    fresh = build_handler(corefile_text())
    first = fresh.handle(qs[0], NOW, SLOT_UDP4)
    if not isinstance(first, miss_type):
        raise RuntimeError(f"a new name was not a miss: {first!r}")
    for q, a in ((qs[0], answers[0]), (qs[-1], answers[-1])):
        got = handler.handle(q, NOW, SLOT_UDP4)
        if not isinstance(got, bytes) or got[:2] != q[:2] or got[6:8] != b"\0\1" or got[-4:] != a[-4:]:
            raise RuntimeError(f"a stored name was not answered from the cache: {got!r}")


#: Names stored for ``--memory``: as many as bench/'s memory figure asks (10,000 names).
MEMORY_NAMES = 10_000


def entry_bytes(names: int = MEMORY_NAMES, top: int = 8) -> dict[str, Any]:
    """Bytes held per stored name (tracemalloc, after a collection), and the source
    lines holding the most of them. The success cache is enlarged to hold every name."""
    import tracemalloc

    text = corefile_text()
    if "success 9984 30" not in text:
        raise RuntimeError("the Corefile's cache no longer reads 'success 9984 30'")
    handler = build_handler(text.replace("success 9984 30", f"success {names * 2} 30", 1))
    qs = queries("m", names)
    answers = [fake_answer(q) for q in qs]
    _warm_up(text)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for q, a in zip(qs, answers):
        miss = handler.handle(q, NOW, SLOT_UDP4)
        handler.reply(miss, handler.absorb(miss, a, NOW), NOW)
    del miss, q, a
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    held = [s for s in after.compare_to(before, "lineno") if s.size_diff > 0]
    total = sum(s.size_diff for s in held)
    if len(handler.index) != names:
        raise RuntimeError(f"{len(handler.index)} names stored, not {names}")
    return {"names": names, "bytes_per_name": total / names,
            "by_line": [(_where(s.traceback[0]), s.size_diff / names) for s in held[:top]]}


def _where(frame: Any) -> str:
    """A source line, relative to the checkout it is in."""
    path = Path(frame.filename)
    for parent in path.parents:
        if (parent / "nodecache" / "__init__.py").is_file():
            return f"{path.relative_to(parent)}:{frame.lineno}"
    return f"{path}:{frame.lineno}"


def render_memory(r: dict[str, Any]) -> str:
    lines = [f"memory of the core: {r['bytes_per_name']:.0f} bytes per stored name"
             f" ({r['names']:,} names, tracemalloc), of which:"]
    lines += [f"  {size:7.1f}  {where}" for where, size in r["by_line"]]
    return "\n".join(lines)


def render(r: dict[str, Any]) -> str:
    st = r["miss_stages_us"]
    lines = [f"core alone ({r['names']:,} names per round, {r['hit']['rounds']} rounds, Python {r['python']}, "
             f"nodecache {r.get('build', 'pure Python')}):",
             f"  hit   {r['hit']['best_us']:7.2f} us/op best, {r['hit']['median_us']:7.2f} median",
             f"  miss  {r['miss']['best_us']:7.2f} us/op best, {r['miss']['median_us']:7.2f} median"
             " (handle + upstream_query + absorb + reply, fake upstream answer)"]
    if "hit_plugins" in r:
        p = r["hit_plugins"]
        lines.append(f"  hit with dns64, rewrite, template, hosts in front of the cache"
                     f" {p['best_us']:7.2f} us/op best, {p['median_us']:7.2f} median")
    if st:
        lines.append("  miss by stage: " + ", ".join(f"{k} {v:.2f}" for k, v in st.items())
                     + f" us; {sum(st.values()):.2f} us in all")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodebench.core", description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=NAMES, help=f"names per round (default {NAMES})")
    ap.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds (default {ROUNDS})")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--tree", type=Path, help="measure the nodecache package of this checkout instead"
                    " (same Python; run twice to compare two trees)")
    ap.add_argument("--memory", action="store_true", help=f"bytes per stored name ({MEMORY_NAMES:,} names)")
    ap.add_argument("--profile", action="store_true", help="run once under cProfile and print the top functions")
    a = ap.parse_args(argv)
    if not 1 <= a.names <= 9000 or not 1 <= a.rounds <= 10_000:
        ap.error("--names must be 1..9000 (the cache holds 9984) and --rounds 1..10000")
    if a.tree is not None:
        if not (a.tree / "nodecache" / "__init__.py").is_file():
            ap.error(f"--tree {a.tree}: no nodecache package there")
        sys.path.insert(0, str(a.tree.resolve()))
    if a.memory:
        m = entry_bytes()
        print(json.dumps(m, indent=2) if a.json else render_memory(m))
        return 0
    if a.profile:
        import cProfile
        import pstats

        _warm_up(corefile_text())
        run: Callable[[], Any] = lambda: measure(a.names, 1, stages=False)
        prof = cProfile.Profile()
        prof.runcall(run)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return 0
    r = measure(a.names, a.rounds)
    r["memory"] = entry_bytes()
    print(json.dumps(r, indent=2) if a.json else render(r) + "\n" + render_memory(r["memory"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
