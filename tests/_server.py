"""A real `hutch serve` process for integration tests: start, kill -9, restart."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

HUTCH_BIN = Path(sys.executable).with_name("hutch")
SHARED_IMAGES = Path(os.environ.get("HUTCH_TEST_IMAGES", "/var/lib/hutch/images"))
TEST_KEY = "hk_test_" + "k" * 32
# The runtime of the sandboxes tests create without naming one (HUTCH_TEST_RUNTIME=gvisor runs
# the integration suite under gVisor); tests whose expectations differ under gVisor read it.
TEST_RUNTIME = os.environ.get("HUTCH_TEST_RUNTIME", "runc")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_refusal(home: Path, **settings: str) -> str:
    """`hutch serve` started with these HUTCH_* settings must stop at once, as an operator
    sees it: a non-zero exit and a message, no traceback. Returns its stderr."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HUTCH_HOME": str(home), **settings}
    r = subprocess.run(
        [str(HUTCH_BIN), "serve", "--port", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    return r.stderr


class ServerProcess:
    """One Hutch server with its own home; the image store is shared between test servers."""

    def __init__(
        self,
        home: Path,
        *,
        port: int | None = None,
        api_key: str = TEST_KEY,
        bind: str = "127.0.0.1",
        command: str = "serve",
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.command = command  # `serve`, or `api` (a replica on a shared database)
        self.extra_env = dict(extra_env or {})
        self.bind = bind
        self.port = port or free_port()
        self.api_key = api_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home / "server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def preview_port(self) -> int:
        """Where preview URLs point: the native proxy's port, else the API's own."""
        saved = self.home / "proxy" / "port"
        return int(saved.read_text()) if saved.exists() else self.port

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            HUTCH_HOME=str(self.home),
            HUTCH_IMAGES_DIR=str(SHARED_IMAGES),
            HUTCH_API_KEY=self.api_key,
            HUTCH_STORAGE_SIZE_GB="32",
        )
        # HUTCH_TEST_RUNTIME=gvisor: every sandbox a test creates without naming a runtime
        # runs under gVisor (see tests/README or .ci/run).
        if os.environ.get("HUTCH_TEST_RUNTIME"):
            env["HUTCH_DEFAULT_RUNTIME"] = os.environ["HUTCH_TEST_RUNTIME"]
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 60.0) -> float:
        """Start and wait until /healthz answers; returns the seconds that took."""
        self.home.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(HUTCH_BIN), self.command, "--host", self.bind, "--port", str(self.port)],
            env=self.env(),
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hutch serve exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        # NB: not left running: a leaked server holds its sandboxes, and its Popen's
        # ResourceWarning would fail whichever test runs next.
        self.proc.kill()
        self.proc.wait()
        raise TimeoutError(f"hutch serve did not answer: {self.log_path.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=60
        )


def runtime_ids(home: Path) -> dict[str, str]:
    """sandbox id -> runtime id of the sandboxes that came from a pool, from the server's db."""
    db = sqlite3.connect(f"file:{home / 'hutch.db'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT id, runtime_id FROM sandboxes WHERE runtime_id IS NOT NULL")
        return dict(rows.fetchall())
    finally:
        db.close()


def wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
