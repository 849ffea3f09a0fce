"""S3 bucket mounts of a sandbox (``sb.buckets``; the sandbox's ``*bucket*`` methods)."""

from __future__ import annotations

import builtins
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


class Buckets:
    """The S3 bucket mounts of one sandbox."""

    def __init__(self, client: AsyncClient, sandbox_path: str) -> None:
        self._client = client
        self._path = sandbox_path

    async def mount(
        self,
        bucket: str,
        mount_path: str,
        endpoint: str,
        credentials: Mapping[str, str],
        read_only: bool = False,
        prefix: str | None = None,
        *,
        region: str | None = None,
    ) -> BucketMount:
        """Mount an S3-compatible bucket at ``mount_path`` inside the running sandbox.

        The mount is made on the host: the credentials never enter the sandbox. A file written
        there is uploaded as soon as it is closed; objects other clients write show up within
        about two seconds.

        Args:
            bucket: The bucket's name.
            mount_path: An absolute directory path in the sandbox (created if missing).
            endpoint: The S3 endpoint URL, e.g. ``"https://s3.us-east-1.amazonaws.com"``.
            credentials: ``{"access_key_id": ..., "secret_access_key": ...}`` (and optionally
                ``"session_token"``; camelCase keys are accepted too).
            read_only: Refuse writes inside the sandbox.
            prefix: Mount only the keys under this prefix (e.g. ``"datasets/2024"``).
            region: The bucket's region, for servers that need it.

        Raises:
            BucketMountFailed: The bucket could not be reached (wrong credentials, unknown
                bucket, unreachable endpoint); nothing was mounted.
            Conflict: Something is already mounted there (``mount_path_busy``), or the sandbox
                is not running.
            InvalidRequest: ``mount_path`` is not absolute, or another value is malformed.
        """
        body = mount_body(
            bucket,
            mount_path,
            endpoint=endpoint,
            credentials=credentials,
            read_only=read_only,
            prefix=prefix,
            region=region,
        )
        data = await self._client.request("POST", f"{self._path}/mounts", json=body)
        return BucketMount.from_json(data)

    async def unmount(self, mount_path: str) -> None:
        """Unmount the bucket at ``mount_path``, after uploading what was written to it.

        Raises:
            NotFoundError: No bucket is mounted there (``bucket_not_mounted``).
        """
        params = {"mount_path": mount_path}
        await self._client.request("DELETE", f"{self._path}/mounts", params=params)

    async def list(self) -> builtins.list[BucketMount]:
        """The buckets mounted in this sandbox."""
        body = await self._client.request("GET", f"{self._path}/mounts")
        return [BucketMount.from_json(m) for m in body["mounts"]]
