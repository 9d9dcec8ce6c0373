"""The guard: a container beside the agent that keeps DNS answered when no agent serves.

Why: the NOTRACK rules steer the node's DNS to the agent's listeners. When the
whole agent container dies (an OOM kill, SIGKILL, a crash of the supervisor
too) nothing in it can remove them, and until the kubelet restarts it pods
lose the kube-dns ClusterIP (in iptables mode the rules bypass kube-proxy's
DNAT) and the link-local IP (nothing listens). The guard runs in its own
container of the same pod, with its own memory limit and no DNS state, and
watches the serving lock (:class:`~nodecache.aio.servinglock.ServingLock`):
every serving agent holds it shared, and the kernel drops a dead process's
lock at once.

The loop:

1. wait, blocking, for the lock exclusively: granted the moment the last agent
   is gone, or at once when none serves yet (a pending exclusive request does
   not hold off new shared holders, so rollouts are not disturbed);
2. install the fallback for the link-local IPs (``--localip``;
   :mod:`nodecache.hostnet.fallback`), inert while the NOTRACK rules are there;
3. remove every nodecache NOTRACK/ACCEPT rule from every backend: the
   ClusterIP falls back to kube-proxy's DNAT and the link-local IPs to the
   fallback (the local IPs stay on the interface for the next agent);
4. let go of the lock and wait until an agent holds it again, then until its
   NOTRACK rules are back (they override the fallback, so DNS never goes
   unanswered in between), remove the fallback and go to 1.

An agent's own exit (SIGTERM, teardown) holds the lock exclusively while it
tears down, so the guard then only finds nothing left to remove. The guard's
own SIGTERM leaves a fallback in place: it sends DNS to the cluster DNS, never
nowhere, and a second guard of a rollout may be relying on the same rules.
"""
from __future__ import annotations

import logging
import signal
import sys
import time

from nodecache.aio.servinglock import ServingLock
from nodecache.errors import HostNetworkError
from nodecache.hostnet.fallback import Fallback

log = logging.getLogger("nodecache.guard")

#: How often the guard looks whether an agent serves again, s.
POLL_INTERVAL = 0.2
#: Longest wait for a serving agent's NOTRACK rules before the fallback goes anyway, s
#: (an agent run with -setupiptables=false installs none; one that does, within 1 s).
HANDBACK_WAIT = 10.0


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


def _hand_back(fallback: Fallback, interval: float) -> None:
    """Remove the fallback once the agent's NOTRACK rules are in (or after HANDBACK_WAIT)."""
    deadline = time.monotonic() + HANDBACK_WAIT
    while not fallback.agent_rules_present() and time.monotonic() < deadline:
        time.sleep(interval)
    try:
        n = fallback.remove()
    except HostNetworkError as exc:
        log.error("removing the fallback: %s", exc)
        return
    log.info("an agent serves again: removed the %d fallback rules", n)


def run(path: str, *, fallback: Fallback | None = None, interval: float = POLL_INTERVAL,
        rounds: int | None = None) -> None:
    """Guard the node's DNS against agents dying without teardown.

    :param path: the serving lock every agent of the node holds.
    :param fallback: sends the link-local IPs to the cluster DNS while no agent serves.
    :param rounds: stop after this many removals (tests); forever by default.
    """
    lock = ServingLock(path)
    log.info("guarding %s: the rules go when no agent holds it", path)
    done = 0
    while True:
        lock.wait_exclusive()  # at once if no agent serves (leftovers of a dead one go)
        started = time.monotonic()
        if fallback is not None:
            try:
                fallback.install()  # first: it takes over the moment the NOTRACK rules go
            except HostNetworkError as exc:
                log.error("installing the fallback: %s", exc)
        n = remove_all_rules()
        log.warning("no agent serves: removed %d rules in %.0f ms; DNS to the kube-dns "
                    "ClusterIP%s goes to the cluster DNS until an agent serves again",
                    n, (time.monotonic() - started) * 1000,
                    f" and {','.join(fallback.local_ips)}" if fallback else "")
        lock.release()
        done += 1
        if rounds is not None and done >= rounds:
            return
        _wait_for_agent(lock, interval)
        log.info("an agent serves again")
        if fallback is not None:
            _hand_back(fallback, interval)


def main(path: str, fallback: Fallback | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run(path, fallback=fallback)
    return 0
