"""nftables rules for sandbox networks, as text for one `nft -f` transaction each.

One table per `HUTCH_HOME` (`inet hutch_<tag>`), so two homes on one host never touch each
other's rules. Every sandbox's host-side veth is in the set `ifaces`; its egress policy is a
chain `sb_<n>` reached through the verdict map `egress` keyed by that veth's name. A policy
change rewrites that one chain in one transaction: effective for the next packet, since egress
is judged per packet (no "established" short cut out of a sandbox).

    input    from a sandbox veth: only replies to connections the host opened (the preview
             proxy), and TCP to the (veth, its own gateway address, port) triples in the set
             `gateways` (the egress proxy, for sandboxes given egress secrets); nothing else
             reaches a host service, on any host address, v4 or v6.
    forward  into a sandbox veth: only replies; out of one: never to another sandbox, the
             sandbox subnet, loopback, link-local (169.254.0.0/16, metadata), multicast or
             IPv6; then the sandbox's own chain: its source address, deny list, allow list,
             internet on/off; anything else is refused (rejected, so it fails at once).
             "internet" means the public internet: the set `internal` (private ranges and
             the host's own networks, see `_public_net`) stays refused unless allowed, but
             for DNS to the resolvers the sandbox's resolv.conf names.
    nat      sandbox subnet to the outside is masqueraded.

Pure functions: the I/O (running `nft`) lives in `_netns`.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass

BLOCKED_V4 = (
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)


@dataclass(frozen=True)
class NetworkPolicy:
    """Egress of one sandbox.

    Attributes:
        internet: outbound connections to the outside at all ("internet"), or none ("none").
        allow: CIDRs reachable even with internet off, and private or host networks that
            "internet" alone does not reach.
        deny: CIDRs never reachable (wins over `allow`).
        hosts: (host name, IPv4 address) pairs the sandbox resolves through its /etc/hosts
            (`_host_files.pin_hosts`): the allowed host names of a sandbox that has no DNS.
    """

    internet: bool = False
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    hosts: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(
        cls,
        network: str,
        allow: Sequence[str] = (),
        deny: Sequence[str] = (),
        hosts: Sequence[tuple[str, str]] = (),
    ) -> NetworkPolicy:
        """Build and validate; raises ValueError with the rule on a bad value."""
        if network not in ("none", "internet"):
            raise ValueError(f"network must be 'none' or 'internet', not {network!r}")
        return cls(
            internet=network == "internet",
            allow=tuple(normalize_cidr(c) for c in allow),
            deny=tuple(normalize_cidr(c) for c in deny),
            hosts=tuple(
                sorted({(check_host_name(n), str(ipaddress.IPv4Address(a))) for n, a in hosts})
            ),
        )


# What may be written as a name into /etc/hosts: DNS labels, nothing a parser of that file
# reads as a separator or a comment.
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)+$"
)


def check_host_name(name: str) -> str:
    """A lower-case DNS name with at least one dot; ValueError for anything else."""
    if not _HOST_NAME.match(name):
        raise ValueError(f"{name!r} is not a host name such as 'pypi.org'")
    return name


def normalize_cidr(value: str) -> str:
    """An IPv4 network in canonical form ('10.0.0.0/8'); ValueError for anything else."""
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not a CIDR such as '203.0.113.0/24'") from None
    if net.version != 4:
        raise ValueError(f"{value!r}: only IPv4 CIDRs are supported (sandboxes have no IPv6)")
    return str(net)


def table_name(tag: str) -> str:
    return f"hutch_{tag}"


def chain_name(index: int) -> str:
    return f"sb_{index}"


# What the sandbox sends and may not, is refused, not silently dropped: connect() and DNS fail
# at once instead of after a timeout (a blocked resolver made every name lookup take 10 s).
# Spoofed sources are still dropped.
REJECT = "reject with icmpx type admin-prohibited"


def base_ruleset(
    tag: str, subnet: str, internal: Sequence[str] = (), also_blocked: Sequence[str] = ()
) -> str:
    """Create (or refresh) the table; keeps the sets, map and sandbox chains as they are, but
    for `internal` (non-overlapping CIDRs), which is replaced. `also_blocked`: more CIDRs no
    sandbox may reach, whatever its policy (a cluster's node addresses: sandboxes never reach
    a node API, this host's or another's)."""
    t = f"inet {table_name(tag)}"
    blocked = ", ".join((*BLOCKED_V4, *(normalize_cidr(c) for c in also_blocked)))
    internal_elements = (
        f"add element {t} internal {{ {', '.join(internal)} }}\n" if internal else ""
    )
    return f"""
add table {t}
add set {t} ifaces {{ type ifname; }}
add set {t} internal {{ type ipv4_addr; flags interval; }}
flush set {t} internal
{internal_elements}
add map {t} egress {{ type ifname : verdict; }}
add set {t} gateways {{ type ifname . ipv4_addr . inet_service; }}
add chain {t} input {{ type filter hook input priority -10; policy accept; }}
add chain {t} forward {{ type filter hook forward priority -10; policy accept; }}
add chain {t} postrouting {{ type nat hook postrouting priority 100; policy accept; }}
flush chain {t} input
flush chain {t} forward
flush chain {t} postrouting
add rule {t} input iifname @ifaces ct state established,related accept
add rule {t} input iifname . ip daddr . tcp dport @gateways accept
add rule {t} input iifname @ifaces {REJECT}
add rule {t} forward oifname @ifaces ct state established,related accept
add rule {t} forward oifname @ifaces drop
add rule {t} forward iifname @ifaces meta nfproto ipv6 {REJECT}
add rule {t} forward iifname @ifaces ip daddr {{ {blocked}, {subnet} }} {REJECT}
add rule {t} forward iifname @ifaces iifname vmap @egress
add rule {t} forward iifname @ifaces {REJECT}
add rule {t} postrouting ip saddr {subnet} ip daddr != {subnet} masquerade
"""


def policy_rules(
    tag: str,
    index: int,
    sandbox_ip: str,
    policy: NetworkPolicy,
    resolvers: Sequence[str] = (),
) -> str:
    t = f"inet {table_name(tag)}"
    c = chain_name(index)
    lines = [f"add rule {t} {c} ip saddr != {sandbox_ip} drop"]
    if policy.deny:
        lines.append(f"add rule {t} {c} ip daddr {{ {', '.join(policy.deny)} }} {REJECT}")
    if policy.allow:
        lines.append(f"add rule {t} {c} ip daddr {{ {', '.join(policy.allow)} }} accept")
    if policy.internet:
        if resolvers:
            # NB: the resolver is often on a private address; DNS to it, and only DNS (no
            # other port, no other private address), or no name resolves at all.
            lines.append(
                f"add rule {t} {c} ip daddr {{ {', '.join(resolvers)} }} "
                "meta l4proto { tcp, udp } th dport 53 accept"
            )
        lines.append(f"add rule {t} {c} ip daddr @internal {REJECT}")
    lines.append(f"add rule {t} {c} {'accept' if policy.internet else REJECT}")
    return "\n".join(lines) + "\n"


def add_sandbox(
    tag: str,
    index: int,
    ifname: str,
    sandbox_ip: str,
    policy: NetworkPolicy,
    resolvers: Sequence[str] = (),
) -> str:
    t = f"inet {table_name(tag)}"
    c = chain_name(index)
    return (
        f"add chain {t} {c}\nflush chain {t} {c}\n"
        + policy_rules(tag, index, sandbox_ip, policy, resolvers)
        + f'add element {t} ifaces {{ "{ifname}" }}\n'
        + f'add element {t} egress {{ "{ifname}" : jump {c} }}\n'
    )


def set_policy(
    tag: str,
    index: int,
    sandbox_ip: str,
    policy: NetworkPolicy,
    resolvers: Sequence[str] = (),
) -> str:
    t = f"inet {table_name(tag)}"
    return f"flush chain {t} {chain_name(index)}\n" + policy_rules(
        tag, index, sandbox_ip, policy, resolvers
    )


def gateway_port(tag: str, ifname: str, host_ip: str, port: int, *, add: bool) -> str:
    """Let the sandbox behind `ifname` reach TCP `port` on its own gateway (or stop that)."""
    verb = "add" if add else "delete"
    return f'{verb} element inet {table_name(tag)} gateways {{ "{ifname}" . {host_ip} . {port} }}\n'


def remove_sandbox_parts(tag: str, index: int, ifname: str) -> list[str]:
    """The deletions, one per transaction: any of them may already be gone."""
    t = f"inet {table_name(tag)}"
    return [
        f'delete element {t} egress {{ "{ifname}" }}\n',
        f'delete element {t} ifaces {{ "{ifname}" }}\n',
        f"delete chain {t} {chain_name(index)}\n",
    ]
