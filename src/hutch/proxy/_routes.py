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
# E2B's shape (`sbx.get_host(port)`): no token in the name, it comes in TRAFFIC_TOKEN_HEADER.
_HEADER_LABEL_RE = re.compile(r"^([0-9]{1,5})-([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)$")
TRAFFIC_TOKEN_HEADER = "e2b-traffic-access-token"

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
    # E2B's `{port}-{sandbox_id}` host: the token is the request's TRAFFIC_TOKEN_HEADER, and
    # every port of the sandbox is reachable with it (no port is exposed one by one).
    in_header: bool = False


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
    if (m := _LABEL_RE.fullmatch(label)) is not None:
        target = PreviewTarget(int(m.group(1)), m.group(2), m.group(3))
    elif (m := _HEADER_LABEL_RE.fullmatch(label)) is not None:
        target = PreviewTarget(int(m.group(1)), m.group(2), "", in_header=True)
    else:
        raise BadRequest(f"{host!r} is not a preview host ({{port}}-{{sandbox_id}}-{{token}})")
    if not 1 <= target.port <= 65535:
        raise BadRequest(f"{host!r}: port out of range")
    return target


def preview_url(
    domain: str, server_port: int, sandbox_id: str, port: int, token: str, scheme: str = "http"
) -> str:
    return f"{scheme}://{port}-{sandbox_id}-{token}.{domain}:{server_port}/"


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
        # Several hosts: (sandbox id, port, protocol factory) -> connect the protocol to the
        # sandbox's port through its node; None: connect to `address_of`'s address directly.
        # Several API replicas: (sandbox id, port) -> its token from the shared database on
        # every request, so a port exposed or closed through another replica counts here too
        # (and no address is kept).
        self.token_of: Callable[[str, int], str | None] | None = None
        self.connect: (
            Callable[[str, int, Callable[[], asyncio.Protocol]], Awaitable[object]] | None
        ) = None
        # Told of every request to a sandbox (it counts as activity); returns what to await
        # before connecting when the sandbox sleeps (its wake), else None.
        self.on_hit: Callable[[str], Awaitable[object] | None] = lambda _: None
        self.connections: set[OpenConnection] = set()
        self.idle_timeout = IDLE_TIMEOUT
        self._sweeper: asyncio.Task[None] | None = None
        self.pending: set[asyncio.Task[None]] = set()  # upstream connects in progress
        # Where preview URLs point when a native proxy serves them (None: the API's port).
        self.url_port: int | None = None
        self.scheme = "http"
        # Told the sandbox id after its exposed ports changed (the native proxy's map follows).
        self.on_change: list[Callable[[str], None]] = []
        # Awaited by whoever changed a route and must not answer before it applies.
        self.on_settle: list[Callable[[], Awaitable[None]]] = []
        # E2B's hosts (`in_header` targets): the traffic token a sandbox expects (None: no
        # such hosts), ports never reachable that way, and the sandboxes reached so far (the
        # native proxy routes those; the first request of each comes through here).
        self.traffic_token_of: Callable[[str], str | None] | None = None
        # Whether a sandbox's E2B hosts need no token at all (E2B's allowPublicTraffic).
        self.is_public: Callable[[str], bool] = lambda _: False
        self.reserved_ports: frozenset[int] = frozenset()
        self._by_header: set[str] = set()

    def add(self, sandbox_id: str, port: int, token: str) -> None:
        self._tokens[(sandbox_id, port)] = token
        self._changed(sandbox_id)

    def exposed(self, sandbox_id: str) -> dict[int, str]:
        """The sandbox's exposed ports and their tokens."""
        return {port: token for (sid, port), token in self._tokens.items() if sid == sandbox_id}

    def sandboxes(self) -> set[str]:
        return {sid for sid, _ in self._tokens} | self._by_header

    def reached_by_header(self, sandbox_id: str) -> bool:
        """Whether a request with the sandbox's traffic token has come (E2B's hosts)."""
        return sandbox_id in self._by_header

    async def settled(self) -> None:
        """Return once every route change so far is in effect (the native proxy's too)."""
        for settle in self.on_settle:
            await settle()

    def _changed(self, sandbox_id: str) -> None:
        for hook in self.on_change:
            hook(sandbox_id)

    def remove(self, sandbox_id: str, port: int) -> None:
        """Unexpose: new requests get 404, and open connections (WebSockets too) close now."""
        self._tokens.pop((sandbox_id, port), None)
        self._close_where(lambda key: key == (sandbox_id, port))
        self._changed(sandbox_id)

    def forget_sandbox(self, sandbox_id: str) -> None:
        for key in [k for k in self._tokens if k[0] == sandbox_id]:
            del self._tokens[key]
        self._addresses.pop(sandbox_id, None)
        self._by_header.discard(sandbox_id)
        self._close_where(lambda key: key is not None and key[0] == sandbox_id)
        self._changed(sandbox_id)

    def _close_where(self, match: Callable[[tuple[str, int] | None], bool]) -> None:
        for connection in list(self.connections):
            if match(connection.target_key):
                connection.close()

    def resolve(self, target: PreviewTarget) -> str | None:
        """The sandbox address to connect to, or None (one answer for every reason)."""
        public = False
        if target.in_header:
            expected = self._traffic_token(target)
            # E2B's allowPublicTraffic: any request, with a token or none, reaches it.
            public = expected is not None and self.is_public(target.sandbox_id)
        elif self.token_of is not None:
            expected = self.token_of(target.sandbox_id, target.port)
        else:
            expected = self._tokens.get((target.sandbox_id, target.port))
        # Compared even when there is nothing to compare against: no timing tells which part
        # of the name was wrong.
        # (As bytes: a str compare refuses non-ASCII, and a header may hold anything.)
        given = target.token.encode()
        ok = hmac.compare_digest((expected or "0" * 32).encode(), given) and expected is not None
        if not (ok or public):
            return None
        address = self._addresses.get(target.sandbox_id)
        if address is None:
            address = self.address_of(target.sandbox_id)
            if address is None:
                return None
            if self.token_of is None:
                self._addresses[target.sandbox_id] = address
        if target.in_header and target.sandbox_id not in self._by_header:
            self._by_header.add(target.sandbox_id)
            self._changed(target.sandbox_id)
        return address

    def _traffic_token(self, target: PreviewTarget) -> str | None:
        if self.traffic_token_of is None or target.port in self.reserved_ports:
            return None
        return self.traffic_token_of(target.sandbox_id)

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
