"""The pidfile of a rollout: two agents with the same PID share one path."""
from __future__ import annotations

import os
import pathlib

from nodecache.aio.pidfile import PidFile


def test_written_whole_and_removed_when_ours(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "node-cache.pid"
    pidfile = PidFile(str(path))
    pidfile.write()
    assert path.read_text() == f"{os.getpid()}\n"
    assert os.listdir(tmp_path) == ["node-cache.pid"]  # no partial file left
    assert pidfile.remove() is True
    assert not path.exists()
    assert pidfile.remove() is False


def test_same_pid_in_another_pod_is_not_ours(tmp_path: pathlib.Path) -> None:
    # Both agents are PID 6 in their own PID namespaces: here, both are this process.
    path = tmp_path / "node-cache.pid"
    old, new = PidFile(str(path)), PidFile(str(path))
    old.write()
    new.write()
    assert path.read_text() == f"{os.getpid()}\n"
    assert not old.owned() and new.owned()
    assert old.remove() is False
    assert path.exists()
    assert new.remove() is True


def test_a_file_written_in_place_by_someone_else_is_left(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "node-cache.pid"
    pidfile = PidFile(str(path))
    pidfile.write()
    path.unlink()
    path.write_text(f"{os.getpid()}\n")  # a new file, same content
    assert pidfile.remove() is False and path.exists()
