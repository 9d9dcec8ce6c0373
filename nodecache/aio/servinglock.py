"""The serving lock: which agent on a node is the last one (and so tears down).

:class:`ServingLock` is the flock itself; :func:`take_shared` and
:func:`successor_serving` are the agent's two moves with it (rules 3 and 2).
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os

from nodecache.errors import NodecacheError

log = logging.getLogger(__name__)

#: How often the old agent looks for a successor during lameduck, s.
SUCCESSOR_POLL = 0.1
#: How long a starting agent waits for an exiting one to finish its teardown, s.
SERVING_LOCK_WAIT = 30.0


class ServingLock:
    """A ``flock`` on a file shared by every agent of a node (a hostPath in a pod).

    Rules of this lock:

    1. An agent holds it *shared* from the moment its listeners are bound until
       it exits; the kernel drops it when the process dies (SIGKILL, OOM), so a
       dead agent never counts.
    2. At shutdown an agent tries to turn its shared lock into an *exclusive*
       one without waiting. Failing means another agent holds it: a successor
       serves, so the rules stay. Succeeding means this is the last agent: it
       keeps the exclusive lock while it tears the rules down, and a successor
       starting meanwhile waits (rule 3) and then puts them back.
    3. A starting agent waits for its shared lock (bounded) before it installs
       the rules, so it never installs them just before someone removes them.

    Converting a flock is not atomic (flock(2)): a failed attempt in rule 2
    leaves this agent without any lock, which is what an exiting agent wants.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def _open(self) -> int:
        if self.fd is None:
            directory = os.path.dirname(self.path)
            if directory:
                os.makedirs(directory, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return self.fd

    def try_shared(self) -> bool:
        """Take (or go back to) the shared lock; False while someone holds it exclusively."""
        try:
            fcntl.flock(self._open(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def try_exclusive(self) -> bool:
        """Whether no other agent holds the lock (we then hold it exclusively)."""
        try:
            fcntl.flock(self._open(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return False
            raise
        return True

    def wait_exclusive(self) -> None:
        """Block until no one else holds the lock, then hold it exclusively (the guard)."""
        fcntl.flock(self._open(), fcntl.LOCK_EX)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the lock
            self.fd = None


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
