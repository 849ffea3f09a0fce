"""A full disk under the home: 507 `insufficient_storage` with a clear message, nothing
half-done, the state consistent and the next start fine (a real server on a small tmpfs)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from hutch import Sandbox, StorageFull
from hutch.server._app import install_error_handlers
from hutch.server._errors import SandboxStartFailed
from hutch.server._storage_guard import storage_full
from tests._server import ServerProcess
from tests.conftest import _cleanup_home


def _full_sqlite_error(tmp_path: Path) -> sqlite3.OperationalError:
    db = sqlite3.connect(tmp_path / "tiny.db")
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 4")  # SQLite's own SQLITE_FULL, as on a full disk
    try:
        for _ in range(10):
            db.execute("INSERT INTO t VALUES (?)", (b"x" * 4096,))
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        db.close()
    raise AssertionError("the database did not fill up")


async def test_what_a_full_disk_raises_anywhere_answers_507(tmp_path: Path) -> None:
    full_db = _full_sqlite_error(tmp_path)
    enospc = OSError(28, "No space left on device")
    wrapped = SandboxStartFailed("sandbox sb-1 failed to start")
    wrapped.__cause__ = RuntimeError("runc create: write config.json: No space left on device")
    assert storage_full(full_db) and storage_full(enospc) and storage_full(wrapped)
    assert not storage_full(OSError(2, "No such file or directory"))
    assert not storage_full(SandboxStartFailed("out of addresses"))

    app = FastAPI()
    install_error_handlers(app)

    @app.post("/db")
    async def db() -> None:
        raise full_db

    @app.post("/start")
    async def start() -> None:
        raise wrapped

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/db", "/start"):
            r = await client.post(path)
            assert r.status_code == 507, r.text
            assert r.json()["error"]["code"] == "insufficient_storage"
            assert "disk is full" in r.json()["error"]["message"]


@pytest.fixture()
def tmpfs_home() -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="hutch-full-", dir="/var/tmp"))
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=400m,mode=0755", "tmpfs", str(home)], check=True
    )
    try:
        yield home
    finally:
        subprocess.run(["umount", "-l", str(home)], check=False)
        home.rmdir()


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


@pytest.mark.sandbox
def test_a_full_home_refuses_writes_with_507_and_corrupts_nothing(tmpfs_home: Path) -> None:
    srv = ServerProcess(tmpfs_home)
    base_env = srv.env
    srv.env = lambda: {**base_env(), "HUTCH_MIN_FREE_MB": "64"}  # type: ignore[method-assign]
    srv.start()
    try:
        sb = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
        sb.write_file("/tmp/kept.txt", "kept")
        filler = tmpfs_home / "filler"
        subprocess.run(
            ["fallocate", "-l", str(_free(tmpfs_home) - (20 << 20)), str(filler)], check=True
        )
        time.sleep(1.1)  # the free space is read at most once a second

        with srv.client() as http:
            r = http.post("/v1/sandboxes", json={})
            assert r.status_code == 507, r.text
            error = r.json()["error"]
            assert error["code"] == "insufficient_storage"
            assert "disk is full" in error["message"] and "destroy sandboxes" in error["message"]
            assert error["request_id"] == r.headers["x-request-id"]
            assert http.post("/v1/keys", json={"name": "k"}).status_code == 507
            assert http.get("/v1/sandboxes").status_code == 200  # reads go on
        with pytest.raises(StorageFull) as caught:
            Sandbox.create(base_url=srv.url, api_key=srv.api_key)
        assert isinstance(caught.value, OSError)
        listed = [s.id for s in Sandbox.list(base_url=srv.url, api_key=srv.api_key)]
        assert listed == [sb.id]  # the refused creates left nothing behind

        other = Sandbox.connect(sb.id, base_url=srv.url, api_key=srv.api_key)
        assert other.read_file("/tmp/kept.txt", text=True) == "kept"

        filler.unlink()
        time.sleep(1.1)
        again = Sandbox.create(base_url=srv.url, api_key=srv.api_key)
        again.destroy()
        srv.stop()
        db = sqlite3.connect(tmpfs_home / "hutch.db")
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        db.close()
        srv.start()  # the next start works, with the state as it was
        assert other.read_file("/tmp/kept.txt", text=True) == "kept"
        sb.destroy()
    finally:
        srv.stop()
        _cleanup_home(srv)
