"""S3 bucket mounts of a sandbox: request bodies and calls (the sandbox methods delegate here)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hutch.sdk._async.client import AsyncClient
from hutch.sdk._models import BucketMount

# Cloudflare's SDK spells these in camelCase; both spellings are accepted.
_CREDENTIAL_KEYS = {
    "access_key_id": "access_key_id",
    "accessKeyId": "access_key_id",
    "secret_access_key": "secret_access_key",
    "secretAccessKey": "secret_access_key",
    "session_token": "session_token",
    "sessionToken": "session_token",
}


def mount_body(
    bucket: str,
    mount_path: str,
    *,
    endpoint: str,
    credentials: Mapping[str, str],
    read_only: bool,
    prefix: str | None,
    region: str | None,
) -> dict[str, Any]:
    creds: dict[str, str] = {}
    for key, value in credentials.items():
        if key not in _CREDENTIAL_KEYS:
            raise ValueError(
                f"unknown credentials key {key!r}: use access_key_id, secret_access_key "
                "and optionally session_token"
            )
        creds[_CREDENTIAL_KEYS[key]] = value
    body: dict[str, Any] = {
        "bucket": bucket,
        "mount_path": mount_path,
        "endpoint": endpoint,
        "credentials": creds,
        "read_only": read_only,
    }
    if prefix is not None:
        body["prefix"] = prefix
    if region is not None:
        body["region"] = region
    return body


async def mount_bucket(client: AsyncClient, path: str, body: dict[str, Any]) -> BucketMount:
    return BucketMount.from_json(await client.request("POST", f"{path}/mounts", json=body))


async def unmount_bucket(client: AsyncClient, path: str, mount_path: str) -> None:
    await client.request("DELETE", f"{path}/mounts", params={"mount_path": mount_path})


async def list_mounts(client: AsyncClient, path: str) -> list[BucketMount]:
    body = await client.request("GET", f"{path}/mounts")
    return [BucketMount.from_json(m) for m in body["mounts"]]
