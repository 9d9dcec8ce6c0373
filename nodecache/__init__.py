"""nodecache: a node-local DNS cache agent for Kubernetes."""

__version__ = "0.1.0"
