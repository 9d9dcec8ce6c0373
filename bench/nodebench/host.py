"""Host plumbing: commands, namespaces, daemons and an undo stack that always runs.

Everything the bench creates on the host (namespaces, links, firewall rules,
processes) is registered on a :class:`Cleanup` stack right after it is created,
and the stack is unwound in reverse order on normal exit, on an exception and on
SIGINT/SIGTERM/SIGHUP (turned into :class:`Interrupted` by :func:`trap_signals`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType


class BenchError(Exception):
    """The bench cannot go on (missing tool, not root, a server that will not start)."""


class Interrupted(BenchError):
    """A signal asked the run to stop."""


def log(msg: str) -> None:
    """Progress line on stderr, with the elapsed run time."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


_T0 = time.monotonic()


def trap_signals() -> None:
    """Turn SIGTERM and SIGHUP into an exception, like SIGINT already is."""

    def _raise(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(f"stopped by signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (as `cmd &` is).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def require(tools: Sequence[str]) -> None:
    """Fail with one clear message naming every missing tool, or when not root."""
    if os.geteuid() != 0:
        raise BenchError(
            "bench/run needs root: it creates network namespaces, veth pairs and "
            "firewall rules (try: sudo bench/run)"
        )
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise BenchError(
            "missing tools: " + ", ".join(missing)
            + " (Debian: apt-get install iproute2 iptables nftables conntrack dnsperf "
            "knot unbound dnsmasq-base util-linux)"
        )


class Cleanup:
    """A stack of undo actions, run newest first; a failing action does not stop the rest."""

    def __init__(self) -> None:
        self._actions: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, action: Callable[[], object]) -> None:
        self._actions.append((what, action))

    def run(self) -> None:
        # Signals during teardown must not leave half the host behind.
        old = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            while self._actions:
                what, action = self._actions.pop()
                try:
                    action()
                except Exception as exc:  # keep unwinding
                    log(f"cleanup: {what} failed: {exc}")
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def in_ns(ns: str | None, argv: Sequence[str]) -> list[str]:
    """The argv that runs *argv* inside namespace *ns* (or on the host when None)."""
    return ["ip", "netns", "exec", ns, *argv] if ns else list(argv)


def sh(
    argv: Sequence[str], *, ns: str | None = None, check: bool = True, timeout: float = 120.0,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a short command and capture its output; raise :class:`BenchError` on failure."""
    full = in_ns(ns, argv)
    try:
        cp = subprocess.run(full, capture_output=True, text=True, timeout=timeout, input=input)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(full)}") from exc
    if check and cp.returncode != 0:
        raise BenchError(f"command failed ({cp.returncode}): {' '.join(full)}\n{cp.stderr.strip()}")
    return cp


@dataclass
class Daemon:
    """A server process started in a namespace; its output goes to a log file."""

    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    stopped: bool = field(default=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(text[-lines:])

    def stop(self, timeout: float = 8.0) -> None:
        """SIGTERM, then SIGKILL to the whole process group after *timeout* seconds."""
        if self.stopped:
            return
        self.stopped = True
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(5)
        else:
            # The leader is gone; reap any children it left in its group.
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_daemon(
    cleanup: Cleanup, name: str, argv: Sequence[str], *, ns: str | None, log_dir: Path,
    cpu: int | None = None, env: dict[str, str] | None = None, outer: Sequence[str] = (),
) -> Daemon:
    """Start *argv* in namespace *ns* (None: this one; optionally pinned to *cpu*) in its own process group.

    ``outer`` goes before ``ip netns exec`` (a cgroup's entry shell). Every
    wrapper execs, so the Popen pid is the server's own.
    """
    full = list(argv)
    if cpu is not None:
        full = ["taskset", "-c", str(cpu), *full]
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [*outer, *in_ns(ns, full)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
    d = Daemon(name, proc, log_path)
    cleanup.push(f"stop {name}", d.stop)
    return d


@contextlib.contextmanager
def busy_loops(cpu: int, count: int, seconds: float) -> Iterator[None]:
    """*count* shell busy loops pinned to *cpu* while the block runs: other pods' work.

    Each runs in a session of its own, so the scheduler gives it a share of its
    own (an autogroup), as pods in cgroups of their own get; each also ends by
    itself after *seconds* (``timeout``), should this process be killed.
    """
    procs = [subprocess.Popen(["taskset", "-c", str(cpu), "timeout", f"{seconds:g}",
                               "sh", "-c", "while :; do :; done"],
                              start_new_session=True, stdin=subprocess.DEVNULL)
             for _ in range(count)]
    try:
        yield
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(5)


def proc_tree(pid: int) -> list[int]:
    """*pid* and all its descendants (servers that fork workers count as one)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime+stime of *pid* and its descendants, from /proc/<pid>/stat, in seconds."""
    total = 0
    for p in proc_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total / _TCK


def core_times() -> dict[int, tuple[int, int, int]]:
    """Per core (busy, total, steal) jiffies from /proc/stat; busy counts irq and softirq,
    where the kernel does the veth and UDP work for the sockets on that core."""
    out: dict[int, tuple[int, int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            f = line.split()
            v = [int(x) for x in f[1:9]]  # user nice system idle iowait irq softirq steal
            busy = v[0] + v[1] + v[2] + v[5] + v[6]
            out[int(f[0][3:])] = (busy, sum(v), v[7])
    return out


def core_usage(before: dict[int, tuple[int, int, int]], after: dict[int, tuple[int, int, int]]) -> dict[str, float]:
    """Busy and steal share of each core between two :func:`core_times` samples."""
    out: dict[str, float] = {}
    for cpu in sorted(after):
        if cpu not in before:
            continue
        db, dt, ds = (a - b for a, b in zip(after[cpu], before[cpu]))
        if dt > 0:
            out[f"cpu{cpu}_busy"] = db / dt
            out[f"cpu{cpu}_steal"] = ds / dt
    return out
