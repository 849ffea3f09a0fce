"""Server configuration: one typed object, loaded from the environment only at the edge."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hutch.node import parse_pool_sizes, parse_upstreams

DEFAULT_HOME = Path("/var/lib/hutch")
DEFAULT_PORT = 7070


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
        log_level: of Hutch's own loggers (``HUTCH_LOG_LEVEL``); ``debug`` logs the time of
            each step of a sandbox's create.
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
    log_level: str = "info"
    max_build_context_bytes: int = 256 * 1024 * 1024
    default_timeout: float | None = 3600.0

    @property
    def image_root(self) -> Path:
        return self.images_dir if self.images_dir is not None else self.home / "images"

    @property
    def db_path(self) -> Path:
        return self.home / "hutch.db"

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
        if env.get("HUTCH_DEFAULT_TIMEOUT"):
            from hutch.server._durations import parse_duration

            values["default_timeout"] = parse_duration(env["HUTCH_DEFAULT_TIMEOUT"]) or None
        if env.get("HUTCH_LOG_LEVEL"):
            values["log_level"] = env["HUTCH_LOG_LEVEL"].lower()
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
