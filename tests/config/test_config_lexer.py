"""Corefile text -> tokens: positions, quotes, comments and {$ENV} substitution."""
from __future__ import annotations

import pytest

from nodecache.config import parse_duration
from nodecache.config.lexer import Token, substitute_env, tokenize
from nodecache.errors import ConfigError


def lex(text: str) -> list[tuple[str, int, int, bool]]:
    """(text, line, column, line_start) of each token."""
    return [(t.text, t.line, t.column, t.line_start) for t in tokenize(text, "F")]


# (text, tokens)
TOKENS: list[tuple[str, list[tuple[str, int, int, bool]]]] = [
    ("", []),
    (".:53 {\n  cache 30 # a comment { }\n}\n",
     [(".:53", 1, 1, True), ("{", 1, 6, False), ("cache", 2, 3, True), ("30", 2, 9, False),
      ("}", 3, 1, True)]),
    ("#only\n\n\ta\tb", [("a", 3, 2, True), ("b", 3, 4, False)]),
    ("a#b c", [("a#b", 1, 1, True), ("c", 1, 5, False)]),
    ("x\r\ny", [("x", 1, 1, True), ("y", 2, 1, True)]),
    ("{$X}:53 {", [("{$X}:53", 1, 1, True), ("{", 1, 9, False)]),
    ("a{ }b", [("a{", 1, 1, True), ("}b", 1, 4, False)]),
    ('"a b" c', [("a b", 1, 1, True), ("c", 1, 7, False)]),
    ('"x\\"y" "c\\\\d" "e\\f"', [('x"y', 1, 1, True), ("c\\d", 1, 8, False),
                                 ("e\\f", 1, 15, False)]),
    ('"multi\nline" next\nlast', [("multi\nline", 1, 1, True), ("next", 2, 7, False),
                                  ("last", 3, 1, True)]),
    ('"#{" "}"', [("#{", 1, 1, True), ("}", 1, 6, False)]),
    ('"a"b', [("a", 1, 1, True), ("b", 1, 4, False)]),
    ('""', [("", 1, 1, True)]),
    ("ǅé 1", [("ǅé", 1, 1, True), ("1", 1, 4, False)]),
]


@pytest.mark.parametrize(("text", "expected"), TOKENS)
def test_tokenize(text: str, expected: list[tuple[str, int, int, bool]]) -> None:
    assert lex(text) == expected


def test_quoted_braces_are_not_braces() -> None:
    quoted, plain = tokenize('"{" {', "F")
    assert quoted.quoted and not quoted.is_open()
    assert plain.is_open() and not plain.quoted


def test_unterminated_quote() -> None:
    with pytest.raises(ConfigError) as info:
        tokenize('a\n  "open\n\n', "F")
    assert (info.value.file, info.value.line, info.value.column) == ("F", 2, 3)


ENV = {"ONE": "10.0.0.1", "TWO": "10.0.0.1 10.0.0.2", "EMPTY": "", "DOMAIN": "cluster.local"}


def env_lex(text: str) -> list[tuple[str, int, int, bool]]:
    return [(t.text, t.line, t.column, t.line_start)
            for t in substitute_env(tokenize(text, "F"), ENV)]


# (text, tokens after substitution)
ENV_CASES: list[tuple[str, list[tuple[str, int, int, bool]]]] = [
    ("bind {$ONE}", [("bind", 1, 1, True), ("10.0.0.1", 1, 6, False)]),
    ("bind {%ONE%}", [("bind", 1, 1, True), ("10.0.0.1", 1, 6, False)]),
    ("{$DOMAIN}:53", [("cluster.local:53", 1, 1, True)]),
    # An unquoted list becomes several tokens, at the position of the variable.
    ("bind {$TWO} x", [("bind", 1, 1, True), ("10.0.0.1", 1, 6, False),
                       ("10.0.0.2", 1, 6, False), ("x", 1, 13, False)]),
    ('log "{$TWO}"', [("log", 1, 1, True), ("10.0.0.1 10.0.0.2", 1, 5, False)]),
    # An empty value removes the token; the next on the line then starts it.
    ("bind {$ONE} {$EMPTY}\nx", [("bind", 1, 1, True), ("10.0.0.1", 1, 6, False),
                                ("x", 2, 1, True)]),
    ("{$EMPTY} {$EMPTY} errors", [("errors", 1, 19, True)]),
    ('"{$EMPTY}"', [("", 1, 1, True)]),
    # Not variable syntax: left alone.
    ("{$not-a-name} {$} {ONE}", [("{$not-a-name}", 1, 1, True), ("{$}", 1, 15, False),
                                 ("{ONE}", 1, 19, False)]),
]


@pytest.mark.parametrize(("text", "expected"), ENV_CASES)
def test_substitute_env(text: str, expected: list[tuple[str, int, int, bool]]) -> None:
    assert env_lex(text) == expected


def test_unset_variable_is_an_error_at_its_position() -> None:
    with pytest.raises(ConfigError) as info:
        substitute_env(tokenize("bind\n  x{$ONE}{$NOPE}", "F"), ENV)
    assert str(info.value) == "F:2:10: environment variable 'NOPE' is not set"


def test_token_error_location() -> None:
    err = Token("x", "F", 3, 4).error("bad")
    assert str(err) == "F:3:4: bad"


# (text, seconds)
DURATIONS: list[tuple[str, float]] = [
    ("0", 0.0), ("0s", 0.0), ("500ms", 0.5), ("5s", 5.0), ("1m30s", 90.0), ("1h", 3600.0),
    ("1.5s", 1.5), (".5s", 0.5), ("2h45m", 9900.0), ("100us", 1e-4), ("100µs", 1e-4),
    ("10ns", 1e-8), ("1m1m", 120.0),
]


@pytest.mark.parametrize(("text", "seconds"), DURATIONS)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(("text", "reason"), [
    ("", "durations look like 500ms, 5s or 1m30s"),
    ("5", "missing unit, as in 5s"),
    ("-1s", "durations look like 500ms, 5s or 1m30s"),
    ("+1s", "durations look like 500ms, 5s or 1m30s"),
    ("1d", "durations look like 500ms, 5s or 1m30s"),
    ("1S", "durations look like 500ms, 5s or 1m30s"),
    ("s", "durations look like 500ms, 5s or 1m30s"),
    ("1s ", "durations look like 500ms, 5s or 1m30s"),
    ("99999999999h", "longer than 2562047h"),
])
def test_parse_duration_errors(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_duration(text)
    assert str(info.value) == f"expected a duration, found {text!r} ({reason})"
