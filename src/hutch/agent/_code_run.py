"""Running code in a context (the code_run stream): picks the context, waits for it to be
ready, and shapes what the interpreter writes into frames: stdout/stderr as DATA with
offsets, results and errors as EVENTs (a result too big for a frame replaced by a note), the
end as the RESULT. The contexts themselves, their processes and the registry are in _code.py.
"""

from __future__ import annotations

import time

from hutch._wire.frames import Channel, FrameError, Kind, encode_frame, encode_json_frame

from ._bash_context import is_shell_name
from ._code import _parse_env, failure_error, normalize_language, registry_of
from ._ops import OpError
from ._requests import InvalidRequest

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from hutch._wire.agent_calls import CodeRunResult

    from ._code import Context
    from ._server import Agent, Connection


class RunOp:
    """One run of code in a context: frames out as the bridge writes, RESULT at ``done``."""

    def __init__(self, agent: Agent, conn: Connection, stream: int, request: dict[str, Any]):
        self._agent = agent
        self._conn = conn
        self._stream = stream
        self._request = request
        self._context: Context | None = None
        self._offsets = {Channel.STDOUT: 0, Channel.STDERR: 0}
        self._detached = False
        self.run_id = 0
        self.finished = False
        self._started = 0.0

    def start(self) -> None:
        request = self._request
        registry = registry_of(self._agent)
        try:
            context_id = request.get("context_id")
            if context_id is not None:
                context = registry.get(context_id)
            else:
                context = registry.default(
                    normalize_language(request.get("language")), request.get("cwd")
                )
        except OpError as e:
            return self._result({"error": {"code": e.code, "message": e.message}})
        self._context = context
        context.when_ready(self._go)

    def _go(self, context: Context) -> None:
        if self.finished:
            return
        if context.state != "ready":
            registry = registry_of(self._agent)
            if context.state == "dead" and not context.pid_started_ok:
                # A default context that never started: the image lacks what it needs.
                if registry.contexts.get(context.id) is context:
                    del registry.contexts[context.id]
                return self._result({"error": failure_error(context)})
            code = "context_dead" if context.state == "dead" else "context_not_found"
            why = context.failure or "it was deleted"
            return self._result(
                {
                    "error": {
                        "code": code,
                        "message": f"code context {context.id} cannot run code ({why}); "
                        "restart it with restart_code_context()",
                    }
                }
            )
        env = self._request.get("env") or {}
        bad = sorted(k for k in env if not is_shell_name(k)) if context.language == "bash" else []
        if bad:  # bash cannot set them; running without them would hide the mistake
            message = f"env: {', '.join(bad)} cannot be set in bash (letters, digits and _ only)"
            return self._result({"error": {"code": "invalid_request", "message": message}})
        # The first frame: until it, the server can still answer with an HTTP error.
        self._conn.send(
            encode_json_frame(
                Kind.EVENT,
                self._stream,
                {"event": "context", "id": context.id, "language": context.language},
            )
        )
        self._started = time.monotonic()
        context.submit(
            self, self._request["code"], self._request.get("timeout"), self._request.get("env")
        )

    def on_output(self, kind: object, message: dict[str, Any]) -> None:
        if self._detached:
            return
        if kind in ("stdout", "stderr"):
            channel = Channel.STDOUT if kind == "stdout" else Channel.STDERR
            data = str(message.get("text", "")).encode()
            self._conn.send(
                encode_frame(Kind.DATA, self._stream, data, channel, self._offsets[channel])
            )
            self._offsets[channel] += len(data)
            return
        event = {k: v for k, v in message.items() if k not in ("id", "type")}
        event["event"] = "result" if kind == "result" else "error"
        try:
            frame = encode_json_frame(Kind.EVENT, self._stream, event)
        except FrameError:
            event = {
                "event": "result",
                "data": {"text/plain": "[result too large to send: over 4 MB]"},
                "is_main_result": bool(message.get("is_main_result")),
            }
            frame = encode_json_frame(Kind.EVENT, self._stream, event)
        self._conn.send(frame)

    def finish(self, status: str, execution_count: int | None = None) -> None:
        duration = time.monotonic() - self._started if self._started else 0.0
        context = self._context
        result: CodeRunResult = {
            "ok": True,
            "status": status,
            "context_id": context.id if context else None,
            "duration": round(duration, 6),
        }
        if execution_count is not None:
            result["execution_count"] = execution_count
        self.send_result(result)

    def send_result(self, result: CodeRunResult) -> None:
        self._result(dict(result))

    def _result(self, body: dict[str, Any]) -> None:
        if self.finished:
            return
        self.finished = True
        if not self._detached:
            send = self._conn.send
            for channel, offset in self._offsets.items():
                send(encode_frame(Kind.EOF, self._stream, b"", channel, offset))
            send(encode_json_frame(Kind.RESULT, self._stream, body))
        self._conn.stream_finished(self._stream, self)

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        if kind == Kind.CANCEL:
            self.cancel()

    def cancel(self) -> None:
        if self.finished:
            return
        if not self._started:
            # Still waiting for its context (a kernel starting): it never runs, or a client
            # that gave up would leave its code running when the context is ready.
            context = self._context
            return self._result(
                {"ok": True, "status": "interrupted", "context_id": context.id if context else None,
                 "duration": 0.0}
            )  # fmt: skip
        if self._context is not None:
            self._context.interrupt()

    def terminate(self, sig: int) -> None:
        pass

    def connection_lost(self) -> None:
        self._detached = True
        self.cancel()
        if self._context is not None and not self.finished:
            self._context.forget(self)
        self.finished = True

    def pause_output(self) -> None:
        pass

    def resume_output(self) -> None:
        pass


def open_run(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> RunOp:
    for field in request:
        if field not in ("op", "code", "context_id", "language", "timeout", "cwd", "env"):
            raise InvalidRequest(
                field, "unknown field; takes code, context_id, language, timeout, cwd, env"
            )
    _parse_env(request)  # names and values strings: a bad one is refused before the run
    cwd = request.get("cwd")
    if cwd is not None and not (isinstance(cwd, str) and cwd.startswith("/")):
        raise InvalidRequest("cwd", "must be an absolute path or null")
    if not isinstance(request.get("code"), str):
        raise InvalidRequest("code", "must be a string")
    if request.get("context_id") is not None and not isinstance(request["context_id"], str):
        raise InvalidRequest("context_id", "must be a string or null")
    timeout = request.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0
    ):
        raise InvalidRequest("timeout", "must be a positive number of seconds or null")
    if request.get("context_id") is None:
        normalize_language(request.get("language"))
    return RunOp(agent, conn, stream, request)
