"""Code contexts: one interpreter process per context, driven over JSON lines.

A Python context is ``_kernel_bridge.py`` run by the image's own python3 (it starts an
ipykernel); a JavaScript or TypeScript context is ``_node_bridge.py``'s script run by the
image's node. The agent never imports either runtime: it spawns the bridge, writes one JSON
line per run and turns the bridge's lines into frames as they arrive (stdout/stderr as DATA,
results and errors as EVENTs, the end as the RESULT), so output is live.

After the first Python context of a sandbox is made, a spare one is started in the
background, so the next one is ready in milliseconds (the warm pool). A sandbox whose
environment has ``HUTCH_CODE_PRESTART=python`` (an image's ENV, or the sandbox's env) starts
that spare when the agent starts, so even its first context is taken from the pool: opt-in,
because a waiting kernel holds ~40-60 MB of the sandbox's memory (an idle sandbox ~6 MB).

Here: the contexts (their processes and the bridge's lines), the registry, and the ops that
create, restart, list and delete them. Running code in one is _code_run.py.
"""

from __future__ import annotations

import json
import os
import signal
from collections import deque

from hutch._wire.frames import Kind, encode_json_frame

from ._bash_context import BashDriver
from ._ops import OpError
from ._procs import DEFAULT_PATH, find_program, kill_tree, spawn
from ._requests import InvalidRequest
from ._workcg import oom_killed_since, oom_kills

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, Protocol

    from hutch._wire.agent_calls import (
        CodeContextInfo,
        CodeContextListResult,
        CodeContextResult,
        OkResult,
    )

    from ._server import Agent, Connection

    class Run(Protocol):
        """A run waiting on a context (_code_run.RunOp): told its output and its end."""

        run_id: int

        def on_output(self, kind: object, message: dict[str, Any]) -> None: ...
        def finish(self, status: str, execution_count: int | None = None) -> None: ...


LANGUAGES = ("python", "javascript", "typescript", "bash")
ALIASES = {"py": "python", "python3": "python", "js": "javascript", "node": "javascript",
           "ts": "typescript", "sh": "bash"}  # fmt: skip
NOT_PROVIDED = {"r": "R", "java": "Java"}
MAX_LINE = 64 * 1024 * 1024
STDERR_TAIL = 4096
# An EVENT must fit in one frame; a bigger result is replaced by a note saying so.
MAX_EVENT = 4 * 1024 * 1024 - 1024
# An interpreter that has not said "ready" by then is killed and its context is dead, so a
# create never waits forever (a python3 that hangs; the bridge's own wait for its kernel is
# 60 s). The agent's setting HUTCH_AGENT_CODE_START_S changes it (tests).
START_DEADLINE = float(os.environ.get("HUTCH_AGENT_CODE_START_S") or 120)


def normalize_language(value: object) -> str:
    if value is None:
        return "python"
    if not isinstance(value, str):
        raise InvalidRequest("language", "must be a string")
    language = ALIASES.get(value.lower(), value.lower())
    if language in NOT_PROVIDED:
        # E2B's interpreter has R and Java kernels; asking for one here is not a typo.
        raise OpError(
            "language_unavailable",
            f"{NOT_PROVIDED[language]} code contexts are not available on this server; "
            f"supported: {', '.join(LANGUAGES)} (run {NOT_PROVIDED[language]} with a command "
            "in an image that has it)",
        )
    if language not in LANGUAGES:
        raise OpError(
            "unknown_language",
            f"unknown language {value!r}; supported: {', '.join(LANGUAGES)}",
        )
    return language


class Context:
    """One interpreter process and the runs waiting for it."""

    def __init__(self, registry: Registry, context_id: str, language: str) -> None:
        self.registry = registry
        self.agent = registry.agent
        self.id = context_id
        self.language = language
        self.cwd: str | None = None
        self.env: dict[str, str] = {}
        self.state = "starting"  # starting | ready | dead | deleted
        self.failure = ""
        self.pid = 0
        self.kernel_pid = 0
        self._popen: Any = None
        self._stdin: int | None = None
        self._stdout: int | None = None
        self._stderr: int | None = None
        self._buf = bytearray()
        self._err_tail = b""
        self._ready_waiters: list[Callable[[Context], None]] = []
        self._start_timer: Any = None  # the kill at START_DEADLINE while "starting"
        self._runs: dict[int, Run] = {}
        self._order: deque[int] = deque()
        self._next_run = 1
        self._pending_out = bytearray()
        self.pid_started_ok = False  # the interpreter said "ready" at least once
        self.oom_kills_at_start = -1  # `oom_kills()` when it started: was it killed for memory?
        # A bash context has no bridge: the driver speaks to bash itself.
        self.bash = BashDriver(self) if language == "bash" else None

    # -- process ---------------------------------------------------------------------------

    def start(self) -> None:
        agent = self.agent
        env = dict(agent.base_env)
        env.update(self.env)
        env.setdefault("PATH", DEFAULT_PATH)
        cwd = self.cwd or (agent.workspace if os.path.isdir(agent.workspace) else "/")
        args = self.command(env, cwd)
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.oom_kills_at_start = oom_kills()
        try:
            self._popen = spawn(
                args, env=env, cwd=cwd, identity=None, stdin=in_r, stdout=out_w, stderr=err_w
            )
        except OSError as e:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise OpError("language_unavailable", f"could not start {args[0]}: {e}") from None
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        self.pid = self._popen.pid
        self._stdin, self._stdout, self._stderr = in_w, out_r, err_r
        for fd in (out_r, err_r):
            os.set_blocking(fd, False)
        os.set_blocking(in_w, False)
        agent.loop.add_reader(out_r, self._on_stdout)
        agent.loop.add_reader(err_r, self._on_stderr)
        agent.reaper.watch(self.pid, self._on_exit)
        self._start_timer = agent.loop.call_later(START_DEADLINE, self._not_started)
        if self.bash is not None:
            self.bash.started()

    def _not_started(self) -> None:
        if self.state == "starting":
            self.failure = f"it was not ready after {START_DEADLINE:g} s and was killed"
            self.kill()
            self._set_state("dead")

    def command(self, env: dict[str, str], cwd: str) -> list[str]:
        """The interpreter's bridge for this language, as a command line."""
        if self.bash is not None:
            return self.bash.command(env)
        options = json.dumps({"cwd": cwd, "env": self.env, "language": self.language})
        here = os.path.dirname(os.path.abspath(__file__))
        if self.language == "python":
            exe = find_program("python3", env["PATH"])
            if exe is None:
                raise OpError(
                    "language_unavailable",
                    "this image has no python3; Python contexts need python3 with ipykernel "
                    "and jupyter_client (Debian: python3-ipykernel python3-jupyter-client)",
                )
            return [exe, "-u", os.path.join(here, "_kernel_bridge.py"), options]
        exe = find_program("node", env["PATH"])
        if exe is None:
            raise OpError(
                "language_unavailable",
                f"this image has no node; {self.language} contexts need Node.js (Debian: nodejs)",
            )
        from ._node_bridge import NODE_BRIDGE

        env.setdefault("NODE_PATH", "/usr/local/lib/node_modules:/usr/lib/node_modules")
        return [exe, "-e", NODE_BRIDGE, options]

    def when_ready(self, callback: Callable[[Context], None]) -> None:
        if self.state == "starting":
            self._ready_waiters.append(callback)
        else:
            callback(self)

    def _set_state(self, state: str) -> None:
        self.state = state
        if state != "starting" and self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        # A waiter may send the context back to "starting" (a spare being adopted): the
        # others then wait for the next "ready".
        while self._ready_waiters and self.state != "starting":
            self._ready_waiters.pop(0)(self)

    def adopt(self, cwd: str | None, env: dict[str, str]) -> None:
        """A spare from the pool becomes a user's context: move it to its cwd and env."""
        self.cwd, self.env = cwd, env
        self.state = "starting"
        self._start_timer = self.agent.loop.call_later(START_DEADLINE, self._not_started)
        self._write({"setup": {"cwd": cwd, "env": env}})

    def _write(self, message: dict[str, Any]) -> None:
        if self._stdin is None:
            return
        self._pending_out += json.dumps(message).encode() + b"\n"
        self._flush()

    def _flush(self) -> None:
        if self._stdin is None:
            return
        try:
            n = os.write(self._stdin, self._pending_out)
        except BlockingIOError:
            n = 0
        except OSError:
            self._pending_out.clear()
            return
        del self._pending_out[:n]
        if self._pending_out:
            self.agent.loop.add_writer(self._stdin, self._flush)
        else:
            self.agent.loop.remove_writer(self._stdin)

    def _on_stderr(self) -> None:
        if self.bash is not None:
            return self.bash.on_stderr()
        assert self._stderr is not None
        try:
            data = os.read(self._stderr, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.agent.loop.remove_fd(self._stderr)
            os.close(self._stderr)
            self._stderr = None
            return
        self._err_tail = (self._err_tail + data)[-STDERR_TAIL:]

    def _on_stdout(self) -> None:
        if self.bash is not None:
            return self.bash.on_stdout()
        assert self._stdout is not None
        try:
            data = os.read(self._stdout, 256 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.agent.loop.remove_fd(self._stdout)
            os.close(self._stdout)
            self._stdout = None
            return
        self._buf += data
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) > MAX_LINE:
                    self._buf.clear()
                return
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            try:
                message = json.loads(line)
            except ValueError:
                continue  # the bridge writes JSON lines only; user code cannot reach this pipe
            if isinstance(message, dict):
                self._on_message(message)

    def _on_message(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "ready":
            kernel_pid = message.get("kernel_pid")
            if isinstance(kernel_pid, int):
                self.kernel_pid = kernel_pid
            self.pid_started_ok = True
            if self.state == "starting":
                self._set_state("ready")
            return
        if kind == "failed":
            self.failure = str(message.get("message", "the interpreter failed to start"))
            self.kill()
            self._set_state("dead")
            return
        run = self._runs.get(message.get("id"))  # type: ignore[arg-type]
        if run is None:
            return  # output after its run ended (a JS timer), or for a run whose opener left
        if kind == "done":
            del self._runs[run.run_id]
            status = str(message.get("status", "ok"))
            if status == "dead":  # the kernel died under a live bridge: retire both
                self.failure = "the kernel died; restart the context"
                self.state = "dead"
                self.kill()
            count = message.get("execution_count")
            run.finish(status, count if isinstance(count, int) else None)
        else:
            run.on_output(kind, message)

    def _on_exit(self, status: int) -> None:
        if self.bash is not None:
            self.bash.exited()
        if self._popen is not None:
            self._popen.returncode = os.waitstatus_to_exitcode(status)
            self._popen = None
        for fd in (self._stdin, self._stdout, self._stderr):
            if fd is not None:
                self.agent.loop.remove_fd(fd)
                os.close(fd)
        self._stdin = self._stdout = self._stderr = None
        if not self.failure:
            tail = self._err_tail.decode(errors="replace").strip().splitlines()[-3:]
            self.failure = "the interpreter exited" + (f": {' | '.join(tail)}" if tail else "")
        runs, self._runs = self._runs, {}
        for run in runs.values():
            run.on_output(
                "error",
                {
                    "name": "KernelDied",
                    "value": "the interpreter died (out of memory, os._exit, a crash); "
                    "restart the context to go on",
                    "traceback": [],
                },
            )
            run.finish("dead")
        if self.state != "deleted":
            self._set_state("dead")

    def kill(self) -> None:
        if self._popen is not None and self.pid:
            kill_tree(self.pid, self.pid)

    def interrupt(self) -> None:
        """KeyboardInterrupt in the kernel (Python) or break the running script (node)."""
        # NB: never SIGINT the Python bridge itself: it would die of the KeyboardInterrupt.
        if self.bash is not None:
            return self.bash.interrupt()
        pid = self.kernel_pid if self.language == "python" else self.pid
        if pid and self.state == "ready":
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass

    # -- runs ------------------------------------------------------------------------------

    def submit(
        self, run: Run, code: str, timeout: float | None, env: dict[str, str] | None = None
    ) -> None:
        """Run `code`; `env`: variables set for this run only, then put back (the bridge)."""
        if self.bash is not None:
            return self.bash.submit(run, code, timeout, env)
        run.run_id = self._next_run
        self._next_run += 1
        self._runs[run.run_id] = run
        message: dict[str, Any] = {"id": run.run_id, "code": code, "timeout": timeout}
        if env:
            message["env"] = env
        self._write(message)

    def forget(self, run: Run) -> None:
        self._runs.pop(run.run_id, None)

    def info(self) -> CodeContextInfo:
        return {
            "id": self.id,
            "language": self.language,
            "cwd": self.cwd,
            "state": self.state,
            "busy": bool(self._runs),
        }


class Registry:
    """Every context of this agent, the default one per language, and the warm spare."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.contexts: dict[str, Context] = {}
        self.defaults: dict[str, str] = {}
        self.spares: dict[str, Context] = {}

    def _new_id(self) -> str:
        return "ctx-" + os.urandom(6).hex()

    def create(self, language: str, cwd: str | None, env: dict[str, str]) -> Context:
        spare = self.spares.pop(language, None)
        if spare is not None and spare.state != "dead":
            context = spare
            context.id = self._new_id()
            self.contexts[context.id] = context
            context.when_ready(lambda c: c.adopt(cwd, env) if c.state == "ready" else None)
        else:
            if spare is not None:
                spare.kill()
            context = Context(self, self._new_id(), language)
            context.cwd, context.env = cwd, env
            context.start()
            self.contexts[context.id] = context
        if language == "python":
            context.when_ready(lambda c: self._refill(language) if c.state == "ready" else None)
        return context

    def _refill(self, language: str) -> None:
        if language in self.spares or self.agent.shutting_down:
            return
        spare = Context(self, "spare", language)
        try:
            spare.start()
        except OpError:
            return
        self.spares[language] = spare

    def get(self, context_id: str) -> Context:
        context = self.contexts.get(context_id)
        if context is None:
            raise OpError(
                "context_not_found",
                f"no code context {context_id!r}; list them with list_code_contexts() or "
                "create one with create_code_context()",
            )
        return context

    def default(self, language: str, cwd: str | None = None) -> Context:
        """The language's default context; `cwd` is where it starts if it is made now (E2B's
        start in /home/user, Hutch's in the workspace)."""
        context_id = self.defaults.get(language)
        if context_id is not None and context_id in self.contexts:
            current = self.contexts[context_id]
            if current.state == "dead" and current.pid_started_ok:
                # Its kernel died (OOM, os._exit): the default context is the one nobody
                # manages by hand, so it comes back by itself, afresh.
                return self.restart(context_id)
            return current
        context = self.create(language, cwd, {})
        self.defaults[language] = context.id
        return context

    def delete(self, context_id: str) -> None:
        context = self.get(context_id)
        del self.contexts[context_id]
        context.state = "deleted"
        context.kill()

    def restart(self, context_id: str) -> Context:
        if context_id == DEFAULT_CONTEXT_ALIAS:
            return self._restart_default()
        old = self.get(context_id)
        old.state = "deleted"
        old.kill()
        context = Context(self, context_id, old.language)
        context.cwd, context.env = old.cwd, old.env
        context.start()
        self.contexts[context_id] = context
        return context

    def _restart_default(self) -> Context:
        """`restart("default")`: the default python context, started afresh (or started)."""
        context_id = self.defaults.get("python")
        if context_id is None or context_id not in self.contexts:
            return self.default("python")
        return self.restart(context_id)


# The id `restart_code_context()` sends when given no context: the default python one.
DEFAULT_CONTEXT_ALIAS = "default"

# The sandbox's env var naming the languages whose interpreter starts with the agent.
PRESTART_VAR = "HUTCH_CODE_PRESTART"
PRESTART_LANGUAGES = ("python",)  # the ones whose bridge can be adopted (cwd and env later)


def prestart(agent: Agent) -> None:
    """Start the spare interpreters the sandbox's HUTCH_CODE_PRESTART names; other values are
    ignored (this runs before anyone could be told)."""
    registry = registry_of(agent)
    for name in agent.base_env.get(PRESTART_VAR, "").split(",")[:8]:
        language = ALIASES.get(name.strip().lower(), name.strip().lower())
        if language in PRESTART_LANGUAGES:
            registry._refill(language)


def registry_of(agent: Agent) -> Registry:
    registry: Registry | None = getattr(agent, "code_contexts", None)
    if registry is None:
        registry = Registry(agent)
        agent.code_contexts = registry  # type: ignore[attr-defined]
    return registry


# -- ops ---------------------------------------------------------------------------------------


def _parse_env(request: dict[str, Any]) -> dict[str, str]:
    env = request.get("env") or {}
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and k and "=" not in k and isinstance(v, str) for k, v in env.items()
    ):
        raise InvalidRequest("env", "must be an object of strings")
    return env


def _parse_cwd(agent: Agent, request: dict[str, Any]) -> str | None:
    cwd = request.get("cwd")
    if cwd is None:
        return None
    if not isinstance(cwd, str):
        raise InvalidRequest("cwd", "must be a string")
    cwd = os.path.join(agent.workspace, cwd)
    if not os.path.isdir(cwd):
        raise OpError("cwd_not_found", f"working directory {cwd} does not exist")
    return cwd


def failure_error(context: Context) -> dict[str, str]:
    unavailable = any(
        s in context.failure for s in ("ModuleNotFoundError", "No module named", "@babel")
    )
    code = "language_unavailable" if unavailable else "context_failed"
    failure, hint = context.failure, ""
    if unavailable:
        hint = "; the image lacks what this language needs"
    elif oom_killed_since(context.oom_kills_at_start):
        # A sandbox made with a small memory_mb: an interpreter needs ~100 MiB to start.
        failure = "the sandbox ran out of memory and the OOM killer ended it"
        hint = "; create the sandbox with more memory (memory_mb) or end what uses it"
    message = f"the {context.language} interpreter did not start: {failure}{hint}"
    return {"code": code, "message": message}


class _WaitReady:
    """A stream op that answers once a context is ready (create, restart)."""

    def __init__(self, agent: Agent, conn: Connection, stream: int, make: Callable[[], Context]):
        self._agent = agent
        self._conn = conn
        self._stream = stream
        self._make = make
        self.finished = False

    def start(self) -> None:
        try:
            context = self._make()
        except OpError as e:
            return self._send({"error": {"code": e.code, "message": e.message}})
        context.when_ready(self._ready)

    def _ready(self, context: Context) -> None:
        if context.state == "ready":
            return self.send_result({"ok": True, **context.info()})
        registry = registry_of(self._agent)
        if registry.contexts.get(context.id) is context:
            del registry.contexts[context.id]
        self._send({"error": failure_error(context)})

    def send_result(self, result: CodeContextResult) -> None:
        self._send(dict(result))

    def _send(self, body: dict[str, Any]) -> None:
        if self.finished:
            return
        self.finished = True
        self._conn.send(encode_json_frame(Kind.RESULT, self._stream, body))
        self._conn.stream_finished(self._stream, self)

    def on_frame(self, kind: int, channel: int, payload: bytes) -> None:
        pass

    def cancel(self) -> None:
        pass

    def terminate(self, sig: int) -> None:
        pass

    def connection_lost(self) -> None:
        self.finished = True

    def pause_output(self) -> None:
        pass

    def resume_output(self) -> None:
        pass


def open_create(agent: Agent, conn: Connection, stream: int, request: dict[str, Any]) -> _WaitReady:
    for field in request:
        if field not in ("op", "language", "cwd", "env"):
            raise InvalidRequest(field, "unknown field; takes language, cwd, env")
    language = normalize_language(request.get("language"))
    cwd = _parse_cwd(agent, request)
    env = _parse_env(request)
    return _WaitReady(agent, conn, stream, lambda: registry_of(agent).create(language, cwd, env))


def open_restart(
    agent: Agent, conn: Connection, stream: int, request: dict[str, Any]
) -> _WaitReady:
    context_id = request.get("id")
    if not isinstance(context_id, str):
        raise InvalidRequest("id", "must be a context id string")
    if context_id != DEFAULT_CONTEXT_ALIAS:
        registry_of(agent).get(context_id)  # an unknown id answers before the stream starts
    return _WaitReady(agent, conn, stream, lambda: registry_of(agent).restart(context_id))


def list_op(agent: Agent, request: dict[str, Any]) -> CodeContextListResult:
    registry = registry_of(agent)
    contexts = list(registry.contexts.values())
    defaults = request.get("defaults")
    if defaults is not None:
        if not isinstance(defaults, list):
            raise InvalidRequest("defaults", "must be a list of languages")
        cwd = request.get("cwd")
        if cwd is not None and not (isinstance(cwd, str) and cwd.startswith("/")):
            raise InvalidRequest("cwd", "must be an absolute path or null")
        for language in [normalize_language(d) for d in defaults]:
            try:
                registry.default(language, cwd)  # started now; "starting" until ready
            except OpError:
                pass  # the image lacks this language: listed without it
        first = list(registry.defaults.values())
        contexts = sorted(registry.contexts.values(), key=lambda c: c.id not in first)
    return {
        "ok": True,
        "contexts": [c.info() for c in contexts],
        "pool": {language: spare.state for language, spare in registry.spares.items()},
    }


def delete_op(agent: Agent, request: dict[str, Any]) -> OkResult:
    context_id = request.get("id")
    if not isinstance(context_id, str):
        raise InvalidRequest("id", "must be a context id string")
    registry_of(agent).delete(context_id)
    return {"ok": True}
