"""The node API's JSON for what is not plain JSON already: a `SandboxSpec` (the image goes by
id: every node has the same image store, filled by the same import/pull), usage figures and
bucket mounts."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from hutch.runtime import (
    BucketMount,
    BucketRequest,
    Credentials,
    Image,
    Limits,
    NetworkPolicy,
    SandboxSpec,
    SandboxUsage,
)

# A create's answer with the network's after it (`network_answer`): a line each, the first as
# soon as the container runs, the second once its network is attached (or what failed).
NETWORK_ANSWER_TYPE = "application/x-ndjson"


def spec_to_json(spec: SandboxSpec) -> dict[str, Any]:
    if spec.disk_from is not None:
        # A snapshot's disk is a subvolume of the API host's storage, not of a node's.
        raise ValueError(
            "snapshots, fork and restore are not served across nodes yet; create the sandbox "
            "without a snapshot"
        )
    return {
        "id": spec.id,
        "image_id": spec.image.id,
        "env": dict(spec.env),
        "limits": dataclasses.asdict(spec.limits),
        "runtime": spec.runtime,
        "hostname": spec.hostname,
        "network": {
            "internet": spec.network.internet,
            "allow": list(spec.network.allow),
            "deny": list(spec.network.deny),
        },
        "ca_certificates": list(spec.ca_certificates),
    }


def spec_from_json(data: dict[str, Any], image: Callable[[str], Image]) -> SandboxSpec:
    """Raises KeyError/TypeError/ValueError on a malformed spec, ImageNotFound on an image."""
    net = data["network"]
    return SandboxSpec(
        id=str(data["id"]),
        image=image(str(data["image_id"])),
        env={str(k): str(v) for k, v in dict(data["env"]).items()},
        limits=Limits(**data["limits"]),
        runtime=data["runtime"],
        hostname=str(data.get("hostname", "sandbox")),
        network=network_from_json(net),
        ca_certificates=tuple(str(c) for c in data.get("ca_certificates", ())),
    )


def network_to_json(policy: NetworkPolicy) -> dict[str, Any]:
    return {
        "internet": policy.internet,
        "allow": list(policy.allow),
        "deny": list(policy.deny),
        "hosts": [list(pair) for pair in policy.hosts],
    }


def network_from_json(data: dict[str, Any]) -> NetworkPolicy:
    return NetworkPolicy.of(
        "internet" if data["internet"] else "none",
        list(data["allow"]),
        list(data["deny"]),
        [(str(name), str(address)) for name, address in data.get("hosts", ())],
    )


def usage_to_json(usage: SandboxUsage) -> dict[str, Any]:
    return dataclasses.asdict(usage)


def usage_from_json(data: dict[str, Any]) -> SandboxUsage:
    return SandboxUsage(**data)


def bucket_request_to_json(request: BucketRequest) -> dict[str, Any]:
    """For the node API's request body: it carries the credentials (the node that mounts the
    bucket runs rclone with them; the node API is reached by API replicas only)."""
    return dataclasses.asdict(request)


def bucket_request_from_json(data: dict[str, Any]) -> BucketRequest:
    """Raises KeyError/TypeError/ValueError on a malformed body (a 400 at the node API)."""
    creds = data["credentials"]
    token = creds.get("session_token")
    return BucketRequest(
        bucket=str(data["bucket"]),
        mount_path=str(data["mount_path"]),
        endpoint=str(data["endpoint"]),
        credentials=Credentials(
            access_key_id=str(creds["access_key_id"]),
            secret_access_key=str(creds["secret_access_key"]),
            session_token=None if token is None else str(token),
        ),
        read_only=data.get("read_only") is True,
        prefix=None if data.get("prefix") is None else str(data["prefix"]),
        region=None if data.get("region") is None else str(data["region"]),
    )


def bucket_mount_to_json(mount: BucketMount) -> dict[str, Any]:
    return dataclasses.asdict(mount)  # no credentials: a BucketMount holds none


def bucket_mount_from_json(data: dict[str, Any]) -> BucketMount:
    return BucketMount(**data)
