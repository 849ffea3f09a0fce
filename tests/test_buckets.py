"""S3 bucket mounts against a real S3 server (`rclone serve s3` on loopback): the FUSE daemon
runs on the host, the files show up in the running sandbox, the credentials never do."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from hutch import BucketMountFailed, Conflict, InvalidRequest, NotFoundError, Sandbox
from hutch.runtime import Runtime, RuntimeConfig
from tests._server import ServerProcess
from tests.conftest import _cleanup_home
from tests.support.s3 import S3Server

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    yield server
    server.stop()


_n = 0


@pytest.fixture()
def bucket(s3: S3Server) -> str:
    global _n
    _n += 1
    name = f"bkt{_n}-{time.time_ns() % 100000}"
    s3.make_bucket(name)
    return name


def eventually(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def fuse_mounts() -> list[str]:
    return [
        ln for ln in Path("/proc/self/mountinfo").read_text().splitlines() if "hutch-bucket:" in ln
    ]


def test_mount_read_write_both_ways_and_listed(
    sdk_env: ServerProcess, s3: S3Server, bucket: str
) -> None:
    s3.put(f"{bucket}/hello.txt", "from the bucket")
    with Sandbox.create() as sb:
        m = sb.mount_bucket(bucket, "/mnt/data", endpoint=s3.endpoint, credentials=s3.credentials)
        assert m.mount_path == "/mnt/data" and not m.read_only
        sb.mount_bucket(bucket, "/mnt/second", endpoint=s3.endpoint, credentials=s3.credentials)
        assert [x.mount_path for x in sb.info().mounts] == ["/mnt/data", "/mnt/second"]

        assert sb.exec("cat /mnt/data/hello.txt").stdout == "from the bucket"
        # Files belong to sandbox root, and sandbox root may write.
        assert sb.exec("stat -c %u:%g /mnt/data/hello.txt").stdout.strip() == "0:0"
        r = sb.exec("echo written-inside > /mnt/data/out.txt")  # uploaded once closed
        assert r.exit_code == 0, r.stderr
        out = s3.root / bucket / "out.txt"
        assert eventually(lambda: out.exists() and out.read_text() == "written-inside\n", 10)

        # A symlink in the bucket cannot point the sandbox (or rclone) at a host path.
        # rclone runs on the host: had it followed the link, a host file is what it would
        # upload (or what the sandbox would read through the mount). One only the host has:
        host_only = Path(tempfile.mkdtemp(prefix="hutch-host-only-", dir="/var/tmp")) / "f"
        host_only.write_bytes(os.urandom(32).hex().encode())
        try:
            sb.exec(f"ln -s {host_only} /mnt/data/link")
            # A file written after the link is uploaded: by then the link had its chance too.
            sb.exec("echo after-link > /mnt/data/after-link.txt")
            after = s3.root / bucket / "after-link.txt"
            assert eventually(lambda: after.exists() and after.read_text() == "after-link\n", 10)
            secret = host_only.read_bytes()
            uploaded = [p for p in (s3.root / bucket).rglob("*") if p.is_file()]
            assert not [p for p in uploaded if secret in p.read_bytes()], uploaded
            assert secret.decode() not in sb.exec("cat /mnt/data/link 2>&1").stdout
        finally:
            shutil.rmtree(host_only.parent)

        # Another client writes: the sandbox sees it (after the directory cache expires).
        s3.rclone("copyto", "/etc/hostname", f"s3test:{bucket}/other/from-client.txt")
        assert eventually(lambda: sb.exec("cat /mnt/second/other/from-client.txt").exit_code == 0)

        sb.unmount_bucket("/mnt/second")
        assert [x.mount_path for x in sb.info().mounts] == ["/mnt/data"]
        assert "/mnt/second" not in sb.exec("cat /proc/self/mountinfo").stdout
        with pytest.raises(NotFoundError):
            sb.unmount_bucket("/mnt/second")
    # Destroy took the mounts and their rclone processes with it.
    assert not [ln for ln in fuse_mounts() if bucket in ln]


def test_files_closed_just_before_an_unmount_or_a_destroy_reach_the_bucket_whole(
    sdk_env: ServerProcess, s3: S3Server, bucket: str
) -> None:
    """rclone cancels its uploads under way when it is told to stop: a file closed just before
    an unmount, or a destroy, was lost (its cache went with the mount). Both wait for them."""
    with Sandbox.create() as sb:
        for path in ("/mnt/a", "/mnt/b"):
            sb.mount_bucket(bucket, path, endpoint=s3.endpoint, credentials=s3.credentials)
        # 48 MiB: its upload is still under way when the unmount comes right after the close.
        made = sb.exec(
            "head -c 48M /dev/urandom > /mnt/a/big && sha256sum < /mnt/a/big"
            " && echo small > /mnt/b/small"
        )
        assert made.exit_code == 0, made.stderr
        sb.unmount_bucket("/mnt/a")
        big = s3.root / bucket / "big"
        assert big.exists(), "the file closed before the unmount never reached the bucket"
        digest = made.stdout.split()[0]
        assert subprocess_sha256(big) == digest
        sb.exec("head -c 32M /dev/urandom > /mnt/b/last")
    # Destroyed right after the close: the upload was waited for too.
    last = s3.root / bucket / "last"
    assert last.exists() and last.stat().st_size == 32 * 1024 * 1024
    assert (s3.root / bucket / "small").read_text() == "small\n"


def subprocess_sha256(path: Path) -> str:
    import hashlib

    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def test_a_file_renamed_just_after_its_close_reaches_the_bucket_under_its_name(
    sdk_env: ServerProcess, s3: S3Server, bucket: str
) -> None:
    """write_file writes a temporary name and renames it onto the target, as an editor's or
    a tool's atomic save does. When the rename came while rclone uploaded the closed file, the
    upload failed and was never retried: the object never reached the bucket."""
    with Sandbox.create() as sb:
        sb.mount_bucket(bucket, "/mnt/data", endpoint=s3.endpoint, credentials=s3.credentials)
        root = s3.root / bucket

        def holds(key: str, text: str) -> Callable[[], bool]:
            return lambda: (root / key).exists() and (root / key).read_text() == text

        sb.write_file("/mnt/data/api.txt", "through the api")
        assert eventually(holds("api.txt", "through the api"), 10)
        sb.write_file("/mnt/data/api.txt", "replaced")  # onto an object already there
        assert eventually(holds("api.txt", "replaced"), 10)
        r = sb.exec("echo saved > /mnt/data/.save.tmp && mv /mnt/data/.save.tmp /mnt/data/saved")
        assert r.exit_code == 0, r.stderr
        assert eventually(holds("saved", "saved\n"), 10)
        # write_file's temporary name never reaches the bucket. (The shell's may: closed before
        # its rename, it can be uploaded meanwhile, and rclone may leave that object.)
        assert [p.name for p in root.iterdir() if ".hutch-" in p.name] == []


def test_read_only_and_prefix(sdk_env: ServerProcess, s3: S3Server, bucket: str) -> None:
    s3.put(f"{bucket}/a/b/inside.txt", "in prefix")
    s3.put(f"{bucket}/outside.txt", "outside")
    with Sandbox.create() as sb:
        sb.mount_bucket(
            bucket,
            "/data",
            endpoint=s3.endpoint,
            credentials=s3.credentials,
            read_only=True,
            prefix="a/b",
        )
        assert sb.exec("ls /data").stdout.split() == ["inside.txt"]
        assert sb.exec("cat /data/../outside.txt").exit_code != 0
        r = sb.exec("echo x > /data/new.txt")
        assert r.exit_code != 0 and "Read-only" in r.stderr
        # Sandbox root cannot make it writable again.
        assert sb.exec("mount -o remount,rw /data").exit_code != 0
        assert sb.exec("echo x > /data/new2.txt").exit_code != 0
        time.sleep(2)
        assert not (s3.root / bucket / "a" / "b" / "new.txt").exists()
        assert not (s3.root / bucket / "a" / "b" / "new2.txt").exists()
        # A prefix mount writes under the prefix.
        sb.mount_bucket(bucket, "/rw", endpoint=s3.endpoint, credentials=s3.credentials, prefix="p")
        assert sb.exec("echo y > /rw/y.txt").exit_code == 0
        assert eventually(lambda: (s3.root / bucket / "p" / "y.txt").exists())


def test_credentials_never_visible_inside(
    sdk_env: ServerProcess, s3: S3Server, bucket: str
) -> None:
    secret, key_id = s3.secret_access_key, s3.access_key_id
    with Sandbox.create(image="busybox") as sb:
        sb.mount_bucket(bucket, "/mnt/data", endpoint=s3.endpoint, credentials=s3.credentials)
        sb.exec("echo hi > /mnt/data/f && sync")
        for needle in (secret, key_id):
            # The needle is put together in a file: no command line may hold it whole.
            half = len(needle) // 2
            pat = "/dev/shm/pat"
            script = (
                f"printf %s%s '{needle[:half]}' '{needle[half:]}' > {pat}; "
                f"env | grep -cF -f {pat}; "
                f"cat /proc/*/cmdline /proc/*/environ 2>/dev/null | grep -cF -f {pat}; "
                f"grep -cF -f {pat} /proc/self/mountinfo /proc/self/mounts; "
                # NB: -F (fixed strings): a regex scan of every file took over 120 s under load.
                "for d in /* /.hutch /dev/shm; do case $d in /proc|/sys|/dev) ;; "
                f"*) grep -rlF -f {pat} $d 2>/dev/null | grep -v '^{pat}$';; esac; done; true"
            )
            r = sb.exec(script, timeout=240)
            counts = r.stdout.split()
            assert counts[:2] == ["0", "0"], r.stdout
            assert all(c.endswith(":0") for c in counts[2:4]), r.stdout
            assert counts[4:] == [], f"{needle!r} found in files: {counts[4:]}"


def test_bad_input(sdk_env: ServerProcess, s3: S3Server, bucket: str) -> None:
    with Sandbox.create() as sb:
        cases = [
            dict(
                bucket=bucket,
                endpoint=s3.endpoint,
                credentials={"access_key_id": s3.access_key_id, "secret_access_key": "wrong"},
            ),
            dict(bucket="no-such-bucket", endpoint=s3.endpoint, credentials=s3.credentials),
            dict(bucket=bucket, endpoint="http://127.0.0.1:9", credentials=s3.credentials),
        ]
        for case in cases:
            with pytest.raises(BucketMountFailed) as exc:
                sb.mount_bucket(mount_path="/mnt/bad", **case)  # type: ignore[arg-type]
            assert exc.value.code == "bucket_mount_failed"
            assert "wrong" not in str(exc.value) and s3.secret_access_key not in str(exc.value)
        assert sb.info().mounts == []
        assert "/mnt/bad" not in sb.exec("cat /proc/self/mountinfo").stdout
        assert not [ln for ln in fuse_mounts() if sb.id in ln or bucket in ln]

        with pytest.raises(InvalidRequest) as e422:
            sb.mount_bucket(bucket, "mnt/rel", endpoint=s3.endpoint, credentials=s3.credentials)
        assert e422.value.status == 422
        for bad in ("/proc/x", "/", "/.hutch"):
            with pytest.raises(InvalidRequest):
                sb.mount_bucket(bucket, bad, endpoint=s3.endpoint, credentials=s3.credentials)

        sb.mount_bucket(bucket, "/mnt/data", endpoint=s3.endpoint, credentials=s3.credentials)
        for busy in ("/mnt/data", "/mnt/data/sub", "/mnt"):
            with pytest.raises(Conflict) as e409:
                sb.mount_bucket(bucket, busy, endpoint=s3.endpoint, credentials=s3.credentials)
            assert e409.value.status == 409 and e409.value.code == "mount_path_busy"


def test_symlink_cannot_redirect_the_mount_to_the_host(
    sdk_env: ServerProcess, s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    host_dir = Path(tempfile.mkdtemp(prefix="hutch-victim-", dir="/var/tmp"))
    with Sandbox.create() as sb:
        assert sb.exec(f"ln -s {host_dir} /evil && mkdir -p /a && ln -s / /a/root").exit_code == 0
        for target in ("/evil/x", "/evil", "/a/root/etc/x"):
            with pytest.raises(InvalidRequest):
                sb.mount_bucket(bucket, target, endpoint=s3.endpoint, credentials=s3.credentials)
        assert list(host_dir.iterdir()) == []
        assert not [ln for ln in fuse_mounts() if bucket in ln]
    host_dir.rmdir()


@pytest.fixture()
def own_server(busybox_image: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(Path(tempfile.mkdtemp(prefix="hutch-s3crash-", dir="/var/tmp")))
    srv.start()
    yield srv
    srv.stop()
    _cleanup_home(srv)


def test_mounts_survive_a_server_crash_and_go_with_the_sandbox(
    own_server: ServerProcess, s3: S3Server, bucket: str
) -> None:
    s3.put(f"{bucket}/kept.txt", "still here")
    sb = Sandbox.create(base_url=own_server.url, api_key=own_server.api_key)
    sb.mount_bucket(bucket, "/mnt/a", endpoint=s3.endpoint, credentials=s3.credentials)
    sb.mount_bucket(bucket, "/mnt/b", endpoint=s3.endpoint, credentials=s3.credentials)
    own_server.kill9()
    # While the server is down, one rclone dies too: the restart mounts it again.
    slot = sorted((own_server.home / "buckets" / sb.id).iterdir())[1]
    os.kill(json.loads((slot / "mount.json").read_text())["pid"], signal.SIGKILL)
    own_server.start()
    sb = Sandbox.connect(sb.id, base_url=own_server.url, api_key=own_server.api_key)
    assert [m.mount_path for m in sb.info().mounts] == ["/mnt/a", "/mnt/b"]
    for path in ("/mnt/a", "/mnt/b"):
        assert eventually(lambda p=path: sb.exec(f"cat {p}/kept.txt").stdout == "still here")

    # A crash, and the sandbox is gone from the state: the start-up sweep unmounts it all.
    own_server.kill9()

    async def sweep() -> None:
        runtime = Runtime(RuntimeConfig(home=own_server.home, storage_size_gb=32))
        await runtime.setup()
        await runtime.sweep(keep=())

    asyncio.run(sweep())
    assert not [ln for ln in fuse_mounts() if bucket in ln]
    assert not (own_server.home / "buckets" / sb.id).exists()
    own_server.start()
    with httpx.Client(base_url=own_server.url) as c:
        assert c.get("/healthz").status_code == 200


def test_cli_mount_and_umount(sdk_env: ServerProcess, s3: S3Server, bucket: str) -> None:
    import subprocess
    import sys

    hutch = str(Path(sys.executable).with_name("hutch"))
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3.access_key_id,
        "AWS_SECRET_ACCESS_KEY": s3.secret_access_key,
    }
    with Sandbox.create() as sb:
        r = subprocess.run(
            [hutch, "mount", sb.id, bucket, "/mnt/cli", "--endpoint", s3.endpoint, "--read-only"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        info = subprocess.run(
            [hutch, "info", sb.id], env=env, capture_output=True, text=True, timeout=60
        )
        mounts = json.loads(info.stdout)["mounts"]
        assert mounts == [
            {
                "mount_path": "/mnt/cli",
                "bucket": bucket,
                "endpoint": s3.endpoint,
                "prefix": None,
                "read_only": True,
            }
        ]
        r = subprocess.run(
            [hutch, "umount", sb.id, "/mnt/cli"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert sb.info().mounts == []
        r = subprocess.run(
            [hutch, "umount", sb.id, "/mnt/cli"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1 and "bucket_not_mounted" in r.stderr
