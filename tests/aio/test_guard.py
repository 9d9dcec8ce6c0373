"""The guard's rule: remove the rules exactly when no agent holds the serving lock."""
from __future__ import annotations

import pathlib
import subprocess
import sys
import threading
import time

import pytest

from nodecache import guard

HOLD = ("import sys, time\n"
        "from nodecache.aio.servinglock import ServingLock\n"
        "lock = ServingLock(sys.argv[1]); assert lock.try_shared(); print('held', flush=True)\n"
        "time.sleep(60)\n")


def _agent(path: pathlib.Path, started: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """A stand-in agent: a process holding the serving lock shared."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                            text=True)
    started.append(proc)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_rules_go_only_when_the_last_agent_dies(tmp_path: pathlib.Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    lock = tmp_path / "serving.lock"
    removals: list[float] = []
    monkeypatch.setattr(guard, "remove_all_rules", lambda: removals.append(time.monotonic()) or 0)
    started: list[subprocess.Popen[str]] = []
    old = _agent(lock, started)
    worker = threading.Thread(target=guard.run, args=(str(lock),),
                              kwargs={"interval": 0.05, "rounds": 2}, daemon=True)
    worker.start()
    try:
        new = _agent(lock, started)  # a rollout: the new agent takes the lock beside the old one
        old.kill()
        old.wait()
        time.sleep(0.5)
        assert removals == []  # the new agent still serves
        new.kill()
        new.wait()
        killed = time.monotonic()
        deadline = killed + 10
        while not removals and time.monotonic() < deadline:
            time.sleep(0.01)
        assert removals and removals[0] - killed < 1.0
        # The guard lets go, then waits for an agent before it may remove again.
        time.sleep(0.3)
        assert len(removals) == 1
        again = _agent(lock, started)
        time.sleep(0.3)
        assert len(removals) == 1
        again.kill()
        again.wait()
        worker.join(10)
        assert len(removals) == 2 and not worker.is_alive()
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
