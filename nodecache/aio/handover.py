"""The agent's two moves with the serving lock (:class:`ServingLock` rules 3 and 2).

A starting agent waits for its shared lock (:func:`take_shared`); an exiting
one spends its lameduck looking for a successor (:func:`successor_serving`),
which decides whether it tears the rules down. docs/upgrades.md has the story.
"""
from __future__ import annotations

import asyncio
import logging

from nodecache.aio.servinglock import ServingLock
from nodecache.errors import NodecacheError

log = logging.getLogger(__name__)

#: How often the old agent looks for a successor during lameduck, s.
SUCCESSOR_POLL = 0.1
#: How long a starting agent waits for an exiting one to finish its teardown, s.
SERVING_LOCK_WAIT = 30.0


async def take_shared(lock: ServingLock) -> bool:
    """Hold ``lock`` shared, waiting (bounded) while an exiting agent tears down (rule 3).

    :returns: Whether we waited: the exiting agent may then have removed the
        interface or its addresses.
    :raises NodecacheError: Someone held it exclusively for SERVING_LOCK_WAIT.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SERVING_LOCK_WAIT
    waited = False
    while not lock.try_shared():
        if loop.time() >= deadline:
            raise NodecacheError(
                f"another agent has held {lock.path} exclusively for "
                f"{SERVING_LOCK_WAIT:.0f}s (a teardown that does not finish)")
        if not waited:
            log.info("waiting for the exiting agent to finish its teardown (%s)", lock.path)
            waited = True
        await asyncio.sleep(SUCCESSOR_POLL)
    return waited


async def successor_serving(lock: ServingLock | None, lameduck: float) -> bool:
    """Lameduck, cut short once another agent holds ``lock``.

    Returns whether a successor serves; if not, we hold the lock exclusively
    (rule 2) until we exit. Without a lock there is never a successor.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + lameduck
    if lock is None:
        if lameduck:
            await asyncio.sleep(lameduck)
        return False
    while True:
        try:
            if not lock.try_exclusive():
                return True
        except OSError as exc:
            log.warning("serving lock %s: %s; acting as the last agent", lock.path, exc)
            return False
        left = deadline - loop.time()
        if left <= 0:
            return False
        lock.try_shared()  # back to shared while we wait: a successor may start
        await asyncio.sleep(min(SUCCESSOR_POLL, left))
