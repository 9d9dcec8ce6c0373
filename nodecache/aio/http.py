"""A small HTTP/1.1 server for ``/metrics``, ``/health`` and ``/ready``.

Only what a Prometheus scraper and a kubelet probe need: one request per
connection (``Connection: close``), GET and HEAD, no request bodies. Requests
are bounded in size (the whole head must fit in ``max_request_size`` bytes) and
in time (it must arrive within ``header_timeout``), so a slow or hostile client
cannot hold memory or a connection for long.

Listeners set SO_REUSEADDR and SO_REUSEPORT: during an upgrade the old and the
new agent both serve the same port for a while, as CoreDNS's ``health`` does.
Several route sets may share one address (``health`` and ``prometheus`` on the
same ``host:port``): :meth:`HttpEndpoints.start` merges them.

A route is a plain callable returning ``(status, content type, body)``; it runs
on the event loop, so it must be quick (generating the exposition is).
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import http
import socket
import logging
from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from nodecache.config.settings import Config
from nodecache.core.stats import AgentStats
from nodecache.exposition import Registry, render

log = logging.getLogger(__name__)

#: status, Content-Type, body
Response = tuple[int, str, bytes]
Route = Callable[[], Response]

#: The request line and headers must fit in this many bytes.
MAX_REQUEST_SIZE = 8192  # bytes
#: The whole request head must arrive within this time; writing the answer too.
HEADER_TIMEOUT = 5.0  # s
#: Connections served at once per endpoint set; more are closed at once.
MAX_CONNECTIONS = 64
#: The health self-check runs this often and gives up after this long, s
#: (CoreDNS ``plugin/health``: every second, a 3 s client timeout).
SELF_CHECK_INTERVAL = 1.0
SELF_CHECK_TIMEOUT = 3.0

TEXT = "text/plain; charset=utf-8"
#: The classic text format: every name we export is a legacy (ASCII) name, so the
#: output is the same, and Prometheus 2 scrapers know this version.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def parse_address(address: str) -> tuple[str | None, int]:
    """Split a CoreDNS-style listen address into (host, port).

    ``":8080"`` is every address (host ``None``); ``"127.0.0.1:8080"``,
    ``"[::1]:9153"`` and ``"localhost:9153"`` name one. A bare host without a
    port is rejected.

    :raises ValueError: The address cannot be parsed.
    """
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"invalid address {address!r}: want [host]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"invalid address {address!r}: want host:port or [v6]:port")
    try:
        port = int(port_text, 10)
    except ValueError:
        raise ValueError(f"invalid port in address {address!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in address {address!r}")
    return (host or None), port


def metrics_route(registry: Registry, stats: AgentStats | None = None) -> Route:
    """``/metrics``: the Prometheus text exposition of ``registry``.

    :param stats: Where scrapes are counted (``promhttp_metric_handler_requests_*``):
        a scrape sees itself in flight, and is counted by status once answered.
    """

    def route() -> Response:
        if stats is None:
            return 200, METRICS_CONTENT_TYPE, render(registry)
        stats.scrapes_in_flight += 1
        status = 500
        try:
            body = render(registry)
            status = 200
        finally:
            stats.scrapes_in_flight -= 1
            stats.scrapes[status] += 1
        return status, METRICS_CONTENT_TYPE, body

    return route


def health_route() -> Route:
    """``/health``: 200 ``OK`` for as long as it is served.

    As CoreDNS's ``health``: it stays 200 through lameduck and the drain (the
    agent still answers queries then, and a failing liveness probe would get
    a draining agent killed); it goes away with the listeners. Whether the
    agent should get new traffic is ``/ready``'s business.
    """

    def route() -> Response:
        return 200, TEXT, b"OK"

    return route


def ready_route(ready: Callable[[], bool]) -> Route:
    """``/ready``: 200 ``OK`` once ``ready()`` is true, else 503."""

    def route() -> Response:
        if ready():
            return 200, TEXT, b"OK"
        return 503, TEXT, b"Not ready"

    return route


async def self_check(address_of: Callable[[], tuple[str, int] | None], path: str,
                     stats: AgentStats, *,
                     interval: float = SELF_CHECK_INTERVAL,
                     timeout: float = SELF_CHECK_TIMEOUT) -> None:
    """CoreDNS ``health``'s self-check: GET ``path`` from ourselves every ``interval``.

    ``address_of()`` says where ``path`` is served now (None: nowhere, skip).

    Each check's duration goes into ``stats.health_duration``; a check that gets
    no HTTP answer within ``timeout`` (refused, reset, timed out) counts in
    ``stats.health_failures``, and so does any status but 200. Runs until cancelled.
    """
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        address = address_of()
        if address is None:
            continue
        began = loop.time()
        try:
            ok = await asyncio.wait_for(_get_ok(address, path), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            log.warning("local health request to http://%s:%d%s failed: %s", *address, path,
                        exc or type(exc).__name__)
            ok = False
        stats.health_duration.observe(loop.time() - began)
        if not ok:
            stats.health_failures += 1


async def _get_ok(address: tuple[str, int], path: str) -> bool:
    """Whether ``GET path`` on ``address`` answers 200."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {address[0]}\r\n"
                     "Connection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        status = await reader.readline()
        await reader.read()  # the rest, up to the close
        return status.split(b" ", 2)[1:2] == [b"200"]
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class _Endpoint:
    """One listening address and the routes served on it."""

    def __init__(self, routes: dict[str, Route]) -> None:
        self.routes = routes
        #: One server per local address the host name resolved to.
        self.servers: list[asyncio.Server] = []
        self.tasks: set[asyncio.Task[None]] = set()


class HttpEndpoints:
    """The agent's HTTP listeners.

    :param max_request_size: Largest request head accepted, bytes; larger gets 431.
    :param header_timeout: Time allowed for the request head to arrive (and the
        answer to be written), s.
    :param max_connections: Connections served at once per address.
    """

    def __init__(self, *, max_request_size: int = MAX_REQUEST_SIZE,
                 header_timeout: float = HEADER_TIMEOUT,
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.max_request_size = max_request_size
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._endpoints: dict[tuple[str | None, int], _Endpoint] = {}

    async def start(self, address: str, routes: Mapping[str, Route]) -> list[tuple[str, int]]:
        """Serve ``routes`` (path -> route) on ``address``.

        If the address is already served, the routes are added to it (a path
        given again replaces the old route). Port 0 always binds afresh.

        :returns: The (host, port) pairs actually bound.
        :raises ValueError: The address cannot be parsed.
        :raises OSError: Binding failed.
        """
        host, port = parse_address(address)
        for path in routes:
            assert path.startswith("/"), f"route path must start with '/': {path!r}"
        existing = self._endpoints.get((host, port)) if port else None
        if existing is not None:
            existing.routes.update(routes)
            return self._bound(existing)
        for other_host, other_port in self._endpoints:
            # With SO_REUSEPORT both binds would succeed and the kernel would spread
            # connections between two route sets; make the operator pick one address.
            if port and other_port == port and (_wildcard(host) or _wildcard(other_host)):
                shown = f"[{other_host}]" if other_host and ":" in other_host else other_host
                raise ValueError(f"address {address!r} overlaps {shown or ''}:{port}, which "
                                 "is already served; use the same address for both")
        endpoint = _Endpoint(dict(routes))
        try:
            await self._listen(endpoint, host, port)
        except BaseException:
            await self._close(endpoint)
            raise
        bound = self._bound(endpoint)
        self._endpoints[(host, bound[0][1] if bound else port)] = endpoint
        return bound

    def address_of(self, path: str) -> tuple[str, int] | None:
        """An address to connect to for ``path`` (a wildcard listener: its loopback)."""
        for endpoint in self._endpoints.values():
            if path in endpoint.routes:
                for host, port in self._bound(endpoint):
                    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port
        return None

    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) currently listening."""
        return [a for endpoint in self._endpoints.values() for a in self._bound(endpoint)]

    async def stop(self, address: str) -> None:
        """Stop serving ``address`` (as given to :meth:`start`, or with the bound port)."""
        endpoint = self._endpoints.pop(parse_address(address), None)
        if endpoint is not None:
            await self._close(endpoint)

    async def close(self) -> None:
        """Stop every listener and drop open connections."""
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        await asyncio.gather(*(self._close(e) for e in endpoints))

    async def _listen(self, endpoint: _Endpoint, host: str | None, port: int) -> None:
        """Bind every address ``host`` resolves to (both wildcards for ``None``).

        An address the host does not have (``localhost`` -> ``::1`` in an
        IPv4-only pod) is skipped as long as one other address binds.
        """
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                       flags=socket.AI_PASSIVE)
        addresses = list(dict.fromkeys(info[4][0] for info in infos))
        errors: list[OSError] = []
        for ip in addresses:
            if endpoint.servers and port == 0:
                port = endpoint.servers[0].sockets[0].getsockname()[1]  # same port for all
            try:
                server = await asyncio.start_server(
                    lambda r, w: self._accept(endpoint, r, w), str(ip), port,
                    limit=self.max_request_size, reuse_address=True, reuse_port=True)
            except OSError as exc:
                if exc.errno not in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                    raise
                errors.append(exc)
                continue
            endpoint.servers.append(server)
        if not endpoint.servers:
            raise errors[0] if errors else OSError(f"{host!r} resolved to no address")

    @staticmethod
    def _bound(endpoint: _Endpoint) -> list[tuple[str, int]]:
        return [sock.getsockname()[:2] for server in endpoint.servers
                for sock in server.sockets]

    @staticmethod
    async def _close(endpoint: _Endpoint) -> None:
        for server in endpoint.servers:
            server.close()
        for task in list(endpoint.tasks):
            task.cancel()
        await asyncio.gather(*endpoint.tasks, return_exceptions=True)
        for server in endpoint.servers:
            await server.wait_closed()
        endpoint.servers = []

    async def _accept(self, endpoint: _Endpoint, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(endpoint.tasks) >= self.max_connections:
            writer.close()
            return
        endpoint.tasks.add(task)
        try:
            await asyncio.wait_for(self._serve(endpoint, reader, writer), self.header_timeout)
        except (asyncio.TimeoutError, ConnectionError):
            pass
        finally:
            endpoint.tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(self, endpoint: _Endpoint, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return  # the client went away before finishing its request
        except asyncio.LimitOverrunError:
            await self._respond(writer, False, *_error(431))
            return
        request = _request_line(head)
        if request is None:
            await self._respond(writer, False, *_error(400))
            return
        method, path = request
        route = endpoint.routes.get(path)
        if route is None:
            await self._respond(writer, method == "HEAD", *_error(404))
            return
        if method not in ("GET", "HEAD"):
            await self._respond(writer, False, *_error(405), "Allow: GET, HEAD\r\n")
            return
        try:
            status, ctype, body = route()
        except Exception:
            log.exception("HTTP route %s failed", path)
            status, ctype, body = _error(500)
        await self._respond(writer, method == "HEAD", status, ctype, body)

    @staticmethod
    async def _respond(writer: asyncio.StreamWriter, head_only: bool, status: int, ctype: str,
                       body: bytes, extra: str = "") -> None:
        reason = http.HTTPStatus(status).phrase
        header = (f"HTTP/1.1 {status} {reason}\r\n"
                  f"Content-Type: {ctype}\r\n"
                  f"Content-Length: {len(body)}\r\n"
                  f"{extra}"
                  "Connection: close\r\n\r\n").encode("latin-1")
        writer.write(header if head_only else header + body)
        await writer.drain()


class PluginEndpoints:
    """The ``prometheus``, ``health`` and ``ready`` plugins of the running Config.

    :param registry: What ``/metrics`` exposes.
    :param ready: Whether ``/ready`` answers 200 now.
    :param extra_metrics_address: ``/metrics`` also here, whatever the Corefile says.

    :meth:`apply` rebinds only when an address changed, so a reload that keeps
    them keeps the listeners (and the connections of a scrape in progress).
    """

    def __init__(self, registry: Registry, stats: AgentStats,
                 ready: Callable[[], bool], *, extra_metrics_address: str | None = None) -> None:
        self.registry = registry
        self.stats = stats
        self.ready = ready
        self.extra_metrics_address = extra_metrics_address
        #: Replaced on every rebind: look addresses up here each time.
        self.endpoints = HttpEndpoints()
        self._serving: tuple[object, ...] | None = None

    async def apply(self, config: Config) -> None:
        """Serve the addresses ``config`` asks for.

        :raises ValueError: An address cannot be parsed or overlaps another.
        :raises OSError: Binding failed.
        """
        prometheus = sorted({b.prometheus for b in config.blocks if b.prometheus})
        health = sorted({b.health.address for b in config.blocks if b.health})
        ready = sorted({b.ready for b in config.blocks if b.ready})
        extra = [self.extra_metrics_address] if self.extra_metrics_address else []
        wanted = (tuple(prometheus + extra), tuple(health), tuple(ready))
        if wanted == self._serving:
            return
        await self.endpoints.close()
        self.endpoints = HttpEndpoints()
        for address in prometheus + extra:
            await self.endpoints.start(address,
                                       {"/metrics": metrics_route(self.registry, self.stats)})
        for address in health:
            await self.endpoints.start(address, {"/health": health_route()})
        for address in ready:
            await self.endpoints.start(address, {"/ready": ready_route(self.ready)})
        self._serving = wanted

    def forget(self) -> None:
        """The next :meth:`apply` rebinds (after a failed one left some addresses unbound)."""
        self._serving = None

    async def close(self) -> None:
        await self.endpoints.close()


def _wildcard(host: str | None) -> bool:
    return host in (None, "", "0.0.0.0", "::")


def _request_line(head: bytes) -> tuple[str, str] | None:
    """(method, path) of a request head (RFC 9112 section 3), or None if malformed."""
    line = head.split(b"\r\n", 1)[0]
    try:
        method, target, version = line.decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        return None
    if not version.startswith("HTTP/1.") or not method.isalpha() or not target:
        return None
    # origin-form "/metrics?x" or absolute-form "http://host/metrics"
    return method, urlsplit(target).path or "/"


def _error(status: int) -> Response:
    return status, TEXT, http.HTTPStatus(status).phrase.encode() + b"\n"
