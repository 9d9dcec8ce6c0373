"""What a directive parser may know beyond its own line."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from nodecache.config.includes import read_text_file


@dataclass
class BlockContext:
    """The server block a directive is in, and the load it is part of."""

    #: The zones of the block (normalised), for options whose zones default to them.
    zones: tuple[str, ...]
    #: Reads a file a directive refers to (``forward . /etc/resolv.conf``).
    read_file: Callable[[str], str] = read_text_file
    #: Every file read so far; directives append the ones they read.
    files: list[str] = field(default_factory=list)
