"""The agent hands freed C-heap pages back to the kernel after its collections (glibc)."""
from __future__ import annotations

import gc
from pathlib import Path

from nodecache.aio.agent import collect_garbage


def _anonymous_kb() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1])
    raise AssertionError("no Anonymous line in smaps_rollup")


def test_collection_returns_freed_heap_pages() -> None:
    # 40 MB of 4 kB strings (C heap, below malloc's mmap threshold), then one small
    # block above them: freeing the strings leaves a hole malloc does not trim by itself.
    blocks = [bytes(4096) + bytes([i & 255]) for i in range(10_000)]
    lid = [bytes(4096) for _ in range(4)]
    del blocks
    before = _anonymous_kb()
    try:
        collect_garbage(False)
    finally:
        gc.unfreeze()  # the test process's objects stay collectable
    after = _anonymous_kb()
    assert before - after > 20_000, (before, after)
    assert lid  # still held: the hole is below it
