"""Pure parts of bucket mounts: path rules, request checks, the rclone config and command."""

from __future__ import annotations

from pathlib import Path

import pytest

from hutch.cli._buckets import credentials_from
from hutch.runtime.container._bucket_spec import (
    BucketMount,
    BucketPathInvalid,
    BucketRequest,
    Credentials,
    check_request,
    mount_args,
    normalize_mount_path,
    rclone_config,
    request_from_config,
)
from hutch.sdk._async.buckets import mount_body

CREDS = Credentials("AKID", "s3cr3t")


def request(**kw: object) -> BucketRequest:
    base: dict[str, object] = dict(
        bucket="data", mount_path="/mnt/data", endpoint="http://127.0.0.1:9000", credentials=CREDS
    )
    base.update(kw)
    return BucketRequest(**base)  # type: ignore[arg-type]


def test_mount_paths() -> None:
    assert normalize_mount_path("/mnt//data/") == "/mnt/data"
    assert normalize_mount_path("/mnt/./data") == "/mnt/data"
    for bad in (
        "mnt/data",
        "",
        "/",
        "/mnt/../etc",
        "/proc",
        "/proc/x",
        "/dev/shm/x",
        "/.hutch",
        "/etc/hosts",
        "/sys",
    ):
        with pytest.raises(BucketPathInvalid):
            normalize_mount_path(bad)


def test_requests_cannot_inject_into_the_config() -> None:
    check_request(request(prefix="a/b"))
    for bad in (
        request(credentials=Credentials("AKID", "x\n[evil]\ntype = local")),
        request(credentials=Credentials("AK ID", "x")),
        request(region="us-east-1\nendpoint = http://evil"),
        request(endpoint="file:///etc"),
        request(endpoint="http://host\nx"),
        request(bucket="../etc"),
        request(prefix="../up"),
        request(prefix="a//b"),
    ):
        with pytest.raises(ValueError):
            check_request(bad)


def test_config_holds_credentials_and_the_command_line_does_not(tmp_path: Path) -> None:
    conf = rclone_config(request(credentials=Credentials("AKID", "s3cr3t", "tok")))
    assert "secret_access_key = s3cr3t" in conf and "session_token = tok" in conf
    record = BucketMount(
        slot="s1",
        mount_path="/mnt/data",
        bucket="data",
        endpoint="http://e",
        prefix="p",
        read_only=True,
        pid=0,
        pid_start="",
        created_at=0.0,
    )
    args = mount_args("rclone", record, tmp_path)
    joined = " ".join(args)
    assert "s3cr3t" not in joined and "AKID" not in joined
    assert "hutch:data/p" in args and "--read-only" in args and "--allow-other" in args
    assert args[args.index("--uid") + 1] == "1000000000"


def test_a_mounts_request_is_read_back_from_its_config_for_a_move() -> None:
    """What another node needs to mount it again (drain --move): the request as it was."""
    for req in (
        request(),
        request(
            credentials=Credentials("AKID", "s3cr3t", "tok"),
            read_only=True,
            prefix="a/b",
            region="eu-1",
        ),
    ):
        record = BucketMount(
            "slot", req.mount_path, req.bucket, req.endpoint, req.prefix, req.read_only, 0, "", 1.0
        )
        assert request_from_config(rclone_config(req), record) == req
    with pytest.raises(ValueError, match="lacks 'secret_access_key'"):
        request_from_config("[hutch]\naccess_key_id = AKID\n", record)


def test_sdk_body_accepts_cloudflare_spelling() -> None:
    body = mount_body(
        "b",
        "/m",
        endpoint="http://e",
        credentials={"accessKeyId": "a", "secretAccessKey": "s"},
        read_only=False,
        prefix=None,
        region=None,
    )
    assert body["credentials"] == {"access_key_id": "a", "secret_access_key": "s"}
    with pytest.raises(ValueError):
        mount_body(
            "b",
            "/m",
            endpoint="http://e",
            credentials={"password": "x"},
            read_only=False,
            prefix=None,
            region=None,
        )


def test_cli_credentials(tmp_path: Path) -> None:
    env = {"AWS_ACCESS_KEY_ID": "a", "AWS_SECRET_ACCESS_KEY": "s"}
    assert credentials_from(None, env) == {"access_key_id": "a", "secret_access_key": "s"}
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        credentials_from(None, {"AWS_ACCESS_KEY_ID": "a"})
    f = tmp_path / "c.json"
    f.write_text('{"access_key_id": "x", "secret_access_key": "y"}')
    assert credentials_from(f, {}) == {"access_key_id": "x", "secret_access_key": "y"}
