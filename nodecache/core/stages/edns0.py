"""rewrite edns0: set, append, replace or unset EDNS options of the query sent upstream.

Syntax (a rule of :mod:`nodecache.core.stages.rewrite`)::

    rewrite [continue|stop] edns0 local set|append|replace CODE DATA|VARIABLE [revert]
    rewrite [continue|stop] edns0 local unset CODE
    rewrite [continue|stop] edns0 nsid set|append|replace|unset [revert]
    rewrite [continue|stop] edns0 subnet set|append|replace V4BITS V6BITS [revert]
    rewrite [continue|stop] edns0 subnet unset

Behaviour (CoreDNS 1.13), on the options of every query (an edns0 rule has
no name to match):

- ``set`` replaces the first option of that code, or appends one when there
  is none; ``replace`` only replaces; ``append`` appends;
  ``unset`` removes every option of that code and always applies. Where one
  is there already, ``append`` adds another for fixed ``local`` DATA and
  ``nsid``, and does not apply for a VARIABLE or ``subnet``.
- ``local`` DATA is the text's bytes, or hex after ``0x``; a VARIABLE is
  ``{qname}`` (the name as asked, or as an earlier rule rewrote it),
  ``{qtype}`` (2 bytes), ``{client_ip}`` (4 or 16 bytes), ``{client_port}``
  (2 bytes) or ``{protocol}`` (``udp``/``tcp``). A metadata label
  (``{plugin/name}``) never has a value (nodecache has no metadata plugin),
  so such a rule does not apply, as in node-cache without ``metadata``.
- ``nsid`` asks for the upstream's NSID (RFC 5001): an empty option 3.
- ``subnet`` sends the client's address cut to V4BITS or V6BITS as the
  client subnet (RFC 7871 section 6: option 8, SCOPE 0).
- A rule that changes nothing does not apply: the next rule runs, whatever
  the mode.
- ``revert`` (restore the reply's option) changes nothing the client sees:
  the reply carries the server's own OPT, as node-cache's cache gives it.

The options go upstream in the order they end up in; the reply is cached
under the client's question as usual.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, replace

from nodecache.core.chain import Request

ACTIONS = ("set", "append", "replace", "unset")
KINDS = ("local", "nsid", "subnet")
#: The VARIABLEs a ``local`` rule may take its data from.
VARIABLES = ("{qname}", "{qtype}", "{client_ip}", "{client_port}", "{protocol}")

NSID = 3  # RFC 5001 section 2.3
SUBNET = 8  # RFC 7871 section 6
_OPTION_HEAD = struct.Struct("!HH")  # OPTION-CODE, OPTION-LENGTH (RFC 6891 section 6.1.2)
_U16 = struct.Struct("!H")

Option = tuple[int, bytes]


@dataclass(frozen=True)
class Edns0Rule:
    mode: str
    kind: str
    action: str
    #: The option code of a ``local`` rule (NSID and SUBNET for the others).
    code: int
    #: A ``local`` rule's data (when it has no ``variable``).
    data: bytes = b""
    #: A ``local`` rule's VARIABLE, or a metadata label; "" for fixed data.
    variable: str = ""
    #: The ``subnet`` source prefix lengths, bits.
    v4_bits: int = 0
    v6_bits: int = 0


def split_options(data: bytes) -> list[Option]:
    """OPT RDATA -> its options in order (RFC 6891 section 6.1.2); a short tail is dropped."""
    options = []
    position = 0
    while position + 4 <= len(data):
        code, length = _OPTION_HEAD.unpack_from(data, position)
        position += 4
        options.append((code, data[position:position + length]))
        position += length
    return options


def join_options(options: list[Option]) -> bytes:
    return b"".join(_OPTION_HEAD.pack(code, len(data)) + data for code, data in options)


def apply_edns0(rule: Edns0Rule, request: Request) -> Request | None:
    """The request with the rule's options; None when the rule does not apply."""
    options = split_options(request.options)
    if rule.action == "unset":
        kept = [option for option in options if option[0] != rule.code]
        return _with(request, kept)
    if rule.kind == "local" and not rule.variable:
        data = rule.data
        append_over = True  # a fixed local option is appended even when one is there
    else:
        value = _value(rule, request)
        if value is None:
            return None
        data = value
        append_over = rule.kind == "nsid"
    for index, (code, _old) in enumerate(options):
        if code != rule.code:
            continue
        if rule.action in ("set", "replace"):
            options[index] = (code, data)
            return _with(request, options)
        if not append_over:
            return None
        break
    if rule.action in ("set", "append"):
        options.append((rule.code, data))
        return _with(request, options)
    return None


def _with(request: Request, options: list[Option]) -> Request:
    # CoreDNS adds an OPT to a query without one before it edits the options.
    return replace(request, options=join_options(options), edns=True)


def _value(rule: Edns0Rule, request: Request) -> bytes | None:
    """The data a variable, NSID or SUBNET rule sends for ``request``; None: none."""
    if rule.kind == "nsid":
        return b""
    if rule.kind == "subnet":
        return _subnet(request, rule.v4_bits, rule.v6_bits)
    variable = rule.variable
    if variable == "{qname}":
        return (request.qname or request.name).encode()
    if variable == "{qtype}":
        return _U16.pack(request.qtype)
    if variable == "{client_ip}":
        address = _address(request)
        return None if address is None else address.packed
    if variable == "{client_port}":
        return _U16.pack(request.port) if request.remote else None
    if variable == "{protocol}":
        return request.proto.encode()
    return None  # a metadata label: no metadata plugin gives it a value


def _address(request: Request) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's address; an IPv4-mapped one is IPv4 (Go's ``To4``, CoreDNS's Family)."""
    try:
        address = ipaddress.ip_address(request.remote.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _subnet(request: Request, v4_bits: int, v6_bits: int) -> bytes | None:
    """RFC 7871 section 6: FAMILY, SOURCE PREFIX-LENGTH, SCOPE 0, the address cut
    to the prefix (only the bytes it covers)."""
    address = _address(request)
    if address is None:
        return None
    bits = v4_bits if address.version == 4 else v6_bits
    network = ipaddress.ip_network(f"{address}/{bits}", strict=False)
    return struct.pack("!HBB", 1 if address.version == 4 else 2, bits, 0) \
        + network.network_address.packed[:(bits + 7) // 8]
