"""The ``rewrite`` directive -> rules (see :mod:`nodecache.core.stages.rewrite`)."""
from __future__ import annotations

import re

from nodecache.config import values
from nodecache.config.args import Args
from nodecache.config.context import BlockContext
from nodecache.config.lexer import Token
from nodecache.config.parser import Directive
from nodecache.core.stages.edns0 import ACTIONS, KINDS, NSID, SUBNET, VARIABLES, Edns0Rule
from nodecache.core.stages.rewrite import (MATCH_TYPES, AnswerRule, NameRule, RcodeRule, Rule,
                                           TtlRule, TypeRule)

_RULES = ("name", "type", "class", "ttl", "rcode", "edns0")
_UNSUPPORTED = ("cname",)
#: CoreDNS variables nodecache cannot fill: the core does not see the local address.
_LOCAL_ADDRESS_VARIABLES = ("{server_ip}", "{server_port}")
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
    first = words.take("a rule (name, type, class, ttl, rcode or edns0, after an optional"
                       " continue or stop)")
    if first.text.lower() in ("continue", "stop"):
        mode = first.text.lower()
        first = words.take(f"a rule ({', '.join(_RULES)})")
    kind = first.text.lower()
    if kind in _UNSUPPORTED:
        raise first.error(f"rewrite: the {kind} rule is not supported")
    if kind == "answer":
        raise first.error(f"rewrite: expected a rule ({', '.join(_RULES)}), found 'answer'"
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
    if kind == "edns0":
        return (_edns0_rule(mode, words),)
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


def _edns0_rule(mode: str, words: _Words) -> Edns0Rule:
    # edns0 local set|append|replace CODE DATA [revert] | edns0 local unset CODE
    # edns0 nsid set|append|replace [revert] | edns0 nsid unset
    # edns0 subnet set|append|replace V4BITS V6BITS [revert] | edns0 subnet unset
    kind = words.value(f"an EDNS0 rule type ({', '.join(KINDS)})", str.lower,
                       lambda k: k in KINDS)
    action = words.value(f"an action ({', '.join(ACTIONS)})", str.lower, lambda a: a in ACTIONS)
    code = NSID if kind == "nsid" else SUBNET
    if action == "unset":
        if kind == "local":
            code = words.value("an option CODE (0 to 65535)", _uint16)
        words.end()
        return Edns0Rule(mode, kind, action, code)
    if len(words) and words._tokens[-1].text == "revert":
        # revert restores the reply's option, which the client never sees (see edns0.py)
        words._tokens = words._tokens[:-1]
    if kind == "nsid":
        words.end()
        return Edns0Rule(mode, kind, action, code)
    if kind == "subnet":
        v4 = words.value("an IPv4 prefix length (0 to 32)", _uint16, lambda n: n <= 32)
        v6 = words.value("an IPv6 prefix length (0 to 128)", _uint16, lambda n: n <= 128)
        words.end()
        return Edns0Rule(mode, kind, action, code, v4_bits=v4, v6_bits=v6)
    code = words.value("an option CODE (0 to 65535)", _uint16)
    data_tok = words.take("DATA (text, 0xHEX or a variable such as {client_ip})")
    words.end()
    text = data_tok.text
    if text.startswith("{") and text.endswith("}"):
        if text in _LOCAL_ADDRESS_VARIABLES:
            raise data_tok.error(f"rewrite: {text} is not supported (supported:"
                                 f" {', '.join(VARIABLES)})")
        label = text[1:-1].partition("/")
        if text not in VARIABLES and not (label[0] and label[1] and label[2]):
            raise data_tok.error(f"rewrite: expected a variable ({', '.join(VARIABLES)}) or a"
                                 f" metadata label ({{plugin/name}}), found {text!r}")
        return Edns0Rule(mode, kind, action, code, variable=text)
    data = text.encode()
    if text.startswith("0x"):
        try:
            data = bytes.fromhex(text[2:])
        except ValueError:
            raise data_tok.error(f"rewrite: expected hexadecimal DATA after '0x', found"
                                 f" {text!r}") from None
    return Edns0Rule(mode, kind, action, code, data=data)


def _uint16(text: str) -> int:
    """Go's ``strconv.ParseUint(text, 0, 16)``: decimal, or 0x/0o/0b/0-prefixed."""
    lower = text.lower()
    base = 10
    for prefix, prefix_base in (("0x", 16), ("0o", 8), ("0b", 2)):
        if lower.startswith(prefix):
            base, lower = prefix_base, lower[2:]
            break
    else:
        if len(lower) > 1 and lower.startswith("0"):
            base = 8
    if not lower or not all(c in "0123456789abcdef"[:base] for c in lower):
        raise ValueError(text)
    value = int(lower, base)
    if value > 0xFFFF:
        raise ValueError(text)
    return value


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

