"""nodecache.core.runtime: zones, caches and handlers from a Config, and what a reload keeps."""
from __future__ import annotations

import pytest

from nodecache.config import parse_text
from nodecache.core.cache import Entry, Kind
from nodecache.core.runtime import EntryIndex, build

BASE = "cluster.local:53 {\n cache 30\n forward . 10.0.0.1\n}\n.:53 {\n cache 30\n forward . 10.0.0.2\n}\n"


def entry(key: bytes) -> Entry:
    return Entry.from_segments(key, Kind.SUCCESS, 0, (b"",) * 4, ((b"",),), 30, 0.0)


# the new Corefile -> (cluster.local zone kept, its cache kept)
RELOADS = [
    (BASE, True, True),
    (BASE.replace("10.0.0.1", "10.0.0.9"), False, True),       # forward changed: cache stays
    (BASE.replace("cache 30\n forward . 10.0.0.1", "cache 60\n forward . 10.0.0.1"), False, False),
]


@pytest.mark.parametrize("text,zone_kept,cache_kept", RELOADS)
def test_reload_keeps_what_did_not_change(text: str, zone_kept: bool, cache_kept: bool) -> None:
    index = EntryIndex()
    zones, handlers = build(parse_text(BASE, default_port=53), (), index)
    index.track(handlers.values())
    (handler,) = set(handlers.values())        # both blocks on :53 share one handler
    cluster = zones[0]
    assert cluster.name == "cluster.local." and cluster.cache is not None
    key = b"\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"
    first = entry(key)
    cluster.cache.put(first, 0.0)
    assert first.cache is cluster.cache         # the cache holds it, no zone is named
    assert key in handler.index                 # the cache fills the handler's index

    new_zones, new_handlers = build(parse_text(text, default_port=53), zones, index)
    (new_handler,) = set(new_handlers.values())
    assert (new_zones[0] is cluster) is zone_kept
    assert (new_zones[0].cache is cluster.cache) is cache_kept
    assert (key in new_handler.index) is cache_kept  # kept entries are served at once
    if cache_kept:
        assert new_zones[0].cache.get(key).cache is new_zones[0].cache  # type: ignore[union-attr]
        assert new_handler.route(b"\x03svc\x07cluster\x05local\x00") is new_zones[0]
    # during the switch both handlers follow the caches; afterwards only the new one
    index.track([handler, new_handler])
    other = b"\x01x\x07cluster\x05local\x00\x00\x01\x00\x01"
    new_zones[0].cache.put(entry(other), 1.0)  # type: ignore[union-attr]
    assert other in new_handler.index and (other in handler.index) is cache_kept
    index.track([new_handler])
    new_zones[0].cache.remove(other)  # type: ignore[union-attr]
    assert other not in new_handler.index
