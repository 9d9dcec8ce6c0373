"""``bench/run --missrate`` / ``--hitrate`` options: which caches run, each once."""
from __future__ import annotations

import sys

import pytest

from tests.kit import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from nodebench.missrate import build_header, checked, parser  # noqa: E402
from nodecache.build import describe  # noqa: E402

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


def test_the_header_says_which_build_each_nodecache_ran() -> None:
    ap = parser("missrate", "doc", "nodecache,nodecache-pure,unbound")
    header = build_header(checked(ap, ap.parse_args([]))).splitlines()
    assert [line.split(":")[0] for line in header] == ["nodecache", "nodecache-pure"]
    assert header[0] == f"nodecache: {describe()}"
    assert header[1].startswith("nodecache-pure: pure Python")
