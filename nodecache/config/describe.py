"""A Config -> the human-readable effective configuration (``check-config``)."""
from __future__ import annotations

from nodecache.config.settings import Config


def describe(config: Config) -> str:
    """The effective configuration, one listener or setting per line."""
    return repr(config)
