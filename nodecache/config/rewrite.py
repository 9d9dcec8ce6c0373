"""The ``rewrite`` directive -> rules (see :mod:`nodecache.core.stages.rewrite`)."""
from __future__ import annotations

import re

from nodecache.config import values
from nodecache.config.args import Args
from nodecache.config.context import BlockContext
from nodecache.config.lexer import Token
from nodecache.config.parser import Directive
from nodecache.core.stages.rewrite import (MATCH_TYPES, AnswerRule, NameRule, RcodeRule, Rule,
                                           TtlRule, TypeRule)

_RULES = ("name", "type", "class", "ttl", "rcode")
_UNSUPPORTED = ("edns0", "cname")
_MAX_RCODE = 23  # what CoreDNS's rcode rule takes as a number
_MAX_TTL = 2147483647  # s, RFC 2181 section 8


def parse_rewrite(line: Directive, ctx: BlockContext) -> tuple[Rule, ...]:
    # rewrite [continue|stop] RULE-TYPE ARGS... [answer ...]
    # rewrite [continue|stop] { RULE-TYPE ARGS... }   (block words join the line)
    tokens = list(line.args)
    if len(tokens) < 2:
        for option in line.body or ():
            tokens.extend((option.name, *option.args))
    words = _Words(line, tokens)
    mode = "stop"
    first = words.take("a rule (name, type, class, ttl or rcode, after an optional continue"
                       " or stop)")
    if first.text.lower() in ("continue", "stop"):
        mode = first.text.lower()
        first = words.take(f"a rule ({', '.join(_RULES)})")
    kind = first.text.lower()
    if kind in _UNSUPPORTED:
        raise first.error(f"rewrite: the {kind} rule is not supported")
    if kind == "answer":
        raise first.error("rewrite: expected a rule (name, type, class, ttl, rcode), found 'answer'"
                          " (response rewrites must begin with a name rule)")
    if kind not in _RULES:
        raise first.error(f"rewrite: expected a rule ({', '.join(_RULES)}), found {first.text!r}")
    if kind in ("type", "class"):
        parse = values.rdtype if kind == "type" else values.rdclass
        what = "a TYPE" if kind == "type" else "a CLASS"
        source = words.value(what, parse)
        target = words.value(what, parse)
        words.end()
        return (TypeRule(mode, "qtype" if kind == "type" else "qclass", source, target),)
    if kind == "ttl":
        return (_ttl_rule(mode, words),)
    if kind == "rcode":
        return (_rcode_rule(mode, words),)
    return (_name_rule(mode, words),)


class _Words(Args):
    """Args over an explicit token list (the line's, or the block's words)."""

    def __init__(self, line: Directive, tokens: list[Token]) -> None:
        super().__init__("rewrite", line)
        self._tokens = tokens


def _match_type(words: _Words, count: int, second: str) -> str:
    """``exact`` when the rule has just FROM and ``second``, else the match word."""
    if count == 2:
        return "exact"
    if count == 1:
        words.take("a NAME")
        raise words.error(second)
    return words.value(f"a match type ({', '.join(MATCH_TYPES)})", str.lower,
                       lambda m: m in MATCH_TYPES)


def _name_rule(mode: str, words: _Words) -> NameRule:
    rest = list(words._tokens[words._pos:])
    end = next((i for i, t in enumerate(rest) if t.text == "answer"), len(rest))
    match = _match_type(words, end, "a TO name")
    source_tok = words.take("a FROM name or regex")
    target_tok = words.take("a TO name")
    pattern = None
    if match == "regex":
        pattern = _regex(source_tok)
        source, target = source_tok.text, _normal(target_tok.text)
        used = sum(1 for n in range(101) if "{" + str(n) + "}" in target)
        if used > pattern.groups:
            raise target_tok.error(f"rewrite: expected a TO using at most {pattern.groups}"
                                   f" group(s) of {source!r}, found {target_tok.text!r}")
    else:
        source, target = _normal(source_tok.text), _normal(target_tok.text)
    auto = False
    answers: list[AnswerRule] = []
    while len(words):
        words.value("'answer'", str, lambda w: w == "answer")
        what = words.value("'auto', 'name' or 'value'", str, lambda w: w in ("auto", "name", "value"))
        if what == "auto":
            auto = True
            continue
        from_tok = words.take("a FROM regex")
        to_tok = words.take("a TO name")
        answers.append(AnswerRule(what, _regex(from_tok), _normal(to_tok.text)))
        if what == "name" and auto:
            raise from_tok.error("rewrite: 'answer auto' cannot be combined with 'answer name'")
    if auto and any(a.field == "name" for a in answers):
        raise source_tok.error("rewrite: 'answer auto' cannot be combined with 'answer name'")
    return NameRule(mode, match, source, target, auto, tuple(answers), pattern)


def _ttl_rule(mode: str, words: _Words) -> TtlRule:
    match = _match_type(words, len(words), "a TTL")
    name_tok = words.take("a NAME")
    low, high = words.value("a TTL (SECONDS, MIN-MAX, MIN- or -MAX)", _ttl_range)
    words.end()
    pattern = _regex(name_tok) if match == "regex" else None
    source = name_tok.text if match == "regex" else _normal(name_tok.text)
    return TtlRule(mode, match, source, low, high, pattern)


def _rcode_rule(mode: str, words: _Words) -> RcodeRule:
    # rcode [MATCH] NAME FROM TO
    match = "exact" if len(words) <= 3 else words.value(
        f"a match type ({', '.join(MATCH_TYPES)})", str.lower, lambda m: m in MATCH_TYPES)
    name_tok = words.take("a NAME")
    what = f"an RCODE (a name such as NXDOMAIN, or 0 to {_MAX_RCODE})"
    old = words.value(what, _rcode)
    new = words.value(what, _rcode)
    words.end()
    pattern = _regex(name_tok) if match == "regex" else None
    source = name_tok.text if match == "regex" else _normal(name_tok.text)
    return RcodeRule(mode, match, source, old, new, pattern)


def _rcode(text: str) -> int:
    """CoreDNS's isValidRCode: a number up to 23, or a mnemonic in any case."""
    if text.isdigit():
        if int(text) > _MAX_RCODE:
            raise ValueError(text)
        return int(text)
    if text.isalpha():
        return values.rcode(text)
    raise ValueError(text)


def _ttl_range(text: str) -> tuple[int, int]:
    low_text, dash, high_text = text.partition("-")
    if not dash:
        value = _u32(text)
        return value, value
    if not low_text and not high_text:
        raise ValueError(text)
    low = _u32(low_text) if low_text else 0
    high = _u32(high_text) if high_text else _MAX_TTL
    if low > high:
        raise ValueError(text)
    return low, high


def _u32(text: str) -> int:
    if not text.isdigit() or int(text) > 0xFFFFFFFF:
        raise ValueError(text)
    return int(text)


def _normal(text: str) -> str:
    """CoreDNS's ``plugin.Name.Normalize``: lower case, with a trailing dot."""
    text = text.lower()
    return text if text.endswith(".") else text + "."


def _regex(tok: Token) -> re.Pattern[str]:
    try:
        return re.compile(tok.text)
    except re.error as exc:
        raise tok.error(f"rewrite: expected a regex, found {tok.text!r} ({exc})") from None

