"""Syntax tree -> :class:`ServerBlock` settings: keys, then one parser per directive."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nodecache.config import bind, values
from nodecache.config.context import BlockContext
from nodecache.config.forward import parse_forward
from nodecache.config.lexer import Token
from nodecache.config.parser import BlockNode
from nodecache.config.plugins import NOT_IMPLEMENTED, PLUGINS, REPEATABLE
from nodecache.config.settings import ServerBlock, Source
from nodecache.errors import ConfigError

_KEY_WHAT = "a server block key [dns://]ZONE[:PORT]"


@dataclass(frozen=True)
class BuiltBlock:
    """A server block and, for precise errors, the key token each zone came from."""

    block: ServerBlock
    zone_tokens: dict[str, Token]


def build_blocks(nodes: list[BlockNode], *, default_port: int,
                 read_file: Callable[[str], str], files: list[str]) -> list[BuiltBlock]:
    """Turn each server block of the tree into settings.

    A block whose keys name several ports becomes one :class:`ServerBlock`
    per port, sharing the same plugin settings, as CoreDNS does.
    """
    built: list[BuiltBlock] = []
    for node in nodes:
        keys = [key for tok in node.keys for key in split_keys(tok)]
        by_port: dict[int, dict[str, Token]] = {}
        for tok in keys:
            zones, port = parse_key(tok, default_port)
            for zone in zones:
                seen = by_port.setdefault(port, {})
                if zone in seen:
                    first = seen[zone]
                    raise tok.error(f"zone {zone!r} on port {port} is listed twice in this"
                                    f" block (first at {first.file}:{first.line}:{first.column})")
                seen[zone] = tok
        all_zones = tuple(dict.fromkeys(z for zs in by_port.values() for z in zs))
        ctx = BlockContext(zones=all_zones, read_file=read_file, files=files)
        fields = _plugins(node, ctx)
        first = keys[0]
        for port, zone_tokens in by_port.items():
            block = ServerBlock(zones=tuple(zone_tokens), port=port,
                                source=Source(first.file, first.line, first.column), **fields)
            built.append(BuiltBlock(block, zone_tokens))
    return built


def _plugins(node: BlockNode, ctx: BlockContext) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    seen: dict[str, Token] = {}
    for line in node.directives:
        name = line.name.text
        if not line.name.quoted and name in NOT_IMPLEMENTED:
            raise line.name.error(f"{name}: node-cache has this plugin, nodecache does not"
                                  f" ({NOT_IMPLEMENTED[name]})")
        if line.name.quoted or name not in PLUGINS:
            quoted = " (quoted, so not a plugin name)" if line.name.quoted else ""
            raise line.name.error(f"expected a plugin ({', '.join(sorted(PLUGINS))}),"
                                  f" found {name!r}{quoted}")
        if name == "forward" and name in seen:  # CoreDNS chains them in this order
            fields["later_forwards"] = fields.get("later_forwards", ()) + (parse_forward(line, ctx),)
            continue
        if name in seen and name not in REPEATABLE:
            first = seen[name]
            raise line.name.error(f"{name}: plugin used twice in one server block"
                                  f" (first at {first.file}:{first.line}:{first.column})")
        seen[name] = line.name
        field, parse = PLUGINS[name]
        value = parse(line, ctx)
        fields[field] = fields.get(field, ()) + value if name in REPEATABLE else value
    if "bind_lines" in fields:
        fields.update(bind.settle(fields.pop("bind_lines")))
    return fields


def split_keys(tok: Token) -> list[Token]:
    """``a.,b.`` -> ``a.`` and ``b.``: keys may be separated by commas as well as spaces."""
    if tok.quoted or "," not in tok.text:
        return [tok]
    out: list[Token] = []
    offset = 0
    for part in tok.text.split(","):
        if part:
            out.append(dataclasses.replace(tok, text=part, column=tok.column + offset))
        offset += len(part) + 1
    return out


def parse_key(tok: Token, default_port: int) -> tuple[tuple[str, ...], int]:
    """``[dns://]ZONE[:PORT]`` -> (zones, port); ``.:53`` and ``:53`` are the root."""
    text = tok.text
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() != "dns":
            raise tok.error(f"expected {_KEY_WHAT}, found {text!r} (only dns:// is"
                            f" supported, not {scheme}://)")
        text = rest
    zone_text, port = text, default_port
    # An IPv6 CIDR (fd00::/8) has colons of its own and takes no port.
    if text.count(":") == 1:
        zone_text, _, port_text = text.partition(":")
        try:
            port = values.port(port_text)
        except ValueError as exc:
            raise tok.error(f"expected {_KEY_WHAT}, found {tok.text!r} ({exc})") from None
    try:
        return values.zone(zone_text), port
    except ValueError as exc:
        raise tok.error(f"expected {_KEY_WHAT}, found {tok.text!r} ({exc})") from None


def no_blocks_error(path: str) -> ConfigError:
    return ConfigError("expected at least one server block such as '.:53 { ... }',"
                       " found none", path, 1, 1)
