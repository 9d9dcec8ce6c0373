"""A miss's cost in figures that do not move with the machine's load: instructions,
allocations, Python calls, garbage collections.

Each server (the real agent with the bench Corefile, or the miss floor) runs
in this process on loopback, forwarding ``cluster.local`` over TCP to a knotd
of its own, as :mod:`nodebench.misscalls` runs it. After a warm-up it answers
N never-seen names from dnsperf (up to 100 outstanding) and this prints, per
answered miss:

* the cyclic GC's collections per 10,000 misses by generation, the longest
  gen2 pause and the time all collections took (``gc.callbacks``);
* objects the GC tracks that are still alive after the pass, and memory
  blocks still held (``sys.getallocatedblocks``): what the cache keeps;
* the loop thread's CPU time (``time.thread_time``; this one moves with load).

With ``--callgrind`` it also runs each server under valgrind's callgrind
twice, once for N names and once for 2N, and prints the difference divided
by N: the machine instructions of a miss in the server's process (start-up,
warm-up and shutdown cancel out) and its calls to ``PyObject_Malloc`` /
``PyObject_Calloc`` (the interpreter's allocations; free lists not counted).

Run it as ``python -m nodebench.misscost`` with ``bench`` on ``PYTHONPATH``
(as root: knotd); nothing leaves 127.0.0.0/8.
"""
from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import uvloop

from .host import BenchError
from .misscalls import STARTERS, Address, _dnsperf
from .missrate import ADDRS, KNOT, each_beside_knot, write_names

#: Functions whose calls count as an allocation.
ALLOCATORS = ("PyObject_Malloc", "PyObject_Calloc")


class GcWatch:
    """Collections by generation and the time they took, while installed in ``gc.callbacks``."""

    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]
        self._start = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        gen = info["generation"]
        took = time.perf_counter() - self._start
        self.count[gen] += 1
        self.seconds[gen] += took
        self.longest[gen] = max(self.longest[gen], took)


async def measure(name: str, work: Path, names: int, tag: str = "", *,
                  listen: Address | None = None, upstream: Address = KNOT) -> dict[str, object]:
    """GC, held blocks and CPU per miss of server *name* (on *listen*, default its
    ``bench/run --missrate`` address, forwarding to the knotd on *upstream*) over
    *names* never-seen names."""
    host, port = listen or ADDRS[name]
    stop = await STARTERS[name]((host, port), upstream)
    try:
        await _dnsperf(host, port, write_names(work / f"{name}{tag}-warm.txt", "w", 200))
        pass_names = write_names(work / f"{name}{tag}-pass.txt", f"p{tag}", names)
        gc.collect()
        watch = GcWatch()
        blocks, objects = sys.getallocatedblocks(), len(gc.get_objects())
        gc.callbacks.append(watch)
        cpu = time.thread_time()
        try:
            answered = await _dnsperf(host, port, pass_names)
        finally:
            cpu = time.thread_time() - cpu
            gc.callbacks.remove(watch)
        held, tracked = sys.getallocatedblocks() - blocks, len(gc.get_objects()) - objects
        pauses = _agent_gc_pauses() if name == "nodecache" else (0.0, 0.0)
    finally:
        await stop()
    per10k = 1e4 / answered
    return {"answered": answered, "cpu_us": cpu / answered * 1e6,
            "blocks": held / answered, "tracked": tracked / answered,
            "gc_per_10k": [c * per10k for c in watch.count],
            "gc_us_per_miss": sum(watch.seconds) / answered * 1e6,
            "gen2_longest_ms": watch.longest[2] * 1e3, "gen2_count": watch.count[2],
            "agent_gc_ms": pauses[0] * 1e3, "agent_gc_thaw_ms": pauses[1] * 1e3}


def _agent_gc_pauses() -> tuple[float, float]:
    """The agent's periodic collection (``collect_garbage``) now, s: a pass over what is not
    frozen, then one that thaws and walks everything."""
    from nodecache.aio.agent import collect_garbage  # noqa: PLC0415

    took = []
    for thaw in (False, True):
        start = time.perf_counter()
        collect_garbage(thaw)
        took.append(time.perf_counter() - start)
    return took[0], took[1]


def callgrind_totals(path: Path) -> tuple[int, int]:
    """(instructions, calls to ALLOCATORS) in one callgrind output file."""
    names: dict[str, str] = {}
    instructions = allocations = 0
    callee = ""
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            instructions = max(instructions, int(line.split()[1]))
        elif line.startswith("cfn="):
            m = re.match(r"cfn=\((\d+)\)(?: (.*))?", line)
            if m:
                if m.group(2):
                    names[m.group(1)] = m.group(2)
                callee = names.get(m.group(1), "")
            else:
                callee = line[4:]
        elif line.startswith("fn="):
            m = re.match(r"fn=\((\d+)\) (.*)", line)
            if m:
                names[m.group(1)] = m.group(2)
        elif line.startswith("calls=") and callee in ALLOCATORS:
            allocations += int(line[6:].split()[0])
    return instructions, allocations


def callgrind(name: str, work: Path, names: int, keep: Path | None = None) -> dict[str, float]:
    """Instructions and allocations per miss of server *name*: runs of 2N and N names, differenced."""
    totals = []
    import nodecache  # noqa: PLC0415

    # this bench/, and the nodecache tree this process imported (maybe another's)
    tree = Path(nodecache.__file__ or "").resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).resolve().parents[1]}:{tree}"}
    for n in (names, 2 * names):
        out = work / f"callgrind.{name}.{n}"
        argv = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                sys.executable, "-m", "nodebench.misscost", "--serve", name, "--names", str(n)]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=900, cwd=work, env=env)
        m = re.search(r"answered (\d+)", done.stdout)
        if done.returncode != 0 or not m:
            raise BenchError(f"callgrind run of {name} failed:\n{done.stdout[-800:]}{done.stderr[-1500:]}")
        totals.append((int(m.group(1)), *callgrind_totals(out)))
        if keep is not None:
            shutil.copy(out, keep / out.name)
    (a1, i1, m1), (a2, i2, m2) = totals
    misses = a2 - a1
    return {"instructions": (i2 - i1) / misses, "allocations": (m2 - m1) / misses}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodebench.misscost", description=__doc__.splitlines()[0])
    ap.add_argument("--names", type=int, default=9000,
                    help="never-seen names per pass (default 9000: within the bench Corefile's cache)")
    ap.add_argument("--servers", default="nodecache,miss-floor", help="comma-separated, of "
                    + ", ".join(STARTERS))
    ap.add_argument("--callgrind", type=int, metavar="N", default=0,
                    help="also count instructions and allocations under callgrind over N and 2N names")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="copy the callgrind output files into DIR (for callgrind_annotate)")
    ap.add_argument("--serve", choices=sorted(STARTERS), help=argparse.SUPPRESS)  # one callgrind run
    a = ap.parse_args(argv)
    if a.serve:  # the parent runs knotd
        r = uvloop.run(measure(a.serve, Path.cwd(), a.names, tag=f"n{a.names}"))
        print(f"answered {r['answered']}")
        return 0
    servers = [s for s in a.servers.split(",") if s]
    if set(servers) - set(STARTERS) or not 1 <= a.names <= 9900 or not 0 <= a.callgrind <= 4900:
        ap.error(f"--servers: of {', '.join(STARTERS)}; --names: 1..9900; --callgrind: 0..4900")
    tools = ["knotd", "dnsperf", "dig"] + (["valgrind"] if a.callgrind else [])

    def run(server: str, work: Path) -> dict[str, object]:
        r = uvloop.run(measure(server, work, a.names))
        if a.callgrind:
            r.update(callgrind(server, work, a.callgrind, a.keep))
        return r

    results = each_beside_knot(ap.prog, tools, "ncb-misscost-", servers, run)
    if results is None:
        return 2
    for name, r in results.items():
        gcs = "/".join(f"{c:.1f}" for c in r["gc_per_10k"])  # type: ignore[attr-defined]
        line = (f"{name}: {r['answered']} misses; per miss: {r['cpu_us']:.1f} us loop-thread CPU, "
                f"{r['blocks']:.1f} blocks and {r['tracked']:.2f} GC-tracked objects held; "
                f"GC per 10k misses (gen0/1/2): {gcs}, {r['gc_us_per_miss']:.2f} us per miss, "
                f"{r['gen2_count']} gen2, longest {r['gen2_longest_ms']:.1f} ms")
        if name == "nodecache":
            line += (f"; the agent's periodic collection after the pass: {r['agent_gc_ms']:.1f} ms, "
                     f"{r['agent_gc_thaw_ms']:.1f} ms when it thaws")
        if "instructions" in r:
            line += f"; callgrind: {r['instructions']:.0f} instructions, {r['allocations']:.1f} allocations"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
