"""The serving lock: which agent on a node is the last one (and so tears down).

The supervisor holds one too, so this module imports no asyncio or logging
(see supervisor.py); the agent's moves with it are in handover.py.
"""
from __future__ import annotations

import errno
import fcntl
import os


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
