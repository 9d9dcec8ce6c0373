"""Reading a directive's arguments, with errors that say where and what.

Every error reads ``PLUGIN: expected WHAT after 'CONTEXT', found 'TOKEN'``
(or ``found end of line``), located at the offending token, or at the last
token of the line when something is missing.
"""
from __future__ import annotations

from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from typing import TypeVar

from nodecache.config import values
from nodecache.config.lexer import Token
from nodecache.config.parser import Directive
from nodecache.errors import ConfigError

T = TypeVar("T")


def show(tok: Token | None) -> str:
    """How a found token appears in a message."""
    if tok is None:
        return "end of line"
    text = tok.text if len(tok.text) <= 60 else tok.text[:57] + "..."
    return repr(text)


class Args:
    """A cursor over the arguments of one directive or option line."""

    def __init__(self, plugin: str, line: Directive) -> None:
        self.plugin = plugin
        self.line = line
        self._tokens: Sequence[Token] = line.args
        self._pos = 0

    @property
    def context(self) -> str:
        """The words read so far on this line: what an argument comes after."""
        return " ".join(t.text for t in (self.line.name, *self._tokens[:self._pos]))

    def __len__(self) -> int:
        """How many arguments are left."""
        return len(self._tokens) - self._pos

    def peek(self) -> Token | None:
        return self._tokens[self._pos] if self._pos < len(self._tokens) else None

    def error(self, what: str, tok: Token | None = None, hint: str = "") -> ConfigError:
        """``expected WHAT after CONTEXT, found TOKEN`` at ``tok`` (default: the next one)."""
        found = tok if tok is not None else self.peek()
        where = found if found is not None else (self._tokens[-1] if self._tokens else self.line.name)
        message = f"{self.plugin}: expected {what} after {self.context!r}, found {show(found)}"
        return where.error(message + (f" ({hint})" if hint else ""))

    def take(self, what: str) -> Token:
        """The next argument; it must be there."""
        tok = self.peek()
        if tok is None:
            raise self.error(what)
        self._pos += 1
        return tok

    def value(self, what: str, parse: Callable[[str], T], check: Callable[[T], bool] | None = None,
              hint: str = "", *, check_hint: str = "", explain: bool = False) -> T:
        """The next argument parsed by ``parse``; it must be there, parse and pass ``check``.

        :param hint: Added to the error in parentheses.
        :param check_hint: Replaces ``hint`` when the value parsed but failed ``check``.
        :param explain: Use the ``ValueError`` from ``parse`` as the hint.
        """
        tok = self.peek()
        if tok is None:
            raise self.error(what)
        try:
            result = parse(tok.text)
        except ValueError as exc:
            raise self.error(what, tok, str(exc) if explain else hint) from None
        if check is not None and not check(result):
            raise self.error(what, tok, check_hint or hint)
        self._pos += 1
        return result

    def integer(self, what: str, minimum: int = 0, maximum: int | None = None,
                check_hint: str = "") -> int:
        return self.value(what, values.integer,
                          lambda v: v >= minimum and (maximum is None or v <= maximum),
                          check_hint=check_hint)

    def duration(self, what: str, minimum: float = 0.0, maximum: float | None = None,
                 check_hint: str = "") -> float:
        """A Go-style duration in seconds; a bare integer gets a "missing unit" hint."""
        return self.value(what, values.duration,
                          lambda v: v >= minimum and (maximum is None or v <= maximum),
                          check_hint=check_hint, explain=True)

    def zones(self, what: str = "a zone") -> tuple[str, ...]:
        """The next argument as a zone (a CIDR may give several)."""
        return self.value(what, values.zone)

    def rest(self) -> Iterator[Token]:
        """Consume the remaining arguments one by one."""
        while self._pos < len(self._tokens):
            tok = self._tokens[self._pos]
            self._pos += 1
            yield tok

    def end(self) -> None:
        """No arguments may remain."""
        if self.peek() is not None:
            raise self.error("end of line")


def no_block(plugin: str, line: Directive) -> None:
    """Refuse an options block on a line that takes none."""
    if line.open_brace is not None:
        words = " ".join(t.text for t in (line.name, *line.args))
        raise line.open_brace.error(f"{plugin}: expected end of line after {words!r},"
                                    f" found '{{' ({line.name.text!r} takes no options block)")


def options(plugin: str, line: Directive, known: Sequence[str], *,
            unsupported: Mapping[str, str] | None = None,
            repeatable: Container[str] = ()) -> Iterator[tuple[str, Args]]:
    """The option lines of a plugin's block, each name known and used once.

    :param unsupported: CoreDNS options nodecache refuses, with the reason.
    :param repeatable: Options the plugin itself checks for repetition.
    """
    seen: dict[str, Token] = {}
    for option in line.body or ():
        name = option.name.text
        if unsupported and name in unsupported:
            raise option.name.error(f"{plugin}: option {name!r} is not supported"
                                    f" ({unsupported[name]})")
        if option.name.quoted or name not in known:
            raise option.name.error(f"{plugin}: expected an option ({', '.join(known)}),"
                                    f" found {name!r}")
        if name in seen and name not in repeatable:
            first = seen[name]
            raise option.name.error(f"{plugin}: option {name!r} given twice"
                                    f" (first at {first.file}:{first.line}:{first.column})")
        seen[name] = option.name
        no_block(plugin, option)
        yield name, Args(plugin, option)
