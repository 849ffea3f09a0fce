"""Server configuration: one typed object, loaded from the environment only at the edge."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hutch.node import parse_pool_sizes, parse_upstreams
from hutch.server._cold_start_settings import (
    DEFAULT_COLD_START_WAIT,
    check_cold_start_settings,
    cold_start_env,
)
from hutch.server._setting_checks import check_seconds, duration_setting, whole_number

DEFAULT_HOME = Path("/var/lib/hutch")
DEFAULT_PORT = 7070
# HAProxy accepts up to its build's MAX_THREADS (64 in Debian's); more than the cores never helps.
MAX_PREVIEW_THREADS = 64
# An agent that has not answered in this long is not coming (HUTCH_AGENT_TIMEOUT).
MAX_AGENT_TIMEOUT = 600.0
_THREADS = "the native preview proxy's threads"


@dataclass(frozen=True)
class ServerConfig:
    """Everything `hutch serve` needs.

    Args:
        host: address to listen on.
        port: TCP port to listen on.
        home: state directory (SQLite, sandboxes, storage pool, images).
        api_key: a key accepted in addition to the stored ones (for automation). When unset and
            no key is stored yet, one is generated at first start and printed once.
        images_dir: where images are stored; defaults to ``home/images``. Tests point several
            homes at one image store so the default image is built once.
        max_body_bytes: requests with a larger body get 413.
        storage_size_gb: size of the sparse btrfs pool file that holds writable layers.
        build_default_image: build the default image at start if it is missing or stale.
        warm_pools: image name -> how many started sandboxes to keep ready for it
            (``HUTCH_WARM_POOLS="default=2,python:3.12=1"``).
        max_build_context_bytes: largest build context (``POST /v1/images/build``), as sent
            and unpacked (``HUTCH_MAX_BUILD_CONTEXT_BYTES``).
        default_timeout: lifetime in seconds of a sandbox created without ``timeout``
            (``HUTCH_DEFAULT_TIMEOUT``, e.g. ``"1h"`` or ``300``; ``0``/None: no limit).
        preview_proxy: ``native`` (HAProxy on its own port, the default when it is
            installed), ``python`` (previews on the API's port only) (``HUTCH_PREVIEW_PROXY``).
        preview_port: the native proxy's port (``HUTCH_PREVIEW_PORT``; 0: a free one, kept
            across restarts).
        preview_tls_cert, preview_tls_key: a (wildcard) certificate and its key for the
            preview port: HTTPS with HTTP/2 (``HUTCH_PREVIEW_TLS_CERT``/``_KEY``).
        preview_threads: the native proxy's threads (``HUTCH_PREVIEW_THREADS``, 1-64). One
            by default: one HAProxy thread relays tens of thousands of requests a second, and
            on a small host a second one competes with the sandboxes and itself for the cores
            (on 2 cores, 2 threads cost 10-25% more CPU per request: docs/preview.md).
        default_runtime: the runtime of a sandbox created without ``runtime``
            (``HUTCH_DEFAULT_RUNTIME``: ``runc`` or ``gvisor``).
        resolv_conf: the host resolver settings sandboxes copy (``HUTCH_RESOLV_CONF``); an
            internet sandbox may send DNS to its name servers even on a private address.
        ca_certificates_file: a file of extra CA certificates (PEM) every sandbox trusts
            (``HUTCH_CA_CERTIFICATES``), e.g. a TLS-inspecting proxy's CA or the host's whole
            bundle, /etc/ssl/certs/ca-certificates.crt.
        database_url: a PostgreSQL database (``postgresql://…``) shared by several API
            replicas (``HUTCH_DATABASE_URL``); unset: the SQLite file under ``home``.
        rate_per_second: requests per second each API key may make (a token bucket; a team's
            quota overrides it; ``HUTCH_RATE_LIMIT``; None or 0: no limit).
        rate_burst: the bucket's size (``HUTCH_RATE_BURST``; default: one second's worth).
        log_level: of Hutch's own loggers (``HUTCH_LOG_LEVEL``); ``debug`` logs the time of
            each step of a sandbox's create.
        cluster: serve as one API replica of a cluster (`hutch api`, docs/cluster.md): no
            runtime here; sandboxes are placed on the nodes of the store's `nodes` table
            (``HUTCH_CLUSTER=1``).
        node_token: the secret every node API call carries (``HUTCH_NODE_TOKEN``).
        database: the state database when not ``home/hutch.db`` (a cluster's shared one,
            ``HUTCH_DATABASE``).
        log_format: ``"text"`` or ``"json"`` (one object per line; ``HUTCH_LOG_FORMAT``).
        log_levels: levels of single loggers over ``log_level``, e.g. ``hutch.access`` (one
            line per request) or ``hutch.audit`` (who changed what)
            (``HUTCH_LOG_LEVELS="hutch.access=warning"``).
        cold_start_slots: how many sandboxes may be starting at once on this host
            (``HUTCH_COLD_START_SLOTS``; None: one per CPU, at least two).
        cold_start_wait: how long, in seconds, a create waits for a start slot before it
            answers 503 ``create_busy`` (``HUTCH_COLD_START_WAIT``, e.g. ``"40s"``).
        agent_connect_timeout: how long, in seconds, a start waits for a sandbox's agent to
            answer, and a request to connect to it (``HUTCH_AGENT_TIMEOUT``, e.g. ``"10s"``;
            a start that waits longer fails with 503 ``sandbox_start_failed``).
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    home: Path = DEFAULT_HOME
    api_key: str | None = None
    images_dir: Path | None = None
    max_body_bytes: int = 16 * 1024 * 1024
    storage_size_gb: int = 64
    build_default_image: bool = True
    agent_connect_timeout: float = 10.0
    warm_pools: dict[str, int] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)
    preview_domain: str = "localhost"
    network_subnet: str = "10.201.0.0/16"
    reserved_ports: frozenset[int] = frozenset()
    egress_port: int = 0  # the egress proxy's port; 0: any free one, kept across restarts
    egress_upstreams: dict[str, str] = field(default_factory=dict)  # tests: host -> http URL
    preview_proxy: str = "native"
    preview_port: int = 0
    preview_tls_cert: Path | None = None
    preview_tls_key: Path | None = None
    preview_threads: int = 1
    log_level: str = "info"
    resolv_conf: Path = Path("/etc/resolv.conf")
    ca_certificates_file: Path | None = None
    log_format: str = "text"
    # Writes are refused with 507 while the home's filesystem has less free (0: never).
    min_free_bytes: int = 256 * 1024 * 1024
    log_levels: dict[str, str] = field(default_factory=dict)
    max_build_context_bytes: int = 256 * 1024 * 1024
    default_timeout: float | None = 3600.0
    default_runtime: str = "runc"
    database_url: str | None = None
    rate_per_second: float | None = None
    rate_burst: int | None = None
    cluster: bool = False
    node_token: str | None = None
    database: Path | None = None
    cold_start_slots: int | None = None
    cold_start_wait: float = DEFAULT_COLD_START_WAIT

    def __post_init__(self) -> None:
        check_cold_start_settings(self.cold_start_slots, self.cold_start_wait)
        check_seconds("HUTCH_AGENT_TIMEOUT", self.agent_connect_timeout, MAX_AGENT_TIMEOUT, '"10s"')
        whole_number("HUTCH_PREVIEW_THREADS", self.preview_threads, MAX_PREVIEW_THREADS, _THREADS)

    @property
    def image_root(self) -> Path:
        return self.images_dir if self.images_dir is not None else self.home / "images"

    @property
    def db_path(self) -> Path:
        return self.database if self.database is not None else self.home / "hutch.db"

    @classmethod
    def from_env(cls, **overrides: object) -> ServerConfig:
        """Read ``HUTCH_*`` variables; explicit ``overrides`` (not None) win."""
        env = os.environ
        values: dict[str, object] = {}
        if "HUTCH_HOST" in env:
            values["host"] = env["HUTCH_HOST"]
        if "HUTCH_PORT" in env:
            values["port"] = int(env["HUTCH_PORT"])
        if "HUTCH_HOME" in env:
            values["home"] = Path(env["HUTCH_HOME"])
        if env.get("HUTCH_API_KEY"):
            values["api_key"] = env["HUTCH_API_KEY"]
        if "HUTCH_IMAGES_DIR" in env:
            values["images_dir"] = Path(env["HUTCH_IMAGES_DIR"])
        if "HUTCH_STORAGE_SIZE_GB" in env:
            values["storage_size_gb"] = int(env["HUTCH_STORAGE_SIZE_GB"])
        if "HUTCH_MAX_BODY_BYTES" in env:
            values["max_body_bytes"] = int(env["HUTCH_MAX_BODY_BYTES"])
        if env.get("HUTCH_WARM_POOLS"):
            values["warm_pools"] = parse_pool_sizes(env["HUTCH_WARM_POOLS"])
        if "HUTCH_PREVIEW_DOMAIN" in env:
            values["preview_domain"] = env["HUTCH_PREVIEW_DOMAIN"].lower().strip(".")
        if "HUTCH_NETWORK_SUBNET" in env:
            values["network_subnet"] = env["HUTCH_NETWORK_SUBNET"]
        if "HUTCH_EGRESS_PORT" in env:
            values["egress_port"] = int(env["HUTCH_EGRESS_PORT"])
        if env.get("HUTCH_EGRESS_UPSTREAMS"):
            values["egress_upstreams"] = parse_upstreams(env["HUTCH_EGRESS_UPSTREAMS"])
        if "HUTCH_MAX_BUILD_CONTEXT_BYTES" in env:
            values["max_build_context_bytes"] = int(env["HUTCH_MAX_BUILD_CONTEXT_BYTES"])
        if env.get("HUTCH_AGENT_TIMEOUT"):
            values["agent_connect_timeout"] = duration_setting(
                "HUTCH_AGENT_TIMEOUT", env["HUTCH_AGENT_TIMEOUT"]
            )
        if env.get("HUTCH_DEFAULT_TIMEOUT"):
            from hutch.server._durations import parse_duration

            values["default_timeout"] = parse_duration(env["HUTCH_DEFAULT_TIMEOUT"]) or None
        values.update(_preview_env(env))
        if env.get("HUTCH_DEFAULT_RUNTIME"):
            if env["HUTCH_DEFAULT_RUNTIME"] not in ("runc", "gvisor"):
                raise ValueError("HUTCH_DEFAULT_RUNTIME must be runc or gvisor")
            values["default_runtime"] = env["HUTCH_DEFAULT_RUNTIME"]
        if env.get("HUTCH_RESOLV_CONF"):
            values["resolv_conf"] = Path(env["HUTCH_RESOLV_CONF"])
        if env.get("HUTCH_CA_CERTIFICATES"):
            values["ca_certificates_file"] = Path(env["HUTCH_CA_CERTIFICATES"])
        if env.get("HUTCH_DATABASE_URL"):
            from hutch.server.store._open import check_database_url

            values["database_url"] = check_database_url(env["HUTCH_DATABASE_URL"])
        if env.get("HUTCH_RATE_LIMIT"):
            values["rate_per_second"] = float(env["HUTCH_RATE_LIMIT"])
        if env.get("HUTCH_RATE_BURST"):
            values["rate_burst"] = int(env["HUTCH_RATE_BURST"])
        if env.get("HUTCH_LOG_LEVEL"):
            values["log_level"] = env["HUTCH_LOG_LEVEL"].lower()
        if env.get("HUTCH_CLUSTER") == "1":
            values["cluster"] = True
        if env.get("HUTCH_NODE_TOKEN"):
            values["node_token"] = env["HUTCH_NODE_TOKEN"]
        if env.get("HUTCH_DATABASE"):
            values["database"] = Path(env["HUTCH_DATABASE"])
        if env.get("HUTCH_MIN_FREE_MB"):
            values["min_free_bytes"] = int(env["HUTCH_MIN_FREE_MB"]) * 1024 * 1024
        if env.get("HUTCH_LOG_FORMAT"):
            values["log_format"] = env["HUTCH_LOG_FORMAT"].lower()
            if values["log_format"] not in ("text", "json"):
                raise ValueError(
                    f"HUTCH_LOG_FORMAT must be text or json, not {env['HUTCH_LOG_FORMAT']!r}"
                )
        if env.get("HUTCH_LOG_LEVELS"):
            from hutch.server._logging import parse_log_levels

            values["log_levels"] = parse_log_levels(env["HUTCH_LOG_LEVELS"])
        values.update(cold_start_env(env))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _preview_env(env: os._Environ[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    if env.get("HUTCH_PREVIEW_PROXY"):
        values["preview_proxy"] = env["HUTCH_PREVIEW_PROXY"].lower()
    if env.get("HUTCH_PREVIEW_PORT"):
        values["preview_port"] = int(env["HUTCH_PREVIEW_PORT"])
    if env.get("HUTCH_PREVIEW_TLS_CERT"):
        values["preview_tls_cert"] = Path(env["HUTCH_PREVIEW_TLS_CERT"])
    if env.get("HUTCH_PREVIEW_TLS_KEY"):
        values["preview_tls_key"] = Path(env["HUTCH_PREVIEW_TLS_KEY"])
    if env.get("HUTCH_PREVIEW_THREADS"):
        values["preview_threads"] = whole_number(
            "HUTCH_PREVIEW_THREADS", env["HUTCH_PREVIEW_THREADS"], MAX_PREVIEW_THREADS, _THREADS
        )
    return values
