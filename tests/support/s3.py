"""A real S3 server for tests and benchmarks: `rclone serve s3` on loopback over a directory."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

RCLONE = str(Path(sys.executable).with_name("rclone"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class S3Server:
    """Buckets are the top-level directories of `root`; objects are files below them."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        # `host`: another local address when the clients are in other network namespaces
        # (the nodes of a local cluster reach its bridge's address, not this loopback).
        self.host = host
        self.root = Path(tempfile.mkdtemp(prefix="hutch-s3-", dir="/var/tmp"))
        self.port = _free_port()
        self.access_key_id = "HUTCHTESTKEY" + os.urandom(4).hex().upper()
        self.secret_access_key = "hutch-secret-" + os.urandom(12).hex()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def credentials(self) -> dict[str, str]:
        return {"access_key_id": self.access_key_id, "secret_access_key": self.secret_access_key}

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                RCLONE,
                "serve",
                "s3",
                "--addr",
                f"{self.host}:{self.port}",
                "--auth-key",
                f"{self.access_key_id},{self.secret_access_key}",
                "--config",
                "/dev/null",
                "--dir-cache-time",
                "0s",
                str(self.root),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.endpoint, timeout=0.5)
                return
            except httpx.HTTPError:
                time.sleep(0.05)
        raise TimeoutError("rclone serve s3 did not start")

    def make_bucket(self, name: str) -> Path:
        self.rclone("mkdir", f"s3test:{name}")
        return self.root / name

    def put(self, key: str, text: str) -> None:
        """Write object `bucket/key` through the S3 API."""
        subprocess.run(
            [RCLONE, "rcat", f"s3test:{key}"],
            input=text.encode(),
            env=self.rclone_env(),
            capture_output=True,
            timeout=60,
            check=True,
        )

    def rclone_env(self) -> dict[str, str]:
        """Environment for an `rclone` client of this server as remote `s3test:`."""
        return {
            **os.environ,
            "RCLONE_CONFIG": "/dev/null",
            "RCLONE_CONFIG_S3TEST_TYPE": "s3",
            "RCLONE_CONFIG_S3TEST_PROVIDER": "Other",
            "RCLONE_CONFIG_S3TEST_ENDPOINT": self.endpoint,
            "RCLONE_CONFIG_S3TEST_ACCESS_KEY_ID": self.access_key_id,
            "RCLONE_CONFIG_S3TEST_SECRET_ACCESS_KEY": self.secret_access_key,
            "RCLONE_CONFIG_S3TEST_FORCE_PATH_STYLE": "true",
        }

    def rclone(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [RCLONE, *args],
            env=self.rclone_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)
