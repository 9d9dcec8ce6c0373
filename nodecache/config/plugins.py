"""Directive name -> parser, and the parsers of the small plugins.

Each parser takes the directive's line and its block's context and returns
the value of one :class:`ServerBlock` field. Anything not listed in
:data:`PLUGINS` is refused: a Corefile that asks for ``rewrite`` must not
silently run without it.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from nodecache.config import values
from nodecache.config.args import Args, no_block, options
from nodecache.config.bind import parse_bind
from nodecache.config.cache import parse_cache
from nodecache.config.context import BlockContext
from nodecache.config.errors import parse_errors
from nodecache.config.forward import parse_forward
from nodecache.config.parser import Directive
from nodecache.config.settings import HealthSettings, LogSettings, ReloadSettings
from nodecache.config.timeouts import parse_timeouts

DEFAULT_PROMETHEUS = "localhost:9153"
DEFAULT_HEALTH = ":8080"
DEFAULT_READY = ":8181"
MIN_RELOAD_INTERVAL = 2.0  # s
MIN_RELOAD_JITTER = 1.0  # s

# CoreDNS's log formats; None stands for {common}, the default.
COMMON_LOG_FORMAT = ('{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do}'
                     ' {>bufsize}" {rcode} {>rflags} {rsize} {duration}')
COMBINED_LOG_FORMAT = COMMON_LOG_FORMAT + ' "{>opcode}"'
LOG_CLASSES = ("success", "denial", "error", "all")
#: RFC 6891 section 6.2.5: below 512 is treated as 512; CoreDNS's upper bound.
MIN_BUFSIZE, MAX_BUFSIZE = 512, 4096  # bytes
#: DNS Flag Day 2020: no IP fragmentation on the usual paths.
DEFAULT_BUFSIZE = 1232  # bytes


def parse_flag(plugin: str) -> Callable[[Directive, BlockContext], bool]:
    """Parser for a plugin that takes no arguments and no block (debug, loop)."""

    def parse(line: Directive, ctx: BlockContext) -> bool:
        # PLUGIN
        no_block(plugin, line)
        Args(plugin, line).end()
        return True

    return parse


def parse_bufsize(line: Directive, ctx: BlockContext) -> int:
    # bufsize [SIZE]
    no_block("bufsize", line)
    args = Args("bufsize", line)
    size = DEFAULT_BUFSIZE
    if len(args):
        size = args.integer(f"a SIZE from {MIN_BUFSIZE} to {MAX_BUFSIZE} bytes",
                            minimum=MIN_BUFSIZE, maximum=MAX_BUFSIZE)
    args.end()
    return size


def parse_loadbalance(line: Directive, ctx: BlockContext) -> bool:
    # loadbalance [round_robin]
    no_block("loadbalance", line)
    args = Args("loadbalance", line)
    if len(args):
        args.value("'round_robin' (the only policy supported)", str, lambda p: p == "round_robin")
    args.end()
    return True


def parse_log(line: Directive, ctx: BlockContext) -> LogSettings:
    # log [NAMES...] [FORMAT] {
    #     class success|denial|error|all...
    # }
    # The last argument is the FORMAT when it has a placeholder such as {common};
    # the others are the zones to log.
    args = Args("log", line)
    words = list(line.args)
    fmt_tok = words.pop() if words and "{" in words[-1].text else None
    zones: list[str] = []
    for _ in words:
        zones.extend(args.zones("a zone NAME"))
    fmt: str | None = None
    if fmt_tok is not None:
        args.take("a FORMAT")
        if fmt_tok.text != "{common}":
            fmt = (fmt_tok.text.replace("{combined}", COMBINED_LOG_FORMAT)
                   .replace("{common}", COMMON_LOG_FORMAT))
    classes = LogSettings().classes
    for _name, opt in options("log", line, ("class",)):
        chosen: set[str] = set()
        chosen.add(opt.value("a CLASS (success, denial, error or all)", str,
                             lambda c: c in LOG_CLASSES))
        while len(opt):
            chosen.add(opt.value("a CLASS (success, denial, error or all)", str,
                                 lambda c: c in LOG_CLASSES))
        classes = frozenset({"success", "denial", "error"}) if "all" in chosen else frozenset(chosen)
    return LogSettings(classes=classes, format=fmt, zones=tuple(dict.fromkeys(zones)))


def parse_address_plugin(plugin: str, default: str) -> Callable[[Directive, BlockContext], str]:
    """Parser for ``PLUGIN [ADDRESS]`` (prometheus, ready)."""

    def parse(line: Directive, ctx: BlockContext) -> str:
        # PLUGIN [ADDRESS]
        no_block(plugin, line)
        args = Args(plugin, line)
        address = default
        if len(args):
            address = args.value("an ADDRESS as HOST:PORT", values.listen_address, explain=True)
        args.end()
        return address

    return parse


def parse_health(line: Directive, ctx: BlockContext) -> HealthSettings:
    # health [ADDRESS] {
    #     lameduck DURATION
    # }
    args = Args("health", line)
    address = DEFAULT_HEALTH
    if len(args):
        address = args.value("an ADDRESS as HOST:PORT", values.listen_address, explain=True)
    args.end()
    lameduck = 0.0
    for _name, opt in options("health", line, ("lameduck",)):
        lameduck = opt.duration("a DURATION")
        opt.end()
    return HealthSettings(address=address, lameduck=lameduck)


def parse_reload(line: Directive, ctx: BlockContext) -> ReloadSettings:
    # reload [INTERVAL [JITTER]]
    no_block("reload", line)
    args = Args("reload", line)
    defaults = ReloadSettings()
    interval, jitter = defaults.interval, defaults.jitter
    if len(args):
        interval = args.duration("an INTERVAL of at least 2s", minimum=MIN_RELOAD_INTERVAL)
    if len(args):
        jitter = args.duration("a JITTER of at least 1s", minimum=MIN_RELOAD_JITTER)
    args.end()
    # CoreDNS caps the jitter at half the interval, so checks never bunch up.
    return ReloadSettings(interval=interval, jitter=min(jitter, interval / 2))


def parser_in(module: str) -> Callable[[Directive, BlockContext], Any]:
    """``nodecache.config.<module>.parse_<module>``, imported when a Corefile uses it: the
    answering plugins' settings live in their stages, which load dnspython (about 2 MB of
    a worker's memory, :mod:`nodecache.core.stages`)."""

    def parse(line: Directive, ctx: BlockContext) -> Any:
        return getattr(importlib.import_module(f"nodecache.config.{module}"),
                       f"parse_{module}")(line, ctx)

    return parse


#: Directive name -> (ServerBlock field, parser).
PLUGINS: dict[str, tuple[str, Callable[[Directive, BlockContext], Any]]] = {
    "bind": ("bind_lines", parse_bind),
    "bufsize": ("bufsize", parse_bufsize),
    "cache": ("cache", parse_cache),
    "debug": ("debug", parse_flag("debug")),
    "errors": ("errors", parse_errors),
    "forward": ("forward", parse_forward),
    "health": ("health", parse_health),
    "loadbalance": ("loadbalance", parse_loadbalance),
    "log": ("log", parse_log),
    "loop": ("loop", parse_flag("loop")),
    "prometheus": ("prometheus", parse_address_plugin("prometheus", DEFAULT_PROMETHEUS)),
    "ready": ("ready", parse_address_plugin("ready", DEFAULT_READY)),
    "timeouts": ("timeouts", parse_timeouts),
    "reload": ("reload", parse_reload),
    "hosts": ("hosts", parser_in("hosts")),
    "template": ("template", parser_in("template")),
    "rewrite": ("rewrite", parser_in("rewrite")),
    "dns64": ("dns64", parser_in("dns64")),
    "whoami": ("whoami", parse_flag("whoami")),
}

#: Plugins that may appear several times in a block; their parsers return
#: tuples, which are joined in the order written.
REPEATABLE = frozenset({"bind", "template", "rewrite"})

#: node-cache's plugins that nodecache does not have: what to use instead.
NOT_IMPLEMENTED = {
    "dnstap": "use 'log' for a line per query, or capture with tcpdump on the node",
    "metadata": "no nodecache plugin reads metadata; remove the line",
    "pprof": "profile the Python process with py-spy instead",
    "trace": "use 'log' and the coredns_dns_request_duration_seconds metrics instead",
}
