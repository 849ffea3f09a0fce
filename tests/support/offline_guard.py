"""A pytest plugin for running other people's suites (scripts/e2b-conformance): any socket this
process opens to an address off this machine is refused before it connects, so a test that
would reach the internet fails loudly instead of leaving the machine."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_connect = socket.socket.connect
_connect_ex = socket.socket.connect_ex


def _local(address: Any) -> bool:
    if not isinstance(address, tuple):
        return True  # a unix socket
    host = str(address[0])
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return host == "localhost" or host.endswith(".localhost")
    # The suites reach Hutch through 127.0.0.1 and its preview hosts (*.localhost) only.
    return ip.is_loopback


def _guarded_connect(self: socket.socket, address: Any) -> None:
    if not _local(address):
        raise ConnectionRefusedError(f"offline_guard: {address!r} is off this machine")
    _connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: Any) -> int:
    if not _local(address):
        raise ConnectionRefusedError(f"offline_guard: {address!r} is off this machine")
    return _connect_ex(self, address)


socket.socket.connect = _guarded_connect  # type: ignore[method-assign,assignment]
socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign,assignment]
