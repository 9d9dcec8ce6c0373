"""template: answer questions from regular expressions and record templates.

Syntax::

    template CLASS TYPE [ZONE...] {
        match REGEX...
        answer RR...
        additional RR...
        authority RR...
        rcode RCODE
        ederror CODE [TEXT]
        fallthrough [ZONE...]
    }

Several ``template`` lines in one block are tried in order. An RR is a
zone-file line (``NAME [TTL] [CLASS] TYPE RDATA``; TTL 3600 and class IN
when left out; a name without the final dot is under the root, as in
miekg/dns's ``NewRR``) with placeholders of Go's text/template:
``{{ .Name }}``, ``{{ .Zone }}``, ``{{ .Class }}``, ``{{ .Type }}``,
``{{ .Regex }}``, ``{{ .Remote }}``, ``{{ .Group.NAME }}``,
``{{ index .Match N }}``, ``{{ index .Group "NAME" }}`` and
``{{ parseInt .Group.NAME BASE BITS }}`` (or of an ``(index ...)``). Anything else is
refused when the Corefile is read (:func:`compile_text`), as is a group that
a ``match`` expression does not define.

Behaviour (CoreDNS 1.13):

- A name outside every template's zones is handed on.
- Each template whose zone, class (or ANY) and type (or ANY) fit and one of
  whose ``match`` expressions (default ``.*``, searched in the lower-case
  name) matches answers: RCODE ``rcode`` (default NOERROR), AA set, its
  records rendered from the match. ``rcode SERVFAIL`` answers SERVFAIL with
  no records, and so does a record that does not render to a valid RR.
- A template whose zone, class and type fit but no expression matches hands
  the question to the next template when its ``fallthrough`` covers the name;
  otherwise the client gets SERVFAIL. Templates that do not fit are skipped;
  when none answered, the question is handed on.

- ``ederror`` adds an OPT record to the answer (size 4096, DO set, as
  CoreDNS's ``SetEdns0(4096, true)``) with an Extended DNS Error option
  (RFC 8914: INFO-CODE CODE, EXTRA-TEXT TEXT). Like every OPT a plugin
  writes, it is not what the client gets: the reply carries the server's OPT
  for the client, as node-cache's cache does (it drops the answer's OPT
  before storing and replying). It counts as a record for ``rewrite rcode``.

For an A or AAAA question, the target of every CNAME answered is looked up
through the whole server (cache, chain, forward) and its records appended,
before the reply is cached.

Metrics: :attr:`TemplateStage.matches` and :attr:`TemplateStage.failures`
count what CoreDNS's ``coredns_template_matches_total`` and
``coredns_template_template_failures_total`` count.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import dns.edns
import dns.exception
import dns.flags
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from nodecache.core.chain import Answer, Failure, Request, Step, is_under, longest_zone, reply_to
from nodecache.core import wire
from nodecache.core.wire import SERVFAIL

DEFAULT_TTL = 3600  # s, what miekg/dns gives a record line without one
_EDE_PAYLOAD = 4096  # bytes, the OPT size CoreDNS's template gives an ederror answer

#: The placeholders :func:`compile_text` accepts, for error messages.
SUPPORTED = ("{{ .Name }}", "{{ .Zone }}", "{{ .Class }}", "{{ .Type }}", "{{ .Regex }}",
             "{{ .Remote }}", "{{ .Group.NAME }}", "{{ index .Match N }}",
             '{{ index .Group "NAME" }}', "{{ parseInt .Group.NAME BASE BITS }}")


@dataclass(frozen=True)
class Data:
    """What a record template is rendered from (CoreDNS's templateData)."""

    name: str
    zone: str
    regex: str
    match: tuple[str, ...]
    group: dict[str, str]
    qclass: str
    qtype: str
    remote: str


#: A compiled record template: data -> record text.
Render = Callable[[Data], str]


_ACTION = re.compile(r"\{\{(-\s)?\s*(.*?)\s*(\s-)?\}\}", re.S)
_FIELDS: dict[str, Callable[[Data], str]] = {
    ".Name": lambda d: d.name, ".Zone": lambda d: d.zone, ".Class": lambda d: d.qclass,
    ".Type": lambda d: d.qtype, ".Regex": lambda d: d.regex, ".Remote": lambda d: d.remote,
}
_GROUP_FIELD = re.compile(r"\.Group\.([A-Za-z0-9_]+)")
_INDEX_MATCH = re.compile(r"index\s+\.Match\s+([0-9]+)")
_INDEX_GROUP = re.compile(r'index\s+\.Group\s+"([^"\\]*)"')
#: ``parseInt ARG BASE BITS`` (Go's strconv.ParseUint), ARG a group or ``(index ...)``.
_PARSE_INT = re.compile(r"parseInt\s+(\.Group\.[A-Za-z0-9_]+|\((index\s+[^()]*)\))"
                        r"\s+([0-9]+)\s+([0-9]+)")


@dataclass(frozen=True)
class Placeholder:
    """One ``{{ }}`` action: where it is in the text and which group it needs."""

    get: Callable[[Data], str]
    #: A group name or number the action reads; "" for plain fields.
    group: str = ""
    #: An ``index .Match N``: the group number (-1 when none).
    index: int = -1


def compile_text(text: str) -> tuple[Render, tuple[Placeholder, ...]]:
    """A record template -> a renderer, plus its placeholders (for config checks).

    Raises ``ValueError`` naming the first action that is not supported.
    """
    parts: list[str | Placeholder] = []
    position = 0
    for found in _ACTION.finditer(text):
        literal = text[position:found.start()]
        if found.group(1):
            literal = literal.rstrip()
        parts.append(literal)
        parts.append(_placeholder(found.group(2), found.group(0)))
        position = found.end()
        if found.group(3):
            rest = text[position:]
            position += len(rest) - len(rest.lstrip())
    tail = text[position:]
    if "{{" in tail or "}}" in tail:
        raise ValueError(f"unbalanced '{{{{' or '}}}}' in {text!r}")
    parts.append(tail)
    pieces = tuple(parts)

    def render(data: Data) -> str:
        return "".join(p if isinstance(p, str) else p.get(data) for p in pieces)

    return render, tuple(p for p in pieces if isinstance(p, Placeholder))


def _placeholder(action: str, shown: str) -> Placeholder:
    found = _PARSE_INT.fullmatch(action)
    if found:
        inner = _placeholder(found.group(2) or found.group(1), shown)
        base, bits = int(found.group(3)), int(found.group(4))
        if base not in (0, *range(2, 37)) or not 0 < bits <= 64:
            raise ValueError(f"parseInt needs a base of 0 or 2 to 36 and 1 to 64 bits: {shown!r}")
        return Placeholder(lambda d: _parse_uint(inner.get(d), base, bits),
                           inner.group, inner.index)
    getter = _FIELDS.get(action)
    if getter is not None:
        return Placeholder(getter)
    found = _GROUP_FIELD.fullmatch(action) or _INDEX_GROUP.fullmatch(action)
    if found:
        key = found.group(1)
        return Placeholder(lambda d: d.group[key], group=key)
    found = _INDEX_MATCH.fullmatch(action)
    if found:
        number = int(found.group(1))
        return Placeholder(lambda d: d.match[number], index=number)
    raise ValueError(f"unsupported placeholder {shown!r} (supported: {', '.join(SUPPORTED)})")


def _parse_uint(text: str, base: int, bits: int) -> str:
    """Go's ``strconv.ParseUint`` printed in decimal; ``ValueError`` as Go's error."""
    value = int(text, base)  # ValueError on a bad digit, as Go
    if value < 0 or value >= 1 << bits or text.startswith(("+", "-")):
        raise ValueError(f"{text!r} is out of range for {bits} bits")
    return str(value)


@dataclass(frozen=True)
class Template:
    """One ``template`` line of a block."""

    qclass: int
    qtype: int
    zones: tuple[str, ...]
    #: The ``match`` expressions, source text (Go RE2 syntax that Python reads alike).
    match: tuple[str, ...] = (".*",)
    answer: tuple[str, ...] = ()
    additional: tuple[str, ...] = ()
    authority: tuple[str, ...] = ()
    rcode: int = 0
    fallthrough: tuple[str, ...] | None = None
    #: ``ederror CODE TEXT``: the RFC 8914 INFO-CODE and EXTRA-TEXT ("" for none).
    ederror: tuple[int, str] | None = None


@dataclass(frozen=True)
class _Compiled:
    template: Template
    regexes: tuple[re.Pattern[str], ...]
    #: (section, renderer) per record: 0 answer, 1 authority, 2 additional.
    records: tuple[tuple[int, Render], ...]

    @classmethod
    def of(cls, template: Template) -> _Compiled:
        records = tuple((section, compile_text(text)[0])
                        for section, texts in ((0, template.answer), (2, template.additional),
                                               (1, template.authority))
                        for text in texts)
        return cls(template, tuple(re.compile(r) for r in template.match), records)


def parse_record(text: str) -> dns.rrset.RRset:
    """A zone-file line as miekg/dns's ``NewRR`` reads it (origin ``.``). Raises ``ValueError``."""
    words = text.split(None, 1)
    if len(words) < 2:
        raise ValueError(f"not a resource record: {text!r}")
    owner, rest = words
    ttl, rdclass = DEFAULT_TTL, dns.rdataclass.IN
    while True:
        words = rest.split(None, 1)
        head, tail = (words[0], words[1]) if len(words) == 2 else (rest.strip(), "")
        if head.isdigit():
            ttl = int(head)
        elif head.upper() in ("IN", "CH", "HS", "CS", "ANY", "NONE") or head.upper().startswith(
                "CLASS"):
            rdclass = dns.rdataclass.from_text(head)
        else:
            break
        rest = tail
    try:
        # NewRR reads the line with the root as $ORIGIN: "foo" is "foo."
        name = dns.name.from_text(owner, origin=dns.name.root)
        rdtype = dns.rdatatype.from_text(head)
        rdata = dns.rdata.from_text(rdclass, rdtype, tail, origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError) as exc:
        raise ValueError(f"not a resource record: {text!r} ({exc})") from None
    rrset = dns.rrset.RRset(name, rdclass, rdtype)
    rrset.add(rdata, ttl)
    return rrset


class TemplateStage:
    """The template plugin (all ``template`` lines of a block); see the module docstring."""

    name = "template"

    def __init__(self, templates: Sequence[Template]) -> None:
        self.templates = tuple(_Compiled.of(t) for t in templates)
        self.zones = tuple(z for t in templates for z in t.zones)
        #: Questions answered, per template index.
        self.matches = [0] * len(self.templates)
        #: Records that did not render to a valid RR.
        self.failures = 0

    def serve(self, request: Request) -> Step:
        name = request.name
        if longest_zone(name, self.zones) is None:
            return None
        for number, compiled in enumerate(self.templates):
            template = compiled.template
            zone = longest_zone(name, template.zones)
            if zone is None:
                continue
            if template.qclass != 255 and request.qclass != 255 and request.qclass != template.qclass:
                continue
            if template.qtype != 255 and request.qtype != 255 and request.qtype != template.qtype:
                continue
            for pattern in compiled.regexes:
                found = pattern.search(name)
                if found is not None:
                    self.matches[number] += 1
                    return self._answer(request, compiled, zone, pattern, found)
            if template.fallthrough is None or not any(
                    is_under(name, z) for z in template.fallthrough):
                return Failure(SERVFAIL)
        return None

    def _answer(self, request: Request, compiled: _Compiled, zone: str,
                pattern: re.Pattern[str], found: re.Match[str]) -> Step:
        template = compiled.template
        if template.rcode == SERVFAIL:
            return Failure(SERVFAIL)
        groups = tuple(g or "" for g in (found.group(0), *found.groups()))
        group = {str(i): g for i, g in enumerate(groups)}
        group.update({k: v or "" for k, v in found.groupdict().items()})
        data = Data(request.name, zone, pattern.pattern, groups, group,
                    wire.class_name(request.qclass if request.qclass != 255 else template.qclass),
                    wire.type_name(request.qtype if request.qtype != 255 else template.qtype),
                    request.remote)
        message = reply_to(request, template.rcode)
        sections = (message.answer, message.authority, message.additional)
        for section, render in compiled.records:
            try:
                rrset = parse_record(render(data))
            except (ValueError, KeyError, IndexError):
                self.failures += 1
                return Failure(SERVFAIL)
            sections[section].append(rrset)
        if template.ederror is not None:
            code, text = template.ederror
            message.use_edns(0, dns.flags.DO, _EDE_PAYLOAD,
                             options=[dns.edns.EDEOption(dns.edns.EDECode.make(code), text or None)])
        targets: tuple[str, ...] = ()
        if request.qtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            # CoreDNS resolves each answered CNAME's target and appends its records.
            targets = tuple(rdata.target.to_text() for rrset in message.answer
                            if rrset.rdtype == dns.rdatatype.CNAME for rdata in rrset)
        return Answer(message, targets)
