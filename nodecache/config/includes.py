"""Snippets and ``import``: splice tokens from elsewhere into a token stream.

This runs before the syntax tree is built, on tokens, as CoreDNS does, so an
import may stand wherever a line may: between server blocks, as a directive,
or as an option inside a plugin block.

* ``(name) { ... }`` at the top level defines a snippet; its tokens are kept,
  not expanded, until an ``import name`` uses them.
* ``import NAME`` is a snippet if one of that name has been defined (above
  it, in reading order), otherwise a file path or glob, relative to the
  directory of the file containing the ``import``. A glob may match nothing;
  a plain path must exist.
* A file or snippet that (indirectly) imports itself is an error.
"""
from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from nodecache.config.lexer import Token, substitute_env, tokenize

#: Imports and snippets nested deeper than this are refused (and so is
#: runaway recursion long before Python's own limit).
MAX_IMPORT_DEPTH = 32
#: A guard against snippets that double at every level of nesting.
MAX_TOKENS = 500_000

ReadFile = Callable[[str], str]


def read_text_file(path: str) -> str:
    """Read a Corefile fragment as UTF-8 (a leading BOM is dropped)."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return text.removeprefix("\ufeff")


@dataclass
class _Snippet:
    tokens: list[Token]
    #: The directory of the file defining it, for the imports it contains.
    base_dir: str


@dataclass
class Expander:
    """Expands snippets and imports for one configuration load."""

    env: Mapping[str, str]
    read_file: ReadFile = read_text_file
    #: Every file read, in order, for :attr:`Config.files`.
    files: list[str] = field(default_factory=list)
    _snippets: dict[str, _Snippet] = field(default_factory=dict)
    #: Real paths of the files being expanded, outermost first.
    _file_stack: list[tuple[str, str]] = field(default_factory=list)
    #: Names of the snippets being expanded, outermost first.
    _snippet_stack: list[str] = field(default_factory=list)
    _count: int = 0

    def expand_file(self, tokens: list[Token], path: str) -> list[Token]:
        """Expand the tokens of the main file, read from ``path``."""
        self._file_stack.append((_real(path), path))
        try:
            return self._expand(tokens, os.path.dirname(path), 0)
        finally:
            self._file_stack.pop()

    def _expand(self, tokens: list[Token], base_dir: str, depth: int) -> list[Token]:
        """Expand one file's or snippet's tokens; ``depth`` is the brace nesting they start at."""
        out: list[Token] = []
        i, n = 0, len(tokens)
        while i < n:
            tok = tokens[i]
            if depth == 0 and tok.line_start and _is_snippet_name(tok):
                i = self._define_snippet(tokens, i, base_dir)
                continue
            if tok.line_start and not tok.quoted and tok.text == "import":
                j = i + 1
                while j < n and not tokens[j].line_start and not tokens[j].is_brace():
                    j += 1
                args = tokens[i + 1:j]
                if len(args) != 1:
                    where = args[1] if len(args) > 1 else tok
                    found = repr(args[1].text) if len(args) > 1 else "end of line"
                    raise where.error("import: expected exactly one snippet name, file or glob"
                                      f" after 'import', found {found}")
                if len(self._file_stack) + len(self._snippet_stack) >= MAX_IMPORT_DEPTH:
                    raise args[0].error(f"import: imports nested more than {MAX_IMPORT_DEPTH} deep")
                spliced = self._import(tok, args[0], base_dir, depth)
                self._count += len(spliced)
                if self._count > MAX_TOKENS:
                    raise args[0].error(f"import: imports expand to more than {MAX_TOKENS} tokens")
                if spliced:
                    # The imported text starts a line wherever it lands.
                    spliced[0] = dataclasses.replace(spliced[0], line_start=True)
                out.extend(spliced)
                i = j
                continue
            if tok.is_open():
                depth += 1
            elif tok.is_close():
                depth = max(depth - 1, 0)
            out.append(tok)
            i += 1
        return out

    def _define_snippet(self, tokens: list[Token], i: int, base_dir: str) -> int:
        head = tokens[i]
        name = head.text[1:-1]
        if i + 1 >= len(tokens) or not tokens[i + 1].is_open() or tokens[i + 1].line_start:
            found = repr(tokens[i + 1].text) if i + 1 < len(tokens) and not tokens[i + 1].line_start \
                else "end of line"
            raise head.error(f"snippet {head.text}: expected '{{' after {head.text!r}, found {found}")
        if name in self._snippets:
            raise head.error(f"snippet {head.text} is defined twice")
        nesting = 0
        for j in range(i + 1, len(tokens)):
            if tokens[j].is_open():
                nesting += 1
            elif tokens[j].is_close():
                nesting -= 1
                if nesting == 0:
                    self._snippets[name] = _Snippet(tokens[i + 2:j], base_dir)
                    return j + 1
        raise tokens[i + 1].error(f"snippet {head.text}: '{{' is never closed (found end of file)")

    def _import(self, keyword: Token, arg: Token, base_dir: str, depth: int) -> list[Token]:
        snippet = self._snippets.get(arg.text)
        if snippet is not None:
            if arg.text in self._snippet_stack:
                chain = " -> ".join([*self._snippet_stack, arg.text])
                raise arg.error(f"import: snippet cycle {chain}")
            self._snippet_stack.append(arg.text)
            try:
                return self._expand(snippet.tokens, snippet.base_dir, depth)
            finally:
                self._snippet_stack.pop()

        pattern = arg.text if os.path.isabs(arg.text) else os.path.join(base_dir, arg.text)
        if glob.has_magic(pattern):
            try:
                paths = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            except (OSError, ValueError) as exc:
                raise arg.error(f"import: cannot expand {arg.text!r}: {exc}") from None
        elif os.path.isfile(pattern):
            paths = [pattern]
        else:
            raise arg.error(f"import: no snippet named {arg.text!r} and no file {pattern!r}")

        out: list[Token] = []
        for path in paths:
            real = _real(path)
            if any(real == seen for seen, _ in self._file_stack):
                chain = " -> ".join([shown for _, shown in self._file_stack] + [path])
                raise arg.error(f"import: file cycle {chain}")
            try:
                text = self.read_file(path)
            except (OSError, UnicodeDecodeError) as exc:
                raise arg.error(f"import: cannot read {path!r}: {exc}") from None
            if path not in self.files:
                self.files.append(path)
            tokens = substitute_env(tokenize(text, path), self.env)
            self._file_stack.append((real, path))
            try:
                out.extend(self._expand(tokens, os.path.dirname(path), depth))
            finally:
                self._file_stack.pop()
        return out


def _is_snippet_name(tok: Token) -> bool:
    return (not tok.quoted and len(tok.text) > 2 and tok.text[0] == "("
            and tok.text[-1] == ")")


def _real(path: str) -> str:
    try:
        return os.path.realpath(path)
    except (OSError, ValueError):
        return path
