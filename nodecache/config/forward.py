"""The ``forward`` directive -> :class:`ForwardSettings` (NODELOCAL.md section 4)."""
from __future__ import annotations

import dataclasses
import os
import ssl
from typing import Any

from nodecache.config import values
from nodecache.config.args import Args, options
from nodecache.config.context import BlockContext
from nodecache.config.lexer import Token
from nodecache.config.parser import Directive
from nodecache.config.settings import ForwardSettings, Upstream
from nodecache.core import wire
from nodecache.errors import ConfigError

#: CoreDNS refuses more upstreams than this in one forward.
MAX_UPSTREAMS = 15
DNS_PORT = 53
POLICIES = ("random", "round_robin", "sequential")

_OPTIONS = ("except", "force_tcp", "prefer_udp", "expire", "max_fails", "health_check",
            "policy", "max_concurrent", "max_age", "failfast_all_unhealthy_upstreams",
            "next", "failover", "max_connect_attempts", "max_idle_conns", "tls", "tls_servername")
_UNSUPPORTED: dict[str, str] = {}
_TO_WHAT = ("an upstream (IP, IP:PORT, [IPv6]:PORT, dns://IP[:PORT], tls://IP[:PORT])"
            " or a resolv.conf file")
#: DNS over TLS's port (RFC 7858 section 3.1).
DOT_PORT = 853


def parse_forward(line: Directive, ctx: BlockContext) -> ForwardSettings:
    # forward FROM TO... {
    #     except ZONES...
    #     force_tcp
    #     prefer_udp
    #     expire DURATION
    #     max_fails INTEGER
    #     health_check DURATION [no_rec] [domain FQDN]
    #     policy random|round_robin|sequential
    #     max_concurrent INTEGER
    #     max_age DURATION
    #     failfast_all_unhealthy_upstreams
    #     next RCODE...
    #     failover RCODE...
    #     max_connect_attempts INTEGER
    #     max_idle_conns INTEGER
    #     tls [CERT KEY [CA]] | tls CA
    #     tls_servername NAME
    # }
    # Defaults are ForwardSettings's own.
    args = Args("forward", line)
    from_zones = args.value("a FROM zone", values.zone, lambda z: len(z) == 1,
                            check_hint="a CIDR here must map to exactly one reverse zone")
    upstreams: list[Upstream] = []
    if not len(args):
        raise args.error(f"at least one TO: {_TO_WHAT}")
    for tok in args.rest():
        upstreams.extend(_upstreams(tok, ctx))
        if len(upstreams) > MAX_UPSTREAMS:
            raise tok.error(f"forward: at most {MAX_UPSTREAMS} upstreams are allowed,"
                            f" found {len(upstreams)} with {tok.text!r}")

    out: dict[str, Any] = {}
    for name, opt in options("forward", line, _OPTIONS, unsupported=_UNSUPPORTED):
        if name == "except":
            zones = list(opt.zones("a zone"))
            while len(opt):
                zones.extend(opt.zones())
            out["except_zones"] = tuple(dict.fromkeys(zones))
        elif name in ("force_tcp", "prefer_udp"):
            out[name] = True
        elif name == "failfast_all_unhealthy_upstreams":
            out["failfast_all_unhealthy"] = True
        elif name in ("expire", "max_age"):
            out[name] = opt.duration("a DURATION")
        elif name == "max_fails":
            out[name] = opt.integer("a non-negative integer")
        elif name in ("max_connect_attempts", "max_idle_conns"):
            out[name] = opt.integer("a non-negative integer (0: no limit)")
        elif name == "tls":
            out["tls_files"] = _tls_files(opt, line)
        elif name == "tls_servername":
            out["tls_servername"] = opt.value("a server NAME", str)
        elif name == "next":
            out["next_rcodes"] = _rcodes(opt)
        elif name == "failover":
            out["failover_rcodes"] = _rcodes(opt, noerror=False)
        elif name == "max_concurrent":
            out[name] = opt.integer("a non-negative integer (0: no limit)")
        elif name == "health_check":
            out["health_check"] = opt.duration("a DURATION")
            _health_check_flags(opt, out)
        elif name == "policy":
            out["policy"] = opt.value("'random', 'round_robin' or 'sequential'", str, lambda p: p in POLICIES)
        opt.end()
    return dataclasses.replace(ForwardSettings(zone=from_zones[0], upstreams=tuple(upstreams)),
                               **out)


def _rcode(text: str) -> int:
    """An RCODE name as CoreDNS spells them (RFC 6895 section 2.3), any case; no numbers."""
    if text.isdigit():
        raise ValueError(text)
    return wire.rcode_value(text)


def _rcodes(opt: Args, noerror: bool = True) -> tuple[int, ...]:
    """``RCODE...``: one name at least (NXDOMAIN, SERVFAIL, REFUSED...), any case."""
    what = "an RCODE name such as NXDOMAIN, SERVFAIL or REFUSED"
    allowed = None if noerror else (lambda rc: rc != wire.NOERROR)
    hint = "" if noerror else "NOERROR cannot be a failover rcode"
    found = [opt.value(what, _rcode, allowed, check_hint=hint)]
    while len(opt):
        found.append(opt.value(what, _rcode, allowed, check_hint=hint))
    return tuple(dict.fromkeys(found))


def _health_check_flags(opt: Args, out: dict[str, Any]) -> None:
    """``[no_rec] [domain FQDN]``, in either order."""
    seen: set[str] = set()
    while (tok := opt.peek()) is not None:
        if tok.text in seen or tok.text not in ("no_rec", "domain"):
            raise opt.error("end of line, 'no_rec' or 'domain FQDN' (each at most once)")
        opt.take("a flag")
        seen.add(tok.text)
        if tok.text == "no_rec":
            out["health_check_no_rec"] = True
        else:
            out["health_check_domain"] = opt.zones("a domain name FQDN")[0]


def _upstreams(tok: Token, ctx: BlockContext) -> list[Upstream]:
    """One TO: an address, or a resolv.conf file whose nameservers are the upstreams."""
    text = tok.text
    scheme, sep, rest = text.partition("://")
    if sep:
        if scheme.lower() == "tls":
            try:
                return [_address(rest, DOT_PORT, tls=True)]
            except ValueError as exc:
                raise tok.error(f"forward: expected {_TO_WHAT}, found {text!r} ({exc})") from None
        if scheme.lower() != "dns":
            raise tok.error(f"forward: expected {_TO_WHAT}, found {text!r}"
                            f" (transport {scheme!r} is not supported)")
        try:
            return [_address(rest)]
        except ValueError as exc:
            raise tok.error(f"forward: expected {_TO_WHAT}, found {text!r} ({exc})") from None
    try:
        return [_address(text)]
    except ValueError as exc:
        reason = str(exc)
    path = text if os.path.isabs(text) else os.path.join(os.path.dirname(tok.file), text)
    if not os.path.isfile(path):
        if reason == values.NOT_AN_IP:
            reason += "; host names are not resolved"
        raise tok.error(f"forward: expected {_TO_WHAT}, found {text!r} ({reason})")
    return _resolv_conf(tok, path, ctx)


def _address(text: str, default_port: int = DNS_PORT, tls: bool = False) -> Upstream:
    host, port_text = values.split_host_port(text)
    return Upstream(values.ip(host), default_port if port_text is None else values.port(port_text),
                    tls)


def _tls_files(opt: Args, line: Directive) -> tuple[str, ...]:
    """``tls [CERT KEY [CA]]`` or ``tls CA`` (CoreDNS's pkg/tls): files read now, to fail here."""
    toks = list(opt.rest())
    if len(toks) > 3:
        raise toks[3].error("forward: expected end of line after 'tls CERT KEY CA',"
                            f" found {toks[3].text!r}")
    paths = [t.text if os.path.isabs(t.text) else os.path.join(os.path.dirname(t.file), t.text)
             for t in toks]
    for tok, path in zip(toks, paths):
        if not os.path.isfile(path):
            raise tok.error(f"forward: tls: no such file {path!r}")
    context = ssl.create_default_context()
    try:
        if len(paths) in (1, 3):
            context.load_verify_locations(cafile=paths[-1])
        if len(paths) >= 2:
            context.load_cert_chain(paths[0], paths[1])
    except (ssl.SSLError, OSError) as exc:
        raise (toks[0] if toks else line.name).error(
            f"forward: tls: cannot load {' '.join(paths)}: {exc}") from None
    return tuple(paths)


def _resolv_conf(tok: Token, path: str, ctx: BlockContext) -> list[Upstream]:
    """The ``nameserver`` lines of a resolv.conf file, read now (as CoreDNS does)."""
    try:
        text = ctx.read_file(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise tok.error(f"forward: cannot read {path!r}: {exc}") from None
    if path not in ctx.files:
        ctx.files.append(path)
    found: list[Upstream] = []
    for number, raw in enumerate(text.splitlines(), 1):
        words = raw.split()
        if not words or words[0] != "nameserver":
            continue
        if len(words) < 2:
            raise ConfigError("expected an IP address after 'nameserver', found end of line",
                              path, number, raw.index("nameserver") + 1)
        try:
            found.append(Upstream(values.ip(words[1]), DNS_PORT))
        except ValueError:
            raise ConfigError(f"expected an IP address after 'nameserver', found {words[1]!r}",
                              path, number, raw.index(words[1], raw.index("nameserver") + 10) + 1) from None
    if not found:
        raise tok.error(f"forward: no 'nameserver' line in {path!r}")
    return found
