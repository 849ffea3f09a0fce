"""network="internet" is the public internet: private ranges, the host's own networks and the
resolver's other ports stay out of reach unless `network_allow` lists them (issue 19, item 3).

The test hosts live in a netns this module makes (tests/support/netns_hosts.py); a server of
its own starts after them, so that one of them is on a network the host is on.
"""

from __future__ import annotations

import json
import secrets
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch import Sandbox
from hutch.runtime.container._nft import NetworkPolicy, base_ruleset, policy_rules
from hutch.runtime.container._public_net import (
    internal_networks,
    nameservers,
    parse_host_networks,
)
from tests._server import ServerProcess
from tests.support.netns_hosts import hosts_in_netns

# -- unit: the rules as text ------------------------------------------------------------------


def test_internal_networks_merge_host_networks_and_keep_public_ones_out() -> None:
    nets = internal_networks(["192.0.2.0/24", "10.255.0.0/16", "127.0.0.0/8"], "10.201.0.0/16")
    assert "192.0.2.0/24" in nets and "10.0.0.0/8" in nets and "100.64.0.0/10" in nets
    assert "10.255.0.0/16" not in nets and "10.201.0.0/16" not in nets  # merged into 10/8
    for public in ("8.8.8.0/24", "1.0.0.0/8", "203.0.113.0/24"):
        assert not any(public == n for n in nets)


def test_host_networks_are_read_from_ip_json() -> None:
    out = json.dumps(
        [
            {
                "ifname": "lo",
                "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}],
            },
            {
                "ifname": "eth0",
                "addr_info": [
                    {"family": "inet", "local": "192.0.2.2", "prefixlen": 24},
                    {"family": "inet6", "local": "fd00::2", "prefixlen": 64},
                ],
            },
        ]
    )
    assert parse_host_networks(out) == ["127.0.0.0/8", "192.0.2.0/24"]


def test_nameservers_of_a_resolv_conf() -> None:
    text = "search x\nnameserver 10.255.255.53\nnameserver fd00::53\nnameserver 10.255.255.53\n"
    assert nameservers(text) == ["10.255.255.53"]


def test_internet_rules_refuse_internal_but_dns_to_the_resolvers() -> None:
    internet = policy_rules("t", 3, "10.201.0.7", NetworkPolicy.of("internet"), ["10.9.9.53"])
    lines = internet.splitlines()
    dns = next(i for i, line in enumerate(lines) if "dport 53" in line)
    internal = next(i for i, line in enumerate(lines) if "@internal" in line)
    assert dns < internal < len(lines) - 1 and lines[-1].endswith("sb_3 accept")
    assert "ip daddr { 10.9.9.53 } meta l4proto { tcp, udp } th dport 53 accept" in lines[dns]
    assert "reject" in lines[internal]
    # Allowed entries come before the internal set: an allow list opens a private range.
    allowed = policy_rules("t", 3, "10.201.0.7", NetworkPolicy.of("internet", ["10.1.2.3"]))
    assert allowed.index("10.1.2.3/32 } accept") < allowed.index("@internal")
    # network="none" has no DNS exception and no internal set (everything is refused).
    none = policy_rules("t", 3, "10.201.0.7", NetworkPolicy.of("none"), ["10.9.9.53"])
    assert "dport 53" not in none and "@internal" not in none
    base = base_ruleset("t", "10.201.0.0/16", ["10.0.0.0/8", "192.0.2.0/24"])
    assert "flush set inet hutch_t internal" in base
    assert "add element inet hutch_t internal { 10.0.0.0/8, 192.0.2.0/24 }" in base


# -- sandboxes: test hosts in a netns ---------------------------------------------------------

PROBE = (
    "import socket,sys,time\n"
    "for a in sys.argv[1:]:\n"
    "    s=socket.socket(); s.settimeout(3); t=time.monotonic()\n"
    "    try:\n"
    "        s.connect((a,80)); s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n'); got=b''\n"
    "        while (c := s.recv(4096)): got += c\n"
    "        print(a, 'OPEN' if b'hello from' in got else 'odd', flush=True)\n"
    "    except OSError as e: print(a,'closed',type(e).__name__,round(time.monotonic()-t,2))\n"
    "    finally: s.close()\n"
)


class Lab:
    def __init__(self, octet: int) -> None:
        k = octet
        self.private = [f"10.213.{k}.2", f"172.16.{k}.2", f"192.168.{k}.2", f"100.64.{k}.2"]
        self.resolver = f"10.213.{k}.53"
        self.public = f"203.0.113.{k}"
        self.host_net_host = f"198.18.{k}.2"  # 198.18.0.0/15: not a private range
        self.host_network = f"198.18.{k}.1/24"


class _ServerWithResolver(ServerProcess):
    def __init__(self, home: Path, resolv: Path) -> None:
        super().__init__(home)
        self.resolv = resolv

    def env(self) -> dict[str, str]:
        return {**super().env(), "HUTCH_RESOLV_CONF": str(self.resolv)}


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[Lab, ServerProcess]]:
    lab = Lab(secrets.randbelow(200) + 20)
    addresses = [*lab.private, lab.resolver, lab.public, lab.host_net_host]
    home = Path(tempfile.mkdtemp(prefix="hutch-pub-", dir="/var/tmp"))
    resolv = home / "host-resolv.conf"
    with hosts_in_netns(
        addresses, dns_answer=lab.public, dns_address=lab.resolver, host_network=lab.host_network
    ):
        home.mkdir(exist_ok=True)
        resolv.write_text(f"nameserver {lab.resolver}\n")
        srv = _ServerWithResolver(home, resolv)
        srv.start()
        try:
            yield lab, srv
        finally:
            from tests.conftest import _cleanup_home

            srv.stop()
            _cleanup_home(srv)


def _probe(sb: Sandbox, *addresses: str) -> dict[str, str]:
    started = time.monotonic()
    out = sb.exec("python3 /tmp/probe.py " + " ".join(addresses), timeout=60).stdout
    # Refused at once (nftables rejects), not a 3 s timeout per address.
    assert time.monotonic() - started < 2 + 0.5 * len(addresses), out
    return {line.split()[0]: line.split()[1] for line in out.splitlines()}


@pytest.mark.sandbox
def test_internet_reaches_public_hosts_only(lab: tuple[Lab, ServerProcess]) -> None:
    hosts, srv = lab
    with Sandbox.create(base_url=srv.url, api_key=srv.api_key, network="internet") as sb:
        sb.exec("cat > /tmp/probe.py", stdin=PROBE)
        seen = _probe(sb, hosts.public, *hosts.private, hosts.resolver, hosts.host_net_host)
        assert seen[hosts.public] == "OPEN", seen  # the positive control
        for address in (*hosts.private, hosts.resolver, hosts.host_net_host):
            assert seen[address] == "closed", (address, seen)
        # DNS to the (private) resolver works, and nothing else of it: port 80 stayed closed.
        r = sb.exec("getent ahostsv4 anything.example")
        assert r.stdout.split()[0] == hosts.public, r
        # Refused when the policy is changed to internet later, too.
        sb.set_network("none")
        sb.set_network("internet")
        assert _probe(sb, hosts.private[0])[hosts.private[0]] == "closed"


@pytest.mark.sandbox
def test_network_allow_opens_a_private_host(lab: tuple[Lab, ServerProcess]) -> None:
    hosts, srv = lab
    allowed = [hosts.private[0], "172.16.0.0/12", "198.18.0.0/15"]
    with Sandbox.create(
        base_url=srv.url, api_key=srv.api_key, network="internet", network_allow=allowed
    ) as sb:
        sb.exec("cat > /tmp/probe.py", stdin=PROBE)
        seen = _probe(sb, *hosts.private, hosts.host_net_host, hosts.public)
        assert seen[hosts.private[0]] == "OPEN" and seen[hosts.private[1]] == "OPEN", seen
        assert seen[hosts.host_net_host] == "OPEN" and seen[hosts.public] == "OPEN", seen
        assert seen[hosts.private[2]] == "closed" and seen[hosts.private[3]] == "closed", seen
