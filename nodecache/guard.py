"""The guard: a container beside the agent that removes the rules when no agent serves.

Why: the NOTRACK rules steer the node's DNS to the agent's listeners. When the
whole agent container dies (an OOM kill, SIGKILL, a crash of the supervisor
too) nothing in it can remove them, and until the kubelet restarts it pods
lose the kube-dns ClusterIP (in iptables mode the rules bypass kube-proxy's
DNAT). The guard runs in its own container of the same pod, with its own
memory limit and no DNS state, and watches the serving lock
(:class:`~nodecache.aio.servinglock.ServingLock`): every serving agent holds
it shared, and the kernel drops a dead process's lock at once.

The loop:

1. wait, blocking, for the lock exclusively: granted the moment the last agent
   is gone, or at once when none serves yet (a pending exclusive request does
   not hold off new shared holders, so rollouts are not disturbed);
2. remove every nodecache rule from every backend; the ClusterIP falls back to
   kube-proxy's DNAT (the local IPs stay on the interface for the next agent);
3. let go of the lock and wait until an agent holds it again (it puts the
   rules back once its listeners are bound), then go to 1.

An agent's own exit (SIGTERM, teardown) holds the lock exclusively while it
tears down, so the guard then only finds nothing left to remove.
"""
from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Sequence

from nodecache.aio.servinglock import ServingLock
from nodecache.errors import HostNetworkError

log = logging.getLogger("nodecache.guard")

#: How often the guard looks whether an agent serves again, s.
POLL_INTERVAL = 0.2


def remove_all_rules(lock_wait: int = 5) -> int:
    """Remove every nodecache-tagged rule from every firewall backend present."""
    from nodecache.hostnet.firewall import all_backends  # noqa: PLC0415
    removed = 0
    for fw in all_backends(lock_wait):
        try:
            removed += fw.remove_tagged()
        except HostNetworkError as exc:
            log.error("removing the rules from %s: %s", fw.name, exc)
    return removed


def _wait_for_agent(lock: ServingLock, interval: float) -> None:
    """Return once some agent holds the lock (we then hold nothing)."""
    while lock.try_exclusive():
        lock.release()
        time.sleep(interval)
    lock.release()


def run(path: str, *, interval: float = POLL_INTERVAL, rounds: int | None = None) -> None:
    """Guard the node's rules against agents dying without teardown.

    :param path: the serving lock every agent of the node holds.
    :param rounds: stop after this many removals (tests); forever by default.
    """
    lock = ServingLock(path)
    log.info("guarding %s: the rules go when no agent holds it", path)
    done = 0
    while True:
        lock.wait_exclusive()  # at once if no agent serves (leftovers of a dead one go)
        started = time.monotonic()
        n = remove_all_rules()
        log.warning("no agent serves: removed %d rules in %.0f ms; DNS to the kube-dns "
                    "ClusterIP goes to the cluster DNS until an agent serves again",
                    n, (time.monotonic() - started) * 1000)
        lock.release()
        done += 1
        if rounds is not None and done >= rounds:
            return
        _wait_for_agent(lock, interval)
        log.info("an agent serves again")


def main(argv: Sequence[str]) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run(argv[0])
    return 0
