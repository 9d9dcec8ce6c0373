"""HttpEndpoints over real loopback sockets: routes, health and readiness, limits."""
from __future__ import annotations

import asyncio

import pytest

from nodecache.aio.http import (
    HttpEndpoints,
    health_route,
    metrics_route,
    parse_address,
    ready_route,
    self_check,
)
from nodecache.core.stats import AgentStats, ServerStats
from nodecache.exposition import Registry
from nodecache.metrics import StatsCollector, StatsSources, make_registry


@pytest.mark.parametrize(("address", "expected"), [
    (":8080", (None, 8080)),
    ("127.0.0.1:8080", ("127.0.0.1", 8080)),
    ("[::1]:9153", ("::1", 9153)),
    ("localhost:9153", ("localhost", 9153)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
])
def test_parse_address(address: str, expected: tuple[str | None, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["8080", "::1:9153", "[::1]9153", "host:", "h:65536",
                                     "h:-1", "h:x"])
def test_parse_address_rejects(address: str) -> None:
    with pytest.raises(ValueError):
        parse_address(address)


async def request(port: int, raw: bytes, host: str = "127.0.0.1") -> tuple[int, dict[str, str],
                                                                        bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def get(path: str, method: str = "GET") -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: test\r\n\r\n".encode()


@pytest.fixture
async def endpoints():
    eps = HttpEndpoints(max_request_size=1024, header_timeout=0.5)
    yield eps
    await asyncio.wait_for(eps.close(), 3)


async def test_health_stays_ok_and_ready_flips(endpoints: HttpEndpoints) -> None:
    state = {"ready": False}
    [(_, port)] = await endpoints.start("127.0.0.1:0", {
        "/health": health_route(),
        "/ready": ready_route(lambda: state["ready"]),
    })
    status, headers, body = await request(port, get("/health"))
    assert (status, body) == (200, b"OK")
    assert headers["connection"] == "close" and headers["content-length"] == "2"
    assert (await request(port, get("/ready")))[0] == 503
    state["ready"] = True
    assert (await request(port, get("/ready")))[:3:2] == (200, b"OK")
    state["ready"] = False  # SIGTERM: /ready fails, /health does not
    assert (await request(port, get("/ready")))[0] == 503
    assert (await request(port, get("/health")))[0] == 200
    # Query strings are ignored.
    assert (await request(port, get("/health?verbose=1")))[0] == 200


async def test_self_check_times_and_counts_failures(endpoints: HttpEndpoints) -> None:
    [(_, port)] = await endpoints.start("127.0.0.1:0", {"/health": health_route()})
    stats = AgentStats()
    where: list[tuple[str, int] | None] = [("127.0.0.1", port)]
    task = asyncio.ensure_future(self_check(lambda: where[0], "/health", stats,
                                            interval=0.05, timeout=1.0))
    try:
        for _ in range(100):
            if stats.health_duration.count >= 3:
                break
            await asyncio.sleep(0.05)
        assert stats.health_duration.count >= 3 and stats.health_failures == 0
        assert 0 < stats.health_duration.sum < 3.0  # loopback: each well under a second
        await endpoints.close()  # nothing listens there any more: refused
        before = stats.health_duration.count
        for _ in range(100):
            if stats.health_failures >= 2:
                break
            await asyncio.sleep(0.05)
        assert stats.health_failures >= 2
        assert stats.health_duration.count - before >= stats.health_failures
        where[0] = None  # no health endpoint: nothing is checked or counted
        await asyncio.sleep(0.1)
        counted = stats.health_duration.count
        await asyncio.sleep(0.2)
        assert stats.health_duration.count == counted
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_metrics_route_counts_scrapes(endpoints: HttpEndpoints) -> None:
    stats = AgentStats()
    registry = make_registry(StatsCollector(StatsSources(agent=stats)), process_metrics=False)
    [(_, port)] = await endpoints.start("127.0.0.1:0", {"/metrics": metrics_route(registry, stats)})
    first = (await request(port, get("/metrics")))[2].decode()
    # A scrape sees itself in flight and counts the ones before it, as Go's handler.
    assert "promhttp_metric_handler_requests_in_flight 1.0" in first
    assert 'promhttp_metric_handler_requests_total{code="200"} 0.0' in first
    assert 'promhttp_metric_handler_requests_total{code="503"} 0.0' in first
    second = (await request(port, get("/metrics")))[2].decode()
    assert 'promhttp_metric_handler_requests_total{code="200"} 1.0' in second
    assert stats.scrapes_in_flight == 0 and stats.scrapes[200] == 2


async def test_metrics_route_serves_exposition(endpoints: HttpEndpoints) -> None:
    collector = StatsCollector()
    stats = ServerStats("dns://:53", ".")
    stats.requests[("udp", "1", "A")] += 5
    collector.set_sources(servers=[stats])
    [(_, port)] = await endpoints.start("127.0.0.1:0",
                                        {"/metrics": metrics_route(make_registry(collector))})
    status, headers, body = await request(port, get("/metrics"))
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    assert (b'coredns_dns_requests_total{family="1",proto="udp",server="dns://:53",type="A",'
            b'view="",zone="."} 5.0') in body.splitlines()
    # Read at scrape time: a later increment shows up in the next scrape.
    stats.requests[("udp", "1", "A")] += 1
    body = (await request(port, get("/metrics")))[2]
    assert b'type="A",view="",zone="."} 6.0' in body


async def test_head_404_405_400(endpoints: HttpEndpoints) -> None:
    [(_, port)] = await endpoints.start("127.0.0.1:0", {"/health": health_route()})
    status, headers, body = await request(port, get("/health", "HEAD"))
    assert (status, headers["content-length"], body) == (200, "2", b"")
    assert (await request(port, get("/nope")))[0] == 404
    status, headers, _ = await request(port, get("/health", "POST"))
    assert status == 405 and headers["allow"] == "GET, HEAD"
    assert (await request(port, b"garbage\r\n\r\n"))[0] == 400
    assert (await request(port, b"GET /health SPDY/3\r\n\r\n"))[0] == 400
    # absolute-form target
    assert (await request(port, get("http://x/health")))[0] == 200


async def test_oversize_request_rejected(endpoints: HttpEndpoints) -> None:
    [(_, port)] = await endpoints.start("127.0.0.1:0", {"/health": health_route()})
    big = b"GET /health HTTP/1.1\r\nX-Pad: " + b"a" * 4000 + b"\r\n\r\n"
    assert (await request(port, big))[0] == 431
    # The server still answers afterwards.
    assert (await request(port, get("/health")))[0] == 200


async def test_slow_client_is_cut_off(endpoints: HttpEndpoints) -> None:
    [(_, port)] = await endpoints.start("127.0.0.1:0", {"/health": health_route()})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\n")  # never finishes the head
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 3)  # header_timeout is 0.5 s
    assert data == b""
    writer.close()


async def test_routes_share_one_address(endpoints: HttpEndpoints) -> None:
    [(host, port)] = await endpoints.start("127.0.0.1:0", {"/health": health_route()})
    again = await endpoints.start(f"{host}:{port}", {"/metrics": metrics_route(Registry())})
    assert again == [(host, port)]
    assert (await request(port, get("/health")))[0] == 200
    assert (await request(port, get("/metrics")))[0] == 200
    assert endpoints.addresses() == [(host, port)]
    await endpoints.stop(f"{host}:{port}")
    assert endpoints.addresses() == []
    with pytest.raises(OSError):
        await request(port, get("/health"))


async def test_two_servers_share_a_port_with_reuseport() -> None:
    """Two agents overlap during an upgrade: both bind the same address."""
    a, b = HttpEndpoints(), HttpEndpoints()
    try:
        [(_, port)] = await a.start("127.0.0.1:0", {"/health": health_route()})
        await b.start(f"127.0.0.1:{port}", {"/health": health_route()})
        await a.close()
        assert (await request(port, get("/health")))[0] == 200
    finally:
        await a.close()
        await b.close()


async def test_route_exception_is_500(endpoints: HttpEndpoints) -> None:
    def broken() -> tuple[int, str, bytes]:
        raise RuntimeError("boom")

    [(_, port)] = await endpoints.start("127.0.0.1:0", {"/x": broken})
    assert (await request(port, get("/x")))[0] == 500


async def test_ipv6_loopback(endpoints: HttpEndpoints) -> None:
    try:
        bound = await endpoints.start("[::1]:0", {"/health": health_route()})
    except OSError:
        pytest.skip("IPv6 loopback unavailable")
    assert (await request(bound[0][1], get("/health"), host="::1"))[0] == 200


async def test_close_drops_idle_connections() -> None:
    eps = HttpEndpoints(header_timeout=30)
    [(_, port)] = await eps.start("127.0.0.1:0", {"/health": health_route()})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await asyncio.sleep(0.05)
    await asyncio.wait_for(eps.close(), 2)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()


async def test_overlapping_addresses_rejected(endpoints: HttpEndpoints) -> None:
    [(_, port)] = await endpoints.start("127.0.0.1:0", {"/health": health_route()})
    with pytest.raises(ValueError, match="overlaps"):
        await endpoints.start(f"0.0.0.0:{port}", {"/metrics": metrics_route(Registry())})
    assert (await request(port, get("/health")))[0] == 200


async def test_localhost_and_wildcard_bind(endpoints: HttpEndpoints) -> None:
    bound = await endpoints.start("localhost:0", {"/health": health_route()})
    assert {port for _, port in bound} == {bound[0][1]}  # one port for every address
    assert "127.0.0.1" in {host for host, _ in bound}
    assert (await request(bound[0][1], get("/health")))[0] == 200
    bound = await endpoints.start(":0", {"/health": health_route()})
    assert "0.0.0.0" in {host for host, _ in bound}
    assert (await request(bound[0][1], get("/health")))[0] == 200
