"""Values the SDK returns: sandbox info, exec results and events, keys, images."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

SandboxStatus = Literal["creating", "running", "stopped", "failed"]
ExecEventType = Literal["stdout", "stderr", "exit"]


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _str_dict(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k): str(v) for k, v in value.items()}


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """A sandbox as the server describes it.

    Attributes:
        id: The sandbox id, e.g. ``"sb-1a2b3c4d5e6f"``.
        status: ``"creating"``, ``"running"``, ``"stopped"`` or ``"failed"``.
        image: The image it runs.
        created_at: When it was created.
        expires_at: When its lifetime ends (``None``: it lives until destroyed).
        cpu: CPUs it may use.
        memory_mb: Memory limit in MiB.
        disk_mb: Writable-layer limit in MiB.
        pids_limit: Maximum number of processes.
        network: ``"none"`` or ``"internet"``.
        runtime: ``"runc"`` or ``"gvisor"``.
        labels: Its labels.
        env_keys: Names of the environment variables set for it (values are not shown).
        secret_names: Names of its secrets (their values are never returned).
        status_reason: Why it is in its status (e.g. ``"idle for 10m"``), or ``None``.
        timeout: Its lifetime in seconds (``None``: no limit); see ``expires_at``.
        sleep_after: Idle seconds after which it sleeps (``None``: never).
        keep_alive: Whether it never sleeps for idleness.
        on_idle: ``"pause"`` or ``"stop"``: how it sleeps.
        on_timeout: ``"destroy"``, ``"stop"`` or ``"pause"``: what its lifetime's end does.
        team: The team it belongs to (an admin key lists every team's).
        raw: The server's JSON object as received, fields this SDK does not know included.
    """

    id: str
    status: str
    image: str
    created_at: datetime | None
    expires_at: datetime | None
    cpu: float
    memory_mb: int
    disk_mb: int
    pids_limit: int
    network: str
    runtime: str
    labels: dict[str, str]
    env_keys: list[str]
    secret_names: list[str] = field(default_factory=list)
    mounts: list[BucketMount] = field(default_factory=list)
    status_reason: str | None = None
    timeout: float | None = None
    sleep_after: float | None = None
    keep_alive: bool = False
    on_idle: str = "pause"
    on_timeout: str = "destroy"
    team: str = "default"
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxInfo:
        """Build from the server's ``SandboxInfo`` JSON object."""
        return cls(
            id=str(data["id"]),
            status=str(data.get("status", "")),
            image=str(data.get("image", "")),
            created_at=_parse_time(data.get("created_at")),
            expires_at=_parse_time(data.get("expires_at")),
            cpu=float(data.get("cpu") or 0.0),
            memory_mb=int(data.get("memory_mb") or 0),
            disk_mb=int(data.get("disk_mb") or 0),
            pids_limit=int(data.get("pids_limit") or 0),
            network=str(data.get("network", "")),
            runtime=str(data.get("runtime", "")),
            labels=_str_dict(data.get("labels")),
            env_keys=[str(k) for k in data.get("env_keys") or ()],
            secret_names=[str(k) for k in data.get("secret_names") or ()],
            mounts=[BucketMount.from_json(m) for m in data.get("mounts") or ()],
            status_reason=_opt_str(data.get("status_reason")),
            timeout=_opt_float(data.get("timeout")),
            sleep_after=_opt_float(data.get("sleep_after")),
            keep_alive=bool(data.get("keep_alive", False)),
            on_idle=str(data.get("on_idle") or "pause"),
            on_timeout=str(data.get("on_timeout") or "destroy"),
            team=str(data.get("team") or "default"),
            raw=dict(data),
        )


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True, slots=True)
class Backup:
    """A backup of a sandbox's disk in S3-compatible storage (``sb.backup(...)``); make a
    sandbox from it with ``Sandbox.restore(backup.id, ...)`` on this server or another.

    Attributes:
        id: The backup's id, e.g. ``"bk-1a2b3c4d5e6f"`` (its objects are ``<id>.json`` and
            ``<id>.btrfs.zst`` under the prefix).
        sandbox_id: The sandbox it was taken of.
        bucket: The bucket it was written to.
        endpoint: The S3 endpoint.
        prefix: The key prefix, or ``None``.
        parent_id: The backup it is incremental against (``None``: a full backup).
        created_at: When it was taken.
    """

    id: str
    sandbox_id: str
    bucket: str
    endpoint: str
    prefix: str | None
    parent_id: str | None
    created_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Backup:
        return cls(
            id=str(data["id"]),
            sandbox_id=str(data.get("sandbox_id", "")),
            bucket=str(data.get("bucket", "")),
            endpoint=str(data.get("endpoint", "")),
            prefix=_opt_str(data.get("prefix")),
            parent_id=_opt_str(data.get("parent_id")),
            created_at=_parse_time(data.get("created_at")),
        )


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A snapshot of a sandbox's disk and settings (``sb.snapshot()``); start new sandboxes
    from it with ``Sandbox.create(snapshot=snap.id)`` (or its ``name``).

    Attributes:
        id: The snapshot's id, e.g. ``"snap-1a2b3c4d5e6f"``.
        name: The name it was given, or ``None``.
        sandbox_id: The sandbox it was taken of (which may be gone since).
        image: The image under its disk.
        created_at: When it was taken.
    """

    id: str
    name: str | None
    sandbox_id: str
    image: str
    created_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Snapshot:
        return cls(
            id=str(data["id"]),
            name=_opt_str(data.get("name")),
            sandbox_id=str(data.get("sandbox_id", "")),
            image=str(data.get("image", "")),
            created_at=_parse_time(data.get("created_at")),
        )


@dataclass(frozen=True, slots=True)
class BucketMount:
    """An S3 bucket mounted in a sandbox (credentials are never returned).

    Attributes:
        mount_path: Where it is mounted inside the sandbox.
        bucket: The bucket's name.
        endpoint: The S3 endpoint URL.
        prefix: The key prefix the mount is limited to (``None``: the whole bucket).
        read_only: Whether writes are refused.
    """

    mount_path: str
    bucket: str
    endpoint: str
    prefix: str | None
    read_only: bool

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BucketMount:
        prefix = data.get("prefix")
        return cls(
            mount_path=str(data["mount_path"]),
            bucket=str(data["bucket"]),
            endpoint=str(data.get("endpoint", "")),
            prefix=None if prefix is None else str(prefix),
            read_only=bool(data.get("read_only")),
        )


@dataclass(frozen=True, slots=True)
class ExecResult:
    """How a command ended and what it wrote.

    Attributes:
        stdout_bytes: Everything the command wrote to stdout.
        stderr_bytes: Everything the command wrote to stderr.
        exit_code: Its exit status (127: command not found; 124: killed by its timeout;
            128+N: killed by signal N).
        duration: Seconds it ran, as measured in the sandbox.
        timed_out: Whether it was killed because it ran past its timeout.
        oom_killed: Whether the kernel killed it for using more memory than the sandbox
            has (exit code 137, usually with nothing on stderr).
    """

    stdout_bytes: bytes
    stderr_bytes: bytes
    exit_code: int
    duration: float
    timed_out: bool = False
    oom_killed: bool = False

    @property
    def stdout(self) -> str:
        """stdout decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        """stderr decoded as UTF-8 (invalid bytes become U+FFFD)."""
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def success(self) -> bool:
        """Whether the command exited with status 0."""
        return self.exit_code == 0 and not self.timed_out


@dataclass(frozen=True, slots=True)
class ExecEvent:
    """One event of a streamed command: a chunk of output, or its end.

    Attributes:
        type: ``"stdout"`` or ``"stderr"`` for output, ``"exit"`` for the end (always last).
        data: The output bytes (empty for ``"exit"``). A chunk may end inside a multi-byte
            UTF-8 character; decode the concatenation, not each chunk, if that matters.
        offset: Byte offset of ``data`` in its stream (stdout and stderr count separately).
        exit_code: The exit status, on the ``"exit"`` event only.
        timed_out: On the ``"exit"`` event: whether the command was killed by its timeout.
        duration: On the ``"exit"`` event: seconds the command ran.
        oom_killed: On the ``"exit"`` event: whether the kernel's OOM killer ended it.
    """

    type: ExecEventType
    data: bytes = b""
    offset: int = 0
    exit_code: int | None = None
    timed_out: bool = False
    duration: float | None = None
    oom_killed: bool = False


@dataclass(frozen=True, slots=True)
class ApiKey:
    """An API key as the server lists it.

    Attributes:
        id: The key's id (``"key-..."``), used to delete it.
        name: The name given when it was created.
        prefix: The first characters of the secret, to recognise it.
        created_at: When it was created.
        key: The secret itself: only set on the value :meth:`Client.create_key` returns,
            the one time the server shows it.
    """

    id: str
    name: str
    prefix: str
    created_at: datetime | None
    key: str | None = field(default=None, repr=False)
    team: str = "default"
    role: str = "member"
    expires_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ApiKey:
        """Build from the server's key JSON object."""
        key = data.get("key")
        return cls(
            id=str(data["id"]),
            name=str(data.get("name", "")),
            prefix=str(data.get("prefix", "")),
            created_at=_parse_time(data.get("created_at")),
            key=str(key) if key is not None else None,
            team=str(data.get("team", "default")),
            role=str(data.get("role", "member")),
            expires_at=_parse_time(data.get("expires_at")),
        )


@dataclass(frozen=True)
class Team:
    """A team: keys, sandboxes, snapshots and image names belong to one.

    Attributes:
        name: The team's name.
        created_at: When it was created.
        quota: Its limits by name (``max_running``, ``max_cpu``, ...); ``None``: no limit.
    """

    name: str
    created_at: datetime | None
    quota: Mapping[str, float | None]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Team:
        """Build from the server's team JSON object."""
        return cls(
            name=str(data["name"]),
            created_at=_parse_time(data.get("created_at")),
            quota=dict(data.get("quota") or {}),
        )


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """An image in the server's store.

    Attributes:
        name: The name sandboxes ask for, e.g. ``"default"``.
        id: Its content address.
        size_bytes: Size of its root filesystem.
        created_at: When it was stored.
    """

    name: str
    id: str
    size_bytes: int
    created_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageInfo:
        """Build from the server's image JSON object."""
        return cls(
            name=str(data.get("name", "")),
            id=str(data.get("id", "")),
            size_bytes=int(data.get("size_bytes") or 0),
            created_at=_parse_time(data.get("created_at")),
        )


@dataclass(frozen=True)
class ImageDetail:
    """An image with its config: what `inspect`, `pull`, `import` and `tag` return.

    Attributes:
        name: The name sandboxes ask for.
        id: Its content address.
        size_bytes: Size of its root filesystem.
        created_at: When it was stored.
        env: ``KEY=VALUE`` defaults of every command in it.
        working_dir: The default working directory.
        user: The default user.
        entrypoint: The image's ENTRYPOINT.
        cmd: The image's CMD.
        labels: The image's labels.
        sandboxes: How many sandboxes run on it.
    """

    name: str
    id: str
    size_bytes: int
    created_at: datetime | None
    env: list[str]
    working_dir: str
    user: str
    entrypoint: list[str]
    cmd: list[str]
    labels: dict[str, str]
    sandboxes: int

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ImageDetail:
        """Build from the server's image detail JSON object."""
        config = data.get("config") or {}
        return cls(
            name=str(data.get("name", "")),
            id=str(data.get("id", "")),
            size_bytes=int(data.get("size_bytes") or 0),
            created_at=_parse_time(data.get("created_at")),
            env=[str(e) for e in config.get("env") or []],
            working_dir=str(config.get("working_dir", "/")),
            user=str(config.get("user", "root")),
            entrypoint=[str(e) for e in config.get("entrypoint") or []],
            cmd=[str(e) for e in config.get("cmd") or []],
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
            sandboxes=int(data.get("sandboxes") or 0),
        )


@dataclass(frozen=True, slots=True)
class MetricsPoint:
    """One sample of a sandbox's CPU and memory (see :class:`SandboxMetrics`)."""

    timestamp: float
    cpu_percent: float
    memory_used_bytes: int


@dataclass(frozen=True, slots=True)
class SandboxMetrics:
    """What a sandbox uses now (see :meth:`Sandbox.metrics`).

    Attributes:
        timestamp: Unix time of the reading.
        cpu_percent: Share of the sandbox's CPU limit in use, 0-100.
        cpu_count: The sandbox's CPU limit, in CPUs.
        cpu_seconds: CPU time its processes have used since it started.
        memory_used_bytes: Memory charged to it (page cache included, as its limit counts).
        memory_limit_bytes: Its memory limit.
        disk_used_bytes: Its writable layer's size, or ``None`` if it cannot be read.
        disk_limit_bytes: Its disk quota, or ``None``.
        net_rx_bytes: Bytes it has received since it started.
        net_tx_bytes: Bytes it has sent since it started.
        pids: Its processes and threads now.
        pids_limit: How many it may have.
        history: CPU and memory every 15 seconds over the last 15 minutes, oldest first.
    """

    timestamp: float
    cpu_percent: float
    cpu_count: float
    cpu_seconds: float
    memory_used_bytes: int
    memory_limit_bytes: int
    disk_used_bytes: int | None
    disk_limit_bytes: int | None
    net_rx_bytes: int
    net_tx_bytes: int
    pids: int
    pids_limit: int
    history: list[MetricsPoint] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SandboxMetrics:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["history"] = [MetricsPoint(**p) for p in data.get("history") or []]
        return cls(**fields)
