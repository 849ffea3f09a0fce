"""Request and response bodies at the API edge (pydantic; the wire contract is docs/api.md)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from hutch._wire.sandbox_options import (
    DEFAULTS,
    HELP,
    LIMITS,
    Network,
    OnIdle,
    OnTimeout,
    RuntimeName,
)
from hutch.server._internal_hosts import internal_host_reason

SANDBOX_ID_RULE = "1-63 characters of a-z, 0-9 and '-', starting and ending with a letter or digit"
SANDBOX_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for name, value in env.items():
        if not ENV_NAME_RE.match(name):
            raise ValueError(
                f"environment variable name {name!r} must match [A-Za-z_][A-Za-z0-9_]*"
            )
        if "\0" in value:
            raise ValueError(f"environment variable {name!r} contains a NUL byte")
    return env


def _check_cidrs(cidrs: list[str]) -> list[str]:
    from hutch.runtime import normalize_cidr

    if len(cidrs) > 256:
        raise ValueError("at most 256 CIDRs")
    return [normalize_cidr(c) for c in cidrs]


def _check_allow(entries: list[str]) -> list[str]:
    """CIDRs, or host names (resolved by the server: services/_network_names.py)."""
    from hutch.runtime import normalize_cidr

    if len(entries) > 256:
        raise ValueError("at most 256 CIDRs or host names")
    checked = []
    for entry in entries:
        name = entry.lower().rstrip(".")
        if HOSTNAME_RE.match(name) and "." in name and not name.replace(".", "").isdigit():
            checked.append(name)
            continue
        try:
            checked.append(normalize_cidr(entry))
        except ValueError as exc:
            raise ValueError(f"{exc}, or a host name such as 'pypi.org'") from None
    return checked


def _duration_seconds(value: float | str | None) -> float | None:
    from hutch.server._durations import parse_duration

    return None if value is None else parse_duration(value)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
HEADER_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
# Headers the egress proxy owns (framing, routing): never the injected one.
RESERVED_HEADERS = frozenset(
    "host content-length transfer-encoding connection keep-alive upgrade te trailer "
    "proxy-authorization proxy-authenticate proxy-connection".split()
)
# The base-URL variable a CLI reads, for the model hosts we know.
BASE_URL_ENVS = {"api.anthropic.com": "ANTHROPIC_BASE_URL", "api.openai.com": "OPENAI_BASE_URL"}


class EgressSecret(Strict):
    """One secret that Hutch's egress proxy injects as a header instead of giving it to the
    sandbox (docs/agents.md, "Keys that never enter the sandbox")."""

    host: str = Field(description="the upstream host, e.g. api.anthropic.com (HTTPS, port 443)")
    header: str = Field(description="the header to set, e.g. x-api-key or authorization")
    secret: str = Field(description="the name of one of the sandbox's `secrets`")
    prefix: str = Field(default="", max_length=64, description="e.g. 'Bearer ' for authorization")
    base_url_env: str | None = Field(
        default=None,
        description="variable given the proxy's URL for this host (default for known hosts, "
        "e.g. ANTHROPIC_BASE_URL for api.anthropic.com)",
    )

    @field_validator("host")
    @classmethod
    def _check_host(cls, host: str) -> str:
        host = host.lower().rstrip(".")
        if not HOSTNAME_RE.match(host):
            raise ValueError(f"host {host!r} must be a hostname such as api.anthropic.com")
        reason = internal_host_reason(host)
        if reason is not None:
            # The server itself sends the secret there, to a path the sandbox picks.
            raise ValueError(f"host {reason}; egress secrets go to public hosts only")
        return host

    @field_validator("header")
    @classmethod
    def _check_header(cls, header: str) -> str:
        if not HEADER_TOKEN_RE.match(header):
            raise ValueError(f"header {header!r} must be an HTTP header name such as x-api-key")
        if header.lower() in RESERVED_HEADERS:
            raise ValueError(f"header {header!r} is set by the proxy itself; use another")
        return header.lower()

    @field_validator("secret", "base_url_env")
    @classmethod
    def _check_env_name(cls, name: str | None) -> str | None:
        if name is not None and not ENV_NAME_RE.match(name):
            raise ValueError(
                f"{name!r} must be an environment variable name [A-Za-z_][A-Za-z0-9_]*"
            )
        return name

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, prefix: str) -> str:
        if any(c in prefix for c in "\r\n\0"):
            raise ValueError("prefix may not contain CR, LF or NUL")
        return prefix

    def url_env(self) -> str | None:
        return self.base_url_env or BASE_URL_ENVS.get(self.host)


class SandboxCreate(Strict):
    """A new sandbox's options: defaults, limits and help come from hutch._wire.sandbox_options."""

    id: str | None = Field(default=None, description=SANDBOX_ID_RULE)
    image: str = Field(default=DEFAULTS.image, description=HELP["image"])
    env: dict[str, str] = Field(default_factory=dict, description=HELP["env"])
    cpu: float = Field(
        default=DEFAULTS.cpu,
        gt=LIMITS["cpu"].gt,
        ge=LIMITS["cpu"].ge,
        le=LIMITS["cpu"].le,
        description=HELP["cpu"],
    )
    memory_mb: int = Field(
        default=DEFAULTS.memory_mb,
        gt=LIMITS["memory_mb"].gt,
        ge=LIMITS["memory_mb"].ge,
        le=LIMITS["memory_mb"].le,
        description=HELP["memory_mb"],
    )
    disk_mb: int = Field(
        default=DEFAULTS.disk_mb,
        gt=LIMITS["disk_mb"].gt,
        ge=LIMITS["disk_mb"].ge,
        le=LIMITS["disk_mb"].le,
        description=HELP["disk_mb"],
    )
    pids_limit: int = Field(
        default=DEFAULTS.pids_limit,
        gt=LIMITS["pids_limit"].gt,
        ge=LIMITS["pids_limit"].ge,
        le=LIMITS["pids_limit"].le,
        description=HELP["pids_limit"],
    )
    network: Network = Field(default=DEFAULTS.network, description=HELP["network"])
    network_allow: list[str] = Field(default_factory=list, description=HELP["network_allow"])
    network_deny: list[str] = Field(default_factory=list, description=HELP["network_deny"])
    timeout: float | str | None = Field(default=DEFAULTS.timeout, description=HELP["timeout"])
    sleep_after: float | str | None = Field(
        default=DEFAULTS.sleep_after, description=HELP["sleep_after"]
    )
    keep_alive: bool = Field(default=DEFAULTS.keep_alive, description=HELP["keep_alive"])
    on_idle: OnIdle = Field(default=DEFAULTS.on_idle, description=HELP["on_idle"])
    on_timeout: OnTimeout = Field(default=DEFAULTS.on_timeout, description=HELP["on_timeout"])
    snapshot: str | None = Field(default=DEFAULTS.snapshot, description=HELP["snapshot"])
    runtime: RuntimeName = Field(default=DEFAULTS.runtime, description=HELP["runtime"])
    labels: dict[str, str] = Field(default_factory=dict, description=HELP["labels"])
    secrets: dict[str, str] = Field(default_factory=dict, description=HELP["secrets"])
    egress_secrets: list[EgressSecret] = Field(
        default_factory=list, max_length=16, description=HELP["egress_secrets"]
    )
    ca_certificates: list[str] = Field(
        default_factory=list, max_length=64, description=HELP["ca_certificates"]
    )
    start_entrypoint: bool = Field(
        default=DEFAULTS.start_entrypoint, description=HELP["start_entrypoint"]
    )

    _check_env = field_validator("env", "secrets")(_check_env)
    _check_cidrs = field_validator("network_deny")(_check_cidrs)
    _check_allow = field_validator("network_allow")(_check_allow)
    _check_durations = field_validator("timeout", "sleep_after")(_duration_seconds)

    @property
    def lifetime(self) -> float | None:
        """`timeout` in seconds (checked and converted by the validator)."""
        return None if self.timeout is None else float(self.timeout)

    @property
    def idle_limit(self) -> float | None:
        """`sleep_after` in seconds."""
        return None if self.sleep_after is None else float(self.sleep_after)

    @model_validator(mode="after")
    def _check_egress(self) -> SandboxCreate:
        hosts: set[str] = set()
        for i, rule in enumerate(self.egress_secrets):
            if rule.secret not in self.secrets:
                raise ValueError(
                    f"egress_secrets[{i}].secret {rule.secret!r} is not one of the sandbox's "
                    "secrets: give its value in secrets as well"
                )
            if rule.host in hosts:
                raise ValueError(f"egress_secrets: host {rule.host!r} is given twice")
            hosts.add(rule.host)
            env = rule.url_env()
            if env is not None and (env in self.secrets or env in self.env):
                raise ValueError(
                    f"egress_secrets[{i}].base_url_env {env!r} is set by Hutch; do not set it "
                    "in env or secrets"
                )
        return self

    @field_validator("labels")
    @classmethod
    def _check_labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            if not LABEL_KEY_RE.match(key):
                raise ValueError(f"label key {key!r} must match {LABEL_KEY_RE.pattern}")
            if len(value) > 256:
                raise ValueError(f"label {key!r} value is longer than 256 characters")
        return labels


class SandboxInfo(BaseModel):
    id: str
    status: Literal["creating", "running", "paused", "stopped", "error", "failed"]
    status_reason: str | None = Field(
        default=None, description="why the sandbox is in its state (e.g. 'idle for 10m')"
    )
    image: str
    created_at: str
    expires_at: str | None
    team: str = Field(default="default", description="the team it belongs to")
    cpu: float
    memory_mb: int
    disk_mb: int
    pids_limit: int
    network: str
    runtime: str
    labels: dict[str, str]
    env_keys: list[str]
    timeout: float | None = None
    sleep_after: float | None = None
    keep_alive: bool = False
    on_idle: str = "pause"
    on_timeout: str = "destroy"
    secret_names: list[str] = Field(default_factory=list)
    mounts: list[BucketMountInfo] = []


class NetworkUpdate(Strict):
    network: Literal["none", "internet"]
    network_allow: list[str] = Field(default_factory=list)
    network_deny: list[str] = Field(default_factory=list)

    _check_cidrs = field_validator("network_deny")(_check_cidrs)
    _check_allow = field_validator("network_allow")(_check_allow)


class NetworkInfo(BaseModel):
    network: str
    network_allow: list[str]
    network_deny: list[str]
    address: str | None


class PortExpose(Strict):
    port: int
    name: str | None = Field(default=None, max_length=64)


class ExposedPort(BaseModel):
    port: int
    name: str | None
    url: str


class ExposedPortList(BaseModel):
    ports: list[ExposedPort]


class SandboxList(BaseModel):
    sandboxes: list[SandboxInfo]


class ExecRequest(Strict):
    command: str | None = Field(default=None, description="shell string (bash, or sh)")
    argv: list[str] | None = Field(default=None, description="program and arguments, no shell")
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    user: str | None = None
    timeout: float | None = Field(default=None, gt=0, le=7 * 24 * 3600)
    stdin: str | None = Field(default=None, description="base64 of the bytes fed to stdin")

    _check_env = field_validator("env")(_check_env)

    @model_validator(mode="after")
    def _one_of_command_or_argv(self) -> ExecRequest:
        if (self.command is None) == (self.argv is None):
            raise ValueError("give exactly one of 'command' (a shell string) or 'argv' (a list)")
        if self.argv is not None and not self.argv:
            raise ValueError("'argv' must name a program")
        for part in [self.command or "", *(self.argv or []), self.cwd or ""]:
            if "\0" in part:
                raise ValueError("command, argv and cwd must not contain NUL bytes")
        return self


class ExecResult(BaseModel):
    exit_code: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool
    oom_killed: bool = False


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=100)
    e2b: bool = Field(default=False, description="shape it as E2B's keys: e2b_ + 40 hex digits")
    team: str = Field(default="default", description="the team the key acts for")
    role: Literal["admin", "member"] = Field(
        default="member",
        description="member: its team's resources only; admin: every team, keys, teams, quotas",
    )
    expires_in: float | str | None = Field(
        default=None, description="the key stops working this long from now ('30d', seconds)"
    )
    expires_at: str | None = Field(
        default=None, description="or at this time (ISO 8601, e.g. 2027-01-01T00:00:00Z)"
    )

    _check_expires_in = field_validator("expires_in")(_duration_seconds)


class KeyInfo(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: str
    team: str = "default"
    role: str = "member"
    expires_at: str | None = None


class KeyCreated(KeyInfo):
    key: str


class KeyList(BaseModel):
    keys: list[KeyInfo]


class ImageInfo(BaseModel):
    name: str
    id: str
    size_bytes: int
    created_at: str


class ImageList(BaseModel):
    images: list[ImageInfo]


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: list[dict[str, object]] | None = None
    request_id: str | None = None  # also the X-Request-Id header: quote it to the operator


class ErrorBody(BaseModel):
    error: ErrorDetail


class BucketCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    access_key_id: str = Field(min_length=1, max_length=4096, alias="accessKeyId")
    secret_access_key: str = Field(min_length=1, max_length=4096, alias="secretAccessKey")
    session_token: str | None = Field(default=None, max_length=4096, alias="sessionToken")


class BucketMountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(min_length=1, max_length=63)
    mount_path: str = Field(min_length=1, max_length=4096, pattern=r"^/")
    endpoint: str = Field(min_length=1, max_length=2048)
    credentials: BucketCredentials
    read_only: bool = False
    prefix: str | None = Field(default=None, max_length=1024)
    region: str | None = Field(default=None, max_length=64)


class BucketMountInfo(BaseModel):
    mount_path: str
    bucket: str
    endpoint: str
    prefix: str | None
    read_only: bool


class BucketMountList(BaseModel):
    mounts: list[BucketMountInfo]
