"""A sandbox's veth, addresses and default route by rtnetlink from the server, not `ip`.

The network attach ran `ip -batch` twice per create (the host side, then the sandbox's side
in its netns): ~2 ms of CPU per process, most of it the exec and the dynamic linking of `ip`,
on the two cores the agent's start needs at that moment (docs/performance.md, create17).
These are the same requests `ip` sends (RTM_NEWLINK, RTM_NEWADDR, RTM_NEWROUTE, each acked),
made on a netlink socket of the calling thread's network namespace: call the sandbox side
from a thread in the sandbox's netns (`_spawn.in_netns`). Blocking (the kernel takes the
rtnl lock): not on the event loop.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct

_NETLINK_ROUTE = 0
_NLMSG_ERROR = 2
_RTM_NEWLINK = 16
_RTM_NEWADDR = 20
_RTM_NEWROUTE = 24
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_IFLA_IFNAME = 3
_IFLA_LINKINFO = 18
_IFLA_NET_NS_PID = 19
_IFLA_NET_NS_FD = 28
_IFLA_INFO_KIND = 1
_IFLA_INFO_DATA = 2
_VETH_INFO_PEER = 1
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_RTA_GATEWAY = 5
_IFF_UP = 0x1
_RT_TABLE_MAIN = 254
_RTPROT_BOOT = 3
_RT_SCOPE_UNIVERSE = 0
_RTN_UNICAST = 1

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _name(name: str) -> bytes:
    return name.encode() + b"\0"


class Rtnl:
    """One rtnetlink socket in the calling thread's network namespace; each request waits
    for its ack and raises OSError(errno) with what failed."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self._sock.bind((0, 0))
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, kind: int, flags: int, body: bytes, what: str) -> None:
        self._seq += 1
        header = _HEADER.pack(
            _HEADER.size + len(body), kind, _NLM_F_REQUEST | _NLM_F_ACK | flags, self._seq, 0
        )
        self._sock.send(header + body)
        while True:
            data = self._sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, _flags, seq, _port = _HEADER.unpack_from(data, offset)
                if msg_type == _NLMSG_ERROR and seq == self._seq:
                    (error,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    if error != 0:
                        raise OSError(-error, f"{what}: {os.strerror(-error)}")
                    return
                offset += max(length + (-length % 4), _HEADER.size)

    def add_veth(self, name: str, peer: str, netns: int | str) -> None:
        """`ip link add NAME type veth peer name PEER netns NETNS` (a pid, or a netns path)."""
        if isinstance(netns, int):
            where, fd = _attr(_IFLA_NET_NS_PID, struct.pack("=I", netns)), -1
        else:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            where = _attr(_IFLA_NET_NS_FD, struct.pack("=I", fd))
        try:
            peer_info = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            peer_info += _attr(_IFLA_IFNAME, _name(peer)) + where
            data = _attr(_VETH_INFO_PEER, peer_info)
            link = _attr(_IFLA_INFO_KIND, b"veth\0") + _attr(_IFLA_INFO_DATA, data)
            body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            body += _attr(_IFLA_IFNAME, _name(name)) + _attr(_IFLA_LINKINFO, link)
            self._request(_RTM_NEWLINK, _NLM_F_CREATE | _NLM_F_EXCL, body, f"veth {name}")
        finally:
            if fd >= 0:
                os.close(fd)

    def add_address(self, device: str, address: str, prefix: int) -> None:
        """`ip addr add ADDRESS/PREFIX dev DEVICE` (IPv4)."""
        packed = ipaddress.IPv4Address(address).packed
        body = _IFADDR.pack(socket.AF_INET, prefix, 0, _RT_SCOPE_UNIVERSE, _index(device))
        body += _attr(_IFA_LOCAL, packed) + _attr(_IFA_ADDRESS, packed)
        what = f"address {address}/{prefix} on {device}"
        self._request(_RTM_NEWADDR, _NLM_F_CREATE | _NLM_F_EXCL, body, what)

    def set_up(self, device: str) -> None:
        """`ip link set DEVICE up`."""
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, _index(device), _IFF_UP, _IFF_UP)
        self._request(_RTM_NEWLINK, 0, body, f"{device} up")

    def add_default_route(self, gateway: str) -> None:
        """`ip route add default via GATEWAY` (IPv4, the main table)."""
        body = _RTMSG.pack(
            socket.AF_INET,
            0,
            0,
            0,
            _RT_TABLE_MAIN,
            _RTPROT_BOOT,
            _RT_SCOPE_UNIVERSE,
            _RTN_UNICAST,
            0,
        )
        body += _attr(_RTA_GATEWAY, ipaddress.IPv4Address(gateway).packed)
        self._request(_RTM_NEWROUTE, _NLM_F_CREATE | _NLM_F_EXCL, body, f"default via {gateway}")


def _index(device: str) -> int:
    try:
        return socket.if_nametoindex(device)
    except OSError as e:
        raise OSError(e.errno, f"no device {device}") from None
