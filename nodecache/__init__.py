"""nodecache: a node-local DNS cache agent for Kubernetes."""
import os as _os

__version__ = "0.1.0"

# Before any submodule is imported: compiled modules must not be loaded first.
if _os.environ.get("NODECACHE_PURE", "") not in ("", "0"):
    from nodecache.build import prefer_sources as _prefer_sources
    _prefer_sources()
