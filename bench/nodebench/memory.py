"""Memory as Kubernetes counts it, beside RSS.

* RSS summed over a server's processes counts every shared page once per
  process (the interpreter and its libraries, in nodecache's supervisor and
  worker alike).
* PSS (``/proc/PID/smaps_rollup``) splits each shared page between the
  processes that map it, so the sum over a process tree is what the tree
  really holds.
* The kubelet, the eviction manager and ``kubectl top`` use the container
  cgroup's *working set*: usage minus inactive file pages (cadvisor's
  ``container_memory_working_set_bytes``), and limits and the OOM killer act
  on the cgroup's usage. The bench starts each server in a memory cgroup of its
  own to read that. Page-cache pages are charged to the cgroup that first read
  them, so files already cached by someone else (the interpreter, a binary
  the bench unpacked) count elsewhere; anonymous and kernel memory
  (sockets, page tables) count here.

cgroup v1 (``/sys/fs/cgroup/memory``, as on hybrid hosts) and v2 are both read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .host import Cleanup, log, proc_tree

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _rollup_kb(pid: int) -> dict[str, int]:
    """``Pss`` and its file-backed part ``Pss_File`` from smaps_rollup, kB."""
    out = {"Pss": 0, "Pss_File": 0}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in out:
            out[key] = int(line.split()[1])
    return out


def process_memory(pid: int) -> dict[str, int]:
    """RSS, PSS and PSS of file-backed pages (the program's text, mapped files) of *pid*, bytes."""
    rollup = _rollup_kb(pid)
    return {"rss_bytes": _status_kb(pid, "VmRSS:") * 1024, "pss_bytes": rollup["Pss"] * 1024,
            "pss_file_bytes": rollup["Pss_File"] * 1024}


def tree_memory(pid: int) -> dict[str, int]:
    """:func:`process_memory` summed over *pid* and its descendants, and how many there were."""
    out = {"rss_bytes": 0, "pss_bytes": 0, "pss_file_bytes": 0, "processes": 0}
    for p in proc_tree(pid):
        try:
            one = process_memory(p)
        except OSError:  # gone in between
            continue
        for k, v in one.items():
            out[k] += v
        out["processes"] += 1
    return out


@dataclass
class MemoryCgroup:
    """A memory cgroup the bench made for one server; :meth:`prefix` starts a command in it."""

    path: Path
    #: 1 or 2.
    version: int

    @classmethod
    def create(cls, cleanup: Cleanup, name: str) -> MemoryCgroup | None:
        """A fresh cgroup ``<root>/<name>`` (removed at the end), or None where none can be made."""
        v2 = CGROUP_ROOT / "cgroup.controllers"
        if v2.exists() and "memory" in v2.read_text().split():
            base, version = CGROUP_ROOT, 2
        elif (CGROUP_ROOT / "memory" / "memory.usage_in_bytes").exists():
            base, version = CGROUP_ROOT / "memory", 1
        else:
            log("no memory cgroup controller: working set not measured")
            return None
        path = base / name
        try:
            if path.exists():
                path.rmdir()
            path.mkdir()
        except OSError as exc:
            log(f"cannot make cgroup {path}: {exc}; working set not measured")
            return None
        cg = cls(path, version)
        cleanup.push(f"remove cgroup {path}", cg.remove)
        if version == 2 and not (path / "memory.current").exists():
            try:  # the memory controller is not handed down to children yet
                (base / "cgroup.subtree_control").write_text("+memory")
            except OSError as exc:
                log(f"cannot enable the memory controller under {base}: {exc}; working set not measured")
                return None
        return cg

    def prefix(self) -> list[str]:
        """A command prefix: a shell that moves itself into this cgroup, then execs the rest
        (same PID). It goes before ``ip netns exec``, which hides the cgroup mounts."""
        return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(self.path)]

    def _stat(self) -> dict[str, int]:
        out = {}
        for line in (self.path / "memory.stat").read_text().splitlines():
            k, _, v = line.partition(" ")
            out[k] = int(v)
        return out

    def usage(self) -> dict[str, int]:
        """Usage and working set (usage minus inactive file pages), bytes."""
        stat = self._stat()
        if self.version == 2:
            usage = int((self.path / "memory.current").read_text())
            inactive = stat.get("inactive_file", 0)
        else:
            usage = int((self.path / "memory.usage_in_bytes").read_text())
            inactive = stat.get("total_inactive_file", stat.get("inactive_file", 0))
        return {"cgroup_usage_bytes": usage, "cgroup_working_set_bytes": max(0, usage - inactive)}

    def breakdown(self) -> dict[str, int]:
        """What the usage is made of, bytes: anonymous memory (the heap: Python objects,
        Go's heap), page cache charged here, kernel memory, socket buffers, and slab
        (v2 only: cgroup v1's memory.stat has no slab line)."""
        stat = self._stat()
        if self.version == 2:
            return {k: stat.get(k, 0) for k in ("anon", "file", "kernel", "sock", "slab")}
        out = {"anon": stat.get("total_rss", 0), "file": stat.get("total_cache", 0)}
        for key, name in (("kernel", "memory.kmem.usage_in_bytes"), ("sock", "memory.kmem.tcp.usage_in_bytes")):
            try:
                out[key] = int((self.path / name).read_text())
            except OSError:  # no kernel memory accounting
                pass
        return out

    def remove(self) -> None:
        """Move what is left to the parent, then remove the directory."""
        if not self.path.exists():
            return
        parent = self.path.parent / "cgroup.procs"
        try:
            for pid in (self.path / "cgroup.procs").read_text().split():
                try:
                    parent.write_text(pid)
                except OSError:
                    pass
            os.rmdir(self.path)
        except OSError as exc:
            log(f"cannot remove cgroup {self.path}: {exc}")


def sweep_stale(prefix: str = "ncb") -> None:
    """Remove the empty cgroups of earlier runs that were killed (``<prefix><pid>-...``)."""
    for base in (CGROUP_ROOT, CGROUP_ROOT / "memory"):
        for path in base.glob(f"{prefix}*-*"):
            pid = path.name[len(prefix):].split("-", 1)[0]
            if pid.isdigit() and not Path(f"/proc/{pid}").exists():
                try:
                    path.rmdir()
                    log(f"removed stale cgroup {path}")
                except OSError:
                    pass


def measure(pid: int, cgroup: MemoryCgroup | None) -> dict[str, int]:
    """Everything above for a server's process tree and its cgroup."""
    out = tree_memory(pid)
    if cgroup is not None:
        try:
            out.update(cgroup.usage())
            out.update({f"cgroup_{k}_bytes": v for k, v in cgroup.breakdown().items()})
        except OSError as exc:
            log(f"cannot read {cgroup.path}: {exc}")
    return out
