"""The E2B front door: one ASGI middleware in front of Hutch's app.

- a request with ``E2b-Sandbox-Id`` is for a sandbox's data plane (E2B_SANDBOX_URL): port
  49983 is envd (Connect-RPC process/filesystem, /files, /health), 49999 the code
  interpreter;
- ``/sandboxes…`` and ``/v2/sandboxes…`` are E2B's control plane (E2B_API_URL);
- anything else goes on to Hutch's own API.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process.process_connect import ProcessASGIApplication
from starlette.types import ASGIApp, Receive, Scope, Send

from hutch.e2b._codecs import strict_codecs
from hutch.e2b._control import build_control_app
from hutch.e2b._envd_http import ACCESS_HEADER, build_envd_http_app
from hutch.e2b._errors import sandbox_gone_message
from hutch.e2b._filesystem import FilesystemService
from hutch.e2b._identity import (
    E2B_HOME,
    ENVD_PORT,
    INTERPRETER_PORT,
    PORT_HEADER,
    SANDBOX_HEADER,
    Users,
)
from hutch.e2b._interpreter import build_interpreter_app
from hutch.e2b._process import ProcessService
from hutch.e2b._tokens import AccessTokens

TRAFFIC_HEADER = "e2b-traffic-access-token"
CONTROL_PREFIXES = ("/sandboxes", "/v2/sandboxes")


class _DataPlane:
    """What the data plane needs, made on the first request (the services exist only once
    the app's lifespan has started)."""

    def __init__(self, svc: Any) -> None:
        self.tokens = AccessTokens.open(svc.config.home)
        self.users = Users()
        svc.sandboxes.on_destroy.append(self.users.forget)
        self.process = ProcessASGIApplication(
            ProcessService(svc, self.users), codecs=strict_codecs()
        )
        self.filesystem = FilesystemASGIApplication(FilesystemService(svc), codecs=strict_codecs())
        self.envd_http = build_envd_http_app()
        self.interpreter = build_interpreter_app()
        self._homes: set[str] = set()
        svc.sandboxes.on_destroy.append(self._homes.discard)

    async def ensure_home(self, svc: Any, sandbox_id: str) -> None:
        """E2B's clients expect /home/user (relative paths, default cwd); Hutch's images may
        not have it, so make it once per sandbox."""
        if sandbox_id in self._homes:
            return
        with contextlib.suppress(Exception):
            await svc.sandboxes.call(sandbox_id, "mkdir", path=E2B_HOME, recursive=True)
            self._homes.add(sandbox_id)


class E2bFrontDoor:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.control = build_control_app()
        self._plane: _DataPlane | None = None

    def _data_plane(self, scope: Scope) -> _DataPlane:
        if self._plane is None:
            self._plane = _DataPlane(scope["app"].state.services)
        return self._plane

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        sandbox_id = headers.get(SANDBOX_HEADER)
        path: str = scope["path"]
        if sandbox_id is None and not path.startswith(CONTROL_PREFIXES):
            await self.app(scope, receive, send)
            return
        svc = scope["app"].state.services
        plane = self._data_plane(scope)
        scope = dict(scope)
        scope["hutch.services"] = svc
        scope["hutch.e2b.tokens"] = plane.tokens
        if sandbox_id is None:
            await self.control(scope, receive, send)
            return
        await self._sandbox(scope, receive, send, svc, plane, sandbox_id, headers)

    async def _sandbox(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        svc: Any,
        plane: _DataPlane,
        sandbox_id: str,
        headers: dict[str, str],
    ) -> None:
        record = svc.store.get_sandbox(sandbox_id) if _plausible(sandbox_id) else None
        if record is None:
            await _json(send, 502, {"code": 502, "message": sandbox_gone_message(sandbox_id)})
            return
        port_raw = headers.get(PORT_HEADER, str(ENVD_PORT))
        port = int(port_raw) if port_raw.isdigit() else -1
        path: str = scope["path"]
        if port == ENVD_PORT and path == "/health":
            await plane.envd_http(scope, receive, send)
            return
        if port not in (ENVD_PORT, INTERPRETER_PORT):
            message = f"port {port_raw} of sandbox {sandbox_id} is not open here"
            await _json(send, 502, {"code": 502, "message": message})
            return
        is_file_url = path == "/files" and "signature" in scope.get("query_string", b"").decode()
        # NB: e2b-code-interpreter sends the envd token on /execute only, and the traffic
        # token (which Hutch always hands out) on every call to port 49999.
        token = headers.get(ACCESS_HEADER) or headers.get(TRAFFIC_HEADER)
        if not is_file_url and not plane.tokens.is_valid(sandbox_id, token):
            await _json(
                send,
                401,
                {
                    "code": 401,
                    "message": "missing or wrong X-Access-Token: send the sandbox's "
                    "envdAccessToken (the e2b SDKs do this for you)",
                },
            )
            return
        await plane.ensure_home(svc, sandbox_id)
        if port == INTERPRETER_PORT:
            await plane.interpreter(scope, receive, send)
        elif path.startswith("/process.Process/"):
            await plane.process(scope, receive, send)
        elif path.startswith("/filesystem.Filesystem/"):
            await plane.filesystem(scope, receive, send)
        else:
            await plane.envd_http(scope, receive, send)


def _plausible(sandbox_id: str) -> bool:
    return 0 < len(sandbox_id) <= 63


async def _json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
