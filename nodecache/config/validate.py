"""Whole-config checks, run once every block has been built."""
from __future__ import annotations

from nodecache.config.blocks import BuiltBlock
from nodecache.config.lexer import Token


def validate(built: list[BuiltBlock]) -> None:
    """Whole-config checks: no zone served twice on one address and port."""
    seen: dict[tuple[str, int, str], Token] = {}
    for item in built:
        block = item.block
        # Interface names are resolved by the agent; their addresses are not known here.
        for address in block.bind or (() if block.bind_lines else ("0.0.0.0", "::")):
            for zone, tok in item.zone_tokens.items():
                key = (address, block.port, zone)
                if key in seen:
                    first = seen[key]
                    shown = f"[{address}]" if ":" in address else address
                    raise tok.error(f"zone {zone!r} is served twice on {shown}:{block.port}"
                                    f" (first by the block at {first.file}:{first.line}:{first.column})")
                seen[key] = tok
