"""The reference node-cache binary (``../shared/anchors/node-cache.gz`` beside the repository).

CI has it; a test that compares with node-cache fails, never skips, without it.
"""
from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

NODE_CACHE_GZ = Path(__file__).resolve().parents[1].parent / "shared" / "anchors" / "node-cache.gz"


def node_cache(into: Path) -> Path:
    """Unpack node-cache into directory ``into``; its path."""
    if not NODE_CACHE_GZ.exists():
        pytest.fail(f"the reference binary is missing: {NODE_CACHE_GZ}")
    binary = into / "node-cache"
    with gzip.open(NODE_CACHE_GZ) as src, open(binary, "wb") as dst:
        shutil.copyfileobj(src, dst)
    binary.chmod(0o755)
    return binary


def serving_only(binary: Path, ip: str, conf: Path, metrics: str) -> list[str]:
    """node-cache's command line serving ``conf`` on ``ip`` with no host set-up at all."""
    return ["env", "KUBE_DNS_SERVICE_HOST=127.0.0.20", str(binary), "-localip", ip,
            "-conf", str(conf), "-setupinterface=false", "-setupiptables=false",
            "-skipteardown", "-metrics-listen-address", metrics,
            "-basecorefile", "/nonexistent"]
