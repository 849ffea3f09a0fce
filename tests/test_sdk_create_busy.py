"""The SDK sends a create again when the server answers 503 create_busy (it made nothing:
too many sandboxes were starting), after the server's Retry-After; other 503s it raises."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from hutch import APIError, Sandbox


class BusyServer:
    """Answers the first `busy` creates with 503 create_busy, then makes the sandbox."""

    def __init__(self) -> None:
        self.busy = 0
        self.code = "create_busy"
        self.creates: list[float] = []
        self.url = ""
        self.app = Starlette(routes=[Route("/v1/sandboxes", self.create, methods=["POST"])])

    async def create(self, request: Request) -> Response:
        self.creates.append(time.monotonic())
        if self.busy > 0:
            self.busy -= 1
            error = {"code": self.code, "message": "too many sandboxes starting; retry in 1 s"}
            return JSONResponse({"error": error}, status_code=503, headers={"Retry-After": "1"})
        info = {"id": "sb-made", "status": "running", "image": "busybox"}
        return JSONResponse(info, status_code=201)


@pytest.fixture()
def busy_server() -> Iterator[BusyServer]:
    fake = BusyServer()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(fake.app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.005)
    yield fake
    server.should_exit = True
    thread.join(10)


def test_a_busy_create_is_sent_again_after_retry_after(busy_server: BusyServer) -> None:
    busy_server.busy = 1
    sb = Sandbox.create(image="busybox", base_url=busy_server.url, api_key="k")
    assert sb.id == "sb-made"
    first, second = busy_server.creates
    assert second - first >= 0.9  # it waited Retry-After


def test_another_503_is_raised_not_retried(busy_server: BusyServer) -> None:
    busy_server.busy, busy_server.code = 1, "sandbox_start_failed"
    with pytest.raises(APIError) as caught:
        Sandbox.create(image="busybox", base_url=busy_server.url, api_key="k")
    assert caught.value.code == "sandbox_start_failed"
    assert len(busy_server.creates) == 1
