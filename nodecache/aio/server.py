"""asyncio listeners: feed datagrams and TCP frames to the handler, send what it returns.

They make no DNS decision. A cache hit is answered inside ``datagram_received``
(one call into the handler, one ``sendto``); a miss goes to the
:class:`~nodecache.aio.resolver.Resolver`, which calls back with the reply.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import socket
import struct
import termios
from collections.abc import Callable

from nodecache.config.settings import TimeoutSettings
from nodecache.core.handler import SLOT_SERVER_SHIFT, QueryHandler
from nodecache.core.stats import AgentStats, server_index
from nodecache.core.upstream import FrameDecoder, frame

log = logging.getLogger(__name__)

#: Kernel receive buffer asked for on UDP listeners, bytes: absorbs bursts
#: (a pod start-up fires dozens of queries at once) while the loop is busy.
#: Not more: under a flood a deeper queue only delays every client's answers
#: past the point where they retry (4 MB measured: seconds behind a flood).
UDP_RCVBUF = 1024 * 1024
#: A datagram's source: (host, port) from an IPv4 socket, (host, port,
#: flowinfo, scope_id) from an IPv6 one.
Address = tuple[str, int] | tuple[str, int, int, int]
#: TCP timeouts without a ``timeouts`` plugin, s (CoreDNS's): a new connection
#: must bring its first query within READ, later ones within IDLE of the last
#: activity; a reply the client does not take within WRITE closes it.
TCP_READ_TIMEOUT = 3.0
TCP_IDLE_TIMEOUT = 10.0
TCP_WRITE_TIMEOUT = 5.0
#: TCP connections per listener; beyond it new ones are closed at once (RFC 7766 section 6.2.2).
TCP_MAX_CONNECTIONS = 1024
#: Queries in flight on one client connection before we stop reading from it (RFC 7766 section 6.2.1.1).
TCP_MAX_INFLIGHT = 64
#: During the drain, a client connection that has sent no query for this long
#: is ended (FIN); one still busy is served on, until TCP_DRAIN_FORCE before
#: the drain's deadline, s. A client that keeps sending then loses what it
#: sends after our FIN unless it retries it on a new connection.
TCP_DRAIN_IDLE = 0.25
TCP_DRAIN_FORCE = 1.0
#: After our FIN, how long the client has to close its side before we close
#: the socket anyway, s. Waiting for it means nothing it sent is left unread,
#: so our close sends no RST (which could destroy answers not yet read).
TCP_FIN_LINGER = 2.0


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def bound_socket(address: str, port: int, kind: int) -> socket.socket:
    """A socket bound with SO_REUSEPORT, so that a new agent can bind beside the old one."""
    family = _family(address)
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_DGRAM:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
            except OSError:
                pass
        host, _, scope = address.partition("%")
        # A link-local IPv6 address is bound with its interface (``fe80::1%eth0``).
        sock.bind((host, port, 0, socket.if_nametoindex(scope)) if scope else (host, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


#: Tries at finding a port free for both UDP and TCP when port 0 is asked for.
_PORT_TRIES = 16


def _bind_pair(address: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same port; port 0 picks one free for both."""
    for _ in range(_PORT_TRIES if port == 0 else 1):
        udp_sock = bound_socket(address, port, socket.SOCK_DGRAM)
        try:
            return udp_sock, bound_socket(address, udp_sock.getsockname()[1], socket.SOCK_STREAM)
        except OSError as exc:
            udp_sock.close()
            # The kernel picked a UDP port whose TCP twin is taken: pick again.
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise
        except BaseException:
            udp_sock.close()
            raise
    raise OSError(errno.EADDRINUSE, f"no port free for both UDP and TCP on {address}")


def submit_refreshes(handler: QueryHandler, submit: Callable[..., None]) -> None:
    """Resolve the background refreshes ``handler`` queued; no client waits for them."""
    for miss in handler.take_refreshes():
        submit(miss, _no_client, None)


def _no_client(reply: bytes, addr: object) -> None:
    """A background refresh's reply goes nowhere (the cache has it)."""


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, handler: QueryHandler, slot: int, submit: Callable[..., None],
                 stats: AgentStats) -> None:
        self.handler = handler
        self.slot = slot
        self.submit = submit
        self.stats = stats
        self.transport: asyncio.DatagramTransport | None = None
        self._time = asyncio.get_running_loop().time
        #: Every miss's deliver callback, bound once (not a bound method per miss).
        self._deliver = self._send

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Address) -> None:
        try:
            result = self.handler.handle(data, self._time(), self.slot, addr)
        except Exception:  # a bug must cost one query, never the listener
            self.stats.panics += 1
            log.exception("handler failed on a %d-byte query from %s", len(data), addr)
            return
        if result.__class__ is bytes:
            self.transport.sendto(result, addr)  # type: ignore[union-attr]
        elif result is not None:
            self.submit(result, self._deliver, addr)
        if self.handler.refreshes:  # a hit or a stale answer asked for a refresh
            submit_refreshes(self.handler, self.submit)

    def _send(self, reply: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.sendto(reply, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors for earlier replies (client gone); nothing to do.
        log.debug("UDP error: %s", exc)


class TcpConnection(asyncio.Protocol):
    """One client connection: length-prefixed queries in, replies out as each completes.

    Closing it from our side (:meth:`finish`: the idle timeout, the drain at
    shutdown) never loses a query that was read, and the client can tell
    where the answers stop (RFC 7766 section 6.2.3):

    1. reading goes on to the next frame boundary: a query half-read is read
       whole and answered, and so is everything already in the kernel's
       receive queue;
    2. once nothing is half-read and every query read has its answer written,
       we send FIN (``write_eof``) right behind the last answer;
    3. the connection stays open for reading until the client closes its side
       (or TCP_FIN_LINGER passes), so closing sends no RST. Queries that still
       arrive after our FIN were sent before the client saw it: they are not
       answered (they cannot be), and the client, seeing EOF, retries them on
       a new connection, which goes to the successor.
    """

    def __init__(self, listener: TcpListener) -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        #: The client's byte stream, split into queries (a frame begun is buffered here).
        self.frames = FrameDecoder()
        self.inflight = 0
        self.paused = False
        #: The client half-closed: close once nothing is in flight.
        self.eof = False
        self.last_activity = 0.0
        #: A whole query came: the idle timeout applies from now on, not the read one.
        self.served = False
        self.timer: asyncio.TimerHandle | None = None
        #: Armed while replies wait in our buffer because the client does not read.
        self.write_timer: asyncio.TimerHandle | None = None
        self.addr: object = None
        #: finish() was called: FIN at the next point between answers.
        self.finishing = False
        #: Our FIN is out; the client's side is what we wait for.
        self.fin_sent = False
        #: Bytes that arrived after our FIN (queries the client must retry).
        self.late_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        if len(listener.connections) >= TCP_MAX_CONNECTIONS:
            transport.close()
            return
        listener.connections.add(self)
        self.addr = transport.get_extra_info("peername")
        # pause_writing() as soon as the kernel takes less than we write.
        transport.set_write_buffer_limits(high=0)  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        self.last_activity = loop.time()
        # The first check comes at the earlier of the two limits: a quick
        # first query switches the connection to the idle one.
        self.timer = loop.call_later(min(self._quiet_limit(), self._quiet_limit(served=True)),
                                     self._check_idle)

    def _quiet_limit(self, served: bool | None = None) -> float:
        """How long the connection may go without a query now, s."""
        served = self.served if served is None else served
        timeouts = self.listener.timeouts
        if timeouts is None:
            return TCP_IDLE_TIMEOUT if served else TCP_READ_TIMEOUT
        return timeouts.idle if served else timeouts.read

    def _check_idle(self) -> None:
        loop = asyncio.get_running_loop()
        idle = loop.time() - self.last_activity
        limit = self._quiet_limit()
        if self.inflight == 0 and idle >= limit:
            if self.frames.buffered and self.transport is not None:
                self.transport.close()  # a frame begun long ago will not be finished
                return
            self.finish()
            return
        self.timer = loop.call_later(max(limit - idle, 0.5), self._check_idle)

    def pause_writing(self) -> None:
        timeouts = self.listener.timeouts
        limit = timeouts.write if timeouts is not None else TCP_WRITE_TIMEOUT
        self.write_timer = asyncio.get_running_loop().call_later(limit, self._write_stalled)

    def resume_writing(self) -> None:
        if self.write_timer is not None:
            self.write_timer.cancel()
            self.write_timer = None

    def _write_stalled(self) -> None:
        # The client has not taken a reply within the write timeout: drop the connection.
        self.write_timer = None
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        for timer in (self.timer, self.write_timer):
            if timer is not None:
                timer.cancel()
        self.transport = None

    def finish(self) -> None:
        """Close between answers: FIN once nothing is half-read or unanswered."""
        self.finishing = True
        self._fin_if_done()

    def _fin_if_done(self) -> None:
        transport = self.transport
        if self.fin_sent or transport is None or self.frames.buffered or self.inflight:
            return
        if _unread(transport):
            return  # queries the loop has not read yet: data_received comes back here
        self.fin_sent = True
        if self.paused:
            transport.resume_reading()  # to see the client's FIN
            self.paused = False
        if self.eof or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()  # after every answer already written
        loop = asyncio.get_running_loop()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = loop.call_later(TCP_FIN_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if self.fin_sent:
            self.late_bytes += len(data)  # read, so that closing sends no RST
            return
        frames = self.frames
        listener = self.listener
        now = listener.time()
        for message in frames.feed_frames(data):
            self.last_activity = now
            self.served = True
            try:
                result = listener.handler.handle(message, now, listener.slot, self.addr)
            except Exception:
                listener.stats.panics += 1
                log.exception("handler failed on a TCP query from %s", self.addr)
                continue
            if listener.handler.refreshes:
                submit_refreshes(listener.handler, listener.submit)
            if result.__class__ is bytes:
                self._send(result)
            elif result is None:
                # A response (QR set), never answered: the stream cannot be trusted any more.
                if self.transport is not None:
                    self.transport.close()
                return
            else:
                self.inflight += 1
                listener.submit(result, self._deliver, self.addr)
                if self.inflight >= TCP_MAX_INFLIGHT and self.transport is not None:
                    self.transport.pause_reading()
                    self.paused = True
        if frames.error is not None and self.transport is not None:
            # No header to answer: the stream cannot be trusted any more.
            self.transport.close()
            return
        if self.finishing:
            self._fin_if_done()

    def _deliver(self, reply: bytes, addr: object) -> None:
        self.inflight -= 1
        self.last_activity = self.listener.time()
        self._send(reply)
        if self.eof and self.inflight == 0 and self.transport is not None:
            self.transport.close()  # the last answer after a half-close
            return
        if self.finishing:
            self._fin_if_done()
            if self.fin_sent:
                return
        if self.paused and self.inflight < TCP_MAX_INFLIGHT // 2 and self.transport is not None:
            self.transport.resume_reading()
            self.paused = False

    def _send(self, reply: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing() and reply:
            transport.write(frame(reply))

    def eof_received(self) -> bool | None:
        # Half-close: finish what is in flight, then close (RFC 7766 section 6.2.4).
        self.eof = True
        if self.late_bytes:
            log.info("%s sent %d bytes after our FIN (unanswered; it retries elsewhere)",
                     self.addr, self.late_bytes)
        return (self.inflight > 0 and not self.fin_sent) or None


def _unread(transport: asyncio.Transport) -> int:
    """Bytes waiting in the kernel's receive queue of a connection (FIONREAD).

    A FIN must not go out while the client's queries sit there unread: the
    event loop reads them only at its next poll, and they would be lost.
    """
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        return int(struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD,
                                                  b"\0\0\0\0"))[0])
    except OSError:
        return 0


class TcpListener:
    def __init__(self, handler: QueryHandler, slot: int, submit: Callable[..., None],
                 stats: AgentStats) -> None:
        self.handler = handler
        self.slot = slot
        self.submit = submit
        self.stats = stats
        self.connections: set[TcpConnection] = set()
        self.time = asyncio.get_running_loop().time
        #: The ``timeouts`` plugin's settings; None: the TCP_*_TIMEOUT defaults.
        self.timeouts: TimeoutSettings | None = None

    def protocol(self) -> TcpConnection:
        return TcpConnection(self)


class Listener:
    """A UDP and a TCP socket on one address and port, sharing one handler."""

    def __init__(self, address: str, port: int, label: str = "") -> None:
        self.address = address
        self.port = port
        #: The ``server`` label of its queries' metrics; "": that of the block answering.
        self.label = label
        self.udp: UdpListener | None = None
        self.udp_transport: asyncio.DatagramTransport | None = None
        self.tcp: TcpListener | None = None
        self.server: asyncio.AbstractServer | None = None
        #: The bound sockets themselves, for the drain at shutdown (:meth:`stop_receiving`).
        self.udp_sock: socket.socket | None = None
        self.tcp_sock: socket.socket | None = None
        #: :meth:`stop_receiving` has run: no new datagram or connection comes to us.
        self.receiving = True
        #: The open TCP connections are being ended (:meth:`end_connections`).
        self.draining = False

    @property
    def slot(self) -> int:
        family = 1 if _family(self.address) == socket.AF_INET6 else 0
        return server_index(self.label) << SLOT_SERVER_SHIFT | family if self.label else family

    async def start(self, handler: QueryHandler, submit: Callable[..., None],
                    stats: AgentStats) -> None:
        loop = asyncio.get_running_loop()
        udp_sock, tcp_sock = _bind_pair(self.address, self.port)
        self.port = port = udp_sock.getsockname()[1]
        self.udp_sock, self.tcp_sock = udp_sock, tcp_sock
        udp = self.udp = UdpListener(handler, self.slot, submit, stats)
        self.udp_transport, _ = await loop.create_datagram_endpoint(lambda: udp, sock=udp_sock)
        self.tcp = TcpListener(handler, self.slot | 2, submit, stats)
        self.server = await loop.create_server(self.tcp.protocol, sock=tcp_sock, backlog=1024)

    def swap(self, handler: QueryHandler, submit: Callable[..., None],
             timeouts: TimeoutSettings | None = None) -> None:
        """Point the open sockets at a new handler (config reload without closing)."""
        for part in (self.udp, self.tcp):
            if part is not None:
                part.handler = handler
                part.submit = submit
        if self.tcp is not None:
            self.tcp.timeouts = timeouts

    # -- draining (docs/upgrades.md) ------------------------------------------
    #
    # Closing a socket of a SO_REUSEPORT group drops what is queued on it, and a
    # closed socket cannot send the answers of misses still in flight. So the
    # old agent first leaves the groups and keeps its sockets:
    #
    # * UDP: connect() the socket to its own address. Linux then delivers to it
    #   only datagrams from that address and port (none) and steers every other
    #   one to the rest of the group; what is already queued stays readable, and
    #   sendto() to any client still works, from the same address and port.
    #   (shutdown(SHUT_RD) does not stop the steering: measured, see the docs.)
    #   A wildcard socket (0.0.0.0, ::) would take a route's source address on
    #   connect, so it is only read dry before closing.
    # * TCP: accept whatever completed its handshake, then close the listening
    #   socket; open connections are served on, and each is ended between
    #   answers once idle (end_connections, TcpConnection.finish).

    async def stop_receiving(self) -> None:
        """Leave the SO_REUSEPORT groups; queued datagrams and open connections stay ours."""
        if not self.receiving:
            return
        self.receiving = False
        sock = self.udp_sock
        if sock is not None and self.address not in ("0.0.0.0", "::"):
            try:
                sock.connect((self.address, self.port))
            except OSError as exc:
                log.warning("cannot detach the UDP socket %s:%d: %s", self.address,
                            self.port, exc)
        self.read_queued()
        if self.server is not None and self.tcp_sock is not None and self.tcp is not None:
            loop = asyncio.get_running_loop()
            accepted: list[socket.socket] = []
            for _ in range(TCP_MAX_CONNECTIONS):
                try:
                    conn, _ = self.tcp_sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                accepted.append(conn)
            self.server.close()  # stop listening; connections already open stay
            for conn in accepted:
                conn.setblocking(False)
                try:
                    await loop.connect_accepted_socket(self.tcp.protocol, sock=conn)
                except OSError:
                    conn.close()
            self.draining = True

    def read_queued(self, limit: int = 10000) -> int:
        """Answer the datagrams queued on the UDP socket now; return how many were read."""
        sock, udp = self.udp_sock, self.udp
        if sock is None or udp is None or udp.transport is None or udp.transport.is_closing():
            return 0
        count = 0
        while count < limit:
            try:
                data, addr = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            count += 1
            udp.datagram_received(data, addr)
        return count

    def end_connections(self, now: float, force: bool = False) -> None:
        """During the drain: end (FIN, between answers) the connections gone idle.

        Each ends once it has sent no query for TCP_DRAIN_IDLE (its client is
        between bursts, or done), or at once with ``force``; its client
        reconnects to the successor, which now gets every new connection.
        """
        if self.tcp is None:
            return
        for connection in list(self.tcp.connections):
            if force or now - connection.last_activity >= TCP_DRAIN_IDLE:
                connection.finish()

    def busy(self) -> int:
        """Queries in flight on open TCP connections, plus, while draining, the connections.

        This is what the drain waits for: answers owed, connections still in
        use, and clients to close after our FIN.
        """
        if self.tcp is None:
            return 0
        return sum(c.inflight + self.draining for c in self.tcp.connections)

    async def close(self) -> None:
        self.read_queued()  # the last ones in (none, if stop_receiving ran first)
        if self.udp_transport is not None:
            self.udp_transport.close()
        if self.server is not None:
            self.server.close()
            for connection in list(self.tcp.connections if self.tcp else ()):
                if connection.transport is not None:
                    connection.transport.close()
            await self.server.wait_closed()
