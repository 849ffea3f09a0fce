"""The API's models for teams and their quotas (`/v1/teams`)."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from hutch.server._models import Strict


def _seconds(value: float | str | None) -> float | None:
    from hutch.server._durations import parse_duration

    return None if value is None else parse_duration(value)


MIN_RATE = 0.01  # requests per second: one each 100 s at the slowest
MAX_RATE = 1_000_000
MAX_COUNT = 2**31 - 1  # PostgreSQL's INTEGER (a bigger one was a 500: no column holds it)


class QuotaInfo(BaseModel):
    """A team's limits; null: no limit (rates: the server's default)."""

    max_running: int | None = Field(default=None, description="sandboxes not stopped")
    max_cpu: float | None = Field(default=None, description="sum of their cpu")
    max_memory_mb: int | None = Field(default=None, description="sum of their memory_mb")
    max_disk_mb: int | None = Field(default=None, description="sum of disk_mb of all sandboxes")
    max_lifetime: float | None = Field(
        default=None, description="longest timeout, seconds (also the default timeout)"
    )
    max_snapshots: int | None = Field(default=None, description="snapshots kept")
    rate_per_second: float | None = Field(default=None, description="requests/s per key")
    rate_burst: int | None = Field(default=None, description="requests at once per key")


class QuotaUpdate(Strict):
    """Fields given are set (null: no limit); fields left out keep their value."""

    max_running: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    max_cpu: float | None = Field(default=None, ge=0, le=MAX_RATE)
    max_memory_mb: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    max_disk_mb: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    max_lifetime: float | str | None = Field(default=None, description="seconds or '1h'")
    max_snapshots: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    rate_per_second: float | None = Field(
        default=None, ge=MIN_RATE, le=MAX_RATE, description=f"{MIN_RATE:g} to {MAX_RATE:g}"
    )
    rate_burst: int | None = Field(default=None, ge=1, le=MAX_COUNT)

    _check_lifetime = field_validator("max_lifetime")(_seconds)


class TeamCreate(Strict):
    name: str = Field(min_length=1, max_length=63, description="a-z, 0-9, '-', '_'")
    quota: QuotaUpdate | None = None


class TeamInfo(BaseModel):
    name: str
    created_at: str
    quota: QuotaInfo


class TeamList(BaseModel):
    teams: list[TeamInfo]
