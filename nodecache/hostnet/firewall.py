"""Firewall backends: iptables-legacy, iptables-nft and native nftables.

All three answer the same questions: which of our rules are there (and how
many copies), put the missing ones in, take ours out. Our rules are found by
their comment (:attr:`nodecache.hostnet.rules.Rule.comment` is unique per
rule), never by position, so rules that kube-proxy or the CNI insert above or
below ours do not confuse us.

How the iptables backends change rules: one ``iptables-save -t TABLE`` per
table to read, then one ``iptables-restore --noflush -w N`` per family to
write. We do not run ``-C``/``-I`` per rule, as node-cache does, because:

* the restore is one transaction: all missing rules appear at once, and a
  duplicate is removed in the same commit that would otherwise leave a gap;
* legacy iptables replaces the whole table on every change, so 24 ``-I`` calls
  rewrite a large ``filter`` table 24 times (and take the xtables lock 24
  times); one restore rewrites it once, and nothing is written when nothing
  is missing;
* ``-C`` cannot see duplicates, and was the flaky part that made node-cache
  add rules without end (kubernetes/dns#568); counting comments in the saved
  table sees every copy.

The xtables lock (legacy only; nft is transactional in the kernel) is waited
for ``-w lock_wait`` seconds; if it is still held we raise
:class:`XtablesLockBusy`, which callers count as ``iptables_lock`` and retry.
"""
from __future__ import annotations

import abc
import json
import logging
import os
import re
import subprocess
from collections import Counter
from collections.abc import Sequence

from nodecache.errors import HostNetworkError
from nodecache.hostnet.rules import COMMENT_PREFIX, NFT_CHAINS, NFT_TABLE, Rule

log = logging.getLogger(__name__)

#: Names accepted by ``--firewall``.
FIREWALLS = ("auto", "iptables-legacy", "iptables-nft", "nftables")

#: Chains kubelet creates in ``mangle`` to say which iptables it uses
#: (kubernetes-sigs/iptables-wrappers).
KUBELET_HINT_CHAINS = ("KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY")

#: Timeout for one iptables/nft invocation, s (longer than any lock wait).
COMMAND_TIMEOUT = 60.0

_COMMENT_RE = re.compile(r'--comment (?:"((?:[^"\\]|\\.)*)"|(\S+))')


class XtablesLockBusy(HostNetworkError):
    """Another program held the xtables lock for longer than we waited."""

    #: ``setup_errors`` label.
    errortype = "iptables_lock"


class FirewallCommandError(HostNetworkError):
    """An iptables or nft command failed."""

    #: ``setup_errors`` label (node-cache counts nft failures as ``iptables`` too).
    errortype = "iptables"


def which(program: str) -> str | None:
    """The path of ``program`` on PATH, as ``shutil.which`` finds it (``shutil`` imports
    bz2 and lzma: about 0.3 MB of the worker's memory, for this lookup alone)."""
    for directory in os.get_exec_path():
        path = os.path.join(directory, program)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def _run(cmd: Sequence[str], input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), input=input, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT)
    except FileNotFoundError:
        raise FirewallCommandError(f"{cmd[0]}: command not found") from None
    except subprocess.TimeoutExpired:
        raise FirewallCommandError(f"{cmd[0]}: no answer after {COMMAND_TIMEOUT:.0f} s") from None


def _tables(rules: Sequence[Rule]) -> list[str]:
    """The tables ``rules`` use, in their order."""
    return list(dict.fromkeys(r.table for r in rules))


def legacy_table_loaded(family: int, table: str) -> bool:
    """Whether the legacy xtables ``table`` exists in this network namespace.

    Merely listing a legacy table creates it (and then iptables-nft warns
    "iptables-legacy tables present" forever), so scans look here first.
    """
    path = f"/proc/net/{'ip6' if family == 6 else 'ip'}_tables_names"
    try:
        with open(path) as f:
            return table in f.read().split()
    except OSError:
        return True  # cannot tell: look


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "no output")


class Firewall(abc.ABC):
    """One way of installing :class:`Rule` objects on this node."""

    #: ``--firewall`` name.
    name: str

    @abc.abstractmethod
    def binaries(self, families: set[int]) -> list[str]:
        """Programs this backend runs for these IP families."""

    @abc.abstractmethod
    def present(self, families: set[int]) -> Counter[str]:
        """How many copies of each nodecache-tagged rule exist, by comment."""

    @abc.abstractmethod
    def ensure(self, rules: Sequence[Rule]) -> int:
        """Install missing ``rules`` and drop extra copies; return how many were added."""

    @abc.abstractmethod
    def remove(self, rules: Sequence[Rule]) -> int:
        """Remove every copy of ``rules``; return how many rules were deleted."""

    @abc.abstractmethod
    def remove_tagged(self, keep: Sequence[Rule] = ()) -> int:
        """Remove every nodecache-tagged rule except those in ``keep`` (crash leftovers)."""


class IptablesFirewall(Firewall):
    """``iptables``/``ip6tables`` in ``legacy`` or ``nft`` mode, driven by save/restore.

    :param mode: ``legacy`` or ``nft``.
    :param lock_wait: seconds to wait for the xtables lock (``-w``).
    """

    def __init__(self, mode: str, lock_wait: int = 5) -> None:
        assert mode in ("legacy", "nft"), mode
        self.mode = mode
        self.name = f"iptables-{mode}"
        self.lock_wait = lock_wait

    def _tool(self, family: int, suffix: str = "") -> str:
        return f"{'ip6' if family == 6 else 'ip'}tables-{self.mode}{suffix}"

    def binaries(self, families: set[int]) -> list[str]:
        return [self._tool(f, s) for f in sorted(families) for s in ("-save", "-restore")]

    def saved_rules(self, family: int, table: str) -> list[str]:
        """The ``-A ...`` lines of ``table`` (none if a legacy table is not loaded)."""
        if self.mode == "legacy" and not legacy_table_loaded(family, table):
            return []
        res = _run([self._tool(family, "-save"), "-t", table])
        if res.returncode != 0:
            raise FirewallCommandError(
                f"{self._tool(family, '-save')} -t {table}: {_first_line(res.stderr)}")
        return [line for line in res.stdout.splitlines() if line.startswith("-A ")]

    def _tagged_lines(self, family: int, table: str) -> list[tuple[str, str]]:
        """(comment, ``-A ...`` line) for each nodecache-tagged rule in ``table``."""
        out = []
        for line in self.saved_rules(family, table):
            m = _COMMENT_RE.search(line)
            if m is None:
                continue
            comment = m.group(1) if m.group(1) is not None else m.group(2)
            comment = comment.replace('\\"', '"')
            if comment.startswith(COMMENT_PREFIX):
                out.append((comment, line))
        return out

    def present(self, families: set[int]) -> Counter[str]:
        seen: Counter[str] = Counter()
        for family in families:
            for table in ("raw", "filter"):
                seen.update(c for c, _ in self._tagged_lines(family, table))
        return seen

    def _restore(self, family: int, script: dict[str, list[str]]) -> None:
        """Apply ``-I``/``-D`` lines per table in one ``iptables-restore --noflush``."""
        text = "".join(f"*{table}\n" + "".join(f"{ln}\n" for ln in lines) + "COMMIT\n"
                       for table, lines in script.items() if lines)
        if not text:
            return
        cmd = [self._tool(family, "-restore"), "--noflush", "-w", str(self.lock_wait)]
        res = _run(cmd, input=text)
        if res.returncode == 0:
            return
        if "xtables lock" in res.stderr:
            raise XtablesLockBusy(f"{cmd[0]}: {_first_line(res.stderr)}")
        raise FirewallCommandError(f"{cmd[0]}: {_first_line(res.stderr)}")

    def ensure(self, rules: Sequence[Rule]) -> int:
        added = 0
        for family in sorted({r.family for r in rules}):
            script: dict[str, list[str]] = {}
            for table in _tables(rules):
                lines = self._tagged_lines(family, table)
                counts = Counter(c for c, _ in lines)
                ops = script.setdefault(table, [])
                # extra copies: delete all but one (by their exact saved spec)
                extra = {c: n - 1 for c, n in counts.items() if n > 1}
                for comment, line in lines:
                    if extra.get(comment, 0) > 0:
                        extra[comment] -= 1
                        ops.append("-D" + line[2:])
                for rule in rules:
                    if rule.family == family and rule.table == table and not counts[rule.comment]:
                        ops.append(rule.iptables_restore_line("-I"))
                        added += 1
            self._restore(family, script)
        return added

    def _delete_tagged(self, families: set[int], tables: Sequence[str], wanted: set[str] | None,
                       keep: set[str]) -> int:
        removed = 0
        for family in sorted(families):
            if which(self._tool(family, "-save")) is None:
                continue
            script: dict[str, list[str]] = {}
            for table in tables:
                ops = script.setdefault(table, [])
                for comment, line in self._tagged_lines(family, table):
                    if (wanted is None or comment in wanted) and comment not in keep:
                        ops.append("-D" + line[2:])
                        removed += 1
            self._restore(family, script)
        return removed

    def remove(self, rules: Sequence[Rule]) -> int:
        return self._delete_tagged({r.family for r in rules}, _tables(rules),
                                   {r.comment for r in rules}, set())

    def remove_tagged(self, keep: Sequence[Rule] = ()) -> int:
        # The agent's tables only: the guard's fallback in ``nat`` is the guard's to remove.
        return self._delete_tagged({4, 6}, ("raw", "filter"), None, {r.comment for r in keep})


class NftablesFirewall(Firewall):
    """Native nftables: one ``inet nodecache`` table that holds all our chains.

    The table is rebuilt in one ``nft -f`` transaction whenever it differs
    from what we want, so it never holds duplicates or half a rule set.

    Note: an ``accept`` here ends only our own base chain; a drop in another
    table at the same hook still drops. The ACCEPT rules are kept for parity
    with iptables; NOTRACK (priority raw) is what matters, and it runs before
    kube-proxy's nftables DNAT (priority dstnat).
    """

    name = "nftables"

    def binaries(self, families: set[int]) -> list[str]:
        return ["nft"]

    def _table(self) -> list[dict[str, object]] | None:
        """The table's JSON objects, or None when it does not exist."""
        res = _run(["nft", "-j", "list", "table", "inet", NFT_TABLE])
        if res.returncode != 0:
            if "No such file" in res.stderr:
                return None
            raise FirewallCommandError(f"nft list table: {_first_line(res.stderr)}")
        return list(json.loads(res.stdout).get("nftables", []))

    def _counts(self, objs: list[dict[str, object]] | None) -> Counter[str]:
        seen: Counter[str] = Counter()
        for obj in objs or ():
            rule = obj.get("rule")
            if isinstance(rule, dict):
                seen[f"{rule.get('chain')}|{rule.get('comment', '')}"] += 1
        return seen

    def present(self, families: set[int]) -> Counter[str]:
        return Counter({k.split("|", 1)[1]: n for k, n in self._counts(self._table()).items()
                        if k.split("|", 1)[1].startswith(COMMENT_PREFIX)})

    @staticmethod
    def table_script(rules: Sequence[Rule]) -> str:
        """``nft -f`` text that (re)creates our table with exactly ``rules``."""
        lines = [f"table inet {NFT_TABLE} {{", f'\tcomment "{COMMENT_PREFIX} node-local DNS"']
        for (table, chain), (name, hook, prio) in NFT_CHAINS.items():
            lines.append(f"\tchain {name} {{")
            lines.append(f"\t\ttype filter hook {hook} priority {prio}; policy accept;")
            lines += [f"\t\t{r.nft_rule()}" for r in rules
                      if (r.table, r.chain) == (table, chain)]
            lines.append("\t}")
        lines.append("}")
        return "\n".join(lines) + "\n"

    def _apply(self, script: str) -> None:
        res = _run(["nft", "-f", "-"], input=script)
        if res.returncode != 0:
            raise FirewallCommandError(f"nft -f: {_first_line(res.stderr)}")

    def ensure(self, rules: Sequence[Rule]) -> int:
        objs = self._table()
        have = self._counts(objs)
        want = Counter(f"{r.nft_chain}|{r.comment}" for r in rules)
        chains = {chain["name"] for o in objs or () if isinstance(chain := o.get("chain"), dict)}
        if objs is not None and have == want and chains == {c[0] for c in NFT_CHAINS.values()}:
            return 0
        added = sum(1 for k in want if not have[k])
        # create-if-absent, delete, recreate: one atomic transaction
        self._apply(f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
                    + self.table_script(rules))
        return added

    def remove(self, rules: Sequence[Rule]) -> int:
        return self.remove_tagged()

    def remove_tagged(self, keep: Sequence[Rule] = ()) -> int:
        objs = self._table()
        if objs is None:
            return 0
        have = self._counts(objs)
        kept = [r for r in keep if have[f"{r.nft_chain}|{r.comment}"]]
        removed = sum(have.values()) - len(kept)
        if not kept:
            self._apply(f"delete table inet {NFT_TABLE}\n")
        elif removed:
            # keep (one copy of) the wanted rules that are there; add nothing new
            self._apply(f"delete table inet {NFT_TABLE}\n" + self.table_script(kept))
        return removed


def _has_hint(save_tool: str) -> bool:
    if which(save_tool) is None:
        return False
    if "legacy" in save_tool and not legacy_table_loaded(6 if "ip6" in save_tool else 4, "mangle"):
        return False
    res = _run([save_tool, "-t", "mangle"])
    if res.returncode != 0 and "legacy" in save_tool:
        # The table is there (legacy_table_loaded) but unreadable: guessing nft
        # now would put our rules beside kube-proxy's legacy ones, where the
        # kernel evaluates both and ours may come too late.
        raise HostNetworkError(
            f"{save_tool}: {_first_line(res.stderr)}: this node has iptables-legacy tables, "
            f"and which iptables kubelet uses cannot be told without reading them; "
            f"iptables-legacy needs the NET_RAW capability (add it to the container's "
            f"securityContext), or name the backend with --firewall")
    return res.returncode == 0 and any(
        f":{chain} " in res.stdout or f":{chain}\n" in res.stdout for chain in KUBELET_HINT_CHAINS)


def detect_iptables_mode() -> str:
    """``legacy`` or ``nft``, as kubernetes-sigs/iptables-wrappers decides.

    Kubelet creates ``KUBE-IPTABLES-HINT`` (and ``KUBE-KUBELET-CANARY``) in
    ``mangle`` with whichever iptables the node uses. Look with nft first (v4,
    then v6), then legacy; with no hint anywhere, nft is the default.

    :raises HostNetworkError: legacy tables exist but cannot be read (no NET_RAW).
    """
    for mode in ("nft", "legacy"):
        for fam in ("ip", "ip6"):
            if _has_hint(f"{fam}tables-{mode}-save"):
                return mode
    return "nft"


def choose_firewall(firewall: str, families: set[int], lock_wait: int = 5) -> Firewall:
    """The backend for ``--firewall`` (``auto`` detects the iptables mode).

    With ``auto`` and no iptables binaries at all but ``nft`` present, native
    nftables is used.

    :raises HostNetworkError: an unknown name.
    """
    if firewall == "nftables":
        return NftablesFirewall()
    if firewall in ("iptables-legacy", "iptables-nft"):
        return IptablesFirewall(firewall.split("-", 1)[1], lock_wait)
    if firewall != "auto":
        raise HostNetworkError(f"unknown firewall {firewall!r}; use one of {', '.join(FIREWALLS)}")
    has_any_iptables = any(which(f"{f}tables-{m}-restore")
                           for f in ("ip", "ip6") for m in ("nft", "legacy"))
    if not has_any_iptables and which("nft"):
        return NftablesFirewall()
    return IptablesFirewall(detect_iptables_mode(), lock_wait)


def all_backends(lock_wait: int = 5) -> list[Firewall]:
    """Every backend whose programs exist here (to find leftovers of any kind)."""
    out: list[Firewall] = []
    for fw in (IptablesFirewall("legacy", lock_wait), IptablesFirewall("nft", lock_wait),
               NftablesFirewall()):
        if all(which(b) for b in fw.binaries({4})):
            out.append(fw)
    return out
