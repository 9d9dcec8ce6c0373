"""A Config -> the human-readable effective configuration (``check-config``).

Everything is spelled out, defaults included, so an operator can see what a
terse Corefile (``cache 30``) actually means.
"""
from __future__ import annotations

from nodecache.config import bind
from nodecache.config.settings import CacheSettings, Config, ForwardSettings, ServerBlock
from nodecache.core.wire import class_name, rcode_name, type_name

_LABEL_WIDTH = 12


def describe(config: Config) -> str:
    """The effective configuration: listeners with their zones, then each block."""
    lines = [f"Corefile: {config.path}" + (f" (sha512 {config.digest[:16]}...)" if config.digest else "")]
    imported = [f for f in config.files if f != config.path]
    if imported:
        lines.append("Also read: " + ", ".join(imported))
    lines += ["", "Listeners (UDP and TCP):"]
    # Interfaces are resolved when the agent starts: shown by name here.
    listeners = bind.resolve(config, lambda name: [f"<{name}>"]).listeners()
    width = max((len(_hostport(a, p)) for a, p in listeners), default=0)
    for (address, port), blocks in listeners.items():
        zones = " ".join(z for b in blocks for z in b.zones)
        lines.append(f"  {_hostport(address, port):<{width}}  {zones}")
    for block in config.blocks:
        lines += ["", *_block(block)]
    return "\n".join(lines) + "\n"


def _block(block: ServerBlock) -> list[str]:
    where = f" ({block.source})" if block.source else ""
    out = [f"Server block {' '.join(block.zones)} port {block.port}{where}"]

    def add(label: str, *values: str) -> None:
        out.append(f"  {label:<{_LABEL_WIDTH}}{values[0]}")
        out.extend(f"  {'':<{_LABEL_WIDTH}}{v}" for v in values[1:])

    if block.bind_lines:
        add("bind", *(" ".join(line.targets)
                      + (f" except {' '.join(line.excepted)}" if line.excepted else "")
                      for line in block.bind_lines))
    else:
        add("bind", " ".join(block.bind) if block.bind else "every address (0.0.0.0 and ::)")
    if block.bufsize is not None:
        add("bufsize", f"{block.bufsize} bytes (UDP answers and the size asked upstream)")
    if block.timeouts is not None:
        t = block.timeouts
        add("timeouts", f"TCP read {_dur(t.read)}, write {_dur(t.write)}, idle {_dur(t.idle)}")
    if block.debug:
        add("debug", "on (DEBUG logging)")
    add("cache", *(_cache(block.cache) if block.cache else ["off"]))
    for label, values in _answering(block):
        add(label, *values)
    add("forward", *(_forward(block.forward) if block.forward
                     else ["off (what no plugin answers gets SERVFAIL)"]))
    for later in block.later_forwards:  # chained in the order written
        add("forward", *_forward(later))
    if block.whoami:
        add("whoami", "on (answers what forward does not take)")
    if block.errors is None:
        add("errors", "off")
    else:
        add("errors", "on" + (", stack traces" if block.errors.stacktrace else ""),
            *(f"consolidate {_dur(r.period)} {r.pattern!r} at {r.level}"
              for r in block.errors.consolidate))
    if block.log is None:
        add("log", "off")
    else:
        log = block.log
        add("log", f"classes {' '.join(sorted(log.classes))}"
            + (f", zones {' '.join(log.zones)}" if log.zones else "")
            + (f", format {log.format}" if log.format else ", common log format"))
    add("loop", "detection on" if block.loop else "detection off")
    add("loadbalance", "round_robin" if block.loadbalance else "off")
    add("prometheus", f"http://{block.prometheus}/metrics" if block.prometheus else "off")
    if block.health is None:
        add("health", "off")
    else:
        add("health", f"http://{block.health.address}/health, lameduck {_dur(block.health.lameduck)}")
    add("ready", f"http://{block.ready}/ready" if block.ready else "off")
    if block.reload is None:
        add("reload", "off")
    else:
        add("reload", f"every {_dur(block.reload.interval)} plus up to"
            f" {_dur(block.reload.jitter)} jitter")
    return out


def _answering(block: ServerBlock) -> list[tuple[str, list[str]]]:
    """The answering plugins before forward, in the order they run (CoreDNS's)."""
    out: list[tuple[str, list[str]]] = []
    if block.dns64 is not None:
        d = block.dns64
        out.append(("dns64", [f"prefix {d.prefix}"
                              + (", translate_all" if d.translate_all else "")
                              + (", IPv4 clients too" if d.allow_ipv4 else ", IPv6 clients")]))
    if block.rewrite:
        out.append(("rewrite", [f"{len(block.rewrite)} rule(s)"]))
    for t in block.template:
        out.append(("template", [f"{class_name(t.qclass)} {type_name(t.qtype)} {' '.join(t.zones)}"
                                 f" -> {rcode_name(t.rcode)}, {len(t.answer)} answer(s)"
                                 + (", fallthrough" if t.fallthrough is not None else "")]))
    if block.hosts is not None:
        h = block.hosts
        out.append(("hosts", [f"{h.path} (re-read every {_dur(h.reload)})" if h.reload
                              else f"{h.path} (read once)",
                              f"{len(h.inline)} inline entries, zones {' '.join(h.zones)},"
                              f" TTL {h.ttl}s" + ("" if h.reverse else ", no PTR answers")
                              + (f", fallthrough {' '.join(h.fallthrough)}"
                                 if h.fallthrough is not None else "")]))
    return out


def _cache(c: CacheSettings) -> list[str]:
    stale = (f"serve_stale up to {_dur(c.serve_stale)} ({c.serve_stale_mode})"
             if c.serve_stale else "serve_stale off")
    prefetch = (f"prefetch after {c.prefetch_amount} hits in {_dur(c.prefetch_duration)}"
                f" when {c.prefetch_percentage}% of the TTL is left"
                if c.prefetch_amount else "prefetch off")
    out = [
        f"success {c.success_capacity} entries, TTL {c.success_min_ttl}s..{c.success_max_ttl}s",
        f"denial {c.denial_capacity} entries, TTL {c.denial_min_ttl}s..{c.denial_max_ttl}s",
        f"servfail {c.servfail_ttl}s" if c.servfail_ttl else "servfail not cached",
        prefetch,
        stale,
    ]
    if c.zones:
        out.append(f"only zones {' '.join(c.zones)}")
    if c.disable_success:
        out.append(f"no positive caching under {' '.join(c.disable_success)}")
    if c.disable_denial:
        out.append(f"no negative caching under {' '.join(c.disable_denial)}")
    if c.keepttl:
        out.append("keepttl (hits report the original TTL)")
    return out


def _forward(f: ForwardSettings) -> list[str]:
    if f.force_tcp:
        proto = "TCP always" + (" (prefer_udp ignored)" if f.prefer_udp else "")
    elif f.prefer_udp:
        proto = "UDP always, TCP on truncation"
    else:
        proto = "the client's protocol"
    check = (f"health check every {_dur(f.health_check)} after a failure"
             + (" (RD=0)" if f.health_check_no_rec else "")
             + (f" for {f.health_check_domain}" if f.health_check_domain != "." else "")
             if f.health_check else "health checks off")
    out = [
        f"{f.zone} -> {' '.join(('tls://' if u.tls else '') + str(u) for u in f.upstreams)}",
        f"policy {f.policy}, over {proto}",
        f"max_fails {f.max_fails}, {check}"
        + (", SERVFAIL at once when all are down" if f.failfast_all_unhealthy else ""),
        f"pooled connections expire after {_dur(f.expire)} idle"
        + (f" or {_dur(f.max_age)} old" if f.max_age else ""),
        f"max_concurrent {f.max_concurrent}" if f.max_concurrent else "max_concurrent unlimited",
        f"try timeout {_dur(f.try_timeout)}, overall {_dur(f.budget)}",
    ]
    if f.except_zones:
        out.insert(1, f"except {' '.join(f.except_zones)}")
    hand_on = (("next forward on", f.next_rcodes), ("next upstream on", f.failover_rcodes))
    out.extend(f"{what} {' '.join(map(rcode_name, codes))}" for what, codes in hand_on if codes)
    if any(u.tls for u in f.upstreams):
        out.append(f"TLS: certificate for {f.tls_servername or 'the upstream address'}"
                   + (f", files {' '.join(f.tls_files)}" if f.tls_files else ", system CAs"))
    if f.max_connect_attempts:
        out.append(f"max_connect_attempts {f.max_connect_attempts}")
    return out


def _hostport(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def _dur(seconds: float) -> str:
    """Seconds as a Go-style duration: ``500ms``, ``5s``, ``1m30s``, ``1h``."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms"
    whole = int(seconds)
    frac = seconds - whole
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{hours}h" if hours else ""
    out += f"{minutes}m" if minutes else ""
    if secs or frac:
        out += f"{secs + frac:g}s"
    return out
