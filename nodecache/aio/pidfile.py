"""The pidfile: written once serving, removed at exit only if it is still ours.

A PID does not tell two agents apart: each pod has its own PID namespace, so
the old and the new agent of a rollout are often both PID 6 and share the
file through a hostPath. The file is therefore written to a private name and
renamed into place, giving every write a new inode, and ownership is the
inode we created, never the PID. We keep that file open: an inode in use is
never reused, so a file made after ours was replaced or deleted cannot be
taken for ours.
"""
from __future__ import annotations

import contextlib
import os


class PidFile:
    """One agent's pidfile at ``path``.

    :param path: where the PID goes (``-pidfile``).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        #: The file we wrote, held open (see the module's docstring).
        self.fd: int | None = None

    def write(self) -> None:
        """Put our PID at ``path`` atomically (readers never see a partial file)."""
        pid = os.getpid()
        partial = f"{self.path}.{pid}.{os.urandom(4).hex()}"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            os.write(fd, f"{pid}\n".encode("ascii"))
            os.replace(partial, self.path)
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise
        self.close()
        self.fd = fd

    def owned(self) -> bool:
        """Whether ``path`` is still the file we wrote (no one replaced it since)."""
        if self.fd is None:
            return False
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        ours = os.fstat(self.fd)
        return (st.st_dev, st.st_ino) == (ours.st_dev, ours.st_ino)

    def remove(self) -> bool:
        """Remove ``path`` if it is ours; True if removed.

        Call it only when no other agent can be writing the file (the caller holds
        the serving lock exclusively, or no other agent serves): between the
        check and the unlink a writer's rename would otherwise be lost.
        """
        try:
            if not self.owned():
                return False
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        finally:
            self.close()
        return True

    def close(self) -> None:
        """Let go of our file without removing it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
