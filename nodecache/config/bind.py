"""The ``bind`` directive: addresses and interface names to listen on, minus ``except``.

A block may have several ``bind`` lines; their addresses add up, and each
line's ``except`` only removes from that line (CoreDNS's rule). Lines made of
IP addresses only are settled here. An interface name is resolved to the
addresses the interface has when the agent starts and on each reload
(:func:`resolve`), so ``check-config`` on another machine accepts it.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

from nodecache.config import values
from nodecache.config.args import Args, options
from nodecache.config.context import BlockContext
from nodecache.config.parser import Directive
from nodecache.config.settings import BindLine, Config, Source
from nodecache.errors import ConfigError

#: Linux interface names: 1-15 bytes (IFNAMSIZ 16), no '/', ':' or white space.
_IFNAME = re.compile(r"[^/:\s]{1,15}")
#: Text that was meant as an IP address: only digits and dots (an IPv6 one has ':').
_IP_LIKE = re.compile(r"[0-9.]+")
_WHAT = "an IP ADDRESS or an interface NAME"


def target(text: str) -> str:
    """An IP address (normalised) or an interface name (kept as is)."""
    try:
        return values.ip(text)
    except ValueError:
        pass
    if ":" in text or _IP_LIKE.fullmatch(text):
        raise ValueError(values.NOT_AN_IP)
    if not _IFNAME.fullmatch(text) or text in (".", ".."):
        raise ValueError("an interface name has 1 to 15 characters, none of them '/', ':' or a space")
    return text


def is_ip(text: str) -> bool:
    try:
        values.ip(text)
    except ValueError:
        return False
    return True


def parse_bind(line: Directive, ctx: BlockContext) -> tuple[BindLine]:
    # bind ADDRESS|IFACE... {
    #     except ADDRESS|IFACE...
    # }
    args = Args("bind", line)
    targets = [args.value(_WHAT, target, explain=True)]
    while len(args):
        targets.append(args.value(_WHAT, target, explain=True))
    excepted: list[str] = []
    for _name, opt in options("bind", line, ("except",)):
        excepted.append(opt.value(_WHAT, target, explain=True))
        while len(opt):
            excepted.append(opt.value(_WHAT, target, explain=True))
    tok = line.name
    return (BindLine(tuple(dict.fromkeys(targets)), tuple(dict.fromkeys(excepted)),
                     Source(tok.file, tok.line, tok.column)),)


def settle(lines: Sequence[BindLine]) -> dict[str, Any]:
    """ServerBlock fields for a block's ``bind`` lines: addresses now, or lines to resolve."""
    if all(is_ip(t) for line in lines for t in (*line.targets, *line.excepted)):
        return {"bind": _addresses(lines, lambda name: None)}
    return {"bind_lines": tuple(lines)}


def resolve(config: Config, interface_addresses: Callable[[str], Sequence[str] | None]) -> Config:
    """``config`` with every interface name of its ``bind`` lines replaced by addresses.

    :param interface_addresses: An interface's addresses (IPv6 link-local ones
        with ``%NAME``), or None when there is no such interface.
    :raises ConfigError: A name that is no interface, or a block left with no address.
    """
    blocks = []
    served: dict[tuple[str, int, str], tuple[int, Source | None]] = {}
    for index, block in enumerate(config.blocks):
        if block.bind_lines:
            block = dataclasses.replace(block, bind=_addresses(block.bind_lines,
                                                               interface_addresses))
        # The parser checked literal addresses; those of interfaces are known only now.
        for address in block.bind:
            for zone in block.zones:
                first = served.setdefault((address, block.port, zone), (index, block.source))
                if first[0] != index:
                    line = block.bind_lines[0] if block.bind_lines else BindLine((), (), block.source)
                    raise _error(line, f"zone {zone!r} is served twice on {address} port"
                                 f" {block.port} (first by the block at {first[1]})")
        blocks.append(block)
    return dataclasses.replace(config, blocks=tuple(blocks))


def _addresses(lines: Sequence[BindLine],
               interface_addresses: Callable[[str], Sequence[str] | None]) -> tuple[str, ...]:
    out: list[str] = []
    for line in lines:
        excepted = set(_expand(line, line.excepted, interface_addresses))
        out.extend(a for a in _expand(line, line.targets, interface_addresses)
                   if a not in excepted)
    if not out:
        first = lines[0]
        raise _error(first, "no address left to listen on (the interfaces named have none,"
                     " or 'except' removes them all)")
    return tuple(dict.fromkeys(out))


def _expand(line: BindLine, names: Sequence[str],
            interface_addresses: Callable[[str], Sequence[str] | None]) -> list[str]:
    out: list[str] = []
    for name in names:
        # An interface is looked for first, as CoreDNS does.
        found = None if is_ip(name) else interface_addresses(name)
        if found is not None:
            out.extend(found)
        elif is_ip(name):
            out.append(name)
        else:
            raise _error(line, f"no interface named {name!r} on this host"
                         " (expected an IP address or the name of an interface)")
    return out


def _error(line: BindLine, message: str) -> ConfigError:
    where = line.source
    if where is None:
        return ConfigError(f"bind: {message}")
    return ConfigError(f"bind: {message}", where.file, where.line, where.column)
