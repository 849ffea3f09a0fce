"""An unexpected exception answers 500 with a request id, never with the exception's text."""

from __future__ import annotations

import logging

import httpx
import pytest
from fastapi import FastAPI

from hutch.server._app import install_error_handlers


async def test_a_500_carries_a_request_id_and_no_exception_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("cannot open /var/lib/hutch/sandboxes/sb-1/rootfs (uid 100000)")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with caplog.at_level(logging.ERROR, logger="hutch"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            r = await client.get("/boom")
    assert r.status_code == 500
    error = r.json()["error"]
    assert error["code"] == "internal"
    assert "/var/lib/hutch" not in r.text and "100000" not in r.text
    request_id = error["request_id"]
    assert request_id in error["message"] and r.headers["x-request-id"] == request_id
    # The details are in the server's log, under that id.
    logged = [rec for rec in caplog.records if request_id in rec.getMessage()]
    assert logged and "/var/lib/hutch/sandboxes" in str(logged[0].exc_info[1])
