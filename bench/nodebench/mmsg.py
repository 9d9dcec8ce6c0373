"""recvmmsg(2) and sendmmsg(2) through ctypes: one system call for many datagrams.

A :class:`MessageBatch` owns ``size`` receive buffers and their ``sockaddr``
slots. :meth:`MessageBatch.receive` fills as many as are waiting (never
blocking) and yields each datagram with the index of its sender's slot;
:meth:`MessageBatch.send` sends replies to those slots in one call, before the
next receive reuses them. Only a datagram answered later needs its sender as a
``(host, port)`` tuple (:meth:`MessageBatch.address`).
"""
from __future__ import annotations

import ctypes
import socket
from collections.abc import Iterator

_libc = ctypes.CDLL(None, use_errno=True)

#: Bytes per receive buffer: a query longer than this is cut (MSG_TRUNC).
BUFFER = 4096
#: sizeof(struct sockaddr_in6), which holds a sockaddr_in too, bytes.
_NAME = 28
_MSG_DONTWAIT = 0x40


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32),
                ("iov", ctypes.POINTER(_IoVec)), ("iovlen", ctypes.c_size_t),
                ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


_recvmmsg = _libc.recvmmsg
_recvmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
_recvmmsg.restype = ctypes.c_int
_sendmmsg = _libc.sendmmsg
_sendmmsg.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
_sendmmsg.restype = ctypes.c_int


class MessageBatch:
    """``size`` datagram slots for one socket's receive and send calls."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._buffers = ctypes.create_string_buffer(BUFFER * size)
        self._names = ctypes.create_string_buffer(_NAME * size)
        base, names = ctypes.addressof(self._buffers), ctypes.addressof(self._names)
        self._buffer_at = [base + i * BUFFER for i in range(size)]
        self._name_at = [names + i * _NAME for i in range(size)]
        self._rx_iov = (_IoVec * size)(*[_IoVec(b, BUFFER) for b in self._buffer_at])
        self._rx = (_MMsgHdr * size)()
        for i, hdr in enumerate(self._rx):
            hdr.hdr.name = self._name_at[i]
            hdr.hdr.namelen = _NAME
            hdr.hdr.iov = ctypes.pointer(self._rx_iov[i])
            hdr.hdr.iovlen = 1
        self._tx_iov = (_IoVec * size)()
        self._tx = (_MMsgHdr * size)()
        for i, hdr in enumerate(self._tx):
            hdr.hdr.iov = ctypes.pointer(self._tx_iov[i])
            hdr.hdr.iovlen = 1

    def receive(self, fd: int) -> Iterator[tuple[bytes, int]]:
        """Every datagram waiting on ``fd`` (up to ``size``), with its sender's slot."""
        count = _recvmmsg(fd, self._rx, self.size, _MSG_DONTWAIT, None)
        if count <= 0:
            return
        rx, string_at, buffer_at = self._rx, ctypes.string_at, self._buffer_at
        for i in range(count):
            hdr = rx[i]
            yield string_at(buffer_at[i], hdr.len), i
            hdr.hdr.namelen = _NAME  # value-result: the next call needs the room again

    def address(self, slot: int) -> tuple[str, int]:
        """The sender in ``slot`` as ``(host, port)``."""
        raw = ctypes.string_at(self._name_at[slot], _NAME)
        if int.from_bytes(raw[:2], "little") == socket.AF_INET6:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), int.from_bytes(raw[2:4], "big")
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), int.from_bytes(raw[2:4], "big")

    def send(self, fd: int, replies: list[tuple[bytes, int]]) -> int:
        """Send each ``(reply, slot)`` to the sender in that slot; return how many went."""
        tx, iov, name_at = self._tx, self._tx_iov, self._name_at
        for i, (reply, slot) in enumerate(replies):
            vec = iov[i]
            vec.base = ctypes.cast(reply, ctypes.c_void_p).value
            vec.len = len(reply)
            hdr = tx[i].hdr
            hdr.name = name_at[slot]
            hdr.namelen = _NAME  # room for either family: the kernel reads the family's size
        return int(_sendmmsg(fd, tx, len(replies), 0))
