"""One exception root for nodecache; each subclass says whose fault it is.

The docstring of each class is its default message (as in dnspython).
"""
from __future__ import annotations


class NodecacheError(Exception):
    """nodecache failed."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(args or (self.__doc__,)))


class ConfigError(NodecacheError):
    """The configuration is invalid (the operator's fault).

    ``file``, ``line`` and ``column`` locate the problem when it comes from a
    Corefile; ``str()`` renders ``file:line:column: message``.
    """

    def __init__(self, message: str, file: str | None = None, line: int | None = None,
                 column: int | None = None) -> None:
        self.message = message
        self.file = file
        self.line = line
        self.column = column
        super().__init__(message)

    def __str__(self) -> str:
        where = [str(p) for p in (self.file, self.line, self.column) if p is not None]
        return f"{':'.join(where)}: {self.message}" if where else self.message


class ClientProtocolError(NodecacheError):
    """The client sent a malformed DNS message (answered with FORMERR)."""

    def __init__(self, *args: object, question_end: int | None = None) -> None:
        super().__init__(*args)
        #: Offset just past the question when it was read (the FORMERR echoes it).
        self.question_end = question_end


class UpstreamError(NodecacheError):
    """No upstream answered in time (answered with SERVFAIL)."""


class ConcurrencyLimitError(UpstreamError):
    """Too many upstream queries in flight (answered with REFUSED, per CoreDNS max_concurrent)."""


class HostNetworkError(NodecacheError):
    """Setting up the node's interface or firewall rules failed."""
