"""A built-in sample cluster DNS, so the agent can be demonstrated without a cluster.

``python -m nodecache.sample --port 5354`` serves a generated ``cluster.local``
zone and its reverse zone on loopback; point the agent's forward at it.
"""
from .authority import SampleAuthority, ZoneAnswerer
from .zones import build_zones, sample_cluster

__all__ = ["SampleAuthority", "ZoneAnswerer", "build_zones", "sample_cluster"]
