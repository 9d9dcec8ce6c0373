"""bench/nodebench/misscost.py: the agent's miss in front of a real knotd (every name answered,
the cache entries it keeps, no collection in the pass), and callgrind's figures read from a
real callgrind run."""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import uvloop

from tests.kit import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from nodebench.host import Cleanup  # noqa: E402
from nodebench.misscost import callgrind_totals, measure  # noqa: E402
from nodebench.missrate import start_knot  # noqa: E402

#: Apart from bench/run --missrate's addresses and the other bench tests'.
KNOT = ("127.0.0.47", 5317)
NODECACHE = ("127.0.0.48", 5318)
NAMES = 300


@pytest.mark.timeout(120)
def test_misscost_measures_the_agent() -> None:
    cleanup = Cleanup()
    with tempfile.TemporaryDirectory(prefix="ncb-misscost-") as tmp:
        try:
            start_knot(cleanup, Path(tmp), KNOT)
            r = uvloop.run(measure("nodecache", Path(tmp), NAMES, listen=NODECACHE, upstream=KNOT))
        finally:
            cleanup.run()
    assert r["answered"] == NAMES
    # each new name leaves its cache entry (one object the collector tracks) behind
    assert 0.5 <= r["tracked"] < 5, r  # type: ignore[operator]
    assert r["blocks"] > 1, r  # type: ignore[operator]
    # the agent's thresholds: 300 misses start no collection
    assert r["gc_per_10k"] == [0.0, 0.0, 0.0], r
    assert r["cpu_us"] > 0 and r["agent_gc_thaw_ms"] > 0  # type: ignore[operator]


@pytest.mark.timeout(120)
def test_callgrind_totals_counts_instructions_and_allocations() -> None:
    with tempfile.TemporaryDirectory(prefix="ncb-misscost-") as tmp:
        totals = []
        for n in (0, 20_000):
            out = Path(tmp) / f"cg.{n}"
            subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                            sys.executable, "-c", f"x = [bytearray(8) for _ in range({n})]"],
                           check=True, capture_output=True, timeout=100)
            totals.append(callgrind_totals(out))
    (i0, m0), (i1, m1) = totals
    assert i0 > 1_000_000 and i1 > i0, totals  # the interpreter's start-up, then the loop
    # each bytearray is one object allocation (its 8 bytes another): the list's 20,000 at least
    assert 20_000 <= m1 - m0 < 80_000, totals
