"""The ``errors`` plugin's log lines, consolidated per block as its rules say.

The counting is :class:`~nodecache.core.errorlog.ErrorConsolidator`'s; this
adapter keeps one per block, arms a loop timer for it and writes the lines.
"""
from __future__ import annotations

import asyncio
import logging

from nodecache.config.settings import ServerBlock
from nodecache.core.errorlog import ErrorConsolidator

log = logging.getLogger("nodecache.aio.resolver")

_LEVELS = {"error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO,
           "debug": logging.DEBUG}


class ErrorReporter:
    """Writes the ``errors`` lines of the blocks of one configuration."""

    def __init__(self) -> None:
        self._consolidators: dict[int, ErrorConsolidator] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._closed = False

    def report(self, block: ServerBlock, line: str, error: str) -> None:
        """Log ``line`` for a failure whose text is ``error``, unless a rule of the block counts it."""
        settings = block.errors
        if settings is None:
            return
        if settings.consolidate and not self._closed:
            key = id(block)
            consolidator = self._consolidators.get(key)
            if consolidator is None:
                consolidator = self._consolidators[key] = ErrorConsolidator(settings.consolidate)
            loop = asyncio.get_running_loop()
            if consolidator.record(error, loop.time()):
                self._arm(key, consolidator, loop)
                return
        log.error("%s", line)

    def _arm(self, key: int, consolidator: ErrorConsolidator,
             loop: asyncio.AbstractEventLoop) -> None:
        due = consolidator.get_timer()
        timer = self._timers.get(key)
        if due is None or (timer is not None and timer.when() <= due):
            return
        if timer is not None:
            timer.cancel()
        self._timers[key] = loop.call_at(due, self._fire, key, due)

    def _fire(self, key: int, due: float) -> None:
        self._timers.pop(key, None)
        consolidator = self._consolidators[key]
        loop = asyncio.get_running_loop()
        # call_at may run a little before ``due`` (clock resolution).
        _write(consolidator.handle_timer(max(loop.time(), due)))
        self._arm(key, consolidator, loop)

    def close(self) -> None:
        """Write what is counted now (the configuration is being replaced or the agent stops)."""
        self._closed = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for consolidator in self._consolidators.values():
            _write(consolidator.flush())


def _write(lines: list[tuple[str, str]]) -> None:
    for level, line in lines:
        log.log(_LEVELS[level], "%s", line)
