"""Which preview host goes where: the route table of exposed ports and their tokens (pure
lookups; the relay asks it for a sandbox's address)."""

from __future__ import annotations

import asyncio
import hmac
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from hutch.proxy._errors import BadRequest

MAX_LINE = 16 * 1024
MAX_HEADERS = 100
MAX_HEAD = 64 * 1024
TOKEN_BYTES = 16  # 128 bits
IDLE_TIMEOUT = 120.0

_HOST_RE = re.compile(
    r"^(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*$"
)
_IPV6_HOST_RE = re.compile(r"^\[[0-9a-f:.]+\]$")
_LABEL_RE = re.compile(r"^([0-9]{1,5})-([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)-([0-9a-f]{32})$")

NOT_FOUND_BODY = (
    b"no such preview: the sandbox, the port or the token is wrong, or the port is not exposed\n"
)


def new_token() -> str:
    return secrets.token_hex(TOKEN_BYTES)


# -- Host routing (pure) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreviewTarget:
    port: int
    sandbox_id: str
    token: str


def split_host(value: str) -> tuple[str, int | None]:
    """`host[:port]` -> (lowercased host, port); BadRequest if it is not a clean Host value."""
    host, port = value.lower(), None
    if ":" in host and not host.endswith("]"):
        host, _, port_text = host.rpartition(":")
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            raise BadRequest(f"malformed Host header {value!r}")
        port = int(port_text)
    if not (_HOST_RE.fullmatch(host) or _IPV6_HOST_RE.fullmatch(host)) or len(host) > 253:
        raise BadRequest(f"malformed Host header {value!r}")
    return host, port


def preview_target(host: str, domain: str) -> PreviewTarget | None:
    """The preview a (clean, lowercased) host names; None if it is not under `domain`.

    Raises:
        BadRequest: a name under the preview domain that is not a preview name.
    """
    suffix = "." + domain
    if not host.endswith(suffix):
        return None
    label = host[: -len(suffix)]
    m = _LABEL_RE.fullmatch(label)
    if m is None:
        raise BadRequest(f"{host!r} is not a preview host ({{port}}-{{sandbox_id}}-{{token}})")
    port = int(m.group(1))
    if not 1 <= port <= 65535:
        raise BadRequest(f"{host!r}: port out of range")
    return PreviewTarget(port, m.group(2), m.group(3))


def preview_url(domain: str, server_port: int, sandbox_id: str, port: int, token: str) -> str:
    return f"http://{port}-{sandbox_id}-{token}.{domain}:{server_port}/"


class OpenConnection(Protocol):
    """What the route table needs of an open preview connection (the relay's
    `PreviewConnection`): to close it when its port is unexposed or it idles."""

    target_key: tuple[str, int] | None
    active: bool
    tunnel: bool

    @property
    def inflight(self) -> object | None: ...

    def close(self) -> None: ...


class PreviewRoutes:
    """What the proxy may reach: (sandbox, port) -> token, and each sandbox's address.

    Filled from the store at start and kept in step by the ports routes; read on every
    preview request, so it is a dict lookup and one constant-time compare.
    """

    def __init__(self, domain: str = "localhost") -> None:
        self.domain = domain
        self._tokens: dict[tuple[str, int], str] = {}
        self._addresses: dict[str, str] = {}
        self.address_of: Callable[[str], str | None] = lambda _: None
        # Told of every request to a sandbox (it counts as activity); returns what to await
        # before connecting when the sandbox sleeps (its wake), else None.
        self.on_hit: Callable[[str], Awaitable[object] | None] = lambda _: None
        self.connections: set[OpenConnection] = set()
        self.idle_timeout = IDLE_TIMEOUT
        self._sweeper: asyncio.Task[None] | None = None
        self.pending: set[asyncio.Task[None]] = set()  # upstream connects in progress

    def add(self, sandbox_id: str, port: int, token: str) -> None:
        self._tokens[(sandbox_id, port)] = token

    def remove(self, sandbox_id: str, port: int) -> None:
        """Unexpose: new requests get 404, and open connections (WebSockets too) close now."""
        self._tokens.pop((sandbox_id, port), None)
        self._close_where(lambda key: key == (sandbox_id, port))

    def forget_sandbox(self, sandbox_id: str) -> None:
        for key in [k for k in self._tokens if k[0] == sandbox_id]:
            del self._tokens[key]
        self._addresses.pop(sandbox_id, None)
        self._close_where(lambda key: key is not None and key[0] == sandbox_id)

    def _close_where(self, match: Callable[[tuple[str, int] | None], bool]) -> None:
        for connection in list(self.connections):
            if match(connection.target_key):
                connection.close()

    def resolve(self, target: PreviewTarget) -> str | None:
        """The sandbox address to connect to, or None (one answer for every reason)."""
        expected = self._tokens.get((target.sandbox_id, target.port))
        # Compared even when there is nothing to compare against: no timing tells which part
        # of the name was wrong.
        ok = hmac.compare_digest(expected or "0" * 32, target.token) and expected is not None
        if not ok:
            return None
        address = self._addresses.get(target.sandbox_id)
        if address is None:
            address = self.address_of(target.sandbox_id)
            if address is None:
                return None
            self._addresses[target.sandbox_id] = address
        return address

    def start(self) -> None:
        """Close idle preview connections (no bytes from the client for `idle_timeout` and no
        request in flight): a client cannot hold connections open forever."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_idle())

    async def _sweep_idle(self) -> None:
        while True:
            await asyncio.sleep(self.idle_timeout / 2)
            for connection in list(self.connections):
                if connection.active or connection.inflight is not None or connection.tunnel:
                    connection.active = False
                else:
                    connection.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for task in list(self.pending):
            task.cancel()
        for connection in list(self.connections):
            connection.close()


# -- HTTP/1.1 heads (pure) -------------------------------------------------------------------
