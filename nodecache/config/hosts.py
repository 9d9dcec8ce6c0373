"""The ``hosts`` directive -> :class:`HostsSettings` (see :mod:`nodecache.core.stages.hosts`)."""
from __future__ import annotations

from nodecache.config.args import Args, no_block
from nodecache.config.context import BlockContext
from nodecache.config.lexer import Token
from nodecache.config.parser import Directive
from nodecache.core.stages.hosts import HostsSettings, parse_address

MAX_TTL = 65535  # s, CoreDNS's bound on hosts' ttl
_OPTIONS = ("ttl", "no_reverse", "reload", "fallthrough")


def parse_hosts(line: Directive, ctx: BlockContext) -> HostsSettings:
    # hosts [FILE [ZONES...]] {
    #     [INLINE]
    #     ttl SECONDS
    #     no_reverse
    #     reload DURATION
    #     fallthrough [ZONES...]
    # }
    # A line of the block that is not an option is an inline entry
    # (ADDRESS NAME...), as long as no fallthrough came before it.
    defaults = HostsSettings()
    args = Args("hosts", line)
    path = defaults.path
    if len(args):
        path = args.take("a FILE").text
    zones: list[str] = []
    while len(args):
        zones.extend(args.zones("a zone"))
    ttl, reload, reverse = defaults.ttl, defaults.reload, defaults.reverse
    fallthrough: tuple[str, ...] | None = None
    inline: list[str] = []
    seen: dict[str, Token] = {}
    for option in line.body or ():
        name = option.name.text
        no_block("hosts", option)
        opt = Args("hosts", option)
        if name in _OPTIONS and not option.name.quoted:
            if name in seen:
                first = seen[name]
                raise option.name.error(f"hosts: option {name!r} given twice"
                                        f" (first at {first.file}:{first.line}:{first.column})")
            seen[name] = option.name
        if name == "ttl":
            ttl = opt.integer(f"a TTL in seconds from 1 to {MAX_TTL}", 1, MAX_TTL)
            opt.end()
        elif name == "no_reverse":
            opt.end()
            reverse = False
        elif name == "reload":
            reload = opt.duration("a DURATION (0s never re-reads the file)")
            opt.end()
        elif name == "fallthrough":
            found: list[str] = []
            while len(opt):
                found.extend(opt.zones("a zone"))
            fallthrough = tuple(found) or (".",)
        else:
            if fallthrough is not None:
                raise option.name.error(
                    f"hosts: expected an option ({', '.join(_OPTIONS)}), found {name!r}"
                    " (inline entries must come before fallthrough)")
            if parse_address(name) is None:
                raise option.name.error(
                    f"hosts: expected an option ({', '.join(_OPTIONS)}) or an entry"
                    f" 'ADDRESS NAME...', found {name!r}")
            if not option.args:
                raise option.name.error(f"hosts: expected a NAME after {name!r}, found end of line")
            inline.append(" ".join(t.text for t in (option.name, *option.args)))
    return HostsSettings(path=path, zones=tuple(dict.fromkeys(zones)) or ctx.zones,
                         inline=tuple(inline), ttl=ttl, reload=reload, reverse=reverse,
                         fallthrough=fallthrough)
