"""Request bodies and query parameters, built once for the async and the sync client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote


def sandbox_create_body(
    *,
    id: str | None = None,
    image: str = "default",
    env: Mapping[str, str] | None = None,
    cpu: float = 1.0,
    memory_mb: int = 1024,
    disk_mb: int = 4096,
    pids_limit: int | None = None,
    network: str = "none",
    sleep_after: str | float | None = None,
    keep_alive: bool = False,
    runtime: str = "runc",
    labels: Mapping[str, str] | None = None,
    timeout: float | str | None = None,
    secrets: Mapping[str, str] | None = None,
    egress_secrets: Sequence[Mapping[str, str]] | None = None,
    network_allow: Sequence[str] = (),
    network_deny: Sequence[str] = (),
    start_entrypoint: bool = False,
    on_idle: str | None = None,
    on_timeout: str | None = None,
    snapshot: str | None = None,
) -> dict[str, Any]:
    """The JSON ``SandboxCreate`` body; ``pids_limit`` is left to the server when ``None``."""
    body: dict[str, Any] = {
        "id": id,
        "image": image,
        "env": dict(env or {}),
        "cpu": cpu,
        "memory_mb": memory_mb,
        "disk_mb": disk_mb,
        "network": network,
        "timeout": timeout,
        "sleep_after": sleep_after,
        "keep_alive": keep_alive,
        "runtime": runtime,
        "labels": dict(labels or {}),
    }
    if pids_limit is not None:
        body["pids_limit"] = pids_limit
    if secrets:
        body["secrets"] = dict(secrets)
    if egress_secrets:
        body["egress_secrets"] = [dict(rule) for rule in egress_secrets]
    if network_allow:
        body["network_allow"] = list(network_allow)
    if network_deny:
        body["network_deny"] = list(network_deny)
    if start_entrypoint:
        body["start_entrypoint"] = True
    if on_idle is not None:
        body["on_idle"] = on_idle
    if on_timeout is not None:
        body["on_timeout"] = on_timeout
    if snapshot is not None:
        body["snapshot"] = snapshot
    return body


def label_params(labels: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """``?label=k=v&label=k2=v2`` query parameters (the server ANDs them)."""
    return tuple(("label", f"{key}={value}") for key, value in (labels or {}).items())


def path_segment(value: str) -> str:
    """``value`` quoted to stay one path segment (an id cannot reach another route)."""
    if not value or value in (".", ".."):
        raise ValueError(f"{value!r} is not a valid id")
    return quote(value, safe="")
