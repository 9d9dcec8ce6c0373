"""Run link operations in a short-lived child process.

pyroute2's netlink layer costs about 10 MB of resident memory once imported
(some 160 modules), a fifth of the agent's footprint, for work done once at
start and then once per sync interval. :class:`ChildLink` keeps the serving
process free of it: each operation starts a child Python (:data:`CHILD_ARGV`),
which runs the same :class:`~nodecache.hostnet.link.LinkManager` code and
exits. What the manager remembers between calls (its ``LinkRecord``) travels
as JSON on stdin and stdout, so the child is stateless.

Cost: one interpreter start per operation (about 0.2 s of CPU), i.e. once per
``--syncinterval`` (60 s by default).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from nodecache.hostnet.link import InterfaceCheckError, InterfaceError, LinkManager, LinkRecord

log = logging.getLogger("nodecache.hostnet.link")
#: The operations a child may run.
OPERATIONS = frozenset({"adopt_leftovers", "ensure", "teardown"})

#: How long one operation may take, s (netlink answers in milliseconds; this
#: bounds a wedged child, e.g. on a node under memory pressure).
CHILD_TIMEOUT = 30.0

#: The child's command line after the interpreter. Not ``-m`` on this module:
#: importing the package already imports it, and runpy then warns that the
#: module is in sys.modules before it runs it as ``__main__``.
CHILD_ARGV = ("-c", "from nodecache.hostnet.linkctl import main; main()")

_ERRORS: dict[str, type[InterfaceError]] = {
    "InterfaceError": InterfaceError, "InterfaceCheckError": InterfaceCheckError}


class ChildLink:
    """Same interface as LinkManager; every call runs in a child process."""

    def __init__(self, name: str, ips: Sequence[str]) -> None:
        self.name = name
        self.ips = tuple(ips)
        self.record: LinkRecord | None = None
        self._alias_ours = False

    def _call(self, op: str) -> Any:
        request = {"op": op, "name": self.name, "ips": list(self.ips),
                   "record": dataclasses.asdict(self.record) if self.record else None,
                   "alias_ours": self._alias_ours}
        try:
            done = subprocess.run([sys.executable, *CHILD_ARGV],
                                  input=json.dumps(request), capture_output=True, text=True,
                                  timeout=CHILD_TIMEOUT, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InterfaceCheckError(f"cannot run the link helper: {exc}") from None
        try:
            reply = json.loads(done.stdout.strip().splitlines()[-1])
        except (IndexError, ValueError):
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise InterfaceCheckError(f"link helper failed ({done.returncode}): {detail}") \
                from None
        for line in done.stderr.splitlines():
            log.info("%s", line)  # the child's log lines
        if "error" in reply:
            raise _ERRORS.get(reply["error"], InterfaceError)(reply["message"])
        record = reply["record"]
        self.record = LinkRecord(**record) if record is not None else None
        self._alias_ours = reply["alias_ours"]
        return reply["result"]

    def adopt_leftovers(self) -> None:
        self._call("adopt_leftovers")

    def ensure(self) -> int:
        return int(self._call("ensure"))

    def teardown(self) -> None:
        self._call("teardown")


def main() -> None:
    """Child side: one request on stdin, one JSON reply on stdout."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    request = json.loads(sys.stdin.read())
    if request["op"] not in OPERATIONS:
        raise SystemExit(f"unknown operation {request['op']!r}")
    manager = LinkManager(request["name"], request["ips"])
    if request["record"] is not None:
        manager.record = LinkRecord(**request["record"])
    manager._alias_ours = request["alias_ours"]
    try:
        result = getattr(manager, request["op"])()
    except InterfaceError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
        return
    print(json.dumps({"result": result,
                      "record": dataclasses.asdict(manager.record) if manager.record else None,
                      "alias_ours": manager._alias_ours}))
