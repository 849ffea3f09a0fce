"""The E2B front door: one ASGI middleware in front of Hutch's app.

- a request with ``E2b-Sandbox-Id`` is for a sandbox's data plane (E2B_SANDBOX_URL): port
  49983 is envd (Connect-RPC process/filesystem, /files, /health), 49999 the code
  interpreter;
- ``/sandboxes…`` and ``/v2/sandboxes…`` are E2B's control plane (E2B_API_URL);
- anything else goes on to Hutch's own API.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from typing import Any
from urllib.parse import parse_qs

from e2b.envd.filesystem.filesystem_connect import FilesystemASGIApplication
from e2b.envd.process.process_connect import ProcessASGIApplication
from starlette.types import ASGIApp, Receive, Scope, Send

from hutch.e2b._codecs import strict_codecs
from hutch.e2b._control import AUTO_RESUME_LABEL, build_control_app, is_public
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
from hutch.e2b._snapshots import add_snapshot_routes
from hutch.e2b._stream_cut import cut_when_sandbox_lost
from hutch.e2b._tokens import AccessTokens
from hutch.server.routes import Services
from hutch.server.store import SandboxRecord

TRAFFIC_HEADER = "e2b-traffic-access-token"
CONTROL_PREFIXES = ("/sandboxes", "/v2/sandboxes", "/snapshots", "/templates/")


class _DataPlane:
    """What the data plane needs, made on the first request (the services exist only once
    the app's lifespan has started)."""

    def __init__(self, svc: Services) -> None:
        self.tokens = AccessTokens.open(svc.config.home)
        self.users = Users()
        svc.sandboxes.on_destroy.append(self.users.forget)
        self.process = ProcessASGIApplication(
            ProcessService(svc, self.users), codecs=strict_codecs()
        )
        self.filesystem = FilesystemASGIApplication(
            FilesystemService(svc, self.users), codecs=strict_codecs()
        )
        self.envd_http = build_envd_http_app()
        self.interpreter = build_interpreter_app()
        self._homes: set[str] = set()
        # Sandboxes being killed through E2B's API: gone for the data plane at once, so a
        # client whose stream broke and that asks /health learns it was killed.
        self.killing: set[str] = set()
        svc.sandboxes.on_destroy.append(self._homes.discard)

    async def ensure_home(self, svc: Services, sandbox_id: str) -> None:
        """E2B's clients expect /home/user (relative paths, default cwd); Hutch's images may
        not have it, so make it once per sandbox."""
        if sandbox_id in self._homes:
            return
        with contextlib.suppress(Exception):
            await svc.sandboxes.agent_call(sandbox_id)("mkdir", path=E2B_HOME, recursive=True)
            self._homes.add(sandbox_id)


class E2bFrontDoor:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.control = build_control_app()
        add_snapshot_routes(self.control)
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
        signed_file = path == "/files" and b"signature=" in scope.get("query_string", b"")
        if sandbox_id is None and not path.startswith(CONTROL_PREFIXES) and not signed_file:
            await self.app(scope, receive, send)
            return
        svc = scope["app"].state.services
        plane = self._data_plane(scope)
        scope = dict(scope)
        scope["hutch.services"] = svc
        scope["hutch.e2b.tokens"] = plane.tokens
        scope["hutch.e2b.users"] = plane.users
        scope["hutch.e2b.killing"] = plane.killing
        if sandbox_id is None and signed_file:
            # A signed URL (download_url/upload_url) carries no routing header when the SDK
            # talks to one origin: the signature names the sandbox, as only its token makes it.
            sandbox_id = _signer(svc, plane.tokens, scope)
            if sandbox_id is None:
                message = "missing E2b-Sandbox-Id, or a URL signature no sandbox made"
                await _json(send, 401, {"code": 401, "message": message})
                return
            headers[SANDBOX_HEADER] = sandbox_id
            scope["headers"] = [*scope["headers"], (SANDBOX_HEADER.encode(), sandbox_id.encode())]
        if sandbox_id is None:
            await self.control(scope, receive, send)
            return
        await self._sandbox(scope, receive, send, svc, plane, sandbox_id, headers)

    async def _sandbox(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        svc: Services,
        plane: _DataPlane,
        sandbox_id: str,
        headers: dict[str, str],
    ) -> None:
        record = svc.store.get_sandbox(sandbox_id) if _plausible(sandbox_id) else None
        if record is None or _time_is_up(record) or sandbox_id in plane.killing:
            await _json(send, 502, {"code": 502, "message": sandbox_gone_message(sandbox_id)})
            return
        if _auto_resumes(record):
            await svc.lifecycle.wake(sandbox_id)  # E2B's autoResume: the request waits
        elif record.status in ("paused", "stopped"):
            # E2B's proxy wakes a paused sandbox only if it was created with autoResume;
            # otherwise Sandbox.connect() does (Hutch's own API always wakes it).
            message = (
                f"The sandbox {sandbox_id} is paused: resume it with Sandbox.connect() "
                "(or create it with autoResume)"
            )
            await _json(send, 502, {"code": 502, "message": message})
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
        public = port == INTERPRETER_PORT and is_public(record)  # E2B's allowPublicTraffic
        if not (is_file_url or public or _admitted(plane.tokens, sandbox_id, port, headers)):
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
            await plane.process(scope, receive, cut_when_sandbox_lost(scope, send))
        elif path.startswith("/filesystem.Filesystem/"):
            await plane.filesystem(scope, receive, send)
        else:
            await plane.envd_http(scope, receive, send)


def _admitted(tokens: AccessTokens, sandbox_id: str, port: int, headers: dict[str, str]) -> bool:
    """envd wants its access token; the interpreter's port, like any port of an E2B
    sandbox, also opens to the traffic token (e2b-code-interpreter sends only that one on
    its /contexts calls, the envd token on /execute)."""
    if tokens.is_valid(sandbox_id, headers.get(ACCESS_HEADER)):
        return True
    return port == INTERPRETER_PORT and tokens.is_valid_traffic(
        sandbox_id, headers.get(TRAFFIC_HEADER)
    )


def _signer(svc: Services, tokens: AccessTokens, scope: Scope) -> str | None:
    """The sandbox whose token made this /files URL's signature, if any."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    signature = (query.get("signature") or [""])[0]
    if not signature:
        return None
    try:
        expires = int((query.get("signature_expiration") or ["0"])[0])
    except ValueError:
        return None
    path = (query.get("path") or [""])[0]
    user = (query.get("username") or [""])[0]
    operation = "write" if scope.get("method") == "POST" else "read"
    for record in svc.store.list_sandboxes():
        expected = tokens.signature(record.id, path, operation, user, expires)
        if hmac.compare_digest(expected, signature):
            return str(record.id)
    return None


def _time_is_up(record: SandboxRecord) -> bool:
    """Past its end and to be destroyed: gone for E2B now, though the reconciler's next pass
    (within a second) has not removed it yet."""
    return (
        record.on_timeout == "destroy"
        and record.expires_at is not None
        and record.expires_at <= time.time()
    )


def _auto_resumes(record: SandboxRecord) -> bool:
    return record.status == "paused" and record.labels.get(AUTO_RESUME_LABEL) == "true"


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
