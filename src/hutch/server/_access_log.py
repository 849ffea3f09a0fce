"""The access log, the audit log and the request id (ASGI middleware, outermost).

Every HTTP request gets an id: the client's `X-Request-Id` if it is sane (1-64 characters of
`[A-Za-z0-9._:-]`), else a new one. It goes back in the `X-Request-Id` header and into every
error body (`{"error": {..., "request_id"}}`), and it is on the request's access-log line
(logger `hutch.access`): method, path, status, duration, API key id, sandbox id.

The path is logged without its query string, and anything in it that looks like an API key
is masked: secrets never reach the log (preview tokens travel in the Host, which the preview
proxy takes before this app sees the request).

Each request that changes something (any method but GET/HEAD/OPTIONS that reached a route)
is also an audit record (logger `hutch.audit`): who (the key id) did what (the route's
name: `exec_command`, `write_file`, `destroy_sandbox`, ...) to which sandbox, and the outcome.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("hutch.access")
audit_log = logging.getLogger("hutch.audit")

REQUEST_ID_SCOPE_KEY = "hutch.request_id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_KEYLIKE = re.compile(r"(hk_|e2b_)[A-Za-z0-9_-]{6,}")
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Routes whose answer names the sandbox they made (it is not in their path).
_CREATES = frozenset({"create_sandbox"})
_MAX_ERROR_BODY = 64 * 1024


def request_id_of(scope: Scope) -> str | None:
    value = scope.get(REQUEST_ID_SCOPE_KEY)
    return value if isinstance(value, str) else None


def loggable_path(path: str) -> str:
    """The path as it may be logged: key-like segments masked (no query string is passed)."""
    return _KEYLIKE.sub(lambda m: m.group(1) + "***", path)


def _client_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            return text if _SANE_ID.fullmatch(text) else None
    return None


def with_request_id(body: bytes, request_id: str) -> bytes | None:
    """An error body with `request_id` in its `error` object; None if it is not that shape."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return None
    data["error"].setdefault("request_id", request_id)
    return json.dumps(data, separators=(",", ":")).encode()


class AccessLogMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        request_id = _client_request_id(scope) or secrets.token_hex(8)
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        scope.setdefault("state", {})
        started = time.perf_counter()
        outcome: dict[str, Any] = {"status": 500, "sandbox_id": None}
        if scope["type"] == "websocket":
            try:
                await self.app(scope, receive, self._ws_send(send, outcome))
            finally:
                self._log(scope, request_id, started, outcome)
            return
        try:
            await self.app(scope, receive, self._http_send(scope, send, request_id, outcome))
        finally:
            self._log(scope, request_id, started, outcome)

    def _ws_send(self, send: Send, outcome: dict[str, Any]) -> Send:
        async def tracking(message: Message) -> None:
            if message["type"] == "websocket.accept":
                outcome["status"] = 101
            elif message["type"] == "websocket.close" and outcome["status"] == 500:
                outcome["status"] = 403
            await send(message)

        return tracking

    def _http_send(
        self, scope: Scope, send: Send, request_id: str, outcome: dict[str, Any]
    ) -> Send:
        held: Message | None = None  # a response start held back while its body is read
        body = b""

        async def tracking(message: Message) -> None:
            nonlocal held, body
            if message["type"] == "http.response.start":
                status = int(message["status"])
                outcome["status"] = status
                headers = [
                    (k, v) for k, v in message.get("headers", ()) if k.lower() != b"x-request-id"
                ]
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
                if status >= 400 or _route_name(scope) in _CREATES:
                    held = message  # rewritten once its body is known (it is small)
                    return
                await send(message)
                return
            if message["type"] == "http.response.body" and held is not None:
                body += message.get("body", b"")
                if message.get("more_body", False) and len(body) <= _MAX_ERROR_BODY:
                    return
                start, held = held, None
                more = bool(message.get("more_body", False))
                if not more:
                    body = self._finish(start, body, request_id, outcome)
                await send(start)
                await send({"type": "http.response.body", "body": body, "more_body": more})
                return
            await send(message)

        return tracking

    def _finish(
        self, start: Message, body: bytes, request_id: str, outcome: dict[str, Any]
    ) -> bytes:
        if int(start["status"]) >= 400:
            rewritten = with_request_id(body, request_id)
            if rewritten is not None:
                body = rewritten
                start["headers"] = [
                    (k, str(len(body)).encode() if k.lower() == b"content-length" else v)
                    for k, v in start["headers"]
                ]
        else:
            try:
                created = json.loads(body)
                if isinstance(created, dict) and isinstance(created.get("id"), str):
                    outcome["sandbox_id"] = created["id"]
            except ValueError:
                pass
        return body

    def _log(self, scope: Scope, request_id: str, started: float, outcome: dict[str, Any]) -> None:
        state = scope.get("state") or {}
        path_params = scope.get("path_params") or {}
        sandbox_id = path_params.get("sandbox_id") or outcome["sandbox_id"]
        if isinstance(sandbox_id, str):
            sandbox_id = loggable_path(sandbox_id)  # a key sent as an id is still a key
        fields = {
            "request_id": request_id,
            "method": scope.get("method", "WS"),
            "path": loggable_path(scope.get("path", "")),
            "status": outcome["status"],
            "duration_ms": round((time.perf_counter() - started) * 1e3, 2),
            "key_id": state.get("key_id"),
            "sandbox_id": sandbox_id,
        }
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "%s %s %s %.1fms key=%s sandbox=%s request=%s",
                fields["method"],
                fields["path"],
                fields["status"],
                fields["duration_ms"],
                fields["key_id"] or "-",
                sandbox_id or "-",
                request_id,
                extra={"fields": fields},
            )
        action = _route_name(scope)
        if action is None or (scope["type"] == "http" and fields["method"] in _READS):
            return
        if scope["type"] == "websocket":
            action = f"open_{action}" if not action.startswith("open") else action
        record = {
            "key_id": fields["key_id"],
            "action": action,
            "sandbox_id": sandbox_id,
            "status": fields["status"],
            "request_id": request_id,
        }
        audit_log.info(
            "key=%s %s sandbox=%s -> %s request=%s",
            record["key_id"] or "-",
            action,
            sandbox_id or "-",
            record["status"],
            request_id,
            extra={"fields": record},
        )


def _route_name(scope: Scope) -> str | None:
    route = scope.get("route")
    name = getattr(route, "name", None)
    return name if isinstance(name, str) else None
