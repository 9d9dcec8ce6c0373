"""The ``cache`` directive -> :class:`CacheSettings` (NODELOCAL.md section 3)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nodecache.config import values
from nodecache.config.args import Args, options
from nodecache.config.context import BlockContext
from nodecache.config.lexer import Token
from nodecache.config.parser import Directive
from nodecache.config.settings import CacheSettings

#: RFC 2308 section 7.1: SERVFAIL must not be cached longer than 5 minutes.
MAX_SERVFAIL_TTL = 300  # s
#: serve_stale's DURATION when only ``serve_stale`` is given.
DEFAULT_SERVE_STALE = 3600.0  # s

_OPTIONS = ("success", "denial", "prefetch", "serve_stale", "servfail", "disable", "keepttl")


@dataclass
class _Ttls:
    """One of the two caches while its line is being read."""

    capacity: int
    max_ttl: int
    min_ttl: int
    min_given: bool = False

    def set_max(self, ttl: int) -> None:
        self.max_ttl = ttl
        # CoreDNS keeps the default MINTTL (5s) even under ``cache 3`` and then
        # clamps answers *up* past the maximum; lowering it keeps min <= max.
        if not self.min_given:
            self.min_ttl = min(self.min_ttl, ttl)


def parse_cache(line: Directive, ctx: BlockContext) -> CacheSettings:
    # cache [TTL] [ZONES...] {
    #     success CAPACITY [TTL [MINTTL]]
    #     denial CAPACITY [TTL [MINTTL]]
    #     prefetch AMOUNT [DURATION [PERCENTAGE%]]
    #     serve_stale [DURATION [immediate|verify]]
    #     servfail DURATION
    #     disable success|denial [ZONES...]
    #     keepttl
    # }
    defaults = CacheSettings()
    success = _Ttls(defaults.success_capacity, defaults.success_max_ttl, defaults.success_min_ttl)
    denial = _Ttls(defaults.denial_capacity, defaults.denial_max_ttl, defaults.denial_min_ttl)
    out: dict[str, Any] = {}

    args = Args("cache", line)
    first = args.peek()
    if first is not None and first.text[:1].isdigit():
        ttl = args.integer("a positive TTL in seconds", minimum=1)
        success.set_max(ttl)
        denial.set_max(ttl)
    zones: list[str] = []
    while (tok := args.peek()) is not None:
        if tok.text.isdigit():
            raise args.error("a zone", hint="the TTL must come before the zones")
        zones.extend(args.zones())
    out["zones"] = tuple(dict.fromkeys(zones))
    scope = out["zones"] or ctx.zones

    disabled: dict[str, Token] = {}
    for name, opt in options("cache", line, _OPTIONS, repeatable={"disable"}):
        if name in ("success", "denial"):
            _read_ttls(opt, success if name == "success" else denial)
        elif name == "prefetch":
            out["prefetch_amount"] = opt.integer("a positive integer AMOUNT", minimum=1)
            if len(opt):
                out["prefetch_duration"] = opt.duration("a positive DURATION", minimum=1e-9)
            if len(opt):
                out["prefetch_percentage"] = opt.value(
                    "a PERCENTAGE between 10% and 90%", _percentage, lambda p: 10 <= p <= 90)
        elif name == "serve_stale":
            out["serve_stale"] = DEFAULT_SERVE_STALE
            if len(opt):
                out["serve_stale"] = opt.duration("a DURATION")
            if len(opt):
                out["serve_stale_mode"] = opt.value(
                    "'immediate' or 'verify'", str, lambda m: m in ("immediate", "verify"))
        elif name == "servfail":
            out["servfail_ttl"] = opt.value(
                "a DURATION of at most 5m", _whole_seconds, lambda s: s <= MAX_SERVFAIL_TTL,
                check_hint="RFC 2308 forbids caching SERVFAIL for longer than 5 minutes",
                explain=True)
        elif name == "disable":
            which = opt.value("'success' or 'denial'", str, lambda w: w in ("success", "denial"))
            which_tok = opt.line.args[0]
            if which in disabled:
                first_tok = disabled[which]
                raise which_tok.error(f"cache: 'disable {which}' given twice (first at"
                                      f" {first_tok.file}:{first_tok.line}:{first_tok.column})")
            disabled[which] = which_tok
            names: list[str] = []
            while len(opt):
                names.extend(opt.zones())
            out[f"disable_{which}"] = tuple(dict.fromkeys(names)) or scope
        elif name == "keepttl":
            out["keepttl"] = True
        opt.end()

    return dataclasses.replace(
        defaults, **out,
        success_capacity=success.capacity, success_max_ttl=success.max_ttl,
        success_min_ttl=success.min_ttl,
        denial_capacity=denial.capacity, denial_max_ttl=denial.max_ttl,
        denial_min_ttl=denial.min_ttl,
    )


def _read_ttls(opt: Args, ttls: _Ttls) -> None:
    """``CAPACITY [TTL [MINTTL]]``."""
    ttls.capacity = opt.integer("a positive integer CAPACITY", minimum=1)
    if len(opt):
        ttls.set_max(opt.integer("a positive integer TTL in seconds", minimum=1))
    if len(opt):
        ttls.min_ttl = opt.integer(f"an integer MINTTL in seconds, at most the TTL ({ttls.max_ttl})",
                                   minimum=0, maximum=ttls.max_ttl)
        ttls.min_given = True


def _whole_seconds(text: str) -> int:
    # The TTL of a cached SERVFAIL is reported in whole seconds.
    seconds = values.duration(text)
    if seconds != int(seconds):
        raise ValueError("not a whole number of seconds")
    return int(seconds)


def _percentage(text: str) -> int:
    if not text.endswith("%"):
        raise ValueError("a percentage ends in '%'")
    return values.integer(text[:-1])

