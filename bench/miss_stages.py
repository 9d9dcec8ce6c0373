"""The miss path's core stages alone: bytes in, bytes out, a fake clock, no sockets.

Run it from the repository root (``.venv/bin/python -m bench.miss_stages``):
it pushes N never-seen names through ``QueryHandler`` and a core
``UpstreamConnection`` the way the agent does, and prints microseconds per
miss for each stage and in all. The remainder of a miss's CPU (measured with
dnsperf) is the event loop, the sockets and the aio glue.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import dns.message
import dns.rrset

from nodecache.core.handler import Miss
from nodecache.core.upstream import AnswerReceived, IdSource, UpstreamConnection, frame, question_key
from tests.test_core_handler import make_handler

COREFILE = """cluster.local:53 {
    cache {
        success 9984 30
        denial 9984 5
    }
    forward . 127.0.0.1 {
        force_tcp
    }
}
"""


def _answers(names: list[str]) -> list[bytes]:
    out = []
    for name in names:
        query = dns.message.make_query(name, "A", use_edns=0)
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(name, 30, "IN", "A", "10.0.0.1"))
        out.append(reply.to_wire())
    return out


def run(n: int) -> dict[str, float]:
    names = [f"svc{i}.ns{i % 50}.svc.cluster.local." for i in range(n)]
    queries = [dns.message.make_query(name, "A").to_wire() for name in names]
    answers = _answers(names)
    handler = make_handler(COREFILE)
    conn = UpstreamConnection(now=0.0, max_in_flight=1 << 16, max_age=0, expire=10, ids=IdSource())
    conn.connected(0.0)
    now = 1000.0
    stages: dict[str, float] = dict.fromkeys(
        ("handle", "upstream_query", "send", "receive", "absorb", "reply"), 0.0)
    clock: Callable[[], float] = time.perf_counter
    for query, answer in zip(queries, answers):
        t0 = clock()
        miss = handler.handle(query, now, 2)
        t1 = clock()
        assert isinstance(miss, Miss)
        request = handler.upstream_query(miss)
        t2 = clock()
        qid = conn.send(request, question_key(request) or b"", miss, now)
        conn.data_to_send()
        t3 = clock()
        events = conn.receive_data(frame(qid.to_bytes(2, "big") + answer[2:]), now)
        t4 = clock()
        (event,) = events
        assert type(event) is AnswerReceived
        outcome = handler.absorb(miss, event.wire, now)
        t5 = clock()
        handler.reply(miss, outcome, now)
        t6 = clock()
        for name, a, b in (("handle", t0, t1), ("upstream_query", t1, t2), ("send", t2, t3),
                           ("receive", t3, t4), ("absorb", t4, t5), ("reply", t5, t6)):
            stages[name] += b - a
    return {name: total / n * 1e6 for name, total in stages.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="names (default 20000)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    best: dict[str, float] = {}
    for _ in range(args.runs):
        for name, us in run(args.n).items():
            best[name] = min(best.get(name, us), us)
    for name, us in best.items():
        print(f"{name:16s} {us:6.2f} us")
    print(f"{'core total':16s} {sum(best.values()):6.2f} us per miss")


if __name__ == "__main__":
    main()
