"""The miss path's core stages alone: bytes in, bytes out, a fake clock, no sockets.

Run it from the repository root (``.venv/bin/python -m bench.miss_stages``):
it pushes N never-seen names through ``QueryHandler`` and a core
``UpstreamConnection`` the way the agent does, and prints microseconds per
miss for each stage and in all. The remainder of a miss's CPU (measured with
dnsperf) is the event loop, the sockets and the aio glue.
"""
from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Callable

import dns.message
import dns.rrset

from nodecache.aio.agent import GC_THRESHOLDS
from nodecache.config import parse_text
from nodecache.core.handler import Miss
from nodecache.core.runtime import single_handler
from nodecache.core.upstream import AnswerReceived, IdSource, UpstreamConnection, frame, question_key

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
    """Each stage over all ``n`` misses in turn, timed in CPU time (not wall time:
    the machine may be shared), as microseconds per miss."""
    names = [f"svc{i}.ns{i % 50}.svc.cluster.local." for i in range(n)]
    queries = [dns.message.make_query(name, "A").to_wire() for name in names]
    answers = _answers(names)
    handler = single_handler(parse_text(COREFILE, default_port=53))
    conn = UpstreamConnection(now=0.0, max_in_flight=1 << 16, max_age=0, expire=10, ids=IdSource())
    conn.connected(0.0)
    now = 1000.0
    clock: Callable[[], float] = time.process_time
    stages: dict[str, float] = {}

    t = clock()
    misses = [handler.handle(query, now, 2) for query in queries]
    stages["handle"] = clock() - t
    assert all(isinstance(m, Miss) for m in misses)

    t = clock()
    requests = [handler.upstream_query(m) for m in misses]  # type: ignore[arg-type]
    stages["upstream_query"] = clock() - t

    t = clock()
    ids = [conn.send(r, question_key(r) or b"", m, now) for r, m in zip(requests, misses)]
    conn.data_to_send()
    stages["send"] = clock() - t

    stream = b"".join(frame(qid.to_bytes(2, "big") + a[2:]) for qid, a in zip(ids, answers))
    chunks = [stream[i:i + 4096] for i in range(0, len(stream), 4096)]
    t = clock()
    events = [ev for chunk in chunks for ev in conn.receive_data(chunk, now)]
    stages["receive"] = clock() - t
    assert len(events) == n and all(type(e) is AnswerReceived for e in events)

    t = clock()
    outcomes = [handler.absorb(e.token, e.wire, now) for e in events]  # type: ignore[arg-type]
    stages["absorb"] = clock() - t

    t = clock()
    for e, outcome in zip(events, outcomes):
        handler.reply(e.token, outcome, now)  # type: ignore[arg-type]
    stages["reply"] = clock() - t
    return {name: total / n * 1e6 for name, total in stages.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20_000, help="names (default 20000)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    gc.set_threshold(*GC_THRESHOLDS)  # as the agent runs
    best: dict[str, float] = {}
    for _ in range(args.runs):
        for name, us in run(args.n).items():
            best[name] = min(best.get(name, us), us)
    for name, us in best.items():
        print(f"{name:16s} {us:6.2f} us")
    print(f"{'core total':16s} {sum(best.values()):6.2f} us per miss")


if __name__ == "__main__":
    main()
