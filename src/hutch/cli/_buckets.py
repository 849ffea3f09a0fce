"""``hutch mount`` / ``hutch umount``: S3 buckets in a running sandbox.

Credentials never go on the command line (shell history, ``ps``): they come from the usual
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` (/ ``AWS_SESSION_TOKEN``) environment
variables, or from a JSON file given with ``--credentials-file``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

from hutch.cli._connect import client_for as _client
from hutch.cli._output import print_error

Handler = Callable[[argparse.Namespace], int]
Command = Callable[..., argparse.ArgumentParser]

_ENV = {
    "access_key_id": "AWS_ACCESS_KEY_ID",
    "secret_access_key": "AWS_SECRET_ACCESS_KEY",
    "session_token": "AWS_SESSION_TOKEN",
}


def add_bucket_commands(command: Command) -> None:
    p = command(
        "mount",
        cmd_mount,
        "mount an S3 bucket into a running sandbox",
        epilog="credentials: $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY (and\n"
        "$AWS_SESSION_TOKEN), or --credentials-file with a JSON object holding\n"
        "access_key_id, secret_access_key (and session_token).\n\n"
        "example:\n  hutch mount sb-1a2b3c4d5e6f datasets /mnt/data "
        "--endpoint https://s3.example.com --read-only",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("bucket", metavar="BUCKET")
    p.add_argument("mount_path", metavar="PATH", help="absolute path inside the sandbox")
    p.add_argument("--endpoint", required=True, help="the S3 endpoint URL")
    p.add_argument("--read-only", action="store_true", help="refuse writes inside the sandbox")
    p.add_argument("--prefix", help="mount only the keys under this prefix")
    p.add_argument("--region", help="the bucket's region, if the server needs one")
    p.add_argument("--credentials-file", type=Path, metavar="FILE", help="JSON credentials")

    p = command("umount", cmd_umount, "unmount a bucket from a sandbox")
    p.add_argument("id", metavar="ID")
    p.add_argument("mount_path", metavar="PATH")


def credentials_from(path: Path | None, environ: dict[str, str]) -> dict[str, str]:
    """The credentials from `path` (JSON) or else the AWS_* environment variables."""
    if path is not None:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a JSON object")
        return {str(k): str(v) for k, v in data.items() if v is not None}
    creds = {key: environ[var] for key, var in _ENV.items() if environ.get(var)}
    missing = [_ENV[k] for k in ("access_key_id", "secret_access_key") if k not in creds]
    if missing:
        raise ValueError(f"set {' and '.join(missing)}, or pass --credentials-file")
    return creds


def cmd_mount(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    try:
        creds = credentials_from(args.credentials_file, dict(os.environ))
    except (OSError, ValueError) as exc:
        print_error(f"credentials: {exc}")
        return 2
    with _client(args) as client:
        mount = Sandbox(args.id, client=client).mount_bucket(
            args.bucket,
            args.mount_path,
            endpoint=args.endpoint,
            credentials=creds,
            read_only=args.read_only,
            prefix=args.prefix,
            region=args.region,
        )
    print(mount.mount_path)
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        Sandbox(args.id, client=client).unmount_bucket(args.mount_path)
    return 0
