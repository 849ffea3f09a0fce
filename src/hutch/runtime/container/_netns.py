"""Per-sandbox networks: a veth pair from the host into the sandbox's netns, an address, rules.

Each sandbox `<id>` of a home gets index `n` (kept in `HUTCH_HOME/net/<id>`, and claimed
host-wide in `/run/hutch/net-<subnet>/<n>` so homes sharing a subnet never collide), the /31 pair
`subnet[2n]` (host side, veth `hz<hash>`) and `subnet[2n+1]` (sandbox side, `eth0`, default
route via the host side). The veth goes away with the sandbox's netns; the rules and the index
are removed by `remove` (destroy) or found by `ids` (sweep after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import ipaddress
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime.container import _libnft, _nft, _public_net
from hutch.runtime.container._errors import SandboxRuntimeError
from hutch.runtime.container._host_files import read_text_or_empty, resolv_conf
from hutch.runtime.container._nft import NetworkPolicy
from hutch.runtime.container._rtnl import Rtnl
from hutch.runtime.container._spawn import in_netns, run_tool

log = logging.getLogger("hutch.runtime")

DEFAULT_SUBNET = "10.201.0.0/16"
CLAIMS_DIR = Path("/run/hutch")


def _loopback_table(host_ip: str) -> str:
    """The nft table (of the sandbox's netns) that sends TCP connections from the host side
    of the veth (the preview proxy) to 127.0.0.1 inside: dev servers listen on localhost by
    default (Vite, Next, Flask), and `wait_for_port` checks 127.0.0.1 too, so both agree.

    NB: with `route_localnet` on eth0 (ROUTE_LOCALNET) a packet from eth0 may be routed to a
    loopback address; only the proxy's own address is rewritten, so nothing else reaches the
    sandbox's loopback.
    """
    return (
        "table ip hutch_loopback {\n"
        "  chain prerouting {\n"
        "    type nat hook prerouting priority dstnat; policy accept;\n"
        f'    iifname "eth0" ip saddr {host_ip} meta l4proto tcp dnat to 127.0.0.1\n'
        "  }\n"
        "}\n"
    )


ROUTE_LOCALNET = Path("/proc/sys/net/ipv4/conf/eth0/route_localnet")


class NetworkError(SandboxRuntimeError):
    """A sandbox's network could not be set up or changed."""


@dataclass(frozen=True, slots=True)
class SandboxNet:
    sandbox_id: str
    index: int
    host_ip: str
    sandbox_ip: str
    ifname: str


async def _run(*argv: str, stdin: str | None = None, netns: str | None = None) -> None:
    # NB: not asyncio's subprocess: on the server's uvloop that forks the whole server (_spawn).
    out = await run_tool(argv, stdin.encode() if stdin is not None else None, netns=netns)
    if out.exit_code != 0:
        raise NetworkError(f"{argv[0]} failed: {out.stderr.decode(errors='replace').strip()}")


async def _apply_nft(script: str, netns: str | None = None) -> None:
    """Apply an nft script in the host's netns (or the one at path `netns`): by libnftables
    in a thread where it loads (no `nft` process: _libnft), else by `nft -f -`."""
    if not _libnft.available():
        await _run("nft", "-f", "-", stdin=script, netns=netns)
        return
    apply = functools.partial(_libnft.apply, script)
    if netns is None:
        error = await asyncio.to_thread(apply)
    else:
        # NB: in a thread of its own that enters the netns (in_netns), never a pool's.
        error = await asyncio.to_thread(in_netns, netns, apply)
    if error is not None:
        raise NetworkError(f"nft failed: {error}")


async def _host_networks() -> list[str]:
    """The IPv4 networks of the host's interfaces now ([] if `ip` cannot say)."""
    out = (await run_tool(["ip", "-j", "-4", "addr", "show"], capture_stdout=True)).stdout
    try:
        return _public_net.parse_host_networks(out.decode())
    except (ValueError, KeyError, TypeError):
        log.error("the host's networks could not be read from `ip -j addr`: %r", out[:200])
        return []


def _link_exists(ifname: str) -> bool:
    return os.path.exists(f"/sys/class/net/{ifname}")  # sysfs: never blocks


def _enable_forwarding() -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text("1\n")  # procfs: never blocks


def _disable_ipv6(ifname: str) -> None:
    with contextlib.suppress(OSError):
        Path(f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6").write_text("1\n")  # procfs


class Networks:
    """Sandbox networks of one `HUTCH_HOME`."""

    def __init__(
        self,
        home: Path,
        subnet: str = DEFAULT_SUBNET,
        id_range: int = 65536,
        host_resolv_conf: Path = Path("/etc/resolv.conf"),
        also_blocked: tuple[str, ...] = (),
    ) -> None:
        self._also_blocked = also_blocked
        self._state = home / "net"
        self._host_resolv_conf = host_resolv_conf
        self._subnet = ipaddress.IPv4Network(subnet)
        if self._subnet.prefixlen > 30:
            raise ValueError(f"sandbox subnet {subnet} is too small")
        self._tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:6]
        self._id_range = id_range
        self._ready = False
        # Claims live in /run (a tmpfs, like the veths they name): gone after a reboot.
        subnet_tag = hashlib.sha256(str(self._subnet).encode()).hexdigest()[:8]
        self._claims = CLAIMS_DIR / f"net-{subnet_tag}"

    @property
    def subnet(self) -> str:
        return str(self._subnet)

    # -- naming -------------------------------------------------------------------------

    def _ifname(self, sandbox_id: str) -> str:
        digest = hashlib.sha256(f"{self._tag}/{sandbox_id}".encode()).hexdigest()
        return "hz" + digest[:12]  # IFNAMSIZ: at most 15 characters

    def _net(self, sandbox_id: str, index: int) -> SandboxNet:
        base = int(self._subnet.network_address) + 2 * index
        return SandboxNet(
            sandbox_id=sandbox_id,
            index=index,
            host_ip=str(ipaddress.IPv4Address(base)),
            sandbox_ip=str(ipaddress.IPv4Address(base + 1)),
            ifname=self._ifname(sandbox_id),
        )

    def get(self, sandbox_id: str) -> SandboxNet | None:
        """The sandbox's network as allocated (None if it has none)."""
        try:
            index = int((self._state / sandbox_id).read_text())
        except (OSError, ValueError):
            return None
        return self._net(sandbox_id, index)

    def ids(self) -> set[str]:
        """Sandbox ids with any network trace of this home (state file or netns)."""
        found: set[str] = set()
        if self._state.is_dir():
            found.update(p.name for p in self._state.iterdir() if not p.name.startswith("."))
        return found

    # -- lifecycle ----------------------------------------------------------------------

    async def setup(self) -> None:
        """The base table and forwarding; idempotent, keeps running sandboxes' rules."""
        if self._ready:
            return
        self._state.mkdir(mode=0o700, parents=True, exist_ok=True)
        _enable_forwarding()
        # NB: read once, at start: an interface added later is not known until a restart.
        host_nets = await _host_networks()
        internal = _public_net.internal_networks(host_nets, str(self._subnet))
        log.info("internet sandboxes may not reach %s unless allowed", ", ".join(internal))
        await _apply_nft(
            _nft.base_ruleset(self._tag, str(self._subnet), internal, self._also_blocked)
        )
        self._ready = True

    def _resolvers(self, policy: NetworkPolicy) -> list[str]:
        """The name servers the sandbox's resolv.conf names under `policy` (the host's)."""
        host = read_text_or_empty(self._host_resolv_conf)
        return _public_net.nameservers(resolv_conf(host, policy))

    def _claim(self, index: int, owner: str) -> bool:
        """Take address pair `index` host-wide (every home sharing the subnet sees the claim)."""
        path = self._claims / str(index)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            try:
                return path.read_text() == owner
            except OSError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(owner)
        return True

    def _release(self, index: int, owner: str) -> None:
        path = self._claims / str(index)
        with contextlib.suppress(OSError):
            if path.read_text() == owner:
                path.unlink()

    def _owner(self, sandbox_id: str) -> str:
        return f"{self._tag}/{sandbox_id}"

    def _allocate(self, sandbox_id: str) -> SandboxNet:
        self._claims.mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self._owner(sandbox_id)
        existing = self.get(sandbox_id)
        if existing is not None and self._claim(existing.index, owner):
            return existing
        limit = self._subnet.num_addresses // 2
        # Index 0 would give the network address to the host side.
        index = next((i for i in range(1, limit) if self._claim(i, owner)), None)
        if index is None:
            raise NetworkError(f"the sandbox subnet {self._subnet} has no free address left")
        tmp = self._state / f".{sandbox_id}"
        tmp.write_text(str(index))
        os.replace(tmp, self._state / sandbox_id)
        return self._net(sandbox_id, index)

    async def prepare(self, sandbox_id: str, policy: NetworkPolicy) -> SandboxNet:
        """Allocate the sandbox's addresses and install its rules; needs no running sandbox,
        so it overlaps `runc run`."""
        await self.setup()
        net = self._allocate(sandbox_id)
        resolvers = self._resolvers(policy)
        await self._nft(
            _nft.add_sandbox(self._tag, net.index, net.ifname, net.sandbox_ip, policy, resolvers)
        )
        return net

    async def attach(self, net: SandboxNet, netns: int | str) -> None:
        """Give the running sandbox whose init is `netns` (a pid), or the named netns
        `netns` (gVisor's, made before the sandbox), its veth and addresses.

        NB: the netns is the one runc made, owned by the sandbox's user namespace: runc can
        only mount /sys for a netns its user namespace owns. Docker's capability set has no
        NET_ADMIN, so root inside still cannot re-address or re-route it.
        """
        started = time.perf_counter()
        if _link_exists(net.ifname):
            await _run("ip", "link", "delete", net.ifname)
        path = f"/proc/{netns}/ns/net" if isinstance(netns, int) else f"/run/netns/{netns}"

        def host_side() -> None:  # ip link add IFNAME type veth peer name eth0 netns NETNS ...
            with Rtnl() as rtnl:
                rtnl.add_veth(net.ifname, "eth0", netns if isinstance(netns, int) else path)
                rtnl.add_address(net.ifname, net.host_ip, 31)
                rtnl.set_up(net.ifname)

        def sandbox_side() -> None:  # in the sandbox's netns: eth0's address, its way out
            with Rtnl() as rtnl:
                rtnl.add_address("eth0", net.sandbox_ip, 31)
                rtnl.set_up("eth0")
                rtnl.add_default_route(net.host_ip)
            try:
                ROUTE_LOCALNET.write_text("1\n")  # procfs: the loopback reach
            except OSError as e:
                raise NetworkError(f"route_localnet in the sandbox's netns: {e}") from e

        async def addresses() -> None:
            # NB: rtnetlink from the server (_rtnl), not two `ip -batch` processes (~2 ms of
            # CPU each beside the agent's start); the sandbox's side from a thread in its
            # netns (_spawn.in_netns), as route_localnet.
            try:
                await asyncio.to_thread(host_side)
            except OSError as e:
                raise NetworkError(f"the sandbox's veth: {e}") from e
            # No IPv6 on the host side: nothing for the sandbox's link-local address to talk to.
            _disable_ipv6(net.ifname)
            try:
                await asyncio.to_thread(in_netns, path, sandbox_side)
            except OSError as e:
                raise NetworkError(f"the sandbox's eth0: {e}") from e

        # NB: the loopback table matches eth0 by name, so it needs no eth0 yet: its nft
        # transaction (~15 ms, mostly the kernel waiting for RCU) runs beside the veth's.
        loopback = _apply_nft(_loopback_table(net.host_ip), netns=path)
        for outcome in await asyncio.gather(addresses(), loopback, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        # The stages bench reads it: deferred, the attach runs beside the agent's start.
        log.debug(
            "started sandbox %s: network_attach=%.2fms",
            net.sandbox_id,
            (time.perf_counter() - started) * 1e3,
        )

    async def set_policy(self, sandbox_id: str, policy: NetworkPolicy) -> None:
        net = self.get(sandbox_id)
        if net is None:
            raise NetworkError(f"sandbox {sandbox_id!r} has no network")
        resolvers = self._resolvers(policy)
        await self._nft(_nft.set_policy(self._tag, net.index, net.sandbox_ip, policy, resolvers))

    async def open_gateway_port(self, sandbox_id: str, port: int) -> SandboxNet:
        """Let the sandbox reach TCP `port` on its gateway address (and nothing else there).
        Idempotent; remembered in `net/.port-<id>` so that `remove` takes it away again."""
        net = self.get(sandbox_id)
        if net is None:
            raise NetworkError(f"sandbox {sandbox_id!r} has no network")
        await self.setup()
        await self._nft(_nft.gateway_port(self._tag, net.ifname, net.host_ip, port, add=True))
        (self._state / f".port-{sandbox_id}").write_text(str(port))
        return net

    async def remove(self, sandbox_id: str) -> None:
        """Remove the rules, veth, netns and state of a sandbox. Idempotent."""
        net = self.get(sandbox_id)
        port_file = self._state / f".port-{sandbox_id}"
        if net is not None:
            parts = _nft.remove_sandbox_parts(self._tag, net.index, net.ifname)
            with contextlib.suppress(OSError, ValueError):
                port = int(port_file.read_text())
                parts.insert(
                    0, _nft.gateway_port(self._tag, net.ifname, net.host_ip, port, add=False)
                )
            try:
                # NB: each nft transaction costs ~15 ms (the kernel waits for RCU): try all
                # parts in one, and only if one of them is already gone, each on its own.
                await self._nft("".join(parts))
            except NetworkError:
                for part in parts:
                    with contextlib.suppress(NetworkError):
                        await self._nft(part)
            if _link_exists(net.ifname):
                with contextlib.suppress(NetworkError):
                    await _run("ip", "link", "delete", net.ifname)
            self._release(net.index, self._owner(sandbox_id))
        port_file.unlink(missing_ok=True)
        (self._state / sandbox_id).unlink(missing_ok=True)

    async def teardown(self) -> None:
        """Drop this home's nft table if no sandbox network is left in it."""
        if self.ids():
            return
        with contextlib.suppress(NetworkError):
            await self._nft(f"delete table inet {_nft.table_name(self._tag)}\n")
        self._ready = False

    async def _nft(self, script: str) -> None:
        await _apply_nft(script)
