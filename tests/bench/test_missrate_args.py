"""``bench/run --missrate`` / ``--hitrate`` options: which caches run, each once."""
from __future__ import annotations

import sys

import pytest

from tests.kit import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from nodebench.missrate import checked, parser  # noqa: E402

CASES = [
    (["--caches", "nodecache,unbound"], ["nodecache", "unbound"]),
    (["--before", "old"], ["nodecache", "node-cache", "nodecache-before"]),
    # named and implied by --before: once (each run of a cache has one folder)
    (["--caches", "nodecache-before,nodecache", "--before", "old"], ["nodecache-before", "nodecache"]),
    (["--caches", "unbound,unbound,,nodecache"], ["unbound", "nodecache"]),
]


@pytest.mark.parametrize("argv,caches", CASES)
def test_each_cache_runs_once(argv: list[str], caches: list[str]) -> None:
    ap = parser("missrate", "doc", "nodecache,node-cache")
    assert checked(ap, ap.parse_args(argv)).caches == caches


@pytest.mark.parametrize("argv,message", [
    (["--caches", "nodecache-before"], "nodecache-before needs --before"),
    (["--caches", "bind9"], "unknown cache(s): bind9"),
])
def test_bad_cache_lists_are_refused(argv: list[str], message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    ap = parser("missrate", "doc", "nodecache")
    with pytest.raises(SystemExit):
        checked(ap, ap.parse_args(argv))
    assert message in capsys.readouterr().err
