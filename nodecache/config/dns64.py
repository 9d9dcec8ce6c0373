"""The ``dns64`` directive -> :class:`DNS64Settings` (see :mod:`nodecache.core.stages.dns64`)."""
from __future__ import annotations

import ipaddress

from nodecache.config.args import Args, options
from nodecache.config.context import BlockContext
from nodecache.config.parser import Directive
from nodecache.core.stages.dns64 import DEFAULT_PREFIX, DNS64Settings

_PREFIX_WHAT = "an IPv6 PREFIX of length 32, 40, 48, 56, 64 or 96 (RFC 6052 section 2.2)"


def parse_dns64(line: Directive, ctx: BlockContext) -> DNS64Settings:
    # dns64 [PREFIX]
    # dns64 {
    #     prefix PREFIX
    #     translate_all
    #     allow_ipv4
    # }
    args = Args("dns64", line)
    prefix = DEFAULT_PREFIX
    if len(args):
        prefix = args.value(_PREFIX_WHAT, _prefix, explain=True)
    args.end()
    translate_all = allow_ipv4 = False
    for name, opt in options("dns64", line, ("prefix", "translate_all", "allow_ipv4")):
        if name == "prefix":
            prefix = opt.value(_PREFIX_WHAT, _prefix, explain=True)
        elif name == "translate_all":
            translate_all = True
        else:
            allow_ipv4 = True
        opt.end()
    return DNS64Settings(prefix, translate_all, allow_ipv4)


def _prefix(text: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP network") from None
    if network.version != 6:
        raise ValueError("the prefix must be IPv6")
    if network.prefixlen not in (32, 40, 48, 56, 64, 96):
        raise ValueError(f"a /{network.prefixlen} prefix cannot embed IPv4 addresses")
    return str(network)
