"""Tokens -> syntax tree: server blocks holding directives holding options.

Grammar (after snippets and imports have been spliced in)::

    corefile   := block*
    block      := KEY+ '{' line* '}'          # keys may continue onto the next
                                              # line after a trailing comma
    line       := NAME ARG* ['{' line* '}']   # ends at the end of its line,
                                              # or at a '{' or '}'

A ``{`` must be on the same line as the directive (or keys) it belongs to,
and nothing may follow a closing ``}`` on its line but another ``}``. The
tree knows nothing about plugins; :mod:`nodecache.config.plugins` gives the
words their meaning.
"""
from __future__ import annotations

from dataclasses import dataclass

from nodecache.config.lexer import Token

#: Blocks nested deeper than this are refused (no plugin uses more than 2).
MAX_NESTING = 16


@dataclass(frozen=True, slots=True)
class Directive:
    """One line of a block: a plugin (or an option inside a plugin's block)."""

    name: Token
    args: tuple[Token, ...]
    #: The lines inside ``{ }`` after the arguments; None when there is no block.
    body: tuple[Directive, ...] | None = None
    #: The ``{`` token, when there is a block.
    open_brace: Token | None = None


@dataclass(frozen=True, slots=True)
class BlockNode:
    """A server block: its keys, unparsed, and its directives."""

    keys: tuple[Token, ...]
    directives: tuple[Directive, ...]


def parse_tokens(tokens: list[Token]) -> list[BlockNode]:
    """Build the syntax tree of a whole Corefile.

    :raises ConfigError: On unbalanced braces or misplaced tokens.
    """
    return _Parser(tokens).corefile()


class _Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def corefile(self) -> list[BlockNode]:
        blocks: list[BlockNode] = []
        while (tok := self.peek()) is not None:
            if tok.is_brace():
                raise tok.error(f"expected a server block key such as '.:53', found {tok.text!r}")
            blocks.append(self.block())
        return blocks

    def block(self) -> BlockNode:
        keys: list[Token] = [self.take()]
        while True:
            tok = self.peek()
            # A trailing comma continues the key list on the next line.
            continues = keys[-1].text.endswith(",") and not keys[-1].quoted
            if tok is None or (tok.line_start and not continues):
                last = keys[-1]
                raise last.error(f"expected '{{' after server block key {last.text!r},"
                                 f" found {'end of file' if tok is None else 'end of line'}")
            if tok.is_close():
                raise tok.error(f"expected '{{' after server block key {keys[-1].text!r}, found '}}'")
            if tok.is_open():
                open_tok = self.take()
                break
            keys.append(self.take())
        directives = self.body(open_tok, 1)
        return BlockNode(tuple(keys), directives)

    def body(self, open_tok: Token, nesting: int) -> tuple[Directive, ...]:
        """Lines up to the ``}`` matching ``open_tok``, which was just taken."""
        if nesting > MAX_NESTING:
            raise open_tok.error(f"blocks nested more than {MAX_NESTING} deep")
        lines: list[Directive] = []
        while True:
            tok = self.peek()
            if tok is None:
                raise open_tok.error("'{' is never closed (expected '}', found end of file)")
            if tok.is_close():
                self.take()
                self.end_after_close(tok)
                return tuple(lines)
            if tok.is_open():
                raise tok.error("expected a directive, found '{' (a '{' must be on the same"
                                " line as the directive it belongs to)")
            lines.append(self.line(nesting))

    def line(self, nesting: int) -> Directive:
        name = self.take()
        args: list[Token] = []
        while (tok := self.peek()) is not None and not tok.line_start and not tok.is_brace():
            args.append(self.take())
        tok = self.peek()
        if tok is not None and tok.is_open() and not tok.line_start:
            open_tok = self.take()
            return Directive(name, tuple(args), self.body(open_tok, nesting + 1), open_tok)
        return Directive(name, tuple(args))

    def end_after_close(self, close: Token) -> None:
        """Only another ``}`` may follow a ``}`` on the same line."""
        tok = self.peek()
        if tok is not None and not tok.line_start and not tok.is_close():
            raise tok.error(f"expected end of line after '}}', found {tok.text!r}")
