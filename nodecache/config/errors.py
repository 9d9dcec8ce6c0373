"""The ``errors`` directive -> :class:`ErrorsSettings`."""
from __future__ import annotations

import re

from nodecache.config.args import Args, options
from nodecache.config.context import BlockContext
from nodecache.config.parser import Directive
from nodecache.config.settings import ConsolidateRule, ErrorsSettings

LEVELS = ("warning", "error", "info", "debug")


def regexp(text: str) -> str:
    """A regular expression (Python's ``re``; the patterns used with CoreDNS's RE2 read the same)."""
    try:
        re.compile(text)
    except re.error as exc:
        raise ValueError(f"not a regular expression: {exc}") from None
    return text


def parse_errors(line: Directive, ctx: BlockContext) -> ErrorsSettings:
    # errors [stdout] {
    #     stacktrace
    #     consolidate DURATION REGEXP [LEVEL]
    # }
    # LEVEL is warning, error (the default), info or debug; consolidate may repeat.
    args = Args("errors", line)
    if len(args):
        args.value("'stdout' (the only log destination)", str, lambda v: v == "stdout")
    args.end()
    rules: list[ConsolidateRule] = []
    stacktrace = False
    for name, opt in options("errors", line, ("stacktrace", "consolidate"),
                             repeatable=("consolidate",)):
        if name == "stacktrace":
            stacktrace = True
        else:
            period = opt.duration("a DURATION")
            pattern = opt.value("a REGEXP", regexp, explain=True)
            level = "error"
            if len(opt):
                level = opt.value("a LEVEL (warning, error, info or debug)", str,
                                  lambda v: v in LEVELS)
            rules.append(ConsolidateRule(period, pattern, level))
        opt.end()
    return ErrorsSettings(consolidate=tuple(rules), stacktrace=stacktrace)
