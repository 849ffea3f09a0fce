"""Request and response bodies at the API edge (pydantic; the wire contract is docs/api.md)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

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
    from hutch.runtime._nft import normalize_cidr

    if len(cidrs) > 256:
        raise ValueError("at most 256 CIDRs")
    return [normalize_cidr(c) for c in cidrs]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SandboxCreate(Strict):
    id: str | None = Field(default=None, description=SANDBOX_ID_RULE)
    image: str = "default"
    env: dict[str, str] = Field(default_factory=dict)
    cpu: float = Field(default=1.0, gt=0, le=64)
    memory_mb: int = Field(default=1024, ge=32, le=1024 * 1024)
    disk_mb: int = Field(default=4096, ge=16, le=16 * 1024 * 1024)
    pids_limit: int = Field(default=512, ge=16, le=1_000_000)
    network: Literal["none", "internet"] = "none"
    network_allow: list[str] = Field(default_factory=list, description="CIDRs always reachable")
    network_deny: list[str] = Field(default_factory=list, description="CIDRs never reachable")
    timeout: float | None = Field(default=None, gt=0, description="maximum lifetime, seconds")
    sleep_after: str | None = None
    keep_alive: bool = False
    runtime: Literal["runc", "gvisor"] = "runc"
    labels: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(
        default_factory=dict,
        description="environment variables for every process, stored encrypted and never "
        "returned (SandboxInfo lists only their names)",
    )
    start_entrypoint: bool = Field(
        default=False,
        description="start the image's ENTRYPOINT+CMD as the background process 'entrypoint' "
        "(422 image_has_no_entrypoint if it has none)",
    )

    _check_env = field_validator("env", "secrets")(_check_env)
    _check_cidrs = field_validator("network_allow", "network_deny")(_check_cidrs)

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
    status: Literal["creating", "running", "stopped", "failed"]
    image: str
    created_at: str
    expires_at: str | None
    cpu: float
    memory_mb: int
    disk_mb: int
    pids_limit: int
    network: str
    runtime: str
    labels: dict[str, str]
    env_keys: list[str]
    timeout: float | None = None
    secret_names: list[str] = Field(default_factory=list)
    mounts: list[BucketMountInfo] = []


class NetworkUpdate(Strict):
    network: Literal["none", "internet"]
    network_allow: list[str] = Field(default_factory=list)
    network_deny: list[str] = Field(default_factory=list)

    _check_cidrs = field_validator("network_allow", "network_deny")(_check_cidrs)


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


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=100)


class KeyInfo(BaseModel):
    id: str
    name: str
    prefix: str
    created_at: str


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
