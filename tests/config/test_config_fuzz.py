"""Arbitrary input gives a Config or a ConfigError with a position, never anything else."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodecache.config import Config, describe, parse_text
from nodecache.errors import ConfigError
from tests.kit import DATA

NODELOCAL = (DATA / "corefiles" / "nodelocal.Corefile").read_text()
for _placeholder, _value in [("DNS__DOMAIN", "cluster.local"), ("LOCAL__DNS", "169.254.20.10"),
                             ("DNS__SERVER", "10.96.0.10"), ("CLUSTER__DNS", "10.96.0.11"),
                             ("UPSTREAM__SERVERS", "8.8.8.8")]:
    NODELOCAL = NODELOCAL.replace(f"__PILLAR__{_placeholder}__", _value)
ENV = {"X": "10.0.0.1 10.0.0.2", "E": "", "B": "{"}

# Words the parser gives meaning to, plus near misses, so that generated
# text gets past the first error often enough to reach the plugin parsers.
WORDS = [
    ".:53", ":1053", "example.org", "a,b:54", "dns://x.", "tls://.", "10.0.0.0/15", "fd00::/7",
    "{", "}", "{", "}", "(s)", "import", "s", "*", "#", '"', '"q q"', "{$X}", "{$E}", "{$B}",
    "bind", "cache", "forward", "errors", "log", "loop", "loadbalance", "prometheus",
    "health", "ready", "reload", "rewrite",
    "success", "denial", "prefetch", "serve_stale", "servfail", "disable", "keepttl",
    "except", "force_tcp", "prefer_udp", "expire", "max_fails", "health_check", "policy",
    "max_concurrent", "max_age", "tls", "no_rec", "domain", "class", "lameduck",
    "random", "verify", "immediate", "all", "{combined}", ".", "0", "5", "30", "9984",
    "-1", "1m", "6m", "500ms", "50%", "95%", "1.1.1.1", "[::1]:53", "::1", "1.1.1.1:0",
    ":8080", "localhost:9153", "ǅ", "\\", "\t",
]
SEPARATORS = [" ", " ", " ", "\n", "\n", "\r\n", ",", ""]


@pytest.fixture(scope="module")
def corefile_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    # An empty directory, so that generated imports and resolv.conf paths find nothing.
    return str(tmp_path_factory.mktemp("fuzz") / "Corefile")


def check(text: str, path: str) -> None:
    try:
        config = parse_text(text, path=path, env=ENV)
        # describe() resolves bind's interface names: its errors need a position too.
        described = describe(config)
    except ConfigError as exc:
        assert exc.file is not None and exc.line is not None and exc.column is not None, str(exc)
        assert exc.line >= 1 and exc.column >= 1
        return
    assert isinstance(config, Config) and config.blocks
    assert isinstance(described, str)


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_arbitrary_text(corefile_path: str, text: str) -> None:
    check(text, corefile_path)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(WORDS), st.sampled_from(SEPARATORS)), max_size=60))
def test_corefile_like_text(corefile_path: str, parts: list[tuple[str, str]]) -> None:
    check("".join(word + sep for word, sep in parts), corefile_path)


def test_unmutated_nodelocal_corefile_parses() -> None:
    assert len(parse_text(NODELOCAL).blocks) == 4


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(NODELOCAL)), st.integers(0, 8),
                          st.sampled_from(WORDS + SEPARATORS)), max_size=4))
def test_mutated_nodelocal_corefile(corefile_path: str, edits: list[tuple[int, int, str]]) -> None:
    text = NODELOCAL
    for at, cut, insert in edits:
        text = text[:at] + insert + text[at + cut:]
    check(text, corefile_path)
