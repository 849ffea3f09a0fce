"""Warm pools configured wrong: a malformed HUTCH_WARM_POOLS stops `hutch serve` with a message
that says the form (no traceback); a pool of an image that is not stored stays empty without
holding up the server or the other pools."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from tests._server import ServerProcess, serve_refusal, wait_for
from tests.conftest import _cleanup_home


@pytest.mark.parametrize("pools", ["default", "busybox=x", "busybox=-1", "=2", "busybox=1,a"])
def test_a_malformed_pool_setting_stops_serve_with_the_form(tmp_path: Path, pools: str) -> None:
    stderr = serve_refusal(tmp_path / "home", HUTCH_WARM_POOLS=pools)
    assert "must look like IMAGE=COUNT" in stderr and "default=2" in stderr, stderr


class _PoolServer(ServerProcess):
    def env(self) -> dict[str, str]:
        return {**super().env(), "HUTCH_WARM_POOLS": "no-such-image=1,busybox=1"}


@pytest.mark.sandbox
def test_a_pool_of_a_missing_image_stays_empty_and_harms_no_other(busybox_image: str) -> None:
    srv = _PoolServer(Path(tempfile.mkdtemp(prefix="hutch-pool-config-", dir="/var/tmp")))
    srv.start()
    try:
        with srv.client() as http:

            def pools() -> dict[str, dict[str, int]]:
                return {p["image"]: p for p in http.get("/v1/pools").json()["pools"]}

            wait_for(lambda: pools()["busybox"]["ready"] == 1, 60)
            assert pools()["no-such-image"] == {"image": "no-such-image", "size": 1, "ready": 0}
            r = http.post("/v1/sandboxes", json={"image": "busybox"})
            assert r.status_code == 201 and r.json()["status"] == "running", r.text
            r = http.post("/v1/sandboxes", json={"image": "no-such-image"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "image_not_found"
            assert srv.proc is not None and srv.proc.poll() is None  # still serving
    finally:
        srv.stop()
        _cleanup_home(srv)
