"""docs/plugins.md lists node-cache's 22 plugins and agrees with what the parser accepts."""
from __future__ import annotations

import re

from nodecache.config.plugins import NOT_IMPLEMENTED, PLUGINS
from tests.kit import ROOT

DOC = ROOT / "docs" / "plugins.md"
#: What the reference binary compiles in (its ``-plugins`` list).
NODE_CACHE_PLUGINS = {
    "bind", "bufsize", "cache", "debug", "dns64", "dnstap", "errors", "forward", "health",
    "hosts", "loadbalance", "log", "loop", "metadata", "pprof", "prometheus", "reload",
    "rewrite", "template", "timeouts", "trace", "whoami",
}


def rows() -> dict[str, str]:
    out = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"\| ([a-z0-9]+) \| ([a-z ]+) \|", line)
        if match:
            out[match.group(1)] = match.group(2)
    return out


def test_every_node_cache_plugin_has_a_row() -> None:
    assert set(rows()) == NODE_CACHE_PLUGINS


def test_rows_say_what_the_parser_does() -> None:
    for name, status in rows().items():
        if status == "yes":
            assert name in PLUGINS, name
        elif status == "no":
            assert name in NOT_IMPLEMENTED and name not in PLUGINS, name
        else:
            assert status == "not yet" and name not in PLUGINS, (name, status)
    # What we refuse by name and what we have, together, are node-cache's (plus ready).
    assert set(NOT_IMPLEMENTED) | set(PLUGINS) <= NODE_CACHE_PLUGINS | {"ready"}
