"""The fail-safe parent of ``nodecache run`` when it manages host networking.

Why: the NOTRACK rules steer every pod's DNS to our listeners. If the serving
process dies without its teardown (SIGKILL, an OOM kill of that process, a
crash), node-cache leaves the rules pointing at nothing and DNS on the node is
black-holed until the container restarts (NODELOCAL.md section 5, row 3).
Here the rules fail open instead:

* ``nodecache run`` validates its arguments and configuration, then replaces
  itself (``execv``, same PID, so it stays the container's PID 1) with this
  module, run without ``site`` (``python -I -S``): a parent that imports only
  ``os``, ``select``, ``time`` and the signal and lock calls (no asyncio, no
  click, no configuration code, not even ``json``, ``re`` or ``enum``), and
  starts the serving *worker*, ``python -m nodecache.serve ... --worker``;
* the worker tells the parent, over a pipe, which rules it is about to
  install and when it is serving (:class:`WorkerChannel`, one line each);
* if the worker dies by a signal or with a non-zero exit, the parent at once
  removes those rules (only the rules: the link and the local IPs stay, so a
  new worker can bind them) and starts a new worker after a backoff; the new
  worker puts the rules back as soon as its listeners are bound;
* SIGTERM and SIGINT are passed to the worker, which shuts down as usual
  (lameduck, teardown, close); the parent then exits with the worker's status.
  SIGUSR1 (reload) is passed on once the worker is serving.

The rules are removed by a short-lived helper process
(``python -m nodecache.supervisor --remove-rules JSON``), so the firewall code
and its imports never live in the parent. A worker that fails before it ever
served, with an exit code (a bad Corefile, a port in use, a forwarding loop),
is not restarted: the parent exits with the same code and kubelet's restart
policy takes over, as with node-cache.

If the parent itself is killed, the worker gets SIGTERM from the kernel
(``PR_SET_PDEATHSIG``) and tears down as usual. If both die at once (the whole
container is OOM-killed), kubelet restarts the container and the new worker's
``HostNetwork.adopt_leftovers`` finds the rules; see docs/upgrades.md.
"""
from __future__ import annotations

import os
import select
import sys
import time

from nodecache.aio.servinglock import ServingLock

#: ``typing.TYPE_CHECKING`` without importing ``typing`` (about 300 kB); mypy takes it as True.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Sequence
else:
    # The C module under ``signal``: the same calls and constants without ``signal.Signals``,
    # whose ``enum`` (with ``re``, which ``json`` needs) is about 1 MB of the parent's memory.
    import _signal as signal


class _Log:
    """``logging``'s interface for the few calls made here, without importing it in the
    parent (about 1 MB of its memory: logging brings threading, traceback, tokenize...).

    Where ``logging`` is loaded already (the worker, the rule-removal helper), records
    go through it; otherwise lines are written to stderr in the same format as
    ``logging.basicConfig`` with :data:`LOG_FORMAT`.
    """

    def __init__(self, name: str) -> None:
        self.name = name

    def _emit(self, level: str, msg: str, args: tuple[object, ...]) -> None:
        logging = sys.modules.get("logging")
        if logging is not None:
            logging.getLogger(self.name).log(getattr(logging, level), msg, *args)
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        sys.stderr.write(f"{stamp},{int(now % 1 * 1000):03d} {level} {self.name}: {msg % args}\n")
        sys.stderr.flush()

    def info(self, msg: str, *args: object) -> None:
        self._emit("INFO", msg, args)

    def warning(self, msg: str, *args: object) -> None:
        self._emit("WARNING", msg, args)

    def error(self, msg: str, *args: object) -> None:
        self._emit("ERROR", msg, args)


#: The agent's log line format (``nodecache.cli``).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
log = _Log("nodecache.supervisor")

#: Environment variable naming the worker's end of the pipe to the parent.
ENV_FD = "NODECACHE_SUPERVISOR_FD"
#: Environment variable holding the parent's PID (the worker checks it is still there).
ENV_PARENT = "NODECACHE_SUPERVISOR_PID"
#: The descriptor number of that pipe in the worker.
WORKER_FD = 3
#: First delay before restarting a dead worker, s; doubled per failure.
BACKOFF_INITIAL = 0.1
#: Longest delay between restarts, s (kubelet's CrashLoopBackOff stops at 300 s).
BACKOFF_MAX = 30.0
#: A worker that served this long before dying restarts after BACKOFF_INITIAL again, s.
BACKOFF_RESET = 60.0
#: Upper bound for the rule-removal helper, s (iptables waits up to 5 s per lock attempt).
REMOVE_TIMEOUT = 30.0
#: Signals passed on to the worker.
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
#: Longest line accepted from the worker, bytes.
MAX_LINE = 65536
#: Signal names by number, for the log (``signal.Signals`` without ``enum``).
SIGNAL_NAMES = {getattr(signal, name): name for name in dir(signal)
                if name.startswith("SIG") and not name.startswith("SIG_") and name not in
                ("SIGCLD", "SIGIOT", "SIGPOLL", "SIGRTMIN", "SIGRTMAX")}


def exit_status(status: int) -> int:
    """A ``waitpid`` status as a shell exit code (128 + N for death by signal N)."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 1


def describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        return f"killed by {SIGNAL_NAMES.get(sig, sig)}"
    return f"exited {exit_status(status)}"


# -- the worker's side -----------------------------------------------------------

class WorkerChannel:
    """The worker's end of the pipe: what to remove if it dies, and when it serves.

    Lines of ASCII, a word and its value, so the parent needs no JSON decoder:

    * ``rules JSON``: the rules the worker is about to install, as the rule-removal
      helper takes them (the parent only passes the text on);
    * ``lock HEX``: the serving lock's path (its UTF-8 bytes in hex: any path fits a line);
    * ``ready NAME``: the worker serves; NAME is the firewall backend ``auto`` resolved
      to, ``-`` without rules.

    :param fd: the write end of the pipe (:data:`WORKER_FD` in a supervised worker).
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def from_env(cls) -> WorkerChannel | None:
        """The channel of a worker started by :class:`Supervisor`, or None.

        Also asks the kernel to send us SIGTERM when the parent dies, so an
        orphaned worker shuts down (and tears down) instead of serving on alone.
        """
        value = os.environ.pop(ENV_FD, None)
        parent = os.environ.pop(ENV_PARENT, None)
        if value is None:
            return None
        fd = int(value)
        os.set_inheritable(fd, False)  # iptables and friends must not hold it open
        _die_with_parent(int(parent) if parent else None)
        return cls(fd)

    def _send(self, word: str, value: str) -> None:
        data = f"{word} {value}\n".encode()
        try:
            os.write(self.fd, data)  # far below PIPE_BUF: one atomic write
        except OSError as exc:
            log.warning("cannot reach the supervisor: %s", exc)

    def send_rules(self, *, local_ips: Sequence[str], dns_port: int, health_port: int,
                   firewall: str, lock_wait: int, setup_rules: bool,
                   serving_lock: str | None = None) -> None:
        """Say which rules this worker installs (sent before it installs any)."""
        import json  # noqa: PLC0415 - the worker's side only
        if serving_lock:
            self._send("lock", serving_lock.encode().hex())
        if setup_rules:
            self._send("rules", json.dumps({"local_ips": list(local_ips), "dns_port": dns_port,
                                            "health_port": health_port, "firewall": firewall,
                                            "lock_wait": lock_wait}, separators=(",", ":")))

    def send_ready(self, firewall: str) -> None:
        """Say the worker is serving, and which firewall backend ``auto`` resolved to."""
        self._send("ready", firewall or "-")


def _another_agent_serves(path: str | None) -> bool:
    """Whether some other agent holds the serving lock (the dead worker's went with it)."""
    if not path:
        return False
    lock = ServingLock(path)
    try:
        return not lock.try_exclusive()
    except OSError:
        return False
    finally:
        lock.release()


def _die_with_parent(parent: int | None) -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGTERM)``; SIGTERM ourselves if the parent is already gone."""
    try:
        import ctypes  # noqa: PLC0415 - the worker only
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        log.warning("cannot ask to be stopped with the supervisor (prctl)")
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


# -- the parent ------------------------------------------------------------------

class Supervisor:
    """Start the worker, watch it, remove its rules and restart it if it dies.

    :param worker_argv: the worker's command line (``python -m nodecache run ... --worker``).
    :param backoff_initial: first restart delay, s.
    :param backoff_max: longest restart delay, s.
    :param backoff_reset: a worker that served this long restarts after the first delay again, s.
    """

    def __init__(self, worker_argv: Sequence[str], *, backoff_initial: float = BACKOFF_INITIAL,
                 backoff_max: float = BACKOFF_MAX, backoff_reset: float = BACKOFF_RESET) -> None:
        self.worker_argv = list(worker_argv)
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.backoff_reset = backoff_reset
        #: What the current (or last) worker said it installs (the helper's JSON), or None.
        self.rules: str | None = None
        #: The firewall backend the worker's ``auto`` resolved to, once it serves.
        self.firewall: str | None = None
        #: The serving lock the worker holds, or None.
        self.serving_lock: str | None = None
        #: Workers started so far.
        self.starts = 0
        self.stopping = False
        self._pending: list[int] = []
        self._wake_r, self._wake_w = os.pipe()
        self._worker: int | None = None
        self._ready = False

    # -- signals

    def _on_signal(self, signum: int, frame: object) -> None:
        self._pending.append(signum)

    def _install_signals(self) -> None:
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in FORWARDED:
            signal.signal(sig, self._on_signal)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as node-cache (caddy)

    def _handle_signals(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass
        pending, self._pending = self._pending, []
        for sig in pending:
            if sig in (signal.SIGTERM, signal.SIGINT):
                if not self.stopping:
                    log.info("%s: stopping the worker", SIGNAL_NAMES[sig])
                self.stopping = True
            elif not self._ready:
                log.info("%s: the worker is not serving yet; ignored", SIGNAL_NAMES[sig])
                continue
            if self._worker is not None:
                try:
                    os.kill(self._worker, sig)
                except ProcessLookupError:
                    pass

    # -- the worker

    def _spawn_worker(self) -> tuple[int, int]:
        """Start a worker; return its PID and the read end of its pipe."""
        r, w = os.pipe()
        env = dict(os.environ, **{ENV_FD: str(WORKER_FD), ENV_PARENT: str(os.getpid())})
        actions: list[tuple[object, ...]] = [(os.POSIX_SPAWN_DUP2, w, WORKER_FD)]
        if w != WORKER_FD:
            actions.append((os.POSIX_SPAWN_CLOSE, w))
        else:
            os.set_inheritable(w, True)  # dup2 onto itself keeps close-on-exec
        # The worker must not inherit our signal dispositions (SIGHUP ignored).
        pid = os.posix_spawn(self.worker_argv[0], self.worker_argv, env, file_actions=actions,
                             setsigdef=(signal.SIGHUP, *FORWARDED))
        os.close(w)
        os.set_blocking(r, False)
        self.starts += 1
        return pid, r

    def _read_messages(self, fd: int, buf: bytearray) -> bool:
        """Read what the worker wrote; False at end of file."""
        while True:
            try:
                chunk = os.read(fd, 4096)
            except BlockingIOError:
                return True
            if not chunk:
                return False
            buf += chunk
            while b"\n" in buf:
                line, _, rest = bytes(buf).partition(b"\n")
                buf[:] = rest
                self._on_message(line)
            if len(buf) > MAX_LINE:
                buf.clear()

    def _on_message(self, line: bytes) -> None:
        word, _, value = line.decode("ascii", "replace").partition(" ")
        try:
            if word == "rules":
                self.rules = value
            elif word == "lock":
                self.serving_lock = bytes.fromhex(value).decode()
            elif word == "ready":
                self._ready = True
                self.firewall = None if value == "-" else value
                log.info("worker %s is serving", self._worker)
            else:
                raise ValueError(word)
        except ValueError:
            log.warning("unreadable message from the worker: %r", line[:80])

    def _wait_worker(self, pid: int, r: int) -> tuple[int, float | None]:
        """Wait for the worker to end; return its status and when it became ready."""
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        for fd in (pidfd, r, self._wake_r):
            poller.register(fd, select.POLLIN)
        buf = bytearray()
        ready_at: float | None = None
        try:
            while True:
                events = dict(poller.poll())
                if self._wake_r in events or self._pending:
                    self._handle_signals()
                if r in events:
                    if not self._read_messages(r, buf):
                        poller.unregister(r)
                    if self._ready and ready_at is None:
                        ready_at = time.monotonic()
                if pidfd in events:
                    _, status = os.waitpid(pid, 0)
                    self._read_messages(r, buf)  # whatever it wrote last
                    return status, ready_at
        finally:
            os.close(pidfd)
            os.close(r)

    def _sleep(self, delay: float) -> None:
        """Sleep ``delay`` s, or less if SIGTERM/SIGINT arrives."""
        deadline = time.monotonic() + delay
        while not self.stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            select.select([self._wake_r], [], [], left)
            self._handle_signals()

    # -- the rules

    def remove_rules(self) -> bool:
        """Remove what the worker said it installs (in a helper process); True if done."""
        if self.rules is None:
            return True
        if _another_agent_serves(self.serving_lock):
            # During a rollout the new pod's agent serves behind the same rules.
            log.info("another agent serves on this node: the rules stay")
            return True
        started = time.monotonic()
        argv = [sys.executable, "-m", "nodecache.supervisor", "--remove-rules", self.rules,
                *(["--firewall", self.firewall] if self.firewall else [])]
        pid = os.posix_spawn(sys.executable, argv, dict(os.environ),
                             setsigdef=(signal.SIGHUP, *FORWARDED))
        pidfd = os.pidfd_open(pid)
        try:
            if not select.select([pidfd], [], [], REMOVE_TIMEOUT)[0]:
                log.error("removing the rules took longer than %.0fs; killed the helper",
                          REMOVE_TIMEOUT)
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(pidfd)
        if status != 0:
            log.error("removing the rules failed (%s)", describe(status))
            return False
        log.info("rules removed in %.0f ms: DNS falls back to kube-dns until a worker serves",
                 (time.monotonic() - started) * 1000)
        return True

    # -- the loop

    def run(self) -> int:
        """Supervise until the worker ends for good; return our exit code."""
        self._install_signals()
        delay = self.backoff_initial
        while True:
            self._ready = False
            pid, r = self._spawn_worker()
            self._worker = pid
            log.info("started worker %d", pid)
            status, ready_at = self._wait_worker(pid, r)
            self._worker = None
            code = exit_status(status)
            if status == 0:
                log.info("worker %d exited cleanly", pid)
                return 0
            log.warning("worker %d %s%s", pid, describe(status),
                        "" if self.stopping else " without teardown")
            self.remove_rules()
            if self.stopping:
                return code
            if ready_at is None and os.WIFEXITED(status):
                log.error("worker %d failed before it served; not restarting", pid)
                return code
            if ready_at is not None and time.monotonic() - ready_at >= self.backoff_reset:
                delay = self.backoff_initial
            log.info("restarting the worker in %.2fs", delay)
            self._sleep(delay)
            if self.stopping:
                return code
            delay = min(delay * 2, self.backoff_max)


#: How the parent starts: the package's directory first on the path, as ``site`` is off.
_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
         "from nodecache.supervisor import main; sys.exit(main(sys.argv[1:]))")


def become_supervisor(worker_argv: Sequence[str]) -> None:
    """Replace this process (same PID) with the supervisor of the worker ``worker_argv``.

    The parent runs isolated and without ``site`` (``-I -S``; ``-B``: nothing written next
    to the package): the venv's ``.pth`` hooks and what they import (about 2 MB) are not
    needed to import this module and the standard library's basics. The worker gets the
    environment as it is.
    """
    import nodecache  # noqa: PLC0415
    root = os.path.dirname(os.path.dirname(os.path.abspath(nodecache.__file__)))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", "-c", _BOOT, root, *worker_argv])


def _remove_rules_main(text: str, firewall: str | None) -> int:
    """The helper: remove exactly the described rules from the named backend (or every
    backend present, for ``auto``); ``firewall``, when given, names the backend instead."""
    import json  # noqa: PLC0415
    from nodecache.errors import HostNetworkError  # noqa: PLC0415
    from nodecache.hostnet.firewall import all_backends, choose_firewall  # noqa: PLC0415
    from nodecache.hostnet.rules import notrack_rules, parse_local_ips  # noqa: PLC0415
    desc = json.loads(text)
    rules = notrack_rules(parse_local_ips(desc["local_ips"]), desc["dns_port"],
                          desc["health_port"])
    lock_wait = int(desc.get("lock_wait", 5))
    name = firewall or desc.get("firewall", "auto")
    families = {r.family for r in rules}
    backends = all_backends(lock_wait) if name == "auto" else \
        [choose_firewall(name, families, lock_wait)]
    failed = 0
    for fw in backends:
        try:
            n = fw.remove(rules)
        except HostNetworkError as exc:
            log.error("removing the rules from %s: %s", fw.name, exc)
            failed += 1
            continue
        if n:
            log.info("removed %d nodecache rules from %s", n, fw.name)
    return 1 if failed else 0


def main(argv: Sequence[str]) -> int:
    """``--remove-rules JSON [--firewall NAME]`` (the helper), or the worker's command line."""
    if argv[:1] == ["--remove-rules"] and len(argv) in (2, 4) and argv[2:3] in ([], ["--firewall"]):
        import logging  # noqa: PLC0415 - the firewall code logs through it
        logging.basicConfig(level=logging.INFO, stream=sys.stderr, format=LOG_FORMAT)
        return _remove_rules_main(argv[1], argv[3] if len(argv) == 4 else None)
    return Supervisor(argv).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
