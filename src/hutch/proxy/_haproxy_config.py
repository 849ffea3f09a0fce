"""The native preview data plane's configuration (pure): HAProxy's config file and the map
entries that route a preview host to a sandbox's address.

Why HAProxy (Debian's 2.6 LTS) rather than Envoy (not in Debian 12) or Caddy (2.6, admin API
reloads a whole config per change): its runtime API on a unix socket adds and deletes map
entries live, without a reload and without touching open connections; it speaks HTTP/2 (ALPN,
and h2c prior knowledge on the plain port), TLS and WebSocket; its HTTP/1 parser re-encodes
every message, so no smuggling shape reaches a sandbox as written; and it can connect to an
address chosen per request (`set-dst` with a `0.0.0.0` server), so one backend serves every
sandbox.

Routing: the map's key is the SHA-256 of the lowercased preview host (without its port), so
the token is checked by an exact lookup of a hash: a tree walk over hashes tells nothing about
how many characters of a token were right. A miss (wrong token, unknown sandbox, port not
exposed, a sleeping sandbox) goes to Hutch's own port, whose Python proxy answers the one 404
or wakes the sandbox and relays that first request.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from hutch.proxy._errors import UNREACHABLE_BODY, _simple_response
from hutch.proxy._routes import TRAFFIC_TOKEN_HEADER

# HAProxy's own idle limits, in step with the Python proxy's (`_routes.IDLE_TIMEOUT`).
CLIENT_IDLE_S = 120
# A server may be silent for long between two events of a stream (SSE, long polls).
SERVER_IDLE_S = 3600
ACTIVITY_TABLE = "preview_activity"
_ROUTE_OF_HOST = "req.hdr(host),lower,field(1,:),sha2(256),hex,lower,map"
# E2B's `{port}-{sandbox_id}.{domain}` with the token in a header: the key is the name
# without its port label, then `|` and the token (`route_key_by_header`).
_ROUTE_BY_HEADER = (
    "req.hdr(host),lower,field(1,:),regsub(^[0-9]+-,),concat(|,txn.traffic),sha2(256),hex,lower,map"
)
_PORT_OF_HOST = "req.hdr(host),field(1,-)"
# One `; Domain=...` attribute of a Set-Cookie value (applied twice: a cookie may carry two).
_COOKIE_DOMAIN = r"(?i)^(.*?);[[:blank:]]*domain[[:blank:]]*=[^;]*(.*)$"


@dataclass(frozen=True, slots=True)
class NativeProxyConfig:
    """Where the native proxy listens, where it falls back to, and its files.

    Args:
        bind_host: the address to listen on (the API's).
        port: the preview port.
        fallback: `host:port` of Hutch's own API port (the Python proxy behind it).
        directory: where the config, the map and the admin socket live (under the home).
        tls_pem: cert chain and key in one PEM file; None: plain HTTP.
        run_as: the user HAProxy drops to after start (Debian's package makes `haproxy`).
    """

    bind_host: str
    port: int
    fallback: str
    directory: Path
    tls_pem: Path | None = None
    run_as: str | None = None  # a user to drop to once the port, files and socket are open
    max_files: int = 0  # the process's open-file limit (0: HAProxy's own default)
    reserved_ports: frozenset[int] = frozenset()  # never reached through E2B's hosts
    threads: int = 1  # HAProxy's nbthread (HUTCH_PREVIEW_THREADS)

    @property
    def config_path(self) -> Path:
        return self.directory / "haproxy.cfg"

    @property
    def map_path(self) -> Path:
        return self.directory / "routes.map"

    @property
    def admin_socket(self) -> Path:
        return self.directory / "admin.sock"

    @property
    def unreachable_path(self) -> Path:
        return self.directory / "unreachable.http"

    @property
    def pid_path(self) -> Path:
        return self.directory / "haproxy.pid"


def route_key(host: str) -> str:
    """The map key of a preview host (`{port}-{sandbox_id}-{token}.{domain}`, no port)."""
    return hashlib.sha256(host.lower().encode()).hexdigest()


def route_key_by_header(sandbox_id: str, domain: str, token: str) -> str:
    """The map key of E2B's hosts of a sandbox (`{port}-{sandbox_id}.{domain}`, any port)
    with the traffic token the request carries in its header."""
    return hashlib.sha256(f"{sandbox_id}.{domain}|{token}".lower().encode()).hexdigest()


def route_value(address: str, port: int, sandbox_id: str) -> str:
    """The map value: where to connect (port 0: the one the host names), and whose activity
    the request counts as."""
    return f"{address}|{port}|{sandbox_id}"


def render_config(config: NativeProxyConfig) -> str:
    """HAProxy's config file for the preview port."""
    bind = f"{_bind_address(config.bind_host)}:{config.port}"
    if config.tls_pem is not None:
        bind += f" ssl crt {config.tls_pem} alpn h2,http/1.1"
    proto = "https" if config.tls_pem is not None else "http"
    # Everything is read or opened as root at start (restarts start afresh): the proxy that
    # parses every preview request needs no privilege after that.
    drop = f"\n    user {config.run_as}\n    group {config.run_as}" if config.run_as else ""
    if config.max_files:
        # Two sockets per proxied connection plus HAProxy's own reserve (pipes for splice):
        # above the limit, HAProxy refuses to start in master-worker mode.
        drop += f"\n    maxconn {max(64, (config.max_files - 200) // 3)}"
    return f"""\
# Generated by Hutch at every start; edits are lost. Routes live in {config.map_path.name},
# changed through the admin socket (`add map` / `del map`).
global
    stats socket {config.admin_socket} mode 600 level admin
    stats timeout 10s
    hard-stop-after 5s
    tune.ssl.default-dh-param 2048
    nbthread {config.threads}{drop}

defaults
    mode http
    timeout connect 5s
    timeout client {CLIENT_IDLE_S}s
    timeout client-fin 5s
    timeout http-request 30s
    timeout http-keep-alive {CLIENT_IDLE_S}s
    timeout server {SERVER_IDLE_S}s
    timeout tunnel {SERVER_IDLE_S}s
    option http-keep-alive
    option splice-auto

frontend preview
    bind {bind}
    # One Host, or no route at all (HAProxy takes :authority as Host for HTTP/2).
    http-request deny deny_status 400 if {{ req.hdr_cnt(host) gt 1 }}
    http-request set-var(txn.route) {_ROUTE_OF_HOST}({config.map_path})
    # (ACLs are evaluated where used: `routed` sees the latest txn.route.)
    acl routed var(txn.route) -m found
    acl has_token var(txn.traffic) -m found
    http-request set-var(txn.traffic) req.hdr({TRAFFIC_TOKEN_HEADER}) if !routed
    http-request set-var(txn.route) {_ROUTE_BY_HEADER}({config.map_path}) if !routed has_token
    # A route by header leaves the port to the host's first label: 1-65535, not reserved.
    http-request set-var(txn.port) var(txn.route),field(2,|)
    http-request set-var(txn.port) {_PORT_OF_HOST} if {{ var(txn.port) -m str 0 }}
    acl port_ok var(txn.port) -m int 1:65535
    http-request unset-var(txn.route) if !port_ok{_unroute_reserved(config)}
    use_backend sandbox if routed
    default_backend hutch

backend sandbox
    http-request set-dst var(txn.route),field(1,|)
    http-request set-dst-port var(txn.port)
    http-request track-sc0 var(txn.route),field(3,|) table {ACTIVITY_TABLE}
    # The client's credentials for Hutch are not the sandbox's business.
    http-request del-header authorization
    http-request del-header proxy-authorization
    http-request del-header {TRAFFIC_TOKEN_HEADER}
    http-request set-header x-forwarded-proto {proto}
    http-request set-header x-forwarded-host %[req.hdr(host)]
    option forwardfor
    # A cookie's Domain would reach every preview host (and the console): host-only cookies.
    http-response replace-header set-cookie {_COOKIE_DOMAIN} \\1\\2
    http-response replace-header set-cookie {_COOKIE_DOMAIN} \\1\\2
    # Nothing listens on the port: the Python proxy's 502, not HAProxy's own 503 page.
    errorfile 503 {config.unreachable_path}
    # A client's upstream connection stays its own (keep-alive to the sandbox as long as the
    # client's lasts). Shared, every route's idle connections went to one pool sized for the
    # one `server` line: once it held another port's, each request opened a new connection.
    http-reuse never
    server sandbox 0.0.0.0:0

backend hutch
    server hutch {config.fallback}

backend {ACTIVITY_TABLE}
    stick-table type string len 64 size 100k expire 1h store http_req_cnt,conn_cur
"""


def unreachable_response() -> bytes:
    """The 502 answer for a port nothing listens on (an `errorfile`: sent as it is)."""
    return _simple_response(502, UNREACHABLE_BODY)


def _unroute_reserved(config: NativeProxyConfig) -> str:
    if not config.reserved_ports:
        return ""
    ports = " ".join(str(p) for p in sorted(config.reserved_ports))
    return f"\n    http-request unset-var(txn.route) if {{ var(txn.port) -m int {ports} }}"


def _bind_address(host: str) -> str:
    # HAProxy takes the last colon as the port's: IPv6 addresses go without brackets.
    return host.strip("[]")
