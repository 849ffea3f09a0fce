"""The SDK, sync and async, against an in-process fake server that speaks docs/api.md.

The fake (``FakeHutch``) is a Starlette app served by uvicorn on a loopback port in a thread.
Its exec runs the command as a host subprocess and streams the real binary frames of
``hutch._wire.frames``, cut into small random pieces, so that the SDK's decoding is exercised
across arbitrary chunk boundaries.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from hutch import (
    APIError,
    AsyncClient,
    AsyncSandbox,
    AuthenticationError,
    Client,
    CommandTimeout,
    ConfigurationError,
    Conflict,
    ConnectionConfig,
    ExecEvent,
    HutchConnectionError,
    HutchError,
    ImageNotFound,
    InvalidRequest,
    NotFoundError,
    Sandbox,
    SandboxNotFound,
    SandboxUnavailable,
    ServerError,
)
from hutch._wire.frames import Channel, Kind, encode_frame, encode_json_frame
from hutch.sdk._exceptions import api_error, api_error_from_body
from hutch.sdk._exec import ExecStreamDecoder, OutputCollector
from hutch.sdk._http import STREAM_TIMEOUT_GRACE, stream_timeout
from hutch.sdk._raw_http import RawTarget

API_KEY = "hk_unit_test_key"
SANDBOX_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


# --- the fake server -----------------------------------------------------------------------


def _error(status: int, code: str, message: str, fields: list[Any] | None = None) -> Response:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields is not None:
        error["fields"] = fields
    return JSONResponse({"error": error}, status_code=status)


def _expiry(created_at: str, timeout: float | str | None) -> str | None:
    if timeout is None:
        return None
    created = datetime.fromisoformat(created_at.replace("Z", "+00:00"))
    # NB: the fake takes seconds only (as a number or a string of one), not "1h"-style forms.
    return (created + timedelta(seconds=float(timeout))).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeHutch:
    """A Hutch server in miniature: sandboxes are dicts, exec runs on the host.

    Knobs for tests: a sandbox whose labels hold ``fake=stopped`` answers exec with 409
    ``sandbox_not_running``; ``fake=unavailable`` ends its exec stream with an error RESULT.
    ``max_piece`` bounds the size of the pieces the streamed body is cut into.
    """

    def __init__(self, api_key: str | None = API_KEY) -> None:
        self.api_key = api_key
        self.sandboxes: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, dict[str, Any]] = {}
        self.exec_requests: list[dict[str, Any]] = []
        self.exec_headers: list[dict[str, str]] = []
        self.killed_pids: list[int] = []
        self.max_piece = 7
        self.url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(
            routes=[
                Route("/healthz", self.healthz),
                Route("/v1/sandboxes", self.create, methods=["POST"]),
                Route("/v1/sandboxes", self.list, methods=["GET"]),
                Route("/v1/sandboxes/{id}", self.get, methods=["GET"]),
                Route("/v1/sandboxes/{id}", self.put, methods=["PUT"]),
                Route("/v1/sandboxes/{id}", self.delete, methods=["DELETE"]),
                Route("/v1/sandboxes/{id}/exec/stream", self.exec_stream, methods=["POST"]),
                Route("/v1/keys", self.list_keys, methods=["GET"]),
                Route("/v1/keys", self.create_key, methods=["POST"]),
                Route("/v1/keys/{id}", self.delete_key, methods=["DELETE"]),
                Route("/v1/images", self.list_images, methods=["GET"]),
                Route("/v1/broken", self.broken, methods=["GET"]),
            ],
            exception_handlers={HTTPException: self.http_error},  # type: ignore[dict-item]
        )

    # lifecycle

    def start(self) -> FakeHutch:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_level="warning", lifespan="off", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "fake server did not start"
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(10)

    # helpers

    def _authorized(self, request: Request) -> bool:
        if self.api_key is None:
            return True
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:]
        return secrets.compare_digest(given.encode(), self.api_key.encode())

    async def http_error(self, request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            return _error(404, "not_found", f"no route {request.url.path}; see /openapi.json")
        return _error(exc.status_code, f"http_{exc.status_code}", str(exc.detail))

    def _new_info(self, sandbox_id: str, body: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": sandbox_id,
            "status": "running",
            "image": body.get("image", "default"),
            "created_at": "2026-11-26T13:00:00Z",
            "expires_at": _expiry("2026-11-26T13:00:00Z", body.get("timeout")),
            "cpu": body.get("cpu", 1.0),
            "memory_mb": body.get("memory_mb", 1024),
            "disk_mb": body.get("disk_mb", 4096),
            "pids_limit": body.get("pids_limit", 512),
            "network": body.get("network", "none"),
            "runtime": body.get("runtime", "runc"),
            "labels": body.get("labels") or {},
            "env_keys": sorted(body.get("env") or {}),
            "_env": dict(body.get("env") or {}),
            "_body": dict(body),
        }

    def _validate(self, body: Any) -> Response | None:
        if not isinstance(body, dict):
            return _error(422, "invalid_request", "the body must be a JSON object")
        fields = []
        if not isinstance(body.get("cpu", 1.0), int | float) or body.get("cpu", 1.0) <= 0:
            fields.append({"loc": ["body", "cpu"], "message": "must be greater than 0"})
        if body.get("memory_mb", 1024) < 16:
            fields.append({"loc": ["body", "memory_mb"], "message": "must be at least 16"})
        if fields:
            return _error(422, "invalid_request", "the sandbox options are not valid", fields)
        if body.get("image", "default") != "default":
            return _error(
                404, "image_not_found", f"no image {body['image']!r}; see `hutch image ls`"
            )
        return None

    @staticmethod
    def _public(info: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in info.items() if not k.startswith("_")}

    def _sandbox(self, request: Request) -> dict[str, Any] | Response:
        sandbox = self.sandboxes.get(request.path_params["id"])
        if sandbox is None:
            return _error(
                404, "sandbox_not_found", f"no sandbox {request.path_params['id']!r}; see hutch ls"
            )
        return sandbox

    # routes

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def broken(self, request: Request) -> Response:
        return Response("<html>Bad Gateway</html>", status_code=502, media_type="text/html")

    async def create(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key; set HUTCH_API_KEY")
        body = await request.json()
        if (problem := self._validate(body)) is not None:
            return problem
        sandbox_id = body.get("id") or f"sb-{secrets.token_hex(6)}"
        if sandbox_id in self.sandboxes:
            return _error(409, "sandbox_exists", f"sandbox {sandbox_id!r} exists; use PUT")
        self.sandboxes[sandbox_id] = info = self._new_info(sandbox_id, body)
        return JSONResponse(self._public(info), status_code=201)

    async def put(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        sandbox_id = request.path_params["id"]
        if not SANDBOX_ID.match(sandbox_id):
            return _error(422, "invalid_sandbox_id", f"{sandbox_id!r} is not a valid sandbox id")
        if sandbox_id in self.sandboxes:
            return JSONResponse(self._public(self.sandboxes[sandbox_id]), status_code=200)
        body = await request.json()
        if (problem := self._validate(body)) is not None:
            return problem
        self.sandboxes[sandbox_id] = info = self._new_info(sandbox_id, body)
        return JSONResponse(self._public(info), status_code=201)

    async def list(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        wanted = [tuple(v.split("=", 1)) for v in request.query_params.getlist("label")]
        found = [
            self._public(s)
            for s in self.sandboxes.values()
            if all(s["labels"].get(k) == v for k, v in wanted)
        ]
        return JSONResponse({"sandboxes": found})

    async def get(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        sandbox = self._sandbox(request)
        return sandbox if isinstance(sandbox, Response) else JSONResponse(self._public(sandbox))

    async def delete(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        sandbox = self._sandbox(request)
        if isinstance(sandbox, Response):
            return sandbox
        del self.sandboxes[sandbox["id"]]
        return Response(status_code=204)

    async def list_keys(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        return JSONResponse({"keys": list(self.keys.values())})

    async def create_key(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        body = await request.json()
        secret = "hk_" + secrets.token_hex(16)
        key = {
            "id": f"key-{secrets.token_hex(4)}",
            "name": body["name"],
            "prefix": secret[:7],
            "created_at": "2026-11-26T13:00:00Z",
        }
        self.keys[key["id"]] = key
        return JSONResponse({**key, "key": secret}, status_code=201)

    async def delete_key(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        if self.keys.pop(request.path_params["id"], None) is None:
            return _error(404, "not_found", "no such key")
        return Response(status_code=204)

    async def list_images(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        image = {
            "name": "default",
            "id": "sha256:" + "ab" * 32,
            "size_bytes": 734003200,
            "created_at": "2026-11-26T13:00:00Z",
        }
        return JSONResponse({"images": [image]})

    async def exec_stream(self, request: Request) -> Response:
        if not self._authorized(request):
            return _error(401, "unauthorized", "missing or wrong API key")
        sandbox = self._sandbox(request)
        if isinstance(sandbox, Response):
            return sandbox
        body = await request.json()
        self.exec_requests.append(body)
        self.exec_headers.append(dict(request.headers))
        if (body.get("command") is None) == (body.get("argv") is None):
            return _error(
                422,
                "invalid_request",
                "give exactly one of command or argv",
                [{"loc": ["body", "command"], "message": "exactly one of command/argv"}],
            )
        if sandbox["labels"].get("fake") == "stopped":
            return _error(409, "sandbox_not_running", "the sandbox is stopped; start it first")
        if sandbox["labels"].get("fake") == "unavailable":
            frames = self._unavailable()
        else:
            frames = self._run(sandbox, body)
        return StreamingResponse(self._pieces(frames), media_type="application/x-hutch-frames")

    async def _pieces(self, frames: AsyncGenerator[bytes, None]) -> AsyncIterator[bytes]:
        """Cut each frame's bytes into random small pieces, sent as separate writes."""
        rng = random.Random(len(self.exec_requests))
        try:
            async for frame in frames:
                while frame:
                    size = rng.randint(1, self.max_piece)
                    yield frame[:size]
                    frame = frame[size:]
        finally:
            await frames.aclose()

    async def _unavailable(self) -> AsyncGenerator[bytes, None]:
        yield encode_json_frame(Kind.EVENT, 0, {"event": "started", "pid": 1})
        yield encode_frame(Kind.DATA, 0, b"partial", Channel.STDOUT, 0)
        yield encode_json_frame(
            Kind.RESULT,
            0,
            {"error": {"code": "sandbox_unavailable", "message": "the agent did not answer"}},
        )

    async def _run(
        self, sandbox: dict[str, Any], body: dict[str, Any]
    ) -> AsyncGenerator[bytes, None]:
        argv = body["argv"] or ["bash", "-c", body["command"]]
        env = {
            **os.environ,
            # `python` is the test's interpreter, as the default image's python would be.
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            **sandbox["_env"],
            **(body.get("env") or {}),
        }
        stdin = base64.b64decode(body["stdin"]) if body.get("stdin") is not None else None
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=body.get("cwd"),
                env=env,
                start_new_session=True,
            )
        except FileNotFoundError:
            yield encode_frame(Kind.DATA, 0, f"{argv[0]}: not found\n".encode(), Channel.STDERR)
            yield encode_json_frame(
                Kind.RESULT, 0, {"exit_code": 127, "duration": 0.0, "timed_out": False}
            )
            return
        yield encode_json_frame(Kind.EVENT, 0, {"event": "started", "pid": proc.pid})
        queue: asyncio.Queue[bytes | None] = asyncio.Queue()

        async def pump(stream: asyncio.StreamReader, channel: Channel) -> None:
            offset = 0
            while chunk := await stream.read(4096):
                await queue.put(encode_frame(Kind.DATA, 0, chunk, channel, offset))
                offset += len(chunk)
            await queue.put(None)

        async def feed() -> None:
            assert proc.stdin is not None and stdin is not None
            with contextlib.suppress(ConnectionError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()

        assert proc.stdout is not None and proc.stderr is not None
        tasks = [
            asyncio.create_task(pump(proc.stdout, Channel.STDOUT)),
            asyncio.create_task(pump(proc.stderr, Channel.STDERR)),
        ]
        if stdin is not None:
            tasks.append(asyncio.create_task(feed()))
        timeout = body.get("timeout")
        deadline = started + timeout if timeout is not None else None
        timed_out = False
        open_channels = 2
        try:
            while open_channels:
                wait = None if deadline is None else max(deadline - time.monotonic(), 0)
                try:
                    item = await asyncio.wait_for(queue.get(), wait)
                except TimeoutError:
                    timed_out, deadline = True, None
                    self._kill(proc)
                    continue
                if item is None:
                    open_channels -= 1
                else:
                    yield item
            code = await proc.wait()
            result = {
                "exit_code": 124 if timed_out else (code if code >= 0 else 128 - code),
                "duration": time.monotonic() - started,
                "timed_out": timed_out,
            }
            yield encode_json_frame(Kind.RESULT, 0, result)
        finally:
            if proc.returncode is None:
                self._kill(proc)
                await proc.wait()
            for task in tasks:
                task.cancel()

    def _kill(self, proc: asyncio.subprocess.Process) -> None:
        self.killed_pids.append(proc.pid)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeHutch]:
    server = FakeHutch().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
async def _close_shared_async_clients() -> AsyncIterator[None]:
    yield
    await AsyncClient.aclose_shared()


@pytest.fixture(autouse=True)
def hutch_env(
    fake: FakeHutch, monkeypatch: pytest.MonkeyPatch, _close_shared_async_clients: None
) -> Iterator[FakeHutch]:
    """Point the SDK at the fake through the environment, as a user's shell would."""
    monkeypatch.setenv("HUTCH_URL", fake.url)
    monkeypatch.setenv("HUTCH_API_KEY", API_KEY)
    yield fake
    Client.close_shared()


# --- sans-I/O: frames, decoder, collector, errors -----------------------------------------


def _exec_body_bytes() -> tuple[bytes, list[ExecEvent]]:
    snowman = "☃ é".encode()
    frames = [
        encode_json_frame(Kind.EVENT, 0, {"event": "started", "pid": 42}),
        encode_frame(Kind.DATA, 0, b"hello " + snowman[:2], Channel.STDOUT, 0),
        encode_frame(Kind.DATA, 0, snowman[2:] + b"\n", Channel.STDOUT, 8),
        encode_frame(Kind.DATA, 0, b"\x00\xff binary", Channel.STDERR, 0),
        encode_frame(Kind.DATA, 0, b"", Channel.STDOUT, 0),
        encode_frame(Kind.EOF, 0, b"", Channel.STDOUT, 0),
        encode_json_frame(Kind.RESULT, 0, {"exit_code": 3, "duration": 0.25, "timed_out": False}),
    ]
    expected = [
        ExecEvent("stdout", b"hello " + snowman[:2], 0),
        ExecEvent("stdout", snowman[2:] + b"\n", 8),
        ExecEvent("stderr", b"\x00\xff binary", 0),
        ExecEvent("stdout", b"", 0),
        ExecEvent("exit", exit_code=3, duration=0.25),
    ]
    return b"".join(frames), expected


def _decode(pieces: list[bytes]) -> list[ExecEvent]:
    decoder = ExecStreamDecoder()
    events = [e for piece in pieces for e in decoder.feed(piece)]
    decoder.close()
    assert decoder.pid == 42
    return events


def test_decoder_gives_the_same_events_at_every_split_point() -> None:
    data, expected = _exec_body_bytes()
    assert _decode([data]) == expected
    for cut in range(len(data) + 1):
        assert _decode([data[:cut], data[cut:]]) == expected, cut
    assert _decode([bytes([b]) for b in data]) == expected


def test_decoder_gives_the_same_events_for_random_chunkings() -> None:
    data, expected = _exec_body_bytes()
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randint(1, 12)))
        pieces = [data[a:b] for a, b in itertools.pairwise([0, *cuts, len(data)])]
        assert _decode(pieces) == expected


def test_decoder_ignores_bytes_after_the_result_and_other_streams() -> None:
    decoder = ExecStreamDecoder()
    events = decoder.feed(
        encode_frame(Kind.DATA, 5, b"not ours", Channel.STDOUT)
        + encode_json_frame(Kind.RESULT, 0, {"exit_code": 0, "duration": 0, "timed_out": False})
        + encode_frame(Kind.DATA, 0, b"late", Channel.STDOUT)
    )
    assert [e.type for e in events] == ["exit"]
    assert decoder.feed(b"anything") == []


def test_decoder_without_result_is_a_connection_error() -> None:
    decoder = ExecStreamDecoder()
    decoder.feed(encode_frame(Kind.DATA, 0, b"partial", Channel.STDOUT))
    with pytest.raises(HutchConnectionError, match="before the command's result"):
        decoder.close()


def test_decoder_maps_an_error_result_to_its_exception() -> None:
    decoder = ExecStreamDecoder()
    frame = encode_json_frame(
        Kind.RESULT, 0, {"error": {"code": "sandbox_not_running", "message": "stopped"}}
    )
    with pytest.raises(Conflict) as info:
        decoder.feed(frame)
    assert info.value.status == 409 and info.value.code == "sandbox_not_running"


def test_decoder_rejects_garbage() -> None:
    with pytest.raises(HutchConnectionError, match="malformed"):
        ExecStreamDecoder().feed(b"\xff" * 18)
    with pytest.raises(HutchConnectionError, match="malformed"):
        ExecStreamDecoder().feed(encode_frame(Kind.RESULT, 0, b"not json"))


def test_collector_decodes_characters_split_across_chunks() -> None:
    seen: list[str] = []
    collector = OutputCollector(on_stdout=seen.append)
    data = "naïve ☃".encode()
    for i in range(len(data)):
        collector.add(ExecEvent("stdout", data[i : i + 1], i))
    collector.add(ExecEvent("stdout", b"\xff", len(data)))  # invalid, flushed at exit
    collector.add(ExecEvent("exit", exit_code=0, duration=0.1))
    assert "".join(seen) == "naïve ☃\ufffd"
    result = collector.result()
    assert result.stdout_bytes == data + b"\xff"
    assert result.stdout == "naïve ☃\ufffd" and result.success and result.duration == 0.1


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (404, {"error": {"code": "sandbox_not_found", "message": "m"}}, SandboxNotFound, None),
        (404, {"error": {"code": "image_not_found", "message": "m"}}, ImageNotFound, None),
        (404, {"error": {"code": "not_found", "message": "m"}}, NotFoundError, None),
        (401, {"error": {"code": "unauthorized", "message": "m"}}, AuthenticationError, None),
        (503, {"error": {"code": "sandbox_unavailable", "message": "m"}}, SandboxUnavailable, None),
        (500, {"error": {"code": "internal", "message": "m"}}, ServerError, None),
        (409, {"error": {"code": "brand_new_code", "message": "m"}}, Conflict, None),
        (418, {"error": {"code": "teapot", "message": "m"}}, APIError, None),
        (502, None, ServerError, "http_502"),
        (
            422,
            {"detail": [{"loc": ["body", "x"], "msg": "bad"}]},
            InvalidRequest,
            "invalid_request",
        ),
    ],
)
def test_error_mapping_by_code_then_status(
    status: int, body: Any, cls: type[APIError], code: str | None
) -> None:
    error = api_error_from_body(status, body, "<html>Bad Gateway</html>")
    assert type(error) is cls
    assert error.status == status
    if code is not None:
        assert error.code == code


def test_api_error_message_lists_fields() -> None:
    error = api_error(
        "invalid_request",
        "the sandbox options are not valid",
        status=422,
        fields=[{"loc": ["body", "cpu"], "message": "must be greater than 0"}],
    )
    assert isinstance(error, InvalidRequest) and isinstance(error, ValueError)
    assert str(error) == (
        "the sandbox options are not valid (invalid_request): body.cpu: must be greater than 0"
    )


def test_streams_time_out_only_past_the_commands_own_limit() -> None:
    config = ConnectionConfig()
    assert stream_timeout(config).read is None  # a silent command may run for hours
    assert stream_timeout(config, 2.0).read == 2.0 + STREAM_TIMEOUT_GRACE
    assert stream_timeout(config).connect == config.connect_timeout


def test_connection_config_precedence() -> None:
    env = {"HUTCH_URL": "http://env:1/", "HUTCH_API_KEY": "env-key"}
    assert ConnectionConfig.load(environ=env) == ConnectionConfig("http://env:1", "env-key")
    assert ConnectionConfig.load("https://arg:2", "arg-key", environ=env) == ConnectionConfig(
        "https://arg:2", "arg-key"
    )
    assert ConnectionConfig.load(environ={}) == ConnectionConfig("http://127.0.0.1:7070", None)
    assert "env-key" not in repr(ConnectionConfig.load(environ=env))
    with pytest.raises(ConfigurationError, match="HUTCH_URL"):
        ConnectionConfig.load("localhost:7070", environ={})


# --- sync SDK against the fake ------------------------------------------------------------


def test_seed_example(fake: FakeHutch) -> None:
    sb = Sandbox.create()
    r = sb.run("python", ["-c", 'print("Hello from sandbox")'])
    assert r.stdout == "Hello from sandbox\n"
    assert r.exit_code == 0 and r.success and r.stderr == "" and not r.timed_out
    assert r.duration > 0
    assert fake.exec_requests[-1]["argv"] == ["python", "-c", 'print("Hello from sandbox")']
    assert fake.exec_requests[-1]["command"] is None
    sb.destroy()
    assert sb.id not in fake.sandboxes


def test_create_sends_the_options_and_returns_info(fake: FakeHutch) -> None:
    sb = Sandbox.create(
        env={"A": "1"}, cpu=0.5, memory_mb=256, network="internet", labels={"team": "x"}
    )
    info = sb.info()
    assert info.id == sb.id and info.id.startswith("sb-")
    assert (info.cpu, info.memory_mb, info.network) == (0.5, 256, "internet")
    assert info.labels == {"team": "x"} and info.env_keys == ["A"]
    assert info.created_at is not None and info.created_at.year == 2026
    assert info.raw["status"] == "running"
    assert repr(sb) == f"Sandbox(id={sb.id!r})"
    sb.destroy()


def test_context_manager_destroys_the_sandbox(fake: FakeHutch) -> None:
    with Sandbox.create() as sb:
        assert sb.id in fake.sandboxes
        assert sb.exec("echo hi | tr a-z A-Z").stdout == "HI\n"
    assert sb.id not in fake.sandboxes
    with Sandbox.create() as sb2:
        sb2.destroy()  # destroyed inside the block: leaving it is still fine


def test_exec_options_reach_the_command(tmp_path: Path) -> None:
    with Sandbox.create(env={"FROM_SANDBOX": "s"}) as sb:
        r = sb.exec("echo $FROM_SANDBOX $FROM_EXEC; pwd", cwd=str(tmp_path), env={"FROM_EXEC": "e"})
        assert r.stdout == f"s e\n{tmp_path}\n"
        assert sb.exec("cat", stdin=b"bytes in").stdout == "bytes in"
        assert sb.run("cat", stdin="text in ☃").stdout == "text in ☃"
        assert sb.exec("cat").stdout == ""  # no stdin: /dev/null, not a hang


def test_exec_is_binary_safe_and_reports_failures() -> None:
    with Sandbox.create() as sb:
        r = sb.run("python", ["-c", "import sys; sys.stdout.buffer.write(bytes(range(256)))"])
        assert r.stdout_bytes == bytes(range(256))
        r = sb.exec("echo out; echo err >&2; exit 3")
        assert (r.stdout, r.stderr, r.exit_code, r.success) == ("out\n", "err\n", 3, False)
        r = sb.run("no-such-program-hutch")
        assert r.exit_code == 127 and not r.success


def test_exec_callbacks_are_called_while_the_command_runs(tmp_path: Path) -> None:
    flag = tmp_path / "seen-first"
    command = (
        "echo first; "
        f"for i in $(seq 200); do [ -e {flag} ] && echo second && exit 0; sleep 0.02; done; "
        "echo never; exit 1"
    )
    out: list[str] = []
    err: list[str] = []

    def on_stdout(text: str) -> None:
        out.append(text)
        if "first" in "".join(out):
            flag.touch()

    with Sandbox.create() as sb:
        r = sb.exec(command, on_stdout=on_stdout, on_stderr=err.append)
        assert r.exit_code == 0, r.stdout
        assert "".join(out) == r.stdout == "first\nsecond\n"
        r = sb.exec("echo e1 >&2; echo e2 >&2", on_stderr=err.append)
        assert "".join(err) == "e1\ne2\n"


def test_large_output_arrives_whole(fake: FakeHutch) -> None:
    fake.max_piece = 4096
    try:
        with Sandbox.create() as sb:
            r = sb.run("python", ["-c", "import sys; sys.stdout.write('x' * 3_000_000)"])
            assert r.stdout_bytes == b"x" * 3_000_000
    finally:
        fake.max_piece = 7


def test_exec_stream_yields_events_with_offsets() -> None:
    with Sandbox.create() as sb:
        events = list(sb.exec_stream("printf abc; printf XY >&2; printf def"))
        assert events[-1].type == "exit" and events[-1].exit_code == 0
        stdout = [e for e in events if e.type == "stdout"]
        assert b"".join(e.data for e in stdout) == b"abcdef"
        offsets = [e.offset for e in stdout]
        sizes = [len(e.data) for e in stdout]
        assert offsets == [sum(sizes[:i]) for i in range(len(sizes))]
        assert b"".join(e.data for e in events if e.type == "stderr") == b"XY"
        events = list(sb.run_stream("sh", ["-c", "exit 5"]))
        assert [(e.type, e.exit_code) for e in events] == [("exit", 5)]


def test_exec_stream_stopped_early_kills_the_command(fake: FakeHutch) -> None:
    with Sandbox.create() as sb:
        stream = sb.exec_stream("echo ready; sleep 30")
        first = next(iter(stream))
        assert first.data == b"ready\n"
        before = len(fake.killed_pids)
        stream.close()  # type: ignore[attr-defined]
        deadline = time.monotonic() + 5
        while len(fake.killed_pids) == before:
            assert time.monotonic() < deadline, "the fake never saw the stream close"
            time.sleep(0.01)


def test_timeout_raises_with_the_partial_result() -> None:
    with Sandbox.create() as sb:
        with pytest.raises(CommandTimeout) as info:
            sb.exec("echo before; sleep 10; echo after", timeout=0.3)
        assert isinstance(info.value, TimeoutError) and isinstance(info.value, HutchError)
        result = info.value.result
        assert result.timed_out and result.exit_code == 124 and not result.success
        assert result.stdout == "before\n"
        assert "timeout of 0.3s" in str(info.value)
        events = list(sb.exec_stream("sleep 10", timeout=0.2))
        assert events[-1].type == "exit" and events[-1].timed_out and events[-1].exit_code == 124


def test_get_or_create_connect_and_list(fake: FakeHutch) -> None:
    name = f"user-{secrets.token_hex(3)}"
    first = Sandbox.get_or_create(name, labels={"owner": name})
    again = Sandbox.get_or_create(name, cpu=4)
    assert first.id == again.id == name
    assert again.info().cpu == 1.0  # the existing sandbox, options ignored
    assert Sandbox.connect(name).id == name
    other = Sandbox.create(labels={"owner": name, "role": "b"})
    assert {s.id for s in Sandbox.list(labels={"owner": name})} == {name, other.id}
    assert [s.id for s in Sandbox.list(labels={"owner": name, "role": "b"})] == [other.id]
    assert name in {s.id for s in Sandbox.list()}
    first.destroy()
    other.destroy()
    with pytest.raises(InvalidRequest) as info:
        Sandbox.get_or_create("Not_Valid")
    assert info.value.code == "invalid_sandbox_id"


def test_sandboxes_share_one_client_per_config(fake: FakeHutch) -> None:
    a = Sandbox.create()
    b = Sandbox.connect(a.id)
    c = Sandbox.connect(a.id, base_url=fake.url + "/", api_key=API_KEY)
    assert a.client is b.client is c.client
    with Client(base_url=fake.url, api_key=API_KEY) as own:
        d = Sandbox.connect(a.id, client=own)
        assert d.client is own
    assert own.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        d.info()
    with pytest.raises(TypeError):
        Sandbox.connect(a.id, client=a.client, base_url=fake.url)
    a.destroy()


def test_api_errors_map_to_the_exception_tree(fake: FakeHutch) -> None:
    with pytest.raises(SandboxNotFound) as nf:
        Sandbox.connect("sb-does-not-exist")
    assert nf.value.status == 404 and nf.value.code == "sandbox_not_found"
    assert isinstance(nf.value, NotFoundError) and isinstance(nf.value, APIError)
    assert "sb-does-not-exist" in str(nf.value)

    with pytest.raises(InvalidRequest) as bad:
        Sandbox.create(cpu=0, memory_mb=1)
    assert isinstance(bad.value, ValueError)
    assert [f["loc"] for f in bad.value.fields] == [["body", "cpu"], ["body", "memory_mb"]]

    with pytest.raises(ImageNotFound):
        Sandbox.create(image="nope")

    with pytest.raises(AuthenticationError) as auth:
        Sandbox.create(api_key="wrong")
    assert auth.value.status == 401

    with pytest.raises(SandboxNotFound):
        Sandbox("sb-gone", client=Client.shared()).exec("true")

    with pytest.raises(NotFoundError) as route:
        Client.shared().request("GET", "/v1/nowhere")
    assert type(route.value) is NotFoundError and route.value.code == "not_found"

    with pytest.raises(ServerError, match="Bad Gateway"):
        Client.shared().request("GET", "/v1/broken")


def test_errors_inside_the_exec_stream() -> None:
    with Sandbox.create(labels={"fake": "stopped"}) as sb:
        with pytest.raises(Conflict) as info:
            sb.exec("true")
        assert info.value.code == "sandbox_not_running"
    with Sandbox.create(labels={"fake": "unavailable"}) as sb:
        with pytest.raises(SandboxUnavailable) as unavailable:
            sb.exec("true")
        assert unavailable.value.status == 503


def test_exec_requests_carry_the_clients_head(fake: FakeHutch) -> None:
    """Exec requests skip httpx (sdk/_raw_http.py) but not what httpx would have sent."""
    with Sandbox.create() as sb:
        sb.exec("echo hi")
    headers = fake.exec_headers[-1]
    assert headers["authorization"] == f"Bearer {API_KEY}"
    assert headers["user-agent"].startswith("hutch-python/")
    assert headers["content-type"] == "application/json"
    assert headers["host"] == fake.url.split("//", 1)[1]
    assert json.loads(headers["content-length"]) > 0
    assert fake.exec_requests[-1]["command"] == "echo hi"


def test_exec_leaves_to_httpx_what_only_httpx_does() -> None:
    """A proxy from the environment, credentials in the URL: httpx's path, as before."""
    config = ConnectionConfig(base_url="http://127.0.0.1:7070", api_key="k")
    assert RawTarget.for_config(config, {"http": "http://proxy:3128"}) is None
    assert RawTarget.for_config(config, {"all": "socks5://proxy:1080"}) is None
    assert RawTarget.for_config(config, {"no": "localhost"}) is not None
    assert RawTarget.for_config(ConnectionConfig(base_url="http://u:p@h:1"), {}) is None
    behind = RawTarget.for_config(ConnectionConfig(base_url="https://h.example/hutch"), {})
    assert behind is not None
    request = behind.json_request("POST", "/v1/x", {}, stream_timeout(ConnectionConfig()))
    assert (request.url.scheme, request.url.host, request.url.port) == (
        b"https",
        b"h.example",
        443,
    )
    assert request.url.target == b"/hutch/v1/x"
    assert (b"Host", b"h.example") in request.headers


def test_an_exec_answer_cut_off_is_a_connection_error() -> None:
    """A server (or proxy) that dies mid-answer: HutchConnectionError, as through httpx."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nab")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with Client(base_url=f"http://127.0.0.1:{port}", api_key=API_KEY) as client:
            with pytest.raises(HutchConnectionError, match="failed"):
                Sandbox("sb-x", client=client).exec("true")
    finally:
        thread.join(10)
        listener.close()


def test_unreachable_server_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUTCH_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HutchConnectionError) as info:
        Sandbox.create()
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, HutchError)
    assert "HUTCH_URL" in str(info.value) and "hutch serve" in str(info.value)


def test_environment_supplies_url_and_key(fake: FakeHutch, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HUTCH_API_KEY")
    with pytest.raises(AuthenticationError):
        Sandbox.list()
    monkeypatch.setenv("HUTCH_API_KEY", API_KEY)
    assert isinstance(Sandbox.list(), list)
    monkeypatch.delenv("HUTCH_URL")
    monkeypatch.delenv("HUTCH_API_KEY")
    assert Sandbox.list(base_url=fake.url, api_key=API_KEY) is not None


def test_argument_mistakes_fail_before_any_request() -> None:
    sb = Sandbox("sb-x", client=Client.shared())
    with pytest.raises(TypeError, match="run"):
        sb.exec(["ls", "-l"])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="list of strings"):
        sb.run("ls", "-l")
    with pytest.raises(ValueError):
        Sandbox("..", client=Client.shared())


def test_keys_images_and_health(fake: FakeHutch) -> None:
    client = Client.shared()
    assert client.health() is True
    key = client.create_key("ci")
    assert key.key is not None and key.key.startswith("hk_") and key.name == "ci"
    assert key.key not in repr(key)
    assert key.id in {k.id for k in client.list_keys()}
    client.delete_key(key.id)
    assert key.id not in {k.id for k in client.list_keys()}
    [image] = client.list_images()
    assert image.name == "default" and image.size_bytes == 734003200


# --- async SDK against the fake -----------------------------------------------------------


async def test_async_seed_example_and_context_manager(fake: FakeHutch) -> None:
    async with await AsyncSandbox.create() as sb:
        r = await sb.run("python", ["-c", 'print("Hello from sandbox")'])
        assert r.stdout == "Hello from sandbox\n" and r.success
        assert (await sb.info()).status == "running"
    assert sb.id not in fake.sandboxes


async def test_async_exec_stream_and_callbacks() -> None:
    seen: list[str] = []
    async with await AsyncSandbox.create() as sb:
        r = await sb.exec("echo one; echo two >&2", on_stdout=seen.append, on_stderr=seen.append)
        assert (r.stdout, r.stderr) == ("one\n", "two\n")
        assert sorted(seen) == ["one\n", "two\n"]
        events = [e async for e in sb.exec_stream("printf 'a\\0b'; exit 2")]
        assert b"".join(e.data for e in events if e.type == "stdout") == b"a\x00b"
        assert events[-1] == ExecEvent(
            "exit", exit_code=2, timed_out=False, duration=events[-1].duration
        )
        events = [e async for e in sb.run_stream("echo", ["x", "y z"])]
        assert events[0].data == b"x y z\n"


async def test_async_errors_and_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SandboxNotFound):
        await AsyncSandbox.connect("sb-missing")
    with pytest.raises(InvalidRequest):
        await AsyncSandbox.create(cpu=-1)
    async with await AsyncSandbox.create() as sb:
        with pytest.raises(CommandTimeout) as info:
            await sb.exec("echo partial; sleep 10", timeout=0.2)
        assert info.value.result.stdout == "partial\n"
    monkeypatch.setenv("HUTCH_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(HutchConnectionError, match="HUTCH_URL"):
        await AsyncSandbox.list()


async def test_async_concurrent_execs_share_one_client() -> None:
    sandboxes = await asyncio.gather(*(AsyncSandbox.create() for _ in range(3)))
    assert len({id(sb.client) for sb in sandboxes}) == 1
    results = await asyncio.gather(
        *(sb.exec(f"sleep 0.2; echo {i}") for i, sb in enumerate(sandboxes))
    )
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n"]
    listed = {s.id for s in await AsyncSandbox.list()}
    assert {sb.id for sb in sandboxes} <= listed
    await asyncio.gather(*(sb.destroy() for sb in sandboxes))


async def test_async_client_keys_and_images() -> None:
    async with AsyncClient() as client:
        key = await client.create_key("async")
        assert key.id in {k.id for k in await client.list_keys()}
        await client.delete_key(key.id)
        assert [i.name for i in await client.list_images()] == ["default"]
        assert await client.health()
    assert client.is_closed


def test_every_wire_code_in_the_api_doc_has_an_exception() -> None:
    from hutch.sdk._exceptions import ERROR_CODES

    doc = (Path(__file__).parent.parent / "docs" / "api.md").read_text()
    table = re.findall(r"^\| (\d{3}) \| `([a-z_]+)` \|", doc, re.MULTILINE)
    assert table, "the error table in docs/api.md moved"
    for status, code in table:
        cls, wire_status = ERROR_CODES[code]
        assert wire_status == int(status), code
        assert isinstance(api_error_from_body(int(status), {"error": {"code": code}}), cls)


def test_exec_result_json_shape_is_what_the_server_sends() -> None:
    # The RESULT of the agent protocol may wrap the answer in {"ok": ...}; both are accepted.
    decoder = ExecStreamDecoder()
    payload = {"ok": {"exit_code": 1, "duration": 0.5, "timed_out": False}}
    [event] = decoder.feed(encode_frame(Kind.RESULT, 0, json.dumps(payload).encode()))
    assert (event.exit_code, event.duration) == (1, 0.5)


def test_e2b_names_are_aliases_of_hutch_calls(fake: FakeHutch) -> None:
    sb = Sandbox.create(template="default", metadata={"user": "alice"}, envs={"GREETING": "hi"})
    body = fake.sandboxes[sb.id]["_body"]
    assert (body["image"], body["labels"], body["env"]) == (
        "default",
        {"user": "alice"},
        {"GREETING": "hi"},
    )
    assert sb.sandbox_id == sb.id and sb.is_running()
    r = sb.commands.run("echo $GREETING; exit 3", envs={"GREETING": "from commands"})
    assert (r.stdout, r.exit_code) == ("from commands\n", 3)  # no exception, as documented
    assert fake.exec_requests[-1]["env"] == {"GREETING": "from commands"}
    with pytest.raises(TypeError, match="background=True"):
        sb.commands.run("cat", background=True, stdin="x")
    sb.kill()
    assert sb.id not in fake.sandboxes and not sb.is_running()

    # Both spellings of one option, with different values, are a mistake caught before sending.
    before = set(fake.sandboxes)
    with pytest.raises(TypeError, match="image= or template="):
        Sandbox.create(image="python", template="node")
    with pytest.raises(TypeError, match="metadata= and labels="):
        Sandbox.create(labels={"a": "1"}, metadata={"a": "2"})
    assert set(fake.sandboxes) == before
