"""The addresses of a network interface, read from the kernel over rtnetlink.

``bind IFACE`` listens on every address the interface has when the agent
starts or reloads (CoreDNS's rule). One RTM_GETADDR dump over a netlink
socket answers it, without pyroute2 in the serving process.
"""
from __future__ import annotations

import ipaddress
import os
import socket
import struct

# linux/netlink.h, linux/rtnetlink.h, linux/if_addr.h
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWADDR, _RTM_GETADDR = 20, 22
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_IFA_ADDRESS, _IFA_LOCAL, _IFA_FLAGS = 1, 2, 8
#: An IPv6 address still in duplicate address detection, or failed it: not
#: bindable (EADDRNOTAVAIL), so not listened on (RFC 4862 section 5.4).
_IFA_F_DADFAILED, _IFA_F_TENTATIVE = 0x08, 0x40
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
_IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, interface index
_RTATTR = struct.Struct("=HH")  # length, type
_RECV_SIZE = 65536  # bytes


def _align(n: int) -> int:
    return (n + 3) & ~3


def interface_addresses(name: str) -> list[str] | None:
    """Every IPv4 and IPv6 address of interface ``name``; None if there is no such interface.

    IPv6 link-local addresses carry the interface as scope (``fe80::1%eth0``),
    as CoreDNS writes them, so that they can be bound. Tentative IPv6
    addresses are left out until a reload finds them settled.
    """
    try:
        index = socket.if_nametoindex(name)
    except OSError:
        return None
    out: list[str] = []
    for family, ifindex, raw in _dump():
        if ifindex != index:
            continue
        address = ipaddress.ip_address(raw)
        text = str(address)
        if family == socket.AF_INET6 and (address.is_link_local or address.is_multicast):
            text += f"%{name}"
        out.append(text)
    return out


def _dump() -> list[tuple[int, int, bytes]]:
    """(family, interface index, address bytes) for every address on the host."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE) as sock:
        sock.bind((0, 0))
        seq = os.getpid() & 0xFFFF
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        sock.send(_NLMSG.pack(_NLMSG.size + len(body), _RTM_GETADDR,
                              _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + body)
        out: list[tuple[int, int, bytes]] = []
        while True:
            data = sock.recv(_RECV_SIZE)
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    raise OSError("malformed netlink message")
                if kind == _NLMSG_DONE:
                    return out
                if kind == _NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + _NLMSG.size)
                    raise OSError(-errno, os.strerror(-errno))
                if kind == _RTM_NEWADDR:
                    found = _address(data, offset + _NLMSG.size, offset + length)
                    if found is not None:
                        out.append(found)
                offset += _align(length)


def _address(data: bytes, start: int, end: int) -> tuple[int, int, bytes] | None:
    family, _plen, flags, _scope, index = _IFADDRMSG.unpack_from(data, start)
    attrs: dict[int, bytes] = {}
    offset = start + _IFADDRMSG.size
    while offset + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, offset)
        if length < _RTATTR.size:
            break
        attrs[kind] = data[offset + _RTATTR.size:offset + length]
        offset += _align(length)
    # IFA_LOCAL is the interface's own address on point-to-point links, where
    # IFA_ADDRESS names the peer; elsewhere only IFA_ADDRESS is there.
    raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
    if family not in (socket.AF_INET, socket.AF_INET6) or raw is None:
        return None
    if len(attrs.get(_IFA_FLAGS, b"")) == 4:  # the full 32 bits, when the kernel sends them
        (flags,) = struct.unpack("=I", attrs[_IFA_FLAGS])
    if flags & (_IFA_F_TENTATIVE | _IFA_F_DADFAILED):
        return None
    return family, index, raw
