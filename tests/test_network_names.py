"""Host names in `network_allow` (issue 19): the server resolves them through the name servers
of the sandboxes' resolv.conf and allows the addresses (services/_network_names.py).

Unit: the DNS wire format, the entry check, resolution with TTLs against a fake name server on
loopback. Sandboxes: a test host on a private address in a netns of the test's own, with a DNS
stub that answers every name with it: refused to an "internet" sandbox, reachable by name when
the name is allowed (at create, and by a network change), never off this machine.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import struct
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from hutch import InvalidRequest, Sandbox
from hutch.node._node_wire import network_from_json, network_to_json
from hutch.runtime import NetworkPolicy
from hutch.runtime.container._host_files import etc_hosts, pin_hosts, resolv_conf
from hutch.server._errors import InvalidRequest as ApiInvalidRequest
from hutch.server._models import SandboxCreate
from hutch.server.services import _network_names
from hutch.server.services._network_names import (
    NetworkNames,
    dns_answer,
    dns_query,
    split_allow,
)
from tests._server import ServerProcess
from tests.support.netns_hosts import hosts_in_netns


def _answer(query: bytes, addresses: list[str], ttl: int, rcode: int = 0) -> bytes:
    end = 12
    while query[end]:
        end += query[end] + 1
    question = query[12 : end + 5]
    head = query[:2] + struct.pack(">HHHHH", 0x8180 | rcode, 1, len(addresses), 0, 0)
    records = b"".join(
        b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, ttl, 4) + bytes(map(int, a.split(".")))
        for a in addresses
    )
    return head + question + records


def test_dns_wire_format() -> None:
    query = dns_query("pypi.org", 0x1234)
    assert query[:2] == b"\x12\x34" and b"\x04pypi\x03org\x00" in query
    assert dns_answer(_answer(query, ["10.0.0.2", "10.0.0.1"], 300), 0x1234) == (
        ["10.0.0.1", "10.0.0.2"],
        300.0,
    )
    for bad, why in (
        (_answer(query, ["10.0.0.1"], 60)[:20], "malformed"),
        (_answer(query, [], 60, rcode=3), "error code 3"),
        (_answer(query, [], 60), "no address"),
        (_answer(dns_query("pypi.org", 7), ["10.0.0.1"], 60), "not the answer"),
    ):
        with pytest.raises(ValueError, match=why):
            dns_answer(bad, 0x1234)


def test_network_allow_takes_cidrs_and_host_names() -> None:
    body = SandboxCreate(network_allow=["PyPI.org.", "10.1.2.3", "files.pythonhosted.org"])
    assert body.network_allow == ["pypi.org", "10.1.2.3/32", "files.pythonhosted.org"]
    assert split_allow(body.network_allow) == (
        ["10.1.2.3/32"],
        ["pypi.org", "files.pythonhosted.org"],
    )
    for bad in ("localhost", "1.2.3", "a..b", "bad_name.org", "x" * 64 + ".org", "-a.org"):
        with pytest.raises(ValidationError, match="host name such as"):
            SandboxCreate(network_allow=[bad])
    with pytest.raises(ValidationError):  # deny stays CIDRs only
        SandboxCreate(network_deny=["pypi.org"])


def test_a_sandbox_without_dns_gets_its_allowed_names_in_etc_hosts() -> None:
    # network="none" with an allowed name: no name server (a lookup fails at once), unless
    # network_allow itself opens one; the allowed names are pinned in /etc/hosts.
    host = "nameserver 10.0.0.2\n"
    names_only = NetworkPolicy.of(
        "none", ["203.0.113.7/32"], hosts=[("pkgs.example.test", "203.0.113.7")]
    )
    assert "nameserver 127.0.0.1" in resolv_conf(host, names_only)
    assert "10.0.0.2" not in resolv_conf(host, names_only)
    denied = NetworkPolicy.of("none", ["10.0.0.0/8"], ["10.0.0.2/32"])
    assert "10.0.0.2" not in resolv_conf(host, denied)
    hosts = etc_hosts("box", names_only.hosts)
    assert "203.0.113.7\tpkgs.example.test\n" in hosts and "127.0.1.1\tbox\n" in hosts
    # The sandbox's own lines stay; the pinned block follows the policy, and goes with it.
    edited = hosts + "10.1.1.1\tmine.example.test\n"
    moved = pin_hosts(edited, [("pkgs.example.test", "203.0.113.8")])
    assert "203.0.113.8\tpkgs.example.test" in moved and "203.0.113.7" not in moved
    assert "mine.example.test" in moved and moved.count("hutch: allowed host names") == 1
    assert pin_hosts(moved, []) == etc_hosts("box") + "10.1.1.1\tmine.example.test\n"
    # Nothing but a host name and an IPv4 address is ever written into the file.
    for name, address in (("a.test\n1.2.3.4 evil.test", "1.2.3.4"), ("a.test", "1.2.3.4 x")):
        with pytest.raises(ValueError):
            NetworkPolicy.of("none", hosts=[(name, address)])
    # The node API carries them.
    assert network_from_json(network_to_json(names_only)) == names_only


# The fake name server listens on port 53: root only (CI's root pass runs these).
NEEDS_PORT_53 = pytest.mark.skipif(
    os.geteuid() != 0, reason="the fake name server listens on port 53"
)


class _FakeDns(asyncio.DatagramProtocol):
    """A name server on loopback speaking real DNS: `zone` name -> addresses (else NXDOMAIN)."""

    def __init__(self) -> None:
        self.zone: dict[str, list[str]] = {}
        self.ttl = 60
        self.asked: list[str] = []
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        labels, at = [], 12
        while data[at]:
            labels.append(data[at + 1 : at + 1 + data[at]].decode())
            at += data[at] + 1
        name = ".".join(labels)
        self.asked.append(name)
        found = self.zone.get(name)
        assert self.transport is not None
        self.transport.sendto(_answer(data, found or [], self.ttl, 0 if found else 3), addr)


@pytest.fixture()
async def fake_dns(tmp_path: Path) -> AsyncIterator[tuple[_FakeDns, Path]]:
    address = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.53"
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(_FakeDns, local_addr=(address, 53))
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(f"nameserver {address}\n")
    yield server, resolv
    transport.close()


@pytest.mark.root
@NEEDS_PORT_53
async def test_names_resolve_expire_and_keep_the_previous_addresses(
    fake_dns: tuple[_FakeDns, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, resolv = fake_dns
    server.zone["pkgs.example.test"] = ["10.9.0.1"]
    names = NetworkNames(resolv)
    await names.resolve(["pkgs.example.test"], strict=True)
    assert names.addresses(["pkgs.example.test"]) == ["10.9.0.1"]
    await names.resolve(["pkgs.example.test"], strict=True)
    assert server.asked == ["pkgs.example.test"]  # within its TTL: not asked again
    # The TTL (clamped to at least MIN_TTL) runs out: asked again; the old address stays
    # allowed one more round (connections made on it are not cut).
    monkeypatch.setattr(_network_names, "MIN_TTL", 0.0)
    server.ttl = 0
    server.zone["pkgs.example.test"] = ["10.9.0.2"]
    names._names["pkgs.example.test"].expires = 0.0
    await names.resolve(["pkgs.example.test"], strict=False)
    assert names.addresses(["pkgs.example.test"]) == ["10.9.0.1", "10.9.0.2"]
    await names.resolve(["pkgs.example.test"], strict=False)
    assert names.addresses(["pkgs.example.test"]) == ["10.9.0.2"]
    # A name that does not resolve: refused with its code when asked for; a later failure
    # keeps the last addresses.
    with pytest.raises(ApiInvalidRequest) as refused:
        await names.resolve(["nope.example.test"], strict=True)
    assert refused.value.code == "network_name_unresolved"
    assert "nope.example.test" in refused.value.message
    del server.zone["pkgs.example.test"]
    await names.resolve(["pkgs.example.test"], strict=True)
    assert names.addresses(["pkgs.example.test"]) == ["10.9.0.2"]
    # No name server answers: the reason, after a bounded wait.
    (resolv.parent / "silent.conf").write_text("nameserver 127.0.0.254\n")
    silent = NetworkNames(resolv.parent / "silent.conf")
    silent.TIMEOUT = 0.3
    with pytest.raises(ApiInvalidRequest, match="127.0.0.254"):
        await silent.resolve(["pkgs.example.test"], strict=True)


@pytest.mark.root
@NEEDS_PORT_53
async def test_the_refresh_loop_applies_a_sandboxs_policy_again_when_its_names_move(
    fake_dns: tuple[_FakeDns, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, resolv = fake_dns
    server.zone["pkgs.example.test"] = ["10.9.0.1"]
    monkeypatch.setattr(_network_names, "MIN_TTL", 0.0)
    server.ttl = 0
    names = NetworkNames(resolv)
    names.REFRESH_EVERY = 0.02
    applied: list[tuple[str, list[str]]] = []
    moved = asyncio.Event()

    async def in_use() -> dict[str, list[str]]:
        await asyncio.sleep(0)  # the server reads its rows off the event loop
        return {"sb-1": ["pkgs.example.test"]}

    async def apply(sandbox_id: str) -> None:
        applied.append((sandbox_id, names.addresses(["pkgs.example.test"])))
        if "10.9.0.2" in applied[-1][1]:
            moved.set()

    refresh = asyncio.create_task(names.keep_fresh(in_use, apply))
    try:
        for _ in range(500):
            if applied or refresh.done():
                break
            await asyncio.sleep(0.01)
        assert not refresh.done(), refresh.exception()
        assert applied == [("sb-1", ["10.9.0.1"])]
        await asyncio.sleep(0.1)
        assert len(applied) == 1  # same addresses: not applied again
        server.zone["pkgs.example.test"] = ["10.9.0.2"]
        await asyncio.wait_for(moved.wait(), 5)
    finally:
        refresh.cancel()


# -- sandboxes --------------------------------------------------------------------------------

PROBE = (
    "import socket,sys\n"
    "for a in sys.argv[1:]:\n"
    "    s=socket.socket(); s.settimeout(3)\n"
    "    try:\n"
    "        s.connect((a,80)); s.sendall(b'GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n'); got=b''\n"
    "        while (c := s.recv(4096)): got += c\n"
    "        print(a, 'OPEN' if b'hello from' in got else 'odd', flush=True)\n"
    "    except OSError as e: print(a, 'closed', type(e).__name__, flush=True)\n"
    "    finally: s.close()\n"
)


class _ServerWithResolver(ServerProcess):
    def __init__(self, home: Path, resolv: Path) -> None:
        super().__init__(home)
        self.resolv = resolv

    def env(self) -> dict[str, str]:
        return {**super().env(), "HUTCH_RESOLV_CONF": str(self.resolv)}


@pytest.fixture(scope="module")
def named_lab() -> Iterator[tuple[str, ServerProcess]]:
    k = secrets.randbelow(200) + 20
    private, resolver = f"10.214.{k}.2", f"10.214.{k}.53"
    home = Path(tempfile.mkdtemp(prefix="hutch-names-", dir="/var/tmp"))
    with hosts_in_netns([private, resolver], dns_answer=private, dns_address=resolver):
        (home / "host-resolv.conf").write_text(f"nameserver {resolver}\n")
        srv = _ServerWithResolver(home, home / "host-resolv.conf")
        srv.start()
        try:
            yield private, srv
        finally:
            from tests.conftest import _cleanup_home

            srv.stop()
            _cleanup_home(srv)


def _probe(sb: Sandbox, target: str) -> str:
    out = sb.exec(f"python3 /tmp/probe.py {target}", timeout=60).stdout
    return out.split()[1] if out else f"no output: {out!r}"


@pytest.mark.sandbox
def test_an_allowed_host_name_opens_its_private_address(
    named_lab: tuple[str, ServerProcess],
) -> None:
    private, srv = named_lab
    opts = {"base_url": srv.url, "api_key": srv.api_key, "network": "internet"}
    name = "pkgs.internal.test"
    with (
        Sandbox.create(**opts) as plain,
        Sandbox.create(network_allow=[name], **opts) as named,
    ):
        for sb in (plain, named):
            sb.exec("cat > /tmp/probe.py", stdin=PROBE)
        # The sandbox resolves the name as the server did (the same name server)...
        assert named.exec(f"getent ahostsv4 {name}").stdout.split()[0] == private
        # ...and reaches it by name only where the name is allowed (a private address).
        assert _probe(named, name) == "OPEN"
        assert _probe(named, private) == "OPEN"
        assert _probe(plain, name) == "closed"
        assert named.get_network()["network_allow"] == [name]
        # Allowed later, by a network change: open at once; taken away: closed again.
        plain.set_network("internet", allow=[name])
        assert _probe(plain, name) == "OPEN"
        plain.set_network("internet")
        assert _probe(plain, name) == "closed"
    # Bad entries are refused before anything is made.
    with pytest.raises(InvalidRequest):
        Sandbox.create(base_url=srv.url, api_key=srv.api_key, network_allow=["not a name"])


DNS_ASK = (
    "import socket,struct,sys\n"
    "q=struct.pack('>HHHHHH',7,0x100,1,0,0,0)+b''.join(bytes([len(p)])+p.encode()"
    " for p in sys.argv[2].split('.'))+b'\\0\\0\\1\\0\\1'\n"
    "for kind in ('udp','tcp'):\n"
    "    s=socket.socket(type=socket.SOCK_DGRAM if kind=='udp' else socket.SOCK_STREAM)\n"
    "    s.settimeout(3)\n"
    "    try:\n"
    "        s.connect((sys.argv[1],53))\n"
    "        if kind=='udp': s.send(q); got=s.recv(512)\n"
    "        else: s.sendall(struct.pack('>H',len(q))+q); got=s.recv(512)\n"
    "        print(kind, 'ANSWERED' if got else 'empty', flush=True)\n"
    "    except OSError as e: print(kind, 'refused', type(e).__name__, flush=True)\n"
)


@pytest.mark.sandbox
def test_network_none_resolves_exactly_its_allowed_names(
    named_lab: tuple[str, ServerProcess],
) -> None:
    """network="none" with an allowed host name: the sandbox resolves that name (to the
    addresses the server resolved and nftables allows) and reaches it by name. Abuse: no
    other name resolves, and no DNS query reaches a name server (the one the server asks, or
    the sandbox's gateway), so DNS cannot carry data out."""
    private, srv = named_lab
    resolver = private.rsplit(".", 1)[0] + ".53"
    name = "pkgs.internal.test"
    opts = {"base_url": srv.url, "api_key": srv.api_key, "network": "none"}
    with Sandbox.create(network_allow=[name], **opts) as named, Sandbox.create(**opts) as plain:
        for sb in (plain, named):
            sb.exec("cat > /tmp/probe.py", stdin=PROBE)
            sb.exec("cat > /tmp/dns.py", stdin=DNS_ASK)
        assert named.exec(f"getent ahostsv4 {name}").stdout.split()[0] == private
        assert _probe(named, name) == "OPEN"
        # The DNS stub answers any name with the test host: a lookup that got through
        # to it would resolve. None does.
        other = named.exec("getent ahostsv4 other.internal.test; echo rc=$?", timeout=30)
        assert other.stdout.strip() == "rc=2", other.stdout
        gateway = named.exec("ip route 2>/dev/null | awk '/default/ {print $3}'").stdout.strip()
        if not gateway:  # no iproute2 in the image: the route table as the kernel shows it
            gateway = named.exec(
                "python3 -c \"import socket,struct;r=[l.split() for l in open('/proc/net/route')]"
                ";print(socket.inet_ntoa(struct.pack('<I',int([x for x in r if x[1]=='00000000']"
                '[0][2],16))))"'
            ).stdout.strip()
        for server in (resolver, gateway):
            asked = named.exec(f"python3 /tmp/dns.py {server} data.exfil.test", timeout=30)
            assert "ANSWERED" not in asked.stdout and asked.stdout.count("refused") == 2, (
                server,
                asked.stdout,
            )
        # By a network change: the name resolves once allowed, and no longer once taken away.
        assert plain.exec(f"getent ahostsv4 {name}").exit_code == 2
        plain.exec("echo '10.1.1.1 mine.internal.test' >> /etc/hosts")
        plain.set_network("none", allow=[name])
        assert plain.exec(f"getent ahostsv4 {name}").stdout.split()[0] == private
        assert _probe(plain, name) == "OPEN"
        plain.set_network("none")
        assert plain.exec(f"getent ahostsv4 {name}").exit_code == 2
        assert _probe(plain, private) == "closed"
        # The sandbox's own line in /etc/hosts stayed through both changes.
        assert "mine.internal.test" in plain.read_file("/etc/hosts", text=True)
