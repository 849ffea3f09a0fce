"""Which upstream hosts an egress secret may go to: public names only.

The egress proxy sends the real secret to `https://<host>/<any path the sandbox picks>` from
the server itself, so a rule for `localhost`, `10.0.0.5` or `metadata.google.internal` would
hand the server's own network (and the secret) to sandbox code. Refused by name, as written:
loopback, private, link-local and other non-global address literals (in every spelling the
resolver accepts, `127.1` and `2130706433` too), single-label names (resolved through the
search domains: the local network's), and the suffixes reserved for local use.
"""

from __future__ import annotations

import ipaddress
import socket

# RFC 6761 / 6762 / 8375 and the names clouds use for their internal networks and metadata.
_LOCAL_SUFFIXES = (
    "localhost",
    "local",
    "localdomain",
    "internal",
    "intranet",
    "lan",
    "home",
    "corp",
    "private",
    "home.arpa",
    "in-addr.arpa",
    "ip6.arpa",
    "invalid",
    "test",
)


def internal_host_reason(host: str) -> str | None:
    """Why `host` (lowercased, no trailing dot) is not a public upstream; None if it is."""
    address = _as_address(host)
    if address is not None:
        if not address.is_global:
            return f"{host} is a loopback, private or otherwise non-public address"
        return None
    if "." not in host:
        return f"{host} is a single-label name, which resolves on the local network"
    for suffix in _LOCAL_SUFFIXES:
        if host == suffix or host.endswith("." + suffix):
            return f"{host} is under .{suffix}, a name for local or internal use"
    return None


def _as_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        pass
    # inet_aton takes what the resolver takes for IPv4: 127.1, 0x7f.1, 2130706433, 017700000001.
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None
