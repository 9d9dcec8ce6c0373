"""Network namespaces for privileged tests: created by the test, always removed.

Everything a test does to links, addresses and firewall rules happens inside
namespaces made here, so the host's own network is never touched.  Each
context manager removes what it created in a ``finally`` block, so a failing
test (or Ctrl-C) still cleans up; :func:`sweep_stale` removes namespaces left
by an earlier test process that was killed outright.

Typical use::

    with netns.node_and_pod() as topo:
        netns.run(topo.node, "ip", "addr", "add", "169.254.20.10/32", "dev", "lo")
        out = netns.run(topo.pod, "dig", "@169.254.20.10", "example.").stdout

Three ways to run code inside a namespace:

* :func:`run` / :func:`popen`: a command, via ``ip netns exec``;
* :func:`python`: a Python subprocess (``python -c CODE`` or ``-m MODULE``) with
  this repository importable;
* :func:`call`: a picklable-result Python callable in a forked child that has
  joined the namespace (the parent's namespace is never changed).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import itertools
import os
import pickle
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.kit import ROOT

T = TypeVar("T")

#: Every namespace made here is named ``<PREFIX><pid>-<n>``, so a sweep can tell
#: which ones belong to processes that no longer exist.
PREFIX = "nct"
NETNS_DIR = Path("/run/netns")
REPO_ROOT = ROOT
_counter = itertools.count()
_CLONE_NEWNET = 0x40000000


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_processes(name: str) -> None:
    """SIGKILL every process still running inside namespace ``name``, and reap our children."""
    res = _ip("netns", "pids", name, check=False)
    for pid in (int(p) for p in res.stdout.split() if p.isdigit()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


def delete(name: str) -> None:
    """Remove namespace ``name`` (its links go with it); no error if already gone."""
    kill_processes(name)
    _ip("netns", "del", name, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces named by :data:`PREFIX` whose creating process is gone."""
    removed = []
    if not NETNS_DIR.is_dir():
        return removed
    for entry in NETNS_DIR.iterdir():
        name = entry.name
        if not name.startswith(PREFIX):
            continue
        pid_part = name[len(PREFIX):].split("-", 1)[0]
        if pid_part.isdigit() and not _pid_alive(int(pid_part)):
            delete(name)
            removed.append(name)
    return removed


@contextlib.contextmanager
def namespace(tag: str = "") -> Iterator[str]:
    """Create a fresh namespace with ``lo`` up; yield its name; always delete it.

    :param tag: a short word added to the name to help when reading ``ip netns``.
    """
    name = f"{PREFIX}{os.getpid()}-{next(_counter)}{tag[:8]}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        delete(name)


@contextlib.contextmanager
def veth_pair(ns_a: str, name_a: str, ns_b: str, name_b: str) -> Iterator[tuple[str, str]]:
    """A veth pair with ``name_a`` in ``ns_a`` and ``name_b`` in ``ns_b``, both UP.

    Removed on exit (deleting one end removes both); deleting a namespace
    removes it too, so this is safe to nest inside :func:`namespace`.
    """
    _ip("-n", ns_a, "link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", ns_b)
    try:
        _ip("-n", ns_a, "link", "set", name_a, "up")
        _ip("-n", ns_b, "link", "set", name_b, "up")
        yield name_a, name_b
    finally:
        _ip("-n", ns_a, "link", "del", name_a, check=False)


def run(ns: str, *cmd: str, check: bool = True, timeout: float = 30, input: str | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` inside ``ns``; capture text output; raise on non-zero exit when ``check``."""
    res = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                         timeout=timeout, input=input, env=env)
    if check and res.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {ns} exited {res.returncode}:\n"
                             f"{res.stdout}{res.stderr}")
    return res


def popen(ns: str, *cmd: str, **kwargs: Any) -> subprocess.Popen[Any]:
    """Start ``cmd`` inside ``ns`` (``subprocess.Popen`` keyword arguments pass through).

    The caller stops it; :func:`namespace` also kills whatever is left on exit.
    """
    return subprocess.Popen(["ip", "netns", "exec", ns, *cmd], **kwargs)


def python_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a Python child: this repository first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def python(ns: str, *args: str, background: bool = False, env: dict[str, str] | None = None,
           timeout: float = 60, check: bool = True, **popen_kwargs: Any) -> Any:
    """Run this interpreter inside ``ns`` with ``args`` (e.g. ``"-m", "nodecache", "run"``).

    :param background: return a ``Popen`` instead of waiting for a ``CompletedProcess``.
    """
    cmd = ("ip", "netns", "exec", ns, sys.executable, *args)
    full_env = python_env(env)
    if background:
        return subprocess.Popen(cmd, env=full_env, **popen_kwargs)
    res = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout)
    if check and res.returncode != 0:
        raise AssertionError(f"python {' '.join(args)} in {ns} exited {res.returncode}:\n"
                             f"{res.stdout}{res.stderr}")
    return res


def setns(ns: str) -> None:
    """Move the *calling thread* into namespace ``ns``. Used in forked children only."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(NETNS_DIR / ns, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({ns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def call(ns: str, fn: Callable[..., T], *args: Any, timeout: float = 60, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` in a forked child inside ``ns``; return its result.

    The result (or the exception) is pickled back. The child is killed if it
    takes longer than ``timeout`` seconds.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(rfd)
        code = 0
        try:
            setns(ns)
            payload = pickle.dumps((True, fn(*args, **kwargs)))
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
            code = 1
            try:
                payload = pickle.dumps((False, exc))
            except Exception:  # noqa: BLE001
                payload = pickle.dumps((False, RuntimeError(repr(exc))))
        try:
            with os.fdopen(wfd, "wb") as out:
                out.write(payload)
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        with os.fdopen(rfd, "rb") as inp:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([inp], [], [], left)[0]:
                    raise TimeoutError(f"{getattr(fn, '__name__', fn)} in {ns} took > {timeout} s")
                chunk = os.read(inp.fileno(), 65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        with contextlib.suppress(ProcessLookupError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    if not chunks:
        raise RuntimeError(f"{getattr(fn, '__name__', fn)} in {ns} died without a result")
    ok, value = pickle.loads(b"".join(chunks))
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class NodePod:
    """Two namespaces joined by a veth pair, as a node and one of its pods."""

    node: str
    pod: str
    #: The node's and the pod's end of the veth pair.
    node_if: str
    pod_if: str
    node_ip4: str = "10.200.0.1"
    pod_ip4: str = "10.200.0.2"
    node_ip6: str = "fd00:200::1"
    pod_ip6: str = "fd00:200::2"


@contextlib.contextmanager
def node_and_pod(routes_via_node: Sequence[str] = ("169.254.20.10", "fd00:53::10")
                 ) -> Iterator[NodePod]:
    """A "node" and a "pod" namespace joined by a veth pair, IPv4 and IPv6.

    The pod routes each address in ``routes_via_node`` (host routes) and its
    default route through the node. The node holds nothing else: the test
    (or the agent) puts the local IPs on the node. Both namespaces are removed
    on exit.
    """
    with namespace("node") as node, namespace("pod") as pod:
        n = next(_counter)
        node_if, pod_if = f"nv{os.getpid() % 100000}x{n}", f"pv{os.getpid() % 100000}x{n}"
        with veth_pair(node, node_if, pod, pod_if):
            topo = NodePod(node=node, pod=pod, node_if=node_if, pod_if=pod_if)
            _ip("-n", node, "addr", "add", f"{topo.node_ip4}/24", "dev", node_if)
            _ip("-n", pod, "addr", "add", f"{topo.pod_ip4}/24", "dev", pod_if)
            # nodad: the addresses are usable at once instead of after duplicate detection.
            _ip("-n", node, "-6", "addr", "add", f"{topo.node_ip6}/64", "dev", node_if, "nodad")
            _ip("-n", pod, "-6", "addr", "add", f"{topo.pod_ip6}/64", "dev", pod_if, "nodad")
            _ip("-n", pod, "route", "add", "default", "via", topo.node_ip4)
            _ip("-n", pod, "-6", "route", "add", "default", "via", topo.node_ip6)
            for dst in routes_via_node:
                via = topo.node_ip6 if ":" in dst else topo.node_ip4
                _ip("-n", pod, "route", "replace", dst, "via", via)
            yield topo


#: How the node's stateful tracking is switched on, per firewall tool: a rule
#: matching conntrack state, as every real node has (kube-proxy, CNI).
_CONNTRACK_RULES: dict[str, list[list[str]]] = {
    "iptables-legacy": [["iptables-legacy", "-A", "INPUT", "-m", "conntrack", "--ctstate",
                         "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                        ["ip6tables-legacy", "-A", "INPUT", "-m", "conntrack", "--ctstate",
                         "ESTABLISHED,RELATED", "-j", "ACCEPT"]],
    "iptables-nft": [["iptables-nft", "-A", "INPUT", "-m", "conntrack", "--ctstate",
                      "ESTABLISHED,RELATED", "-j", "ACCEPT"],
                     ["ip6tables-nft", "-A", "INPUT", "-m", "conntrack", "--ctstate",
                      "ESTABLISHED,RELATED", "-j", "ACCEPT"]],
    "nftables": [["nft", "add table inet kubelike"],
                 ["nft", "add chain inet kubelike input "
                         "{ type filter hook input priority 0 ; policy accept ; }"],
                 ["nft", "add rule inet kubelike input ct state established,related accept"]],
}


def activate_conntrack(ns: str, tool: str = "iptables-legacy") -> None:
    """Make the kernel track connections in ``ns`` with a ``--ctstate ESTABLISHED`` rule.

    Without such a rule (or a NAT table) the kernel does not track anything in
    a fresh namespace, so "no conntrack entry" would prove nothing.

    :param tool: ``iptables-legacy``, ``iptables-nft`` or ``nftables``.
    """
    for cmd in _CONNTRACK_RULES[tool]:
        run(ns, *cmd)


def conntrack_entries(ns: str, *match: str) -> list[str]:
    """Lines of ``conntrack -L`` in ``ns`` (both families), optionally filtered.

    :param match: extra ``conntrack`` filter arguments, e.g. ``"-p", "udp", "--dport", "53"``.
    """
    lines = []
    for family in ("ipv4", "ipv6"):
        res = run(ns, "conntrack", "-L", "-f", family, *match, check=False)
        lines += [ln for ln in res.stdout.splitlines() if ln.strip()]
    return lines


def _normalize_save(text: str) -> list[str]:
    """``iptables-save`` text without comments, counters, and tables holding no rules."""
    out: list[str] = []
    table: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        line = re.sub(r"\[\d+:\d+\]", "[0:0]", line)
        if line.startswith("*"):
            table = [line]
        elif line == "COMMIT":
            # a table with only built-in chains at ACCEPT and no rules is "nothing"
            if any(not (ln.startswith(":") and ln.endswith("ACCEPT [0:0]")) for ln in table[1:]):
                out += table + [line]
            table = []
        else:
            table.append(line)
    return out


def _zero_counters(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ({} if k == "counter" else _zero_counters(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_zero_counters(v) for v in value]
    return value


def _normalize_nft(text: str) -> list[Any]:
    """``nft -j list ruleset`` without handles, empty accept base chains and empty tables."""
    import json
    objs = json.loads(text or '{"nftables": []}').get("nftables", [])
    used_chains = set()
    nonempty_tables = set()
    for o in objs:
        for kind in ("rule", "set", "map", "flowtable", "counter", "ct helper", "limit", "quota"):
            if kind in o:
                used_chains.add((o[kind]["family"], o[kind]["table"], o[kind].get("chain")))
                nonempty_tables.add((o[kind]["family"], o[kind]["table"]))
    out = []
    for o in objs:
        if "metainfo" in o:
            continue
        (kind, body), = o.items()
        body = _zero_counters({k: v for k, v in body.items() if k != "handle"})
        if kind == "chain":
            key = (body["family"], body["table"], body["name"])
            if key not in used_chains and body.get("policy", "accept") == "accept":
                continue
            nonempty_tables.add(key[:2])
        out.append((kind, body))
    return [(k, b) for k, b in out
            if k != "table" or (b["family"], b["name"]) in nonempty_tables]


def ruleset_snapshot(ns: str) -> dict[str, Any]:
    """Every firewall rule in ``ns``: legacy (v4, v6) and nf_tables (which holds iptables-nft).

    Normalised so that what the kernel cannot take back does not count: legacy
    tables, once looked at, exist for good; an iptables-nft table keeps its
    empty built-in chains. Comments, counters and handles are dropped.
    Legacy tables are read only when already loaded, so reading never changes
    what is read.
    """
    snap: dict[str, Any] = {}
    for fam in ("ip", "ip6"):
        names = run(ns, "cat", f"/proc/net/{fam}_tables_names", check=False).stdout.split()
        lines: list[str] = []
        for table in sorted(names):
            lines += _normalize_save(run(ns, f"{fam}tables-legacy-save", "-t", table).stdout)
        snap[f"{fam}tables-legacy"] = lines
    snap["nft"] = _normalize_nft(run(ns, "nft", "-j", "list", "ruleset").stdout)
    return snap


def link_snapshot(ns: str) -> str:
    """``ip -d addr`` in ``ns`` without what changes on its own.

    Removed: timers and lifetimes (they tick), IPv6 ``tentative`` (duplicate
    address detection finishing) and the qdisc (the kernel attaches one the
    first time a link goes UP and keeps it after it goes DOWN again).
    """
    text = run(ns, "ip", "-d", "addr").stdout
    text = re.sub(r"(\w+_timer)\s+[\d.]+", r"\1", text)
    text = re.sub(r" qdisc \S+", "", text)
    text = re.sub(r" tentative", "", text)
    return re.sub(r"valid_lft \S+ preferred_lft \S+", "", text)


def dns_entries(ns: str, ip: str) -> list[str]:
    return [ln for ln in conntrack_entries(ns) if ip in ln and ("dport=53 " in ln)]


def rule_texts(ns: str, backend: str) -> str:
    if backend == "nftables":
        return run(ns, "nft", "list", "ruleset").stdout
    mode = backend.split("-")[1]
    return (run(ns, f"iptables-{mode}-save").stdout
            + run(ns, f"ip6tables-{mode}-save").stdout)


def precreate_link(ns: str, name: str = "nodelocaldns") -> None:
    """The kernel here has no dummy type: stand in with a bridge (left DOWN, no address)."""
    run(ns, "ip", "link", "add", name, "type", "bridge")


def dummy_supported() -> bool:
    with namespace("probe") as ns:
        return run(ns, "ip", "link", "add", "probe0", "type", "dummy",
                   check=False).returncode == 0
