"""Corefile text -> tokens, each remembering where it came from.

The Corefile grammar is line-oriented (a directive's arguments end at the end
of its line), so instead of emitting newline tokens every token records
whether it is the first on its line. That survives splicing tokens from
snippets and imported files into another stream, where line numbers of two
neighbouring tokens no longer compare.

Rules:

* Tokens are separated by whitespace. ``{`` and ``}`` are braces only when
  they stand alone, so ``{$NAME}`` inside a word is not a brace.
* ``#`` at the start of a token comments out the rest of the line; inside a
  word it is an ordinary character.
* ``"..."`` at the start of a token quotes it: whitespace, ``#`` and braces
  lose their meaning, ``\\"`` and ``\\\\`` are escapes, newlines are kept.
* ``{$NAME}`` (and ``{%NAME%}``) are replaced from an environment mapping
  by :func:`substitute_env`, after lexing.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from nodecache.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Token:
    """One word of a Corefile."""

    text: str
    #: The file the token was read from, as it should appear in error messages.
    file: str
    #: 1-based line of the token's first character.
    line: int
    #: 1-based column (in characters) of the token's first character.
    column: int
    #: The token was written in double quotes, so it is never a brace or keyword.
    quoted: bool = False
    #: No other token precedes it on its line.
    line_start: bool = False

    def is_open(self) -> bool:
        """This token opens a block."""
        return self.text == "{" and not self.quoted

    def is_close(self) -> bool:
        """This token closes a block."""
        return self.text == "}" and not self.quoted

    def is_brace(self) -> bool:
        return self.is_open() or self.is_close()

    def error(self, message: str) -> ConfigError:
        """A :class:`ConfigError` located at this token."""
        return ConfigError(message, self.file, self.line, self.column)


def tokenize(text: str, file: str) -> list[Token]:
    """Split Corefile ``text`` into tokens.

    :param file: The name used in tokens and error messages.
    :raises ConfigError: On an unterminated quoted token.
    """
    return list(_scan(text, file))


def _scan(text: str, file: str) -> Iterator[Token]:
    line, col = 1, 1
    at_line_start = True
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line, col, at_line_start = line + 1, 1, True
            i += 1
            continue
        if ch.isspace():
            i, col = i + 1, col + 1
            continue
        if ch == "#":
            # A comment runs to the end of the line; the newline itself is
            # left for the loop above so line counting stays in one place.
            end = text.find("\n", i)
            end = n if end < 0 else end
            col += end - i
            i = end
            continue
        start_line, start_col = line, col
        if ch == '"':
            chars: list[str] = []
            i, col = i + 1, col + 1
            while True:
                if i >= n:
                    raise ConfigError("unterminated quoted string (missing closing '\"')",
                                      file, start_line, start_col)
                ch = text[i]
                if ch == "\\" and i + 1 < n and text[i + 1] in '"\\':
                    chars.append(text[i + 1])
                    i, col = i + 2, col + 2
                    continue
                if ch == '"':
                    i, col = i + 1, col + 1
                    break
                chars.append(ch)
                if ch == "\n":
                    line, col = line + 1, 1
                else:
                    col += 1
                i += 1
            yield Token("".join(chars), file, start_line, start_col, True, at_line_start)
        else:
            j = i
            while j < n and not text[j].isspace():
                j += 1
            yield Token(text[i:j], file, start_line, start_col, False, at_line_start)
            col += j - i
            i = j
        at_line_start = False


# Environment variable names as POSIX shells accept them; anything else in
# braces is left alone (and will most likely fail to parse, loudly).
_ENV_RE = re.compile(r"\{\$([A-Za-z_][A-Za-z0-9_]*)\}|\{%([A-Za-z_][A-Za-z0-9_]*)%\}")


def substitute_env(tokens: list[Token], env: Mapping[str, str]) -> list[Token]:
    """Replace ``{$NAME}`` / ``{%NAME%}`` in every token with ``env[NAME]``.

    An unquoted token whose value expands to several words becomes several
    tokens, and one that expands to nothing disappears: that lets
    ``bind {$LOCAL_IPS}`` or ``forward . {$UPSTREAMS}`` carry lists, the way
    node-cache substitutes ``__PILLAR__`` placeholders. Quoted tokens stay
    one token.

    Unlike CoreDNS, which substitutes an empty string, an unset variable is
    an error: a silently empty address or zone is worse than a refusal.
    """
    out: list[Token] = []
    pending_line_start = False
    for tok in tokens:
        if "{" not in tok.text:
            if pending_line_start and not tok.line_start:
                tok = dataclasses.replace(tok, line_start=True)
            pending_line_start = False
            out.append(tok)
            continue

        def lookup(match: re.Match[str], tok: Token = tok) -> str:
            name = match.group(1) or match.group(2)
            if name not in env:
                # The column is exact for unquoted tokens, the usual case.
                raise ConfigError(f"environment variable {name!r} is not set",
                                  tok.file, tok.line, tok.column + match.start())
            return env[name]

        text = _ENV_RE.sub(lookup, tok.text)
        words = [text] if tok.quoted else text.split()
        if not words:
            pending_line_start = pending_line_start or tok.line_start
            continue
        for k, word in enumerate(words):
            line_start = (tok.line_start or pending_line_start) if k == 0 else False
            out.append(dataclasses.replace(tok, text=word, line_start=line_start))
        pending_line_start = False
    return out
