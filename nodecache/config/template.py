"""The ``template`` directive -> :class:`Template` (see :mod:`nodecache.core.stages.template`)."""
from __future__ import annotations

import re

from nodecache.config import values
from nodecache.config.args import Args, options
from nodecache.config.context import BlockContext
from nodecache.config.lexer import Token
from nodecache.config.parser import Directive
from nodecache.core.stages.template import Placeholder, Template, compile_text

_OPTIONS = ("match", "answer", "additional", "authority", "rcode", "ederror", "fallthrough")
_REPEATABLE = ("match", "answer", "additional", "authority")


def parse_template(line: Directive, ctx: BlockContext) -> tuple[Template, ...]:
    # template CLASS TYPE [ZONE...] {
    #     match REGEX...
    #     answer RR...
    #     additional RR...
    #     authority RR...
    #     rcode RCODE
    #     ederror CODE [TEXT]
    #     fallthrough [ZONE...]
    # }
    # Several template lines may be in one block; each gives one Template.
    args = Args("template", line)
    qclass = args.value("a CLASS (IN, CH, ANY...)", values.rdclass)
    qtype = args.value("a TYPE (A, AAAA, ANY...)", values.rdtype)
    zones: list[str] = []
    while len(args):
        zones.extend(args.zones("a zone"))
    lists: dict[str, list[str]] = {name: [] for name in _REPEATABLE}
    regexes: list[re.Pattern[str]] = []
    placeholders: list[tuple[Placeholder, Token]] = []
    rcode = 0
    ederror: tuple[int, str] | None = None
    fallthrough: tuple[str, ...] | None = None
    # rcode, ederror or fallthrough given twice: the last one counts, as in CoreDNS.
    for name, opt in options("template", line, (*_OPTIONS, "upstream"),
                             repeatable=(*_REPEATABLE, "rcode", "ederror", "fallthrough")):
        if name == "upstream":
            list(opt.rest())  # deprecated; CoreDNS ignores it too
        elif name == "match":
            if not len(opt):
                raise opt.error("a REGEX")
            for tok in opt.rest():
                try:
                    regexes.append(re.compile(tok.text))
                except re.error as exc:
                    raise tok.error(f"template: expected a REGEX after 'match', found"
                                    f" {tok.text!r} ({exc})") from None
                lists["match"].append(tok.text)
        elif name in ("answer", "additional", "authority"):
            if not len(opt):
                raise opt.error("an RR such as '{{ .Name }} 60 IN A 192.0.2.1'")
            for tok in opt.rest():
                try:
                    _render, found = compile_text(tok.text)
                except ValueError as exc:
                    raise tok.error(f"template: {exc}") from None
                placeholders.extend((p, tok) for p in found)
                lists[name].append(tok.text)
        elif name == "rcode":
            rcode = opt.value("an RCODE (NOERROR, NXDOMAIN, SERVFAIL, REFUSED...)", values.rcode)
            opt.end()
        elif name == "ederror":
            # RFC 8914 section 2: INFO-CODE is 16 bits; EXTRA-TEXT is free UTF-8 text.
            code = opt.integer("an extended DNS error code (0 to 65535)", 0, 0xFFFF)
            text = opt.peek()
            if text is not None:
                opt.take("an EXTRA-TEXT")
            opt.end()
            ederror = (code, "" if text is None else text.text)
        else:
            found_zones: list[str] = []
            while len(opt):
                found_zones.extend(opt.zones("a zone"))
            fallthrough = tuple(found_zones) or (".",)
    for placeholder, tok in placeholders:
        group, index = placeholder.group, placeholder.index
        for pattern in regexes or [re.compile(".*")]:
            if index > pattern.groups or (group and not group.isdigit()
                                          and group not in pattern.groupindex) \
                    or (group.isdigit() and int(group) > pattern.groups):
                what = f"group {group!r}" if group else f"match {index}"
                raise tok.error(f"template: {what} is not defined by 'match {pattern.pattern}'"
                                " (it would render as text in the answer)")
    return (Template(qclass, qtype, tuple(dict.fromkeys(zones)) or ctx.zones,
                     tuple(lists["match"]) or (".*",), tuple(lists["answer"]),
                     tuple(lists["additional"]), tuple(lists["authority"]), rcode, fallthrough,
                     ederror),)

