"""What "the public internet" excludes: the address ranges an ``network="internet"`` sandbox
may not reach unless its ``network_allow`` lists them.

- the ranges that are never public (RFC 1918, shared address space 100.64.0.0/10, link-local,
  loopback, multicast, "this network" 0.0.0.0/8, reserved 240.0.0.0/4);
- every network the host's own interfaces are on, read when the runtime starts (an operator's
  LAN may well be public address space: 192.0.2.0/24 here);
- IPv6 (ULA fc00::/7, link-local fe80::/10 and the rest) is refused altogether: sandboxes
  have no IPv6 route (see `_nft`).

The one exception is DNS: the sandbox's resolv.conf names the host's resolvers, which are
often on a private address (10.255.255.53 on this kind of VM). An internet sandbox may send
DNS (UDP and TCP port 53) to exactly those addresses and nothing else to them.

Pure functions: `_netns` reads the interfaces and resolv.conf.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable

NON_PUBLIC_V4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)


def parse_host_networks(ip_json: str) -> list[str]:
    """The IPv4 networks of the interfaces in `ip -j -4 addr show`'s output."""
    found: list[str] = []
    for link in json.loads(ip_json or "[]"):
        for addr in link.get("addr_info", ()):
            if addr.get("family") != "inet" or "local" not in addr:
                continue
            net = ipaddress.IPv4Network(f"{addr['local']}/{addr.get('prefixlen', 32)}", False)
            found.append(str(net))
    return found


def internal_networks(host_nets: Iterable[str], sandbox_subnet: str) -> list[str]:
    """The non-public ranges plus the host's and the sandboxes' networks, merged (an nft
    interval set refuses overlapping elements), sorted."""
    nets = [ipaddress.IPv4Network(n) for n in (*NON_PUBLIC_V4, *host_nets, sandbox_subnet)]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def nameservers(resolv_conf: str) -> list[str]:
    """The IPv4 name servers a resolv.conf names (in order, once each)."""
    found: list[str] = []
    for line in resolv_conf.splitlines():
        words = line.split()
        if words[:1] != ["nameserver"] or len(words) < 2:
            continue
        try:
            address = ipaddress.IPv4Address(words[1])
        except ValueError:
            continue  # IPv6 or junk: the sandbox has no IPv6 route anyway
        if str(address) not in found:
            found.append(str(address))
    return found
