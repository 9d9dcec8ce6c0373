"""The ``timeouts`` directive -> :class:`TimeoutSettings` (TCP listeners only, as CoreDNS)."""
from __future__ import annotations

import dataclasses

from nodecache.config import values
from nodecache.config.args import Args, options
from nodecache.config.context import BlockContext
from nodecache.config.parser import Directive
from nodecache.config.settings import TimeoutSettings

#: CoreDNS's bounds for each timeout.
MIN_TIMEOUT = 1.0  # s
MAX_TIMEOUT = 24 * 3600.0  # s
_WHAT = "a DURATION from 1s to 24h"


def timeout(text: str) -> float:
    """A duration; a bare number counts as seconds (CoreDNS's durations.NewDurationFromArg)."""
    return values.duration(text + "s" if text.isascii() and text.isdigit() else text)


def parse_timeouts(line: Directive, ctx: BlockContext) -> TimeoutSettings:
    # timeouts {
    #     read DURATION
    #     write DURATION
    #     idle DURATION
    # }
    # Each between 1s and 24h; at least one; those not given keep their defaults.
    Args("timeouts", line).end()
    chosen: dict[str, float] = {}
    for name, opt in options("timeouts", line, ("read", "write", "idle")):
        chosen[name] = opt.value(_WHAT, timeout, lambda v: MIN_TIMEOUT <= v <= MAX_TIMEOUT,
                                 explain=True, check_hint="out of range")
        opt.end()
    if not chosen:
        where = line.open_brace or line.name
        raise where.error("timeouts: expected at least one of read, write or idle in a block,"
                          " found " + ("an empty block" if line.open_brace else "end of line"))
    return dataclasses.replace(TimeoutSettings(), **chosen)
