"""node-cache's Go-flag command line, rewritten for click.

node-cache's DaemonSet passes ``-localip 169.254.20.10,10.96.0.10
-setupiptables=false`` (Go's ``flag`` package: one or two dashes, booleans as
``-name``, ``-name=true`` or ``-name=false``). click wants ``--localip`` and
``--setupiptables`` / ``--no-setupiptables``. :func:`normalize_nodecache_argv`
maps the first onto the second so an operator can swap the image without
editing the args; arguments already in click's form pass through.
"""
from __future__ import annotations

import re

#: Boolean flags: ``-name=false`` becomes ``--no-name``.
BOOL_FLAGS = frozenset({"setupinterface", "setupiptables", "skipteardown"})

#: node-cache's own flags and the CoreDNS flags it accepts (NODELOCAL.md section 1.1).
#: Only these are rewritten from one dash to two, so click's short options
#: (``-h``, ``-p53``) are never mistaken for Go flags.
NODECACHE_FLAGS = BOOL_FLAGS | frozenset({
    "localip", "interfacename", "syncinterval", "metrics-listen-address",
    "prometheus-listen-address", "basecorefile", "corefile", "kubednscm", "upstreamsvc",
    "health-port", "reloadwithsignal", "conf", "dns.port", "pidfile", "plugins", "version",
    "quiet", "firewall", "dns-port", "cache-snapshot", "serving-lock",
})

#: Go's strconv.ParseBool spellings.
_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})

#: Go's time.ParseDuration units, in nanoseconds.
_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000}
_GO_DURATION_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def syncinterval_seconds(value: str) -> str:
    """node-cache's ``-syncinterval`` value as our seconds; pure.

    The flag is a Go ``time.Duration`` that node-cache multiplies by one second
    again, so ``1ns`` means 1 s and ``60ns`` 60 s (charts pass ``1ns``). A bare
    number passes through as seconds.
    """
    parts = _GO_DURATION_RE.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return value
    nanoseconds = float(sum(float(n) * _GO_UNITS[u] for n, u in parts))
    return str(int(nanoseconds)) if nanoseconds.is_integer() else str(nanoseconds)


_FLAG_RE = re.compile(r"(-{1,2})([A-Za-z][A-Za-z0-9._-]*)(?:=(.*))?", re.S)


def normalize_nodecache_argv(argv: list[str]) -> list[str]:
    """Rewrite node-cache (Go ``flag``) syntax into click syntax; pure.

    * ``-localip X`` -> ``--localip X``; ``-localip=X`` -> ``--localip=X``;
    * ``-setupiptables`` / ``-setupiptables=true`` -> ``--setupiptables``;
    * ``-setupiptables=false`` (or ``--setupiptables=false``) -> ``--no-setupiptables``;
    * ``-syncinterval 1ns`` -> ``--syncinterval 1`` (:func:`syncinterval_seconds`);
    * everything else, including ``--x`` forms and anything after ``--``, is unchanged.
    """
    out: list[str] = []
    duration_next = False
    for i, arg in enumerate(argv):
        if arg == "--":
            return out + argv[i:]
        if duration_next:
            duration_next = False
            out.append(syncinterval_seconds(arg))
            continue
        m = _FLAG_RE.fullmatch(arg)
        if m is None:
            out.append(arg)
            continue
        dashes, name, value = m.groups()
        if name in BOOL_FLAGS and value is not None:
            if value in _TRUE:
                out.append(f"--{name}")
                continue
            if value in _FALSE:
                out.append(f"--no-{name}")
                continue
        if name == "syncinterval":
            if value is None:
                duration_next = True
            else:
                arg = f"{dashes}{name}={syncinterval_seconds(value)}"
        if dashes == "-" and name in NODECACHE_FLAGS:
            out.append("-" + arg)
        else:
            out.append(arg)
    return out
