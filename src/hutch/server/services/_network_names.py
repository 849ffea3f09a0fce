"""Host names in `network_allow` (``"pypi.org"``): the server resolves them and allows the
addresses, and resolves them again as their TTLs run out.

Why addresses and not the egress proxy by SNI/Host: the allow list is enforced by nftables
for every protocol (git over ssh, a database port, QUIC), and the sandbox's own programs need
no proxy settings; a proxy would only see HTTP(S) from clients that honour HTTP(S)_PROXY, and
a transparent one needs TPROXY and TLS parsing in the data path. The price: an address
shared by many names (a CDN) is allowed for all of them, and a name whose address changes
is reachable at its new address only after the next resolution (at most its TTL, clamped
to `MAX_TTL`). The previous resolution's addresses stay allowed one more round, so a
connection made on the old address is not cut at a rotation.

The server asks the name servers of the resolv.conf that the sandboxes copy
(`ServerConfig.resolv_conf`): the answer is what the sandbox itself would get. A name that
does not resolve at create (or at a network change) is refused with
`network_name_unresolved`; later failures keep the last addresses.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime import nameservers
from hutch.server._errors import InvalidRequest

log = logging.getLogger("hutch.server")

MIN_TTL = 30.0
MAX_TTL = 3600.0
_TYPE_A, _TYPE_CNAME, _CLASS_IN = 1, 5, 1


def split_allow(entries: Iterable[str]) -> tuple[list[str], list[str]]:
    """(CIDRs, host names) of a `network_allow` (checked at the API edge already)."""
    cidrs, names = [], []
    for entry in entries:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            names.append(entry)
        else:
            cidrs.append(entry)
    return cidrs, names


# -- DNS, sans I/O ------------------------------------------------------------------------------


def dns_query(name: str, query_id: int) -> bytes:
    """An A question for `name`, recursion desired."""
    header = struct.pack(">HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.split(".") if p)
    return header + labels + b"\0" + struct.pack(">HH", _TYPE_A, _CLASS_IN)


def _skip_name(packet: bytes, at: int) -> int:
    while True:
        length = packet[at]
        if length & 0xC0 == 0xC0:
            return at + 2
        if length == 0:
            return at + 1
        at += 1 + length


def dns_answer(packet: bytes, query_id: int) -> tuple[list[str], float]:
    """The A addresses of an answer and their smallest TTL (CNAMEs on the way are followed
    by the resolver, which puts their A records in the same answer).

    Raises:
        ValueError: not the answer to this query, an error code, or no A record.
    """
    try:
        got_id, flags, questions, answers = struct.unpack(">HHHH", packet[:8])
        if got_id != query_id or not flags & 0x8000:
            raise ValueError("not the answer to this query")
        if flags & 0x000F:
            raise ValueError(f"DNS error code {flags & 0x000F}")
        at = 12
        for _ in range(questions):
            at = _skip_name(packet, at) + 4
        found: list[str] = []
        ttls: list[float] = []
        for _ in range(answers):
            at = _skip_name(packet, at)
            rtype, rclass, ttl, length = struct.unpack(">HHIH", packet[at : at + 10])
            at += 10
            if rtype == _TYPE_A and rclass == _CLASS_IN and length == 4:
                found.append(str(ipaddress.IPv4Address(packet[at : at + 4])))
                ttls.append(float(ttl))
            at += length
    except (struct.error, IndexError) as exc:
        raise ValueError(f"a malformed DNS answer ({exc})") from None
    if not found:
        raise ValueError("no address (A record)")
    return sorted(set(found)), min(ttls)


class _Ask(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answers: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        self.answers.put_nowait(data)


async def ask(server: str, name: str) -> tuple[list[str], float]:
    """Ask one name server (UDP port 53) for the A records of `name` (the caller bounds how
    long with asyncio.timeout)."""
    query_id = secrets.randbelow(1 << 16)
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_Ask, remote_addr=(server, 53))
    try:
        transport.sendto(dns_query(name, query_id))
        while True:  # NB: a stray datagram (an old answer) is not this one's
            packet = await protocol.answers.get()
            if packet[:2] == struct.pack(">H", query_id):
                return dns_answer(packet, query_id)
    finally:
        transport.close()


# -- the names of running sandboxes -------------------------------------------------------------


@dataclass
class _Resolved:
    addresses: tuple[str, ...]
    previous: tuple[str, ...]
    expires: float


class NetworkNames:
    """Args:
    resolv_conf: the resolv.conf whose name servers are asked (the sandboxes' own).
    """

    TIMEOUT = 2.0  # per name server
    REFRESH_EVERY = 5.0  # how often the refresh loop looks for names whose TTL ran out

    def __init__(self, resolv_conf: Path) -> None:
        self._resolv_conf = resolv_conf
        self._names: dict[str, _Resolved] = {}

    def addresses(self, names: Iterable[str]) -> list[str]:
        """The addresses to allow for `names`: the last resolution's and the one before."""
        found: set[str] = set()
        for name in names:
            entry = self._names.get(name)
            if entry is not None:
                found.update(entry.addresses, entry.previous)
        return sorted(found)

    def pinned(self, names: Iterable[str]) -> list[tuple[str, str]]:
        """(name, address) for each of `names`' addresses of the last resolution: what a
        sandbox with no DNS of its own resolves them to (its /etc/hosts)."""
        return sorted(
            (name, address)
            for name in dict.fromkeys(names)
            if (entry := self._names.get(name)) is not None
            for address in entry.addresses
        )

    async def resolve(self, names: Sequence[str], *, strict: bool) -> None:
        """Resolve the names not known or whose TTL ran out.

        Raises:
            InvalidRequest: (strict only) a name that no name server resolves
                (network_name_unresolved).
        """
        now = time.monotonic()
        due = [n for n in dict.fromkeys(names) if n not in self._names or self._due(n, now)]
        results = await asyncio.gather(*(self._lookup(n) for n in due), return_exceptions=True)
        for name, result in zip(due, results, strict=True):
            if isinstance(result, BaseException):
                if strict and name not in self._names:
                    raise InvalidRequest(
                        f"network_allow: the host name {name!r} does not resolve ({result}); "
                        "check the name, or give its addresses as CIDRs",
                        code="network_name_unresolved",
                    )
                log.warning("could not resolve %s again: %s", name, result)
                continue
            addresses, ttl = result
            old = self._names.get(name)
            previous = () if old is None or old.addresses == tuple(addresses) else old.addresses
            expires = now + min(MAX_TTL, max(MIN_TTL, ttl))
            self._names[name] = _Resolved(tuple(addresses), previous, expires)

    def _due(self, name: str, now: float) -> bool:
        return self._names[name].expires <= now

    async def _lookup(self, name: str) -> tuple[list[str], float]:
        try:
            servers = nameservers(self._resolv_conf.read_text())
        except OSError as exc:
            raise ValueError(f"cannot read {self._resolv_conf}: {exc.strerror}") from None
        if not servers:
            raise ValueError(f"no IPv4 name server in {self._resolv_conf}")
        errors = []
        for server in servers:
            try:
                async with asyncio.timeout(self.TIMEOUT):
                    return await ask(server, name)
            except (OSError, ValueError, TimeoutError) as exc:
                why = "no answer" if isinstance(exc, TimeoutError) else str(exc) or repr(exc)
                errors.append(f"{server}: {why}")
        raise ValueError("; ".join(errors))

    async def keep_fresh(
        self,
        names_in_use: Callable[[], Awaitable[dict[str, list[str]]]],
        apply: Callable[[str], Awaitable[None]],
    ) -> None:
        """Forever: resolve the names of running sandboxes (`names_in_use`: sandbox id ->
        its names) whose TTL ran out; `apply` the policy again to each sandbox whose
        addresses changed."""
        applied: dict[str, list[str]] = {}
        while True:
            in_use = await names_in_use()
            with contextlib.suppress(Exception):
                await self.resolve([n for names in in_use.values() for n in names], strict=False)
            for sandbox_id, names in in_use.items():
                now = self.addresses(names)
                if applied.get(sandbox_id) == now:
                    continue
                try:
                    await apply(sandbox_id)
                    applied[sandbox_id] = now
                except Exception as exc:  # gone meanwhile, or its host is: next round
                    log.warning("could not update the allowed names of %s: %s", sandbox_id, exc)
            for gone in set(applied) - set(in_use):
                del applied[gone]
            await asyncio.sleep(self.REFRESH_EVERY)
