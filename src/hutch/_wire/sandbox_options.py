"""The options of a new sandbox, written once: names, types, defaults, limits and help.

`Sandbox.create(image, **options)` and `get_or_create` take them as typed keywords
(`SandboxOptions`), the server's `SandboxCreate` model takes its defaults, limits and field
descriptions from here, and so do `hutch create`'s flags and the MCP `create_sandbox` tool.
tests/test_sandbox_options.py fails when the API model and this list differ. Stdlib only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict, get_args

Network = Literal["none", "internet"]
RuntimeName = Literal["runc", "gvisor"]
OnIdle = Literal["pause", "stop"]
OnTimeout = Literal["destroy", "stop", "pause"]


class SandboxOptions(TypedDict, total=False):
    """Options of a new sandbox, all optional: one not given, or ``None``, gets the server's
    default (`DEFAULTS`; collections default to empty).

    Attributes:
        env: Environment variables for every command in the sandbox.
        cpu: CPUs it may use, from 1/16 (0.0625), at most the host's cores (more raises
            ``InvalidRequest``, code ``cpu_above_host``); the team's quota may allow less
            (``QuotaExceeded``).
        memory_mb: Memory limit in MiB.
        disk_mb: Limit of what it may write to its filesystem, in MiB.
        pids_limit: Maximum number of processes.
        network: ``"none"`` (no network) or ``"internet"`` (outbound access).
        network_allow: CIDRs (or single addresses) the sandbox may reach even with
            ``network="none"`` (e.g. ``["10.0.0.0/8"]``), and private or host networks that
            ``"internet"`` (the public internet only) does not reach; the same as
            ``set_network``'s ``allow``. Host names (``"pypi.org"``) too: the server
            resolves them and allows their addresses (``network_name_unresolved`` if not).
        network_deny: CIDRs it may never reach; wins over ``network_allow``.
        timeout: Maximum lifetime, in seconds or as a duration (``"1h"``); ``None`` takes the
            server's default lifetime, ``0`` lives until destroyed.
        sleep_after: Idle time after which it sleeps (``"10m"``, or seconds); ``None`` for
            never.
        keep_alive: Never sleep for idleness.
        on_idle: What sleeping means: ``"pause"`` (frozen, memory kept) or ``"stop"``
            (processes ended, disk kept).
        on_timeout: What happens when its lifetime ends: ``"destroy"``, ``"stop"`` or
            ``"pause"``.
        snapshot: Start from this snapshot's disk and settings (see ``Sandbox.snapshot``).
        runtime: ``"runc"``, or ``"gvisor"`` for a hardened kernel boundary.
        labels: Labels to find it by with ``Sandbox.list``.
        secrets: Environment variables for every process (e.g. ``{"ANTHROPIC_API_KEY":
            ...}``), stored encrypted by the server and never returned by any API. Any process
            in the sandbox can read them: give only what its code may see.
        egress_secrets: Secrets injected as a header by Hutch's egress proxy instead, e.g.
            ``[{"host": "api.anthropic.com", "header": "x-api-key", "secret":
            "ANTHROPIC_API_KEY"}]`` (the value stays in ``secrets``): the sandbox gets the
            placeholder ``hutch-egress-injected`` and ``ANTHROPIC_BASE_URL`` pointing at the
            proxy, never the key. Optional keys: ``prefix`` (``"Bearer "``), ``base_url_env``.
            See docs/agents.md.
        ca_certificates: Extra CA certificates (PEM text) the sandbox trusts, e.g. a company
            proxy's: appended to its ``/etc/ssl/certs/ca-certificates.crt`` (on top of any the
            server adds to every sandbox), with ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``,
            ``CURL_CA_BUNDLE``, ``PIP_CERT`` and ``NODE_EXTRA_CA_CERTS`` pointing at it.
            Anything but certificates raises ``InvalidRequest``
            (``invalid_ca_certificate``).
        start_entrypoint: Start the image's ENTRYPOINT+CMD (what ``docker run IMAGE`` runs) as
            the background process ``"entrypoint"``, with the image's user, env and working
            directory. An image without one raises ``InvalidRequest``
            (``image_has_no_entrypoint``).
    """

    env: Mapping[str, str] | None
    cpu: float
    memory_mb: int
    disk_mb: int
    pids_limit: int | None
    network: str
    network_allow: Sequence[str]
    network_deny: Sequence[str]
    timeout: float | str | None
    sleep_after: str | float | None
    keep_alive: bool
    on_idle: str
    on_timeout: str
    snapshot: str | None
    runtime: str
    labels: Mapping[str, str] | None
    secrets: Mapping[str, str] | None
    egress_secrets: Sequence[Mapping[str, str]] | None
    ca_certificates: Sequence[str] | None
    start_entrypoint: bool


OPTION_NAMES: frozenset[str] = frozenset(SandboxOptions.__annotations__)


@dataclass(frozen=True)
class SandboxDefaults:
    """What a sandbox gets for an option not given (the collections default to empty)."""

    image: str = "default"
    cpu: float = 1.0
    memory_mb: int = 1024
    disk_mb: int = 4096
    pids_limit: int = 512
    network: Network = "none"
    timeout: float | None = None
    sleep_after: str | None = None
    keep_alive: bool = False
    on_idle: OnIdle = "pause"
    on_timeout: OnTimeout = "destroy"
    snapshot: str | None = None
    runtime: RuntimeName = "runc"
    start_entrypoint: bool = False


DEFAULTS = SandboxDefaults()
NETWORKS: tuple[str, ...] = get_args(Network)
RUNTIMES: tuple[str, ...] = get_args(RuntimeName)


@dataclass(frozen=True)
class Range:
    """The values the API accepts for a number: above `gt` or from `ge`, up to `le`."""

    le: float
    ge: float | None = None
    gt: float | None = None


# The smallest CPU share is Cloudflare's smallest instance (1/16 of a vCPU). Below it a sandbox
# is not usable: at 1e-6 (the kernel's floor, a 1 ms quota per 100 ms) a Python interpreter took
# 70 s to start, which a client sees as a hang (the API fuzzer found it).
MIN_CPU = 1 / 16

LIMITS: Mapping[str, Range] = {
    "cpu": Range(ge=MIN_CPU, le=64),
    "memory_mb": Range(ge=32, le=1024 * 1024),
    "disk_mb": Range(ge=16, le=16 * 1024 * 1024),
    "pids_limit": Range(ge=16, le=1_000_000),
}

# One line each: the API model's field descriptions and the CLI's help.
HELP: Mapping[str, str] = {
    "image": "the image to run",
    "env": "environment variables for every command",
    "cpu": "CPUs it may use (fractions from 1/16 = 0.0625; at most the host's cores)",
    "memory_mb": "memory limit in MiB",
    "disk_mb": "limit of what it may write to its filesystem, in MiB",
    "pids_limit": "maximum number of processes",
    "network": "none (no network) or internet (outbound access)",
    "network_allow": "CIDRs or host names always reachable (also private ones, which internet "
    "alone is not)",
    "network_deny": "CIDRs never reachable",
    "timeout": "lifetime (seconds, or a duration such as '1h'); unset: the server's default; "
    "0: no limit",
    "sleep_after": "idle time after which the sandbox sleeps ('10m', or seconds); unset: never",
    "keep_alive": "never sleep for idleness",
    "on_idle": "what sleeping means: pause (frozen, memory kept) or stop (disk kept)",
    "on_timeout": "at the end of its lifetime: destroy, stop or pause",
    "snapshot": "start from this snapshot's disk and settings (its image)",
    "runtime": "runc, or gvisor for a hardened kernel boundary",
    "labels": "labels to find it by",
    "secrets": "environment variables for every process, stored encrypted and never "
    "returned (SandboxInfo lists only their names)",
    "egress_secrets": "secrets injected as a header by Hutch's egress proxy: they never enter "
    "the sandbox, which gets a placeholder and a base-URL variable instead",
    "ca_certificates": "extra CA certificates (PEM) the sandbox trusts, added to its system "
    "bundle and to SSL_CERT_FILE, REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, PIP_CERT and "
    "NODE_EXTRA_CA_CERTS",
    "start_entrypoint": "start the image's ENTRYPOINT+CMD as the background process "
    "'entrypoint' (422 image_has_no_entrypoint if it has none)",
}
