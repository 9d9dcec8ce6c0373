"""The Corefile configuration layer: Corefile text -> frozen :class:`Config`.

The pipeline, one module per step::

    lexer     text -> tokens (file, line, column), {$ENV} substitution
    includes  snippets and ``import`` spliced into the token stream
    parser    tokens -> server blocks / directives / option blocks
    blocks    keys and directives -> ServerBlock (plugins, cache, forward)
    validate  checks across blocks

Every problem with the input is a :class:`~nodecache.errors.ConfigError`
naming file, line and column; nothing else escapes on bad input.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from nodecache.config.blocks import build_blocks, no_blocks_error
from nodecache.config.describe import describe
from nodecache.config.includes import Expander, read_text_file
from nodecache.config.lexer import substitute_env, tokenize
from nodecache.config.parser import parse_tokens
from nodecache.config.settings import (
    CacheSettings,
    Config,
    ForwardSettings,
    HealthSettings,
    LogSettings,
    ReloadSettings,
    ServerBlock,
    Source,
    Upstream,
)
from nodecache.config.validate import validate
from nodecache.config.values import parse_duration
from nodecache.errors import ConfigError

__all__ = [
    "CacheSettings", "Config", "ConfigError", "ForwardSettings", "HealthSettings",
    "LogSettings", "ReloadSettings", "ServerBlock", "Source", "Upstream",
    "describe", "load", "parse_duration", "parse_text",
]


def load(path: str, *, env: Mapping[str, str] | None = None, default_port: int = 53) -> Config:
    """Read and parse the Corefile at ``path``, with everything it imports.

    :param env: Values for ``{$NAME}``; the process environment by default.
    :param default_port: The port of server block keys that name none.
    :raises ConfigError: If the Corefile cannot be read or is invalid.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the Corefile: {exc}", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line = data.count(b"\n", 0, exc.start) + 1
        column = len(data[line_start:exc.start].decode("utf-8", "replace")) + 1  # in characters
        raise ConfigError("expected UTF-8 text, found an invalid byte", path, line, column) from None
    return _parse(text, path=path, env=env, default_port=default_port, files=[path])


def parse_text(text: str, *, path: str = "<string>", env: Mapping[str, str] | None = None,
               default_port: int = 53) -> Config:
    """Parse Corefile ``text``; ``path`` names it in errors and anchors relative imports.

    :raises ConfigError: If the text is invalid.
    """
    return _parse(text, path=path, env=env, default_port=default_port, files=[])


def _parse(text: str, *, path: str, env: Mapping[str, str] | None, default_port: int,
           files: list[str]) -> Config:
    if not 1 <= default_port <= 65535:
        raise ConfigError(f"default port must be between 1 and 65535, found {default_port}")
    env = os.environ if env is None else env
    # Hash what CoreDNS's reload plugin hashes: the main file's bytes.
    digest = hashlib.sha512(text.encode("utf-8", "surrogatepass")).hexdigest()
    expander = Expander(env=env, read_file=read_text_file, files=files)
    tokens = substitute_env(tokenize(text.removeprefix("\ufeff"), path), env)
    tokens = expander.expand_file(tokens, path)
    nodes = parse_tokens(tokens)
    if not nodes:
        raise no_blocks_error(path)
    built = build_blocks(nodes, default_port=default_port, read_file=read_text_file,
                         files=expander.files)
    validate(built)
    return Config(blocks=tuple(b.block for b in built), path=path, digest=digest,
                  files=tuple(expander.files))
