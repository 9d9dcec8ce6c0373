"""bench/nodebench/misscalls.py in front of a real knotd: it counts a miss's Python calls in the
real agent and in the miss floor, every name answered, and the agent makes more calls than the
floor (which makes one Python call per query)."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import pytest
import uvloop

from nodecache import build
from tests.kit import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from nodebench.host import Cleanup  # noqa: E402
from nodebench.misscalls import count  # noqa: E402
from nodebench.missrate import start_knot  # noqa: E402

#: Apart from bench/run --missrate's addresses and tests/bench/test_missfloor.py's.
KNOT = ("127.0.0.44", 5314)
NODECACHE, FLOOR = ("127.0.0.45", 5315), ("127.0.0.46", 5316)
NAMES = 300


@pytest.mark.timeout(120)
def test_misscalls_counts_the_agent_and_the_floor() -> None:
    cleanup = Cleanup()
    with tempfile.TemporaryDirectory(prefix="ncb-misscalls-") as tmp:
        try:
            start_knot(cleanup, Path(tmp), KNOT)
            ours = uvloop.run(count("nodecache", Path(tmp), NAMES, listen=NODECACHE, upstream=KNOT))
            floor = uvloop.run(count("miss-floor", Path(tmp), NAMES, listen=FLOOR, upstream=KNOT))
        finally:
            cleanup.run()
    assert ours["answered"] == floor["answered"] == NAMES
    # the floor: datagram_received per query, a flush and a read per loop iteration
    assert 1.0 <= floor["python_calls"] < 2.0, floor  # type: ignore[operator]
    top = [func for _, func in ours["top"]]  # type: ignore[attr-defined]
    if "nodecache.core.handler" in build.extensions() and not build.pure_requested():
        # cProfile sees interpreted functions only: the listener's, not the compiled core's
        assert ours["python_calls"] > floor["python_calls"], ours  # type: ignore[operator]
        assert not any(func.startswith("handler.py:") for func in top), top
    else:
        assert ours["python_calls"] > 10 * floor["python_calls"], ours  # type: ignore[operator]
        assert any(func.startswith("handler.py:") and func.endswith("(handle)") for func in top), top
    assert ours["cpu_us"] > 0 and floor["cpu_us"] > 0  # type: ignore[operator]
