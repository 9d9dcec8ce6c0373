"""Python function calls per cache miss: nodecache's agent beside the miss floor, counted, not timed.

A miss's CPU in a Python server is mostly the Python it runs: each call of a
Python function costs tens of nanoseconds before it does anything. This tool
counts them. In this process it runs one server on loopback, forwarding
``cluster.local`` over TCP to a knotd of its own (as ``bench/run --missrate``
does): the real agent (``nodecache.aio.agent.Agent`` with the bench Corefile:
``cache 30`` and ``forward . knotd { force_tcp }``) or the miss floor
(:mod:`nodebench.missfloor`). After a warm-up it turns cProfile on in the
loop's thread, sends N never-seen names with dnsperf (another process, up to
100 outstanding) and turns it off. It prints, per answered miss: the Python
calls made in the loop's thread, the memory blocks still held after the run
(``sys.getallocatedblocks``: the cache entry and what it keeps), and the
functions that make most of the calls; and, from an earlier pass over other
never-seen names without the profiler, the loop thread's CPU time per miss
(``time.thread_time``: the server's Python and its system calls, not
dnsperf's or knotd's).

The profiler slows every call, so more queries wait per loop iteration than
without it and per-iteration costs (one write for many queries) weigh a
little less: compare the two servers counted the same way, never with
figures taken without the profiler.

Functions of compiled modules (setup.py) make no Python calls and are not
counted: to count every call of nodecache's code, run it with NODECACHE_PURE=1.

Run it as ``python -m nodebench.misscalls`` with ``bench`` on ``PYTHONPATH``
(as root: knotd); nothing leaves 127.0.0.0/8.
"""
from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import pstats
import re
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import uvloop

from .host import BenchError
from .missrate import ADDRS, KNOT, each_beside_knot, write_names

#: Outstanding queries, as ``bench/run --missrate`` sends them.
OUTSTANDING = 100


async def _dnsperf(host: str, port: int, names: Path) -> int:
    """Answers dnsperf got for one pass over *names* (run in a thread: the loop goes on serving)."""
    argv = ["dnsperf", "-s", host, "-p", str(port), "-d", str(names), "-n", "1",
            "-q", str(OUTSTANDING), "-t", "5"]
    out = await asyncio.get_running_loop().run_in_executor(
        None, lambda: subprocess.run(argv, capture_output=True, text=True, timeout=300).stdout)
    m = re.search(r"Queries completed:\s+(\d+)", out)
    if not m:
        raise BenchError(f"dnsperf printed no summary:\n{out[-800:]}")
    return int(m.group(1))


Address = tuple[str, int]


async def _start_nodecache(listen: Address, upstream: Address) -> Callable[[], Awaitable[None]]:
    from nodecache.aio.agent import Agent  # noqa: PLC0415
    from nodecache.config import parse_text  # noqa: PLC0415

    # bench/run --missrate's Corefile
    text = (f"cluster.local:{listen[1]} {{\n    bind {listen[0]}\n    cache 30\n"
            f"    forward . {upstream[0]}:{upstream[1]} {{\n        force_tcp\n    }}\n}}\n")
    agent = Agent(lambda: parse_text(text, path="Corefile"))
    await agent.start()
    return agent.shutdown


async def _start_floor(listen: Address, upstream: Address) -> Callable[[], Awaitable[None]]:
    from .floor import udp_socket  # noqa: PLC0415
    from .missfloor import MissFloor  # noqa: PLC0415

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: MissFloor(upstream), sock=udp_socket(*listen))

    async def stop() -> None:
        transport.close()
    return stop


STARTERS = {"nodecache": _start_nodecache, "miss-floor": _start_floor}


async def count(name: str, work: Path, names: int, dump: Path | None = None, *,
                listen: Address | None = None, upstream: Address = KNOT) -> dict[str, object]:
    """Calls, held blocks and CPU per miss of server *name* (on *listen*, default its
    ``bench/run --missrate`` address, forwarding to the knotd on *upstream*), and its top callees."""
    host, port = listen or ADDRS[name]
    stop = await STARTERS[name]((host, port), upstream)
    try:
        await _dnsperf(host, port, write_names(work / f"{name}-warm.txt", "w", 200))
        timed = write_names(work / f"{name}-timed.txt", "t", names)
        gc.collect()
        cpu = time.thread_time()
        timed_answered = await _dnsperf(host, port, timed)
        cpu = time.thread_time() - cpu
        miss = write_names(work / f"{name}-miss.txt", "m", names)
        gc.collect()
        blocks = sys.getallocatedblocks()
        profile = cProfile.Profile()
        profile.enable()
        answered = await _dnsperf(host, port, miss)
        profile.disable()
        held = sys.getallocatedblocks() - blocks
    finally:
        await stop()
    if dump is not None:
        profile.dump_stats(dump.with_name(f"{dump.name}.{name}"))
    stats = pstats.Stats(profile)
    rows = sorted(((nc, func) for func, (_cc, nc, *_rest) in stats.stats.items()),  # type: ignore[attr-defined]
                  reverse=True)
    python = [(nc, func) for nc, func in rows if func[0] != "~"]  # "~": a built-in
    return {"answered": answered, "calls": stats.total_calls / answered,  # type: ignore[attr-defined]
            "python_calls": sum(nc for nc, _ in python) / answered, "blocks": held / answered,
            "cpu_us": cpu / timed_answered * 1e6,
            "top": [(nc / answered, f"{Path(f[0]).name}:{f[1]}({f[2]})") for nc, f in python[:60]],
            "builtins": [(nc / answered, f[2]) for nc, f in rows if f[0] == "~"][:10]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodebench.misscalls", description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=4000,
                    help="never-seen names per pass (default 4000; up to 4800, the two passes stay "
                    "within the bench Corefile's cache and nothing is evicted)")
    ap.add_argument("--servers", default="nodecache,miss-floor", help="comma-separated, of "
                    + ", ".join(STARTERS))
    ap.add_argument("--top", type=int, default=25, help="functions listed per server (default 25)")
    ap.add_argument("--dump", type=Path, help="also write each server's profile to DUMP.SERVER (pstats)")
    a = ap.parse_args(argv)
    servers = [s for s in a.servers.split(",") if s]
    if set(servers) - set(STARTERS) or not 1 <= a.names <= 4800:
        ap.error(f"--servers: of {', '.join(STARTERS)}; --names: 1..4800")
    results = each_beside_knot(ap.prog, ["knotd", "dnsperf", "dig"], "ncb-misscalls-", servers,
                               lambda s, work: uvloop.run(count(s, work, a.names, a.dump)))
    if results is None:
        return 2
    for name, r in results.items():
        print(f"{name}: {r['answered']} misses answered; per miss: {r['calls']:.1f} calls, "
              f"{r['python_calls']:.1f} of them to Python functions, {r['blocks']:.1f} memory blocks held; "
              f"without the profiler, {r['cpu_us']:.1f} us of the loop thread's CPU")
        for per, func in r["top"][:a.top]:  # type: ignore[index]
            print(f"  {per:6.2f}  {func}")
        print("  built-ins: " + ", ".join(f"{f} {per:.1f}" for per, f in r["builtins"]))  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    sys.exit(main())
