"""DNS over TLS (RFC 7858) to ``tls://`` upstreams: the client context and session reuse.

Each upstream gets its own :class:`ResumingContext`: its connections resume
the TLS session the last one got (RFC 8446 section 2.2 tickets, RFC 7858
section 3.4 recommends resumption), so only the first handshake of a pool
costs the full exchange. asyncio gives no way to pass a session to a
connection it wraps, hence the ``wrap_bio`` override.
"""
from __future__ import annotations

import ssl
from typing import Any

from nodecache.config.settings import ForwardSettings


class ResumingContext(ssl.SSLContext):
    """A client context whose new connections offer the last session seen."""

    session: ssl.SSLSession | None = None
    #: Handshakes that resumed a session, and those that did not.
    resumed = 0
    full = 0

    def wrap_bio(self, incoming: ssl.MemoryBIO, outgoing: ssl.MemoryBIO,
                 server_side: bool = False, server_hostname: Any = None,
                 session: ssl.SSLSession | None = None) -> ssl.SSLObject:
        return super().wrap_bio(incoming, outgoing, server_side, server_hostname,
                                session or self.session)

    def note(self, obj: ssl.SSLObject | None) -> None:
        """A connection's TLS object once data flows (TLS 1.3 tickets come after the handshake)."""
        if obj is None:
            return
        if obj.session_reused:
            self.resumed += 1
        else:
            self.full += 1
        if obj.session is not None:
            self.session = obj.session


def client_context(settings: ForwardSettings) -> ResumingContext:
    """The ``tls [CERT KEY [CA]]`` / ``tls CA`` settings as a verifying client context.

    Without a CA file the system's trusted CAs verify the upstream, as CoreDNS
    does; the certificate must name ``tls_servername``, or carry the upstream's IP
    address.
    """
    context = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    files = settings.tls_files
    if len(files) in (1, 3):
        context.load_verify_locations(cafile=files[-1])
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if len(files) >= 2:
        context.load_cert_chain(files[0], files[1])
    return context
