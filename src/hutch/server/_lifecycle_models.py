"""Request and response bodies of the lifecycle routes (pause, timeout, snapshots, fork)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from hutch.server._durations import parse_duration
from hutch.server._models import BucketCredentials, SandboxCreate


class TimeoutUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    timeout: float | str = Field(
        description="the lifetime from now: seconds, or a duration such as '10m' or '1h30m'; "
        "0: no limit"
    )

    @field_validator("timeout")
    @classmethod
    def _check(cls, value: float | str) -> float:
        return parse_duration(value)

    @property
    def seconds(self) -> float:
        return float(self.timeout)


class SnapshotCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="a name to start sandboxes from it by (unique on the server)",
    )


class SnapshotInfo(BaseModel):
    id: str
    name: str | None
    sandbox_id: str
    image: str
    created_at: str


class SnapshotList(BaseModel):
    snapshots: list[SnapshotInfo]


class ForkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(default=1, ge=1, le=50)


class BackupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    bucket: str = Field(min_length=1, max_length=63)
    endpoint: str = Field(min_length=1, max_length=2048)
    credentials: BucketCredentials
    prefix: str | None = Field(default=None, max_length=1024)
    region: str | None = Field(default=None, max_length=64)


class BackupInfo(BaseModel):
    id: str
    sandbox_id: str
    bucket: str
    endpoint: str
    prefix: str | None
    parent_id: str | None = Field(description="the backup this one is incremental against")
    created_at: str


class BackupList(BaseModel):
    backups: list[BackupInfo]


class RestoreRequest(BackupCreate):
    backup_id: str = Field(min_length=1, max_length=64)
    sandbox: SandboxCreate | None = Field(
        default=None, description="options of the new sandbox (id, labels, timeout, ...)"
    )
