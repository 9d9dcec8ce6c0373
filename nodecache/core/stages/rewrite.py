"""rewrite: change the question before the later plugins see it, and map the reply back.

Syntax (each ``rewrite`` line is one rule; the rules run in the order written)::

    rewrite [continue|stop] name [exact|prefix|suffix|substring|regex] FROM TO
            [answer auto | answer name FROM TO | answer value FROM TO ...]
    rewrite [continue|stop] type FROM TO
    rewrite [continue|stop] class FROM TO
    rewrite [continue|stop] ttl [exact|prefix|suffix|substring|regex] NAME TTL|[MIN]-[MAX]
    rewrite [continue|stop] rcode [exact|prefix|suffix|substring|regex] NAME FROM TO
    rewrite [continue|stop] edns0 local|nsid|subnet ...   # see nodecache.core.stages.edns0
    rewrite [continue|stop] { RULE... }     # the rule's words spread over lines

Behaviour (CoreDNS 1.13):

- A rule that matches changes the question (name, type or class); a
  ``stop`` rule (the default) ends the rules, a ``continue`` rule lets the
  next ones see the changed question. A rule matches against the question as
  the previous rules left it.
- FROM and TO of the non-regex name rules are made absolute and lower case
  (so ``prefix foo`` means the text ``foo.``); regex TO may use ``{N}``
  for the groups; ``exact`` rules always map the answer names back.
- The reply's question is the client's. ``answer auto`` turns the rewritten
  name back into the client's in owner names and in the names inside
  records (CNAME, SRV, MX, NS, DNAME, NAPTR, SOA MNAME, PTR); ``answer
  name`` and ``answer value`` do it by regular expression; ``ttl`` clamps
  TTLs. These run on every record, the last rule's first.
- ``rcode`` changes the reply's RCODE FROM to TO (a mnemonic or 0 to 23)
  for the names it matches. Like CoreDNS it runs once per record of the
  reply (the OPT record counts): a reply without records keeps its RCODE.
- When a ``stop`` rule applied, a failure a later plugin returns without
  writing a reply (template's SERVFAIL, REFUSED) is written by rewrite,
  as in CoreDNS: an empty reply (with an OPT when the query has one), which
  the rules map (``rcode``) and the cache stores like any answer. After
  ``continue`` rules only, the failure stays unwritten.
- A rewritten name that is not a valid domain name: SERVFAIL.

Metrics: none (CoreDNS's rewrite has none).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

import dns.exception
import dns.name
import dns.rdatatype
import dns.rrset

from nodecache.core.chain import Failure, RcodeMap, RecordRule, Request, Rewritten, Step
from nodecache.core.stages.edns0 import Edns0Rule, apply_edns0
from nodecache.core.wire import SERVFAIL

#: A text name -> the name a rule turns it into (itself when the rule does not apply).
Rename = Callable[[str], str]

MATCH_TYPES = ("exact", "prefix", "suffix", "substring", "regex")

#: Record types whose RDATA holds the name ``answer value`` / ``answer auto`` rewrite,
#: and the field it is in.
_VALUE_FIELDS = {
    dns.rdatatype.SRV: "target", dns.rdatatype.MX: "exchange", dns.rdatatype.CNAME: "target",
    dns.rdatatype.NS: "target", dns.rdatatype.DNAME: "target",
    dns.rdatatype.NAPTR: "replacement", dns.rdatatype.SOA: "mname", dns.rdatatype.PTR: "target",
}


@dataclass(frozen=True)
class AnswerRule:
    """``answer name|value FROM TO``: FROM a regex, TO with ``{N}`` groups."""

    field: str
    pattern: re.Pattern[str]
    replacement: str


@dataclass(frozen=True)
class NameRule:
    mode: str
    match: str
    source: str
    target: str
    auto: bool = False
    answers: tuple[AnswerRule, ...] = ()
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class TypeRule:
    """``type`` (``field`` "qtype") and ``class`` (``field`` "qclass") rules."""

    mode: str
    field: str
    source: int
    target: int


@dataclass(frozen=True)
class TtlRule:
    mode: str
    match: str
    source: str
    low: int
    high: int
    pattern: re.Pattern[str] | None = None


@dataclass(frozen=True)
class RcodeRule:
    mode: str
    match: str
    source: str
    #: The reply's RCODE this rule turns into ``new``.
    old: int
    new: int
    pattern: re.Pattern[str] | None = None


Rule = NameRule | TypeRule | TtlRule | RcodeRule | Edns0Rule


def expand(replacement: str, groups: tuple[str, ...]) -> str:
    """``{N}`` -> group N (CoreDNS replaces every ``{N}`` it finds, in order)."""
    for number, value in enumerate(groups):
        replacement = replacement.replace("{" + str(number) + "}", value)
    return replacement


def _groups(found: re.Match[str]) -> tuple[str, ...]:
    return tuple(g or "" for g in (found.group(0), *found.groups()))


def _remap(source: str, target: str) -> RecordRule:
    """``answer auto``: ``source`` and names ending in ``.source`` get ``target`` instead."""
    def rename(name: str) -> str:
        if name == source:
            return target
        if name.endswith("." + source):
            return name[:len(name) - len(source)] + target
        return name
    return _both(rename)


def _suffix_back(replacement: str, suffix: str) -> RecordRule:
    def rename(name: str) -> str:
        return name[:len(name) - len(replacement)] + suffix if name.endswith(replacement) else name
    return _both(rename)


def _by_regex(rule: AnswerRule) -> RecordRule:
    def rename(name: str) -> str:
        found = rule.pattern.search(name)
        return name if found is None else expand(rule.replacement, _groups(found))
    return _owner(rename) if rule.field == "name" else _value(rename)


def _owner(rename: Rename) -> RecordRule:
    def apply(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        text = rrset.name.to_text()
        new = rename(text)
        if new == text:
            return rrset
        out = dns.rrset.RRset(dns.name.from_text(new), rrset.rdclass, rrset.rdtype, rrset.covers)
        out.update(rrset)
        return out
    return apply


def _value(rename: Rename) -> RecordRule:
    def apply(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        attribute = _VALUE_FIELDS.get(rrset.rdtype)
        if attribute is None:
            return rrset
        out = dns.rrset.RRset(rrset.name, rrset.rdclass, rrset.rdtype, rrset.covers)
        for rdata in rrset:
            text = getattr(rdata, attribute).to_text()
            new = rename(text)
            if new != text:
                rdata = rdata.replace(**{attribute: dns.name.from_text(new)})
            out.add(rdata, rrset.ttl)
        return out
    return apply


def _both(rename: Rename) -> RecordRule:
    owner, value = _owner(rename), _value(rename)

    def apply(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        return value(owner(rrset))
    return apply


def _clamp(low: int, high: int) -> RecordRule:
    def apply(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
        if rrset.ttl < low:
            rrset.ttl = low
        elif rrset.ttl > high:
            rrset.ttl = high
        return rrset
    return apply


def _name_matches(match: str, source: str, pattern: re.Pattern[str] | None, name: str) -> bool:
    if match == "exact":
        return name == source
    if match == "prefix":
        return name.startswith(source)
    if match == "suffix":
        return name.endswith(source)
    if match == "substring":
        return source in name
    assert pattern is not None
    return pattern.search(name) is not None


def apply_rule(rule: Rule, request: Request) -> tuple[Request, tuple[RecordRule | RcodeMap, ...]] | None:
    """The request after ``rule`` and the reply rules it adds; None when it does not match."""
    name = request.name
    if isinstance(rule, Edns0Rule):
        changed = apply_edns0(rule, request)
        return None if changed is None else (changed, ())
    if isinstance(rule, RcodeRule):
        if not _name_matches(rule.match, rule.source, rule.pattern, name):
            return None
        return request, (RcodeMap(rule.old, rule.new),)
    if isinstance(rule, TypeRule):
        if getattr(request, rule.field) != rule.source:
            return None
        return _replace(request, rule.field, rule.target), ()
    if isinstance(rule, TtlRule):
        if not _name_matches(rule.match, rule.source, rule.pattern, name):
            return None
        return request, (_clamp(rule.low, rule.high),)
    if rule.match == "regex":
        assert rule.pattern is not None
        found = rule.pattern.search(name)
        if found is None:
            return None
        new = expand(rule.target, _groups(found))
    elif not _name_matches(rule.match, rule.source, None, name):
        return None
    elif rule.match == "exact":
        new = rule.target
    elif rule.match == "prefix":
        new = rule.target + name[len(rule.source):]
    elif rule.match == "suffix":
        new = name[:len(name) - len(rule.source)] + rule.target
    else:
        new = name.replace(rule.source, rule.target)
    rules: list[RecordRule | RcodeMap] = []
    if rule.match == "exact" or (rule.auto and rule.match != "suffix"):
        rules.append(_remap(new, name))
    elif rule.auto:
        rules.append(_suffix_back(rule.target, rule.source))
    rules.extend(_by_regex(a) for a in rule.answers)
    return request.renamed(new), tuple(rules)


def _replace(request: Request, field: str, value: int) -> Request:
    return replace(request, qtype=value) if field == "qtype" else replace(request, qclass=value)


class RewriteStage:
    """The rewrite plugin (all ``rewrite`` lines of a block); see the module docstring."""

    name = "rewrite"

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        self.rules = rules

    def serve(self, request: Request) -> Step:
        current = request
        replies: list[RecordRule | RcodeMap] = []
        matched = False
        for rule in self.rules:
            result = apply_rule(rule, current)
            if result is None:
                continue
            matched = True
            current, more = result
            if current.name != request.name and not _valid(current.name):
                return Failure(SERVFAIL)
            replies.extend(more)
            if rule.mode == "stop":
                # CoreDNS's rewrite then writes the failures the next plugins return.
                return Rewritten(current, tuple(replies), writes_failures=True)
        if not matched:
            return None
        return Rewritten(current, tuple(replies))


def _valid(name: str) -> bool:
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException:
        return False
    return name.endswith(".")
