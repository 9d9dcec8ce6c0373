"""bench-client's parts on loopback: resolv.conf, glibc's search order, the sample, the load
generator and the search-path lookups against a fake server, the PNG writer, and the command's
stop on SIGTERM. The end-to-end run in namespaces is in test_benchclient_netns.py.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import sys
import time
import zlib
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from nodecache.benchclient import loadgen, lookup, names, plot, png, resolv, stats
from nodecache.errors import ConfigError
from tests.kit.fakeupstream import FakeUpstream, answer_from, make_answer
from tests.kit import ROOT

KUBELET = """\
search shop.svc.cluster.local svc.cluster.local cluster.local
nameserver 10.96.0.10
options ndots:5
"""


# --- resolv.conf and the search order ------------------------------------------------------

def test_kubelet_resolv_conf() -> None:
    conf = resolv.parse(KUBELET)
    assert conf.nameservers == ("10.96.0.10",)
    assert conf.search == ("shop.svc.cluster.local", "svc.cluster.local", "cluster.local")
    assert (conf.ndots, conf.cluster_domain, conf.namespace, conf.edns0) == (5, "cluster.local", "shop", False)


def test_resolv_conf_glibc_rules() -> None:
    conf = resolv.parse("search a b\nsearch c.example. d\noptions ndots:30 timeout:1 edns0 rotate\n"
                        "nameserver 10.0.0.1 # comment\n")
    assert conf.search == ("c.example", "d")  # the last search line wins
    assert (conf.ndots, conf.timeout, conf.edns0, conf.other_options) == (15, 1.0, True, ("rotate",))
    assert conf.cluster_domain is None


@pytest.mark.parametrize("text,line,what", [
    ("search x\nnameserver ten.0.0.1\n", 2, "not an IP address"),
    ("options ndots:five\n", 1, "ndots:<number>"),
])
def test_resolv_conf_errors(text: str, line: int, what: str) -> None:
    with pytest.raises(ConfigError) as e:
        resolv.parse(text, source="resolv.conf")
    assert e.value.line == line and what in str(e.value) and str(e.value).startswith(f"resolv.conf:{line}:")


@pytest.mark.parametrize("name,expected", [
    # fewer dots than ndots: every suffix first, the name as given last
    ("web", ["web.shop.svc.cluster.local.", "web.svc.cluster.local.", "web.cluster.local.", "web."]),
    ("api.example.com", ["api.example.com.shop.svc.cluster.local.", "api.example.com.svc.cluster.local.",
                         "api.example.com.cluster.local.", "api.example.com."]),
    # at least ndots dots: as given first
    ("a.b.c.d.e.f", ["a.b.c.d.e.f.", "a.b.c.d.e.f.shop.svc.cluster.local.", "a.b.c.d.e.f.svc.cluster.local.",
                     "a.b.c.d.e.f.cluster.local."]),
    # absolute: as given only
    ("example.com.", ["example.com."]),
])
def test_search_candidates(name: str, expected: list[str]) -> None:
    assert resolv.candidates(name, resolv.parse(KUBELET)) == expected


# --- the sample ----------------------------------------------------------------------------

def test_names_file() -> None:
    assert names.parse_names_file("# kube\nweb.shop.svc.cluster.local\n_http._tcp.web.shop.svc.cluster.local. srv\n") == [
        ("web.shop.svc.cluster.local", "A"), ("_http._tcp.web.shop.svc.cluster.local", "SRV")]
    with pytest.raises(ConfigError) as e:
        names.parse_names_file("a A\nb BOGUS\n", source="names.txt")
    assert str(e.value).startswith("names.txt:2:") and "BOGUS" in str(e.value)


def test_walk_and_names() -> None:
    assert names.default_walk(["10.96.0.1", "10.96.0.10", "10.97.3.4"]) == ["10.96.0.0/24", "10.97.3.0/24"]
    walk = names.ptr_walk(["10.96.0.0/24", "10.97.0.0/24"], 300)
    assert len(walk) == 300 and walk[0] == ("1.0.96.10.in-addr.arpa", "PTR") and walk[254] == ("1.0.97.10.in-addr.arpa", "PTR")
    assert names.srv_walk(["web.shop.svc.cluster.local", "ep-1.db.shop.svc.cluster.local"], "cluster.local", 3) == [
        ("_http._tcp.web.shop.svc.cluster.local", "SRV"), ("_https._tcp.web.shop.svc.cluster.local", "SRV"),
        ("_grpc._tcp.web.shop.svc.cluster.local", "SRV")]
    assert names.short_service_name("web.shop.svc.cluster.local", "cluster.local") == "web.shop"
    assert names.short_service_name("ep-1.web.shop.svc.cluster.local", "cluster.local") is None
    import random
    fresh = names.fresh_pod_names(1000, "shop", "cluster.local", random.Random(1))
    assert len(set(fresh)) == 1000 and all(n.endswith(".shop.pod.cluster.local") for n, _ in fresh)
    assert names.service_queries(["web.shop", "db.shop.svc.cluster.local"], "cluster.local") == [
        ("web.shop.svc.cluster.local", "A"), ("db.shop.svc.cluster.local", "A")]


def test_read_answers() -> None:
    qs = [("kube-dns.kube-system.svc.cluster.local", "A"), ("10.0.96.10.in-addr.arpa", "PTR"),
          ("gone.svc.cluster.local", "A"), ("late.svc.cluster.local", "A")]
    msgs = [dns.message.make_query(n + ".", t) for n, t in qs]
    wires: list[bytes | None] = [
        make_answer(msgs[0], ["10.96.0.10"]).to_wire(),
        make_answer(msgs[1], ["kube-dns.kube-system.svc.cluster.local."]).to_wire(),
        make_answer(msgs[2], rcode=dns.rcode.NXDOMAIN).to_wire(),
        None,
    ]
    a = names.read_answers(qs, wires)
    assert a.answered == qs[:2]
    assert a.addresses == ["10.96.0.10"] and a.targets == ["kube-dns.kube-system.svc.cluster.local"]


def test_quantiles_interpolate_like_numpy() -> None:
    assert stats.quantile_ms([0.001, 0.002, 0.003, 0.004], 50) == pytest.approx(2.5)
    assert stats.quantile_ms([0.001, 0.002, 0.003, 0.004], 90) == pytest.approx(3.7)
    assert stats.quantile_ms([0.005], 99) == pytest.approx(5.0)


# --- the load generator and the lookups, against a fake server ------------------------------

async def test_open_loop_counts_and_pace() -> None:
    """Every query is sent on schedule; dropped and late answers are timeouts, the rest answered."""
    def handler(q: dns.message.Message, proto: str) -> dns.message.Message | None:
        name = q.question[0].name.to_text()
        if name.startswith("drop"):
            return None
        return make_answer(q, ["192.0.2.1"] if name.startswith("ok") else [],
                           rcode=dns.rcode.SERVFAIL if name.startswith("fail") else dns.rcode.NOERROR)

    async with FakeUpstream(handler) as up:
        wires = [loadgen.query_wire(n, "A") for n in ("ok.example", "ok2.example", "drop.example", "fail.example")]
        t0 = time.monotonic()
        r = await loadgen.run("127.0.0.1", wires, rate=400, count=400, timeout=0.5, max_seconds=10,
                              stop=asyncio.Event(), sockets=3, port=up.port)
        took = time.monotonic() - t0
    assert r.sent == 400 and len(up.queries) == 400
    assert r.timeouts == 100 and r.answered == 300
    assert r.rcodes == {"NOERROR": 200, "SERVFAIL": 100}
    # 400 queries at 400 q/s: about 1 s of sending (wide margin: a loaded machine), then the drain.
    assert 0.9 < r.send_span < 2.0 and took < 4
    assert len({q.peer for q in up.queries}) == 3  # spread over three source ports
    s = stats.run_summary(r)
    assert s["timeout_rate"] == 0.25 and s["error_rate"] == 0.25


async def test_late_answers_are_timeouts_and_stop_ends_at_once() -> None:
    async with FakeUpstream(answer_from({"a.example. A": "192.0.2.1"}), delay=0.3) as up:
        wires = [loadgen.query_wire("a.example", "A")]
        r = await loadgen.run("127.0.0.1", wires, rate=50, count=20, timeout=0.1, max_seconds=10,
                              stop=asyncio.Event(), port=up.port)
        assert (r.sent, r.answered, r.timeouts) == (20, 0, 20)

        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        t0 = time.monotonic()
        r = await loadgen.run("127.0.0.1", wires, rate=50, count=5000, timeout=2, max_seconds=100,
                              stop=stop, port=up.port)
        assert time.monotonic() - t0 < 1.0 and r.stopped and 5 < r.sent < 100
        assert r.abandoned > 0 and r.timeouts == 0


async def test_max_seconds_bounds_a_run() -> None:
    async with FakeUpstream(answer_from({"a.example. A": "192.0.2.1"})) as up:
        r = await loadgen.run("127.0.0.1", [loadgen.query_wire("a.example", "A")], rate=100, count=10_000,
                              timeout=0.5, max_seconds=0.5, stop=asyncio.Event(), port=up.port)
    assert 20 < r.sent < 100


async def test_search_path_lookups_as_glibc() -> None:
    """Suffixes in order; A and AAAA together on one socket; NXDOMAIN and NODATA move on."""
    records = {"web.shop.svc.cluster.local. A": "10.0.0.7", "db.other.svc.cluster.local. AAAA": "fd00::1",
               "api.example.com. A": "192.0.2.8"}
    async with FakeUpstream(answer_from(records)) as up:
        conf = resolv.parse(KUBELET)
        r = await lookup.run("127.0.0.1", ["web", "db.other", "api.example.com", "nothing.here"], conf,
                             qtypes=("A", "AAAA"), rate=1000, timeout=1, max_seconds=10,
                             stop=asyncio.Event(), port=up.port)
        asked = [(q.qname, q.qtype) for q in up.queries]
    assert (r.found, r.not_found, r.timeouts, len(r.times)) == (3, 1, 0, 4)
    assert r.queries == 2 * (1 + 2 + 4 + 4) == len(asked)
    assert [n for n, t in asked if t == "A"][:4] == [
        "web.shop.svc.cluster.local.", "db.other.shop.svc.cluster.local.", "db.other.svc.cluster.local.",
        "api.example.com.shop.svc.cluster.local."]
    # one socket per lookup, both types from it
    ports = [q.peer[1] for q in up.queries]
    assert ports[0] == ports[1] and len(set(ports)) == 4


async def test_single_request_asks_one_type_at_a_time() -> None:
    """With ``options single-request`` AAAA leaves only once A is answered (0.1 s later here);
    without it both leave together."""
    gaps = {}
    for options in ("", "options single-request\n"):
        async with FakeUpstream(answer_from({}), delay=0.1) as up:
            conf = resolv.parse(KUBELET + options)
            r = await lookup.run("127.0.0.1", ["web"], conf, qtypes=("A", "AAAA"), rate=10, timeout=1,
                                 max_seconds=5, stop=asyncio.Event(), port=up.port)
            assert (r.not_found, r.queries) == (1, 8)
            assert [q.qtype for q in up.queries] == ["A", "AAAA"] * 4
            gaps[options] = up.queries[1].at - up.queries[0].at
    assert gaps[""] < 0.08 and gaps["options single-request\n"] >= 0.09


async def test_lookup_timeout_ends_it() -> None:
    async with FakeUpstream(lambda q, p: None) as up:
        r = await lookup.run("127.0.0.1", ["web"], resolv.parse(KUBELET), qtypes=("A",), rate=10,
                             timeout=0.2, max_seconds=5, stop=asyncio.Event(), port=up.port)
    assert (r.timeouts, r.queries, r.times) == (1, 1, [])


async def test_lookups_stop_at_once() -> None:
    async with FakeUpstream(lambda q, p: None) as up:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, stop.set)
        t0 = time.monotonic()
        r = await lookup.run("127.0.0.1", ["web"] * 10, resolv.parse(KUBELET), qtypes=("A",), rate=10,
                             timeout=10, max_seconds=60, stop=stop, port=up.port)
    assert time.monotonic() - t0 < 1.5 and r.stopped and r.lookups == 0


# --- the plots -------------------------------------------------------------------------------

def _decode_png(data: bytes) -> tuple[int, int, bytes]:
    assert data[:8] == png.SIGNATURE
    pos, chunks = 8, []
    while pos < len(data):
        (n,) = struct.unpack_from("!I", data, pos)
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        (crc,) = struct.unpack_from("!I", data, pos + 8 + n)
        assert crc == zlib.crc32(kind + body), kind
        chunks.append((kind, body))
        pos += 12 + n
    assert [k for k, _ in chunks] == [b"IHDR", b"IDAT", b"IEND"]
    w, h, depth, ctype, *_ = struct.unpack("!IIBBBBB", chunks[0][1])
    assert (depth, ctype) == (8, 2)
    raw = zlib.decompress(chunks[1][1])
    assert len(raw) == h * (1 + 3 * w)
    rows = b"".join(raw[y * (1 + 3 * w) + 1:(y + 1) * (1 + 3 * w)] for y in range(h))
    assert all(raw[y * (1 + 3 * w)] == 0 for y in range(h))
    return w, h, rows


def test_png_round_trip() -> None:
    c = png.Canvas(20, 10)
    c.rect(2, 3, 4, 5, (255, 0, 0))
    c.line(0, 9, 19, 9, (0, 0, 255))
    w, h, rows = _decode_png(c.png())
    assert (w, h) == (20, 10)
    px = lambda x, y: tuple(rows[3 * (y * w + x):3 * (y * w + x) + 3])  # noqa: E731
    assert px(3, 4) == (255, 0, 0) and px(5, 4) == (255, 255, 255) and px(10, 9) == (0, 0, 255)


def test_chart_draws_its_series_and_labels() -> None:
    series = [plot.cdf("hit", [0.0002 * (i + 1) for i in range(500)], color=0),
              plot.cdf("miss", [0.002 * (i + 1) for i in range(500)], color=1, dashed=True)]
    c = plot.chart(series, title="T", xlabel="MS", ylabel="F", xlog=True)
    _decode_png(c.png())
    colours = {c.get(x, y) for x in range(c.width) for y in range(c.height)}
    assert plot.PALETTE[0] in colours and plot.PALETTE[1] in colours and (0, 0, 0) in colours
    assert len(series[0].xs) <= plot.MAX_POINTS
    empty = plot.chart([], title="T", xlabel="X", ylabel="Y")
    assert (empty.width, empty.height) == (plot.WIDTH, plot.HEIGHT)


# --- the command ------------------------------------------------------------------------------

def _client(*args: str, resolv_conf: Path) -> list[str]:
    return [sys.executable, "-m", "nodecache", "bench-client", "--resolv-conf", str(resolv_conf), *args]


async def test_command_report_and_sigterm_stop(tmp_path: Path) -> None:
    """A whole run writes the report; SIGTERM mid-run ends it at once with a partial report."""
    records = {"web.shop.svc.cluster.local. A": "10.0.0.7", "kube-dns.kube-system.svc.cluster.local. A": "10.96.0.10"}
    handler = answer_from(records)
    rc = tmp_path / "resolv.conf"
    rc.write_text(KUBELET)
    nf = tmp_path / "names.txt"
    nf.write_text("web.shop.svc.cluster.local A\n")
    async with FakeUpstream(lambda q, p: handler(q, p)) as up:
        tgt = f"fake=127.0.0.1:{up.port}"
        base = ["--target", tgt, "--discover-via", f"127.0.0.1:{up.port}", "--names-file", str(nf),
                "--walk-max", "0", "--rate", "200", "--misses", "50", "--lookups", "5"]
        full = await asyncio.create_subprocess_exec(
            *_client(*base, "--steady-seconds", "0.5", "--step-seconds", "0.5", "--max-rate", "400",
                     "--out", str(tmp_path / "full"), resolv_conf=rc),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        out, err = await asyncio.wait_for(full.communicate(), 60)
        assert full.returncode == 0, err.decode()[-2000:]
        res = json.loads((tmp_path / "full" / "results.json").read_text())
        t = res["targets"]["fake"]
        assert t["status"] == "ok" and res["meta"]["status"] == "complete"
        assert t["hit"]["answered"] == t["hit"]["sent"] == res["sample"]["queries"] >= 2
        assert t["miss"]["sent"] == 50 and t["miss"]["rcodes"] == {"NXDOMAIN": 50}
        assert [s["offered_qps"] for s in t["throughput"]["steps"]] == [200, 400]
        assert t["searchpath"]["found"] >= 1
        assert "## Summary" in out.decode() and "results.json:" in out.decode()
        for p in ("latency_cdf.png", "searchpath.png", "throughput.png"):
            _decode_png((tmp_path / "full" / p).read_bytes())

        slow = await asyncio.create_subprocess_exec(
            *_client(*base, "--steady-seconds", "120", "--out", str(tmp_path / "stopped"), resolv_conf=rc),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        assert slow.stderr is not None
        async def until_steady() -> None:
            assert slow.stderr is not None
            while b"steady" not in await slow.stderr.readline():
                pass
        await asyncio.wait_for(until_steady(), 60)
        await asyncio.sleep(0.5)
        t0 = time.monotonic()
        slow.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(slow.communicate(), 30)
        assert time.monotonic() - t0 < 5, "the client did not stop at once"
        assert slow.returncode == 130
    res = json.loads((tmp_path / "stopped" / "results.json").read_text())
    assert res["meta"]["status"] == "interrupted" and res["targets"]["fake"]["status"] == "interrupted"
    assert 0 < res["targets"]["fake"]["steady"]["sent"] < 200 * 120 / 2
    assert "interrupted" in (tmp_path / "stopped" / "report.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["--target", "10.96.0.10"], "expected LABEL=ADDRESS"),
    (["--target", "a=10.96.0.10:dns"], "not a port number"),
    (["--target", "a=10.96.0.10", "--rate", "20000"], "--rate"),
    (["--target", "a=10.96.0.10", "--target", "a=169.254.20.10"], "labels must differ"),
    (["--target", "a=10.96.0.10", "--phases", "hit,warp"], "warp"),
])
def test_command_rejects_bad_options(args: list[str], message: str, tmp_path: Path) -> None:
    import subprocess
    rc = tmp_path / "resolv.conf"
    rc.write_text(KUBELET)
    cp = subprocess.run(_client(*args, resolv_conf=rc), capture_output=True, text=True, timeout=60, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert cp.returncode == 2 and message in cp.stderr, cp.stderr


def test_client_drops_are_counted() -> None:
    """Datagrams the kernel drops at a full socket show in /proc/net/udp, and so in the run."""
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rx.bind(("127.0.0.1", 0))
        assert loadgen.socket_drops([rx.fileno()]) == 0
        for _ in range(200):
            tx.sendto(b"x" * 512, rx.getsockname())
        assert loadgen.socket_drops([rx.fileno()]) > 100
