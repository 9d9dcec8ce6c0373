"""Corefile -> settings: the official node-local Corefile, keys, and each plugin's options."""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from nodecache.config import (
    CacheSettings,
    Config,
    ForwardSettings,
    HealthSettings,
    LogSettings,
    ReloadSettings,
    ServerBlock,
    Upstream,
    describe,
    load,
    parse_text,
)
from nodecache.config import bind
from nodecache.config.plugins import COMBINED_LOG_FORMAT
from nodecache.config.settings import BindLine, ConsolidateRule, ErrorsSettings, Source, TimeoutSettings
from nodecache.errors import ConfigError
from tests.kit import DATA as TESTDATA

DATA = TESTDATA / "corefiles"

LOCAL_DNS = "169.254.20.10"
DNS_SERVER = "10.96.0.10"
CLUSTER_DNS = "10.96.0.11"


def nodelocal_text(tmp_path: Path, *, ipvs: bool = False) -> str:
    """The official template with placeholders filled in, as install and node-cache do."""
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("# from the node\nsearch example.internal\n"
                      "nameserver 10.0.0.2\nnameserver 2001:db8::53\noptions ndots:1\n")
    text = (DATA / "nodelocal.Corefile").read_text()
    for placeholder, value in {
        "__PILLAR__DNS__DOMAIN__": "cluster.local",
        "__PILLAR__LOCAL__DNS__": LOCAL_DNS,
        "__PILLAR__DNS__SERVER__": "" if ipvs else DNS_SERVER,
        "__PILLAR__CLUSTER__DNS__": CLUSTER_DNS,
        "__PILLAR__UPSTREAM__SERVERS__": str(resolv),
    }.items():
        text = text.replace(placeholder, value)
    return text


def test_official_nodelocal_corefile(tmp_path: Path) -> None:
    config = parse_text(nodelocal_text(tmp_path), path=str(tmp_path / "Corefile"))
    bind = (LOCAL_DNS, DNS_SERVER)
    clamp30 = CacheSettings(success_max_ttl=30, denial_max_ttl=30)
    to_cluster = ForwardSettings(zone=".", upstreams=(Upstream(CLUSTER_DNS),), force_tcp=True)
    common: dict[str, Any] = dict(port=53, bind=bind, errors=ErrorsSettings(), loop=True,
                                  prometheus=":9253", reload=ReloadSettings())
    expected = [
        ServerBlock(zones=("cluster.local.",), **common,
                    cache=CacheSettings(success_capacity=9984, success_max_ttl=30,
                                        denial_capacity=9984, denial_max_ttl=5),
                    forward=to_cluster, health=HealthSettings(address=f"{LOCAL_DNS}:8080")),
        ServerBlock(zones=("in-addr.arpa.",), **common, cache=clamp30, forward=to_cluster),
        ServerBlock(zones=("ip6.arpa.",), **common, cache=clamp30, forward=to_cluster),
        ServerBlock(zones=(".",), **common, cache=clamp30,
                    forward=ForwardSettings(zone=".", upstreams=(
                        Upstream("10.0.0.2"), Upstream("2001:db8::53")))),
    ]
    # Sources are checked separately: they are positions, not settings.
    assert [dataclasses.replace(b, source=None) for b in config.blocks] == expected
    assert [(b.source.line, b.source.column) for b in config.blocks if b.source] == [
        (1, 1), (16, 1), (27, 1), (38, 1)]
    assert config.files == (str(tmp_path / "resolv.conf"),)
    assert set(config.listeners()) == {(LOCAL_DNS, 53), (DNS_SERVER, 53)}


def test_official_nodelocal_corefile_ipvs_mode(tmp_path: Path) -> None:
    # IPVS mode substitutes __PILLAR__DNS__SERVER__ with nothing: bind the local IP only.
    config = parse_text(nodelocal_text(tmp_path, ipvs=True))
    assert {b.bind for b in config.blocks} == {(LOCAL_DNS,)}


def test_load_sets_path_digest_and_files(tmp_path: Path) -> None:
    path = tmp_path / "Corefile"
    path.write_text(nodelocal_text(tmp_path))
    config = load(str(path))
    assert config.path == str(path)
    assert config.digest == hashlib.sha512(path.read_bytes()).hexdigest()
    assert config.files == (str(path), str(tmp_path / "resolv.conf"))


def test_describe_nodelocal(tmp_path: Path) -> None:
    text = describe(parse_text(nodelocal_text(tmp_path), path="Corefile"))
    assert text.startswith("Corefile: Corefile (sha512 ")
    assert f"  {LOCAL_DNS}:53  cluster.local. in-addr.arpa. ip6.arpa. .\n" in text
    assert f"  {DNS_SERVER}:53     cluster.local. in-addr.arpa. ip6.arpa. .\n" in text
    assert "Server block cluster.local. port 53 (Corefile:1:1)\n" in text
    assert "  cache       success 9984 entries, TTL 5s..30s\n" in text
    assert "              denial 9984 entries, TTL 5s..5s\n" in text
    assert f"  forward     . -> {CLUSTER_DNS}:53\n" in text
    assert "              policy random, over TCP always\n" in text
    assert "  forward     . -> 10.0.0.2:53 [2001:db8::53]:53\n" in text
    assert f"  health      http://{LOCAL_DNS}:8080/health, lameduck 0s\n" in text
    assert "  prometheus  http://:9253/metrics\n" in text
    assert "  reload      every 30s plus up to 15s jitter\n" in text


def test_describe_spells_out_options() -> None:
    config = parse_text("""
        example.org:1053 {
            cache 300 example.org {
                prefetch 5 2m 20%
                serve_stale 1h30m verify
                disable denial sub.example.org
                keepttl
            }
            forward . 10.0.0.1 {
                except internal.example.org
                prefer_udp
                max_age 5m
                max_concurrent 1000
                health_check 250ms no_rec domain example.org
            }
            log
        }""")
    text = describe(config)
    for line in [
        "  [::]:1053     example.org.",
        "  bind        every address (0.0.0.0 and ::)",
        "              prefetch after 5 hits in 2m when 20% of the TTL is left",
        "              serve_stale up to 1h30m (verify)",
        "              only zones example.org.",
        "              no negative caching under sub.example.org.",
        "              keepttl (hits report the original TTL)",
        "              except internal.example.org.",
        "              policy random, over UDP always, TCP on truncation",
        "              max_fails 2, health check every 250ms after a failure (RD=0) for example.org.",
        "              pooled connections expire after 10s idle or 5m old",
        "              max_concurrent 1000",
        "  log         classes denial error success, common log format",
        "  health      off",
    ]:
        assert line + "\n" in text


# (server block key text, default_port) -> [(zones, port), ...]
KEYS: list[tuple[str, int, list[tuple[tuple[str, ...], int]]]] = [
    (".", 53, [((".",), 53)]),
    (".:53", 53, [((".",), 53)]),
    (":1053", 53, [((".",), 1053)]),
    ("Example.ORG", 53, [(("example.org.",), 53)]),
    ("example.org.", 5353, [(("example.org.",), 5353)]),
    ("dns://example.org:54", 53, [(("example.org.",), 54)]),
    ("DNS://example.org", 53, [(("example.org.",), 53)]),
    ("a.org b.org", 53, [(("a.org.", "b.org."), 53)]),
    ("a.org,b.org", 53, [(("a.org.", "b.org."), 53)]),
    ("a.org, b.org", 53, [(("a.org.", "b.org."), 53)]),
    ("a.org,\n    b.org", 53, [(("a.org.", "b.org."), 53)]),
    ("a.org:53 b.org:54 c.org", 53, [(("a.org.", "c.org."), 53), (("b.org.",), 54)]),
    ("10.0.0.0/8", 53, [(("10.in-addr.arpa.",), 53)]),
    ("10.0.0.0/15:53", 53, [(("0.10.in-addr.arpa.", "1.10.in-addr.arpa."), 53)]),
    ("172.16.5.0/24", 53, [(("5.16.172.in-addr.arpa.",), 53)]),
    ("fd00::/8", 53, [(("d.f.ip6.arpa.",), 53)]),
]


@pytest.mark.parametrize(("keys", "default_port", "expected"), KEYS)
def test_server_block_keys(keys: str, default_port: int,
                           expected: list[tuple[tuple[str, ...], int]]) -> None:
    config = parse_text(f"{keys} {{\n}}", default_port=default_port)
    assert [(b.zones, b.port) for b in config.blocks] == expected


def test_block_split_by_port_shares_plugins() -> None:
    config = parse_text("a.org:53 b.org:54 {\n  cache 10\n  errors\n}")
    first, second = config.blocks
    assert first.cache == second.cache == CacheSettings(success_max_ttl=10, denial_max_ttl=10,
                                                       success_min_ttl=5, denial_min_ttl=5)
    assert first.errors and second.errors


def test_same_zone_on_different_ports_or_addresses_is_fine() -> None:
    config = parse_text(".:53 {\n}\n.:54 {\n}\n.:53 {\n  bind 10.0.0.1\n}\n.:53 {\n  bind 10.0.0.2\n}")
    assert len(config.blocks) == 4


def block(body: str) -> ServerBlock:
    """The only block of ``.:53 { BODY }``."""
    (only,) = parse_text(f".:53 {{\n{body}\n}}").blocks
    return only


CACHE = CacheSettings()
# (directive text, expected CacheSettings)
CACHE_CASES: list[tuple[str, CacheSettings]] = [
    ("cache", CACHE),
    ("cache 30", dataclasses.replace(CACHE, success_max_ttl=30, denial_max_ttl=30)),
    # The default MINTTL (5s) is lowered so that it never exceeds the maximum.
    ("cache 3", dataclasses.replace(CACHE, success_max_ttl=3, denial_max_ttl=3,
                                    success_min_ttl=3, denial_min_ttl=3)),
    ("cache 30 Example.org 10.0.0.0/8",
     dataclasses.replace(CACHE, success_max_ttl=30, denial_max_ttl=30,
                         zones=("example.org.", "10.in-addr.arpa."))),
    ("cache example.org", dataclasses.replace(CACHE, zones=("example.org.",))),
    ("cache {\n success 5000\n}", dataclasses.replace(CACHE, success_capacity=5000)),
    ("cache {\n success 5000 60 0\n denial 100 10 2\n}",
     dataclasses.replace(CACHE, success_capacity=5000, success_max_ttl=60, success_min_ttl=0,
                         denial_capacity=100, denial_max_ttl=10, denial_min_ttl=2)),
    ("cache 30 {\n success 9984\n}",
     dataclasses.replace(CACHE, success_max_ttl=30, denial_max_ttl=30)),
    ("cache {\n prefetch 10\n}", dataclasses.replace(CACHE, prefetch_amount=10)),
    ("cache {\n prefetch 2 30s\n}",
     dataclasses.replace(CACHE, prefetch_amount=2, prefetch_duration=30.0)),
    ("cache {\n prefetch 2 1m30s 90%\n}",
     dataclasses.replace(CACHE, prefetch_amount=2, prefetch_duration=90.0, prefetch_percentage=90)),
    ("cache {\n serve_stale\n}", dataclasses.replace(CACHE, serve_stale=3600.0)),
    ("cache {\n serve_stale 10m\n}", dataclasses.replace(CACHE, serve_stale=600.0)),
    ("cache {\n serve_stale 10m verify\n}",
     dataclasses.replace(CACHE, serve_stale=600.0, serve_stale_mode="verify")),
    ("cache {\n servfail 0\n}", dataclasses.replace(CACHE, servfail_ttl=0)),
    ("cache {\n servfail 5m\n}", dataclasses.replace(CACHE, servfail_ttl=300)),
    # Without zones, disable applies to the cache's zones, else the block's.
    ("cache {\n disable success\n}", dataclasses.replace(CACHE, disable_success=(".",))),
    ("cache example.org {\n disable denial\n}",
     dataclasses.replace(CACHE, zones=("example.org.",), disable_denial=("example.org.",))),
    ("cache {\n disable success a.org\n disable denial b.org c.org\n}",
     dataclasses.replace(CACHE, disable_success=("a.org.",), disable_denial=("b.org.", "c.org."))),
    ("cache {\n keepttl\n}", dataclasses.replace(CACHE, keepttl=True)),
    ("cache { keepttl }", dataclasses.replace(CACHE, keepttl=True)),
]


@pytest.mark.parametrize(("text", "expected"), CACHE_CASES)
def test_cache(text: str, expected: CacheSettings) -> None:
    assert block(text).cache == expected


def fwd(*upstreams: Upstream, **changes: Any) -> ForwardSettings:
    return ForwardSettings(zone=".", upstreams=upstreams, **changes)


U1 = Upstream("10.0.0.1")
# (directive text, expected ForwardSettings)
FORWARD_CASES: list[tuple[str, ForwardSettings]] = [
    ("forward . 10.0.0.1", fwd(U1)),
    ("forward Example.Org 10.0.0.1",
     dataclasses.replace(fwd(U1), zone="example.org.")),
    ("forward 10.0.0.0/8 10.0.0.1", dataclasses.replace(fwd(U1), zone="10.in-addr.arpa.")),
    ("forward . 10.0.0.1:5353 [2001:db8::1]:54 2001:db8::2 [2001:db8::3] dns://10.0.0.4"
     " dns://10.0.0.5:55 DNS://[::1]:56",
     fwd(Upstream("10.0.0.1", 5353), Upstream("2001:db8::1", 54), Upstream("2001:db8::2"),
         Upstream("2001:db8::3"), Upstream("10.0.0.4"), Upstream("10.0.0.5", 55),
         Upstream("::1", 56))),
    ("forward . " + " ".join(f"10.0.0.{i}" for i in range(1, 16)),
     fwd(*(Upstream(f"10.0.0.{i}") for i in range(1, 16)))),
    ("forward . 10.0.0.1 {\n except a.org B.org\n}",
     fwd(U1, except_zones=("a.org.", "b.org."))),
    ("forward . 10.0.0.1 {\n force_tcp\n prefer_udp\n}", fwd(U1, force_tcp=True, prefer_udp=True)),
    ("forward . 10.0.0.1 {\n expire 30s\n max_age 1m\n}", fwd(U1, expire=30.0, max_age=60.0)),
    ("forward . 10.0.0.1 {\n max_fails 0\n}", fwd(U1, max_fails=0)),
    ("forward . 10.0.0.1 {\n health_check 1s\n}", fwd(U1, health_check=1.0)),
    ("forward . 10.0.0.1 {\n health_check 1s domain Example.ORG no_rec\n}",
     fwd(U1, health_check=1.0, health_check_domain="example.org.", health_check_no_rec=True)),
    ("forward . 10.0.0.1 {\n policy round_robin\n}", fwd(U1, policy="round_robin")),
    ("forward . 10.0.0.1 {\n policy sequential\n}", fwd(U1, policy="sequential")),
    ("forward . 10.0.0.1 {\n max_concurrent 1000\n}", fwd(U1, max_concurrent=1000)),
    ("forward . 10.0.0.1 {\n failfast_all_unhealthy_upstreams\n}",
     fwd(U1, failfast_all_unhealthy=True)),
]


@pytest.mark.parametrize(("text", "expected"), FORWARD_CASES)
def test_forward(text: str, expected: ForwardSettings) -> None:
    assert block(text).forward == expected


def test_forward_reads_resolv_conf_relative_to_the_corefile(tmp_path: Path) -> None:
    (tmp_path / "upstream.conf").write_text("nameserver 10.1.1.1\n  nameserver   10.1.1.2  \n")
    config = parse_text(".:53 {\n forward . upstream.conf 10.0.0.1\n}",
                        path=str(tmp_path / "Corefile"))
    assert config.blocks[0].forward == fwd(Upstream("10.1.1.1"), Upstream("10.1.1.2"), U1)
    assert config.files == (str(tmp_path / "upstream.conf"),)


# (body, ServerBlock field, expected value)
OTHER_CASES: list[tuple[str, str, object]] = [
    ("bind 10.0.0.1", "bind", ("10.0.0.1",)),
    ("bind 10.0.0.1 2001:DB8::1 10.0.0.1", "bind", ("10.0.0.1", "2001:db8::1")),
    ("errors", "errors", ErrorsSettings()),
    ("debug", "debug", True),
    ("bufsize", "bufsize", 1232),
    ("bufsize 512", "bufsize", 512),
    ("bufsize 4096", "bufsize", 4096),
    ("timeouts {\n read 10\n}", "timeouts", TimeoutSettings(read=10.0)),
    ("timeouts {\n read 1s\n write 24h\n idle 1m30s\n}", "timeouts",
     TimeoutSettings(read=1.0, write=86400.0, idle=90.0)),
    ("errors stdout", "errors", ErrorsSettings()),
    ("errors {\n stacktrace\n}", "errors", ErrorsSettings(stacktrace=True)),
    ('errors {\n consolidate 5m ".* i/o timeout$" warning\n consolidate 30s "^Failed to .+"\n}',
     "errors", ErrorsSettings(consolidate=(ConsolidateRule(300.0, ".* i/o timeout$", "warning"),
                                           ConsolidateRule(30.0, "^Failed to .+")))),
    ("bind 10.0.0.1\nbind ::1 10.0.0.1", "bind", ("10.0.0.1", "::1")),
    ("bind 10.0.0.1 10.0.0.2 {\n except 10.0.0.1\n}\nbind 10.0.0.3", "bind",
     ("10.0.0.2", "10.0.0.3")),
    ("bind 10.0.0.1 10.0.0.2 {\n except 10.0.0.1\n}\nbind 10.0.0.1", "bind",
     ("10.0.0.2", "10.0.0.1")),
    ("bind 10.0.0.1", "bind_lines", ()),
    ("loop", "loop", True),
    ("loadbalance", "loadbalance", True),
    ("loadbalance round_robin", "loadbalance", True),
    ("log", "log", LogSettings()),
    ("log {\n class denial error\n}", "log", LogSettings(classes=frozenset({"denial", "error"}))),
    ("log {\n class all\n}", "log", LogSettings()),
    ("log example.org", "log", LogSettings(zones=("example.org.",))),
    ("log . {combined}", "log", LogSettings(zones=(".",), format=COMBINED_LOG_FORMAT)),
    ("log . {common}", "log", LogSettings(zones=(".",))),
    ('log "{remote} {name} {rcode}"', "log", LogSettings(format="{remote} {name} {rcode}")),
    ("prometheus", "prometheus", "localhost:9153"),
    ("prometheus 0.0.0.0:9253", "prometheus", "0.0.0.0:9253"),
    ("prometheus [::]:9253", "prometheus", "[::]:9253"),
    ("health", "health", HealthSettings(address=":8080")),
    ("health localhost:8081 {\n lameduck 5s\n}", "health",
     HealthSettings(address="localhost:8081", lameduck=5.0)),
    ("ready", "ready", ":8181"),
    ("ready 127.0.0.1:8182", "ready", "127.0.0.1:8182"),
    ("reload", "reload", ReloadSettings(interval=30.0, jitter=15.0)),
    ("reload 10s", "reload", ReloadSettings(interval=10.0, jitter=5.0)),
    ("reload 2s 1s", "reload", ReloadSettings(interval=2.0, jitter=1.0)),
    ("reload 1m 20s", "reload", ReloadSettings(interval=60.0, jitter=20.0)),
]


@pytest.mark.parametrize(("text", "field", "expected"), OTHER_CASES)
def test_other_plugins(text: str, field: str, expected: object) -> None:
    assert getattr(block(text), field) == expected


def test_absent_plugins_are_off() -> None:
    only = block("")
    assert only == ServerBlock(zones=(".",), port=53, source=only.source)


def test_config_type() -> None:
    config = parse_text(".:53 {\n}")
    assert isinstance(config, Config)
    assert config.path == "<string>"
    assert config.files == ()


# -- bind with interface names (resolved by the agent; here with a fake host) --

FAKE_INTERFACES = {"eth0": ["10.1.0.5", "fe80::1%eth0"], "dummy0": ["169.254.20.10"],
                   "down0": []}


def _resolve(text: str) -> tuple[str, ...]:
    config = parse_text(f".:53 {{\n{text}\n}}")
    assert config.blocks[0].bind == ()  # nothing listens before the names are resolved
    with pytest.raises(ValueError):
        config.listeners()
    return bind.resolve(config, FAKE_INTERFACES.get).blocks[0].bind


@pytest.mark.parametrize("text,expected", [
    ("bind eth0", ("10.1.0.5", "fe80::1%eth0")),
    ("bind eth0 {\n except fe80::1%eth0\n}", ("10.1.0.5",)),
    ("bind eth0 dummy0 {\n except eth0\n}", ("169.254.20.10",)),
    ("bind dummy0 10.9.9.9", ("169.254.20.10", "10.9.9.9")),
    ("bind eth0 {\n except 10.1.0.5\n}\nbind 10.1.0.5", ("fe80::1%eth0", "10.1.0.5")),
    ("bind down0 dummy0", ("169.254.20.10",)),
])
def test_bind_interfaces_resolve(text: str, expected: tuple[str, ...]) -> None:
    assert _resolve(text) == expected


@pytest.mark.parametrize("text,message", [
    ("bind eth9", "<string>:2:1: bind: no interface named 'eth9' on this host"
                  " (expected an IP address or the name of an interface)"),
    ("bind 10.0.0.1 {\n except eth9\n}", "<string>:2:1: bind: no interface named 'eth9'"
                                         " on this host (expected an IP address or the name"
                                         " of an interface)"),
    ("bind down0", "<string>:2:1: bind: no address left to listen on (the interfaces named"
                   " have none, or 'except' removes them all)"),
])
def test_bind_interfaces_errors(text: str, message: str) -> None:
    config = parse_text(f".:53 {{\n{text}\n}}")
    with pytest.raises(ConfigError) as info:
        bind.resolve(config, FAKE_INTERFACES.get)
    assert str(info.value) == message


def test_bind_interfaces_serving_a_zone_twice_is_an_error() -> None:
    config = parse_text(".:53 {\n  bind eth0\n}\n.:53 {\n  bind dummy0 eth0\n}")
    with pytest.raises(ConfigError) as info:
        bind.resolve(config, FAKE_INTERFACES.get)
    assert str(info.value) == ("<string>:5:3: bind: zone '.' is served twice on 10.1.0.5"
                               " port 53 (first by the block at <string>:1:1)")
    config = parse_text(".:53 {\n  bind 10.1.0.5\n}\n.:53 {\n  bind eth0\n}")
    with pytest.raises(ConfigError) as info:
        bind.resolve(config, FAKE_INTERFACES.get)
    assert str(info.value) == ("<string>:5:3: bind: zone '.' is served twice on 10.1.0.5"
                               " port 53 (first by the block at <string>:1:1)")


def test_bind_interface_lines_are_kept() -> None:
    config = parse_text(".:53 {\n  bind eth0 10.0.0.1 {\n    except lo\n  }\n}")
    assert config.blocks[0].bind_lines == (
        BindLine(("eth0", "10.0.0.1"), ("lo",), Source("<string>", 2, 3)),)
    # check-config on another host still describes it.
    assert "<eth0>:53" in describe(config)


def test_describe_spells_out_the_new_plugins() -> None:
    text = describe(parse_text(
        '.:53 {\n  bufsize 1100\n  timeouts {\n    idle 1m\n  }\n  debug\n'
        '  errors {\n    consolidate 5m ".* i/o timeout$" warning\n  }\n}'))
    for needle in ("bufsize     1100 bytes", "TCP read 3s, write 5s, idle 1m",
                   "debug       on (DEBUG logging)",
                   "consolidate 5m '.* i/o timeout$' at warning"):
        assert needle in text, text
