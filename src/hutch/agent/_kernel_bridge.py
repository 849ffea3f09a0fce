"""The Python code interpreter's bridge: runs under the IMAGE's python3, never the agent's.

The agent (stdlib only, the host's Python) cannot import pyzmq, so each Python code context
is this script plus the ipykernel it starts. The agent talks to it in JSON lines:

    agent -> bridge   {"id": 7, "code": "1+1", "timeout": 30.0}      run a cell
                      {"setup": {"cwd": "/x", "env": {...}}}         (warm pool) adopt a context
    bridge -> agent   {"type": "ready"} | {"type": "failed", "message": ...}   once, at start
                      {"id": 7, "type": "stdout" | "stderr", "text": ...}
                      {"id": 7, "type": "result", "data": {mime: value}, "is_main_result": b}
                      {"id": 7, "type": "error", "name", "value", "traceback": [lines]}
                      {"id": 7, "type": "done", "status": "ok" | "error" | "timeout" | "dead"}

Each message is written and flushed as soon as the kernel sends it, so output is live.
Charts: a display formatter in the kernel turns matplotlib figures into
``application/vnd.hutch.chart+json`` next to the PNG (see ``KERNEL_SETUP``).

The bridge speaks Jupyter's wire protocol itself, over pyzmq (which ipykernel needs anyway),
instead of jupyter_client's BlockingKernelClient: that client runs an asyncio loop (patched by
nest_asyncio) per message received, a heartbeat thread, and sleeps 0.2 s between its
readiness checks; importing it took ~0.26 s of CPU, which a new context paid while the kernel
was starting on the same CPU quota.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

# NB: run as a script (``python3 _kernel_bridge.py``): its directory is sys.path[0].
from _kernel_setup import KERNEL_SETUP  # type: ignore[import-not-found]

# NB: no uuid (it imports platform) nor typing at run time: the bridge's imports are CPU that
# a new context's kernel waits for, on the same one-CPU quota.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

CHART_MIME = "application/vnd.hutch.chart+json"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
DELIMITER = b"<IDS|MSG>"
PROTOCOL_VERSION = "5.3"
# How often a refused connect to the starting kernel is retried, and how soon a
# kernel_info_request is asked again when its answer came before iopub delivered anything
# (see Bridge.connect): each is a wait on a new context's path, not work.
RECONNECT_MS = 5
RESEND_S = 0.01


# Puts back the variables a run with its own env changed (see Bridge.run).
ENV_RESTORE = """def __hutch_restore(saved):
    import os
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
__hutch_restore(globals().pop("__hutch_env_saved", {}))
del __hutch_restore
"""

# The kernel's own start (ipykernel_launcher's steps, IPKernelApp.initialize then start), with:
# - no debugger and no jedi completion: importing them was over half of the kernel's start
#   (debugpy 0.3 s, jedi 0.2 s of ~1 s), and nothing here speaks the debug or completion
#   protocol. KERNEL_SETUP unblocks both, so user code may still import them;
# - IPython's `embed` stubbed while IPython is imported: its real module pulls in the terminal
#   shell and prompt_toolkit (~0.15 s of CPU), which a kernel never uses; `IPython.embed()`
#   still works (the stub imports the real one) and so does a later import of the module;
# - psutil stubbed while ipykernel is imported: kernelbase imports it at the top (~0.15 s of a
#   0.5 s import at load 15, measured with -X importtime) for usage and shutdown requests only.
#   The stub's attributes import the real one when first used; `Process` is a function, as the
#   class body names it in an annotation. User code that imports psutil gets the real module;
# - KERNEL_SETUP run before the kernel serves, not sent as a first cell (one round trip less).
KERNEL_LAUNCH = (
    "import sys, types\n"
    "sys.modules['debugpy'] = sys.modules['jedi'] = None\n"
    "def __hutch_embed(**kwargs):\n"
    "    from IPython.terminal.embed import embed\n"
    "    return embed(**kwargs)\n"
    "__stub = types.ModuleType('IPython.terminal.embed')\n"
    "__stub.embed = __hutch_embed\n"
    "sys.modules[__stub.__name__] = __stub\n"
    "class __HutchLazy(types.ModuleType):\n"
    "    def __getattr__(self, name):\n"
    "        import importlib\n"
    "        if sys.modules.get(self.__name__) is self:\n"
    "            del sys.modules[self.__name__]\n"
    "        return getattr(importlib.import_module(self.__name__), name)\n"
    "def __hutch_process(*args, **kwargs):\n"
    "    import psutil\n"
    "    return psutil.Process(*args, **kwargs)\n"
    "__ps = __HutchLazy('psutil')\n"
    "__ps.Process = __hutch_process\n"
    "sys.modules['psutil'] = __ps\n"
    "from ipykernel.kernelapp import IPKernelApp\n"
    "for __name, __mod in (('IPython.terminal.embed', __stub), ('psutil', __ps)):\n"
    "    if sys.modules.get(__name) is __mod:\n"
    "        del sys.modules[__name]\n"
    "del __stub, __hutch_embed, __ps, __name, __mod, __HutchLazy, __hutch_process\n"
    "__app = IPKernelApp.instance()\n"
    "__app.initialize()\n" + KERNEL_SETUP + "__app.start()\n"
)
# Input history in memory: `%history` and `In`/`Out` work, but no SQLite file is created in the
# sandbox at start nor written after every cell.
KERNEL_OPTIONS = ["--HistoryManager.hist_file=:memory:"]


def emit(message: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class KernelClient:
    """The client half of Jupyter's wire protocol that a bridge needs: requests on the shell
    channel, replies and output read from shell and iopub with one poller, signed with the
    connection's key (https://jupyter-client.readthedocs.io/en/stable/messaging.html)."""

    def __init__(self, info: dict[str, Any]) -> None:
        import zmq  # type: ignore[import-not-found]

        self._zmq = zmq
        self._key = str(info["key"]).encode()
        self._session = os.urandom(16).hex()
        context = zmq.Context.instance()
        base = f"tcp://{info['ip']}:"
        self.shell = context.socket(zmq.DEALER)
        self.iopub = context.socket(zmq.SUB)
        self.iopub.setsockopt(zmq.SUBSCRIBE, b"")
        for sock, port in ((self.shell, info["shell_port"]), (self.iopub, info["iopub_port"])):
            sock.setsockopt(zmq.LINGER, 0)
            # The bridge connects while the kernel is still importing: the first connects are
            # refused, and zmq retries every RECONNECT_IVL (100 ms by default), so a kernel
            # that bound its ports just after a retry was reached up to 100 ms late.
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_MS)
            sock.connect(base + str(port))
        self._poller = zmq.Poller()
        self._poller.register(self.shell, zmq.POLLIN)
        self._poller.register(self.iopub, zmq.POLLIN)

    def _sign(self, parts: list[bytes]) -> bytes:
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part)
        return mac.hexdigest().encode()

    def send(self, msg_type: str, content: dict[str, Any]) -> str:
        msg_id = os.urandom(16).hex()
        header = {
            "msg_id": msg_id,
            "session": self._session,
            "username": "hutch",
            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime()),
            "msg_type": msg_type,
            "version": PROTOCOL_VERSION,
        }
        parts = [json.dumps(header).encode(), b"{}", b"{}", json.dumps(content).encode()]
        self.shell.send_multipart([DELIMITER, self._sign(parts), *parts])
        return msg_id

    def execute(self, code: str, *, silent: bool = False) -> str:
        return self.send(
            "execute_request",
            {
                "code": code,
                "silent": silent,
                "store_history": not silent,
                "user_expressions": {},
                "allow_stdin": False,
                # NB: True makes ipykernel abort the execute requests that reach it just
                # after a failed one (they get only busy/idle: an empty run). Each request
                # here is a run of its own: a run after an interrupted or failing one (the
                # next client's, a per-run env's restore) must still run.
                "stop_on_error": False,
            },
        )

    def poll(self, timeout: float) -> list[tuple[str, dict[str, Any]]]:
        """What arrived within ``timeout`` seconds: ("shell" | "iopub", message) pairs, in
        the order each channel received them; an unsigned or malformed message is dropped."""
        events = self._poller.poll(int(timeout * 1000))
        out: list[tuple[str, dict[str, Any]]] = []
        for sock, _ in events:
            channel = "shell" if sock is self.shell else "iopub"
            while True:
                try:
                    frames = sock.recv_multipart(self._zmq.NOBLOCK)
                except self._zmq.Again:
                    break
                message = self._parse(frames)
                if message is not None:
                    out.append((channel, message))
        return out

    def _parse(self, frames: list[bytes]) -> dict[str, Any] | None:
        try:
            i = frames.index(DELIMITER)
        except ValueError:
            return None
        parts = frames[i + 2 : i + 6]
        if len(parts) < 4 or not hmac.compare_digest(frames[i + 1], self._sign(parts)):
            return None
        return {
            "header": json.loads(parts[0]),
            "parent_header": json.loads(parts[1]),
            "content": json.loads(parts[3]),
        }

    def close(self) -> None:
        self.shell.close(linger=0)
        self.iopub.close(linger=0)


class Bridge:
    """Launches the kernel itself (no KernelManager: its kernelspec lookup and launcher cost
    ~0.5 s), then imports pyzmq while the kernel starts."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.kc: KernelClient | None = None
        self.info: dict[str, Any] = {}
        self.connection_file = ""
        self.cwd: str | None = None
        self.env: dict[str, str] = {}

    def launch(self, cwd: str | None, env: dict[str, str] | None) -> None:
        import importlib.util
        import secrets
        import tempfile

        for module in ("ipykernel", "zmq"):
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(
                    f"No module named {module!r} in {sys.executable} (Debian: python3-ipykernel; "
                    "or pip install ipykernel)"
                )

        self.cwd, self.env = cwd, dict(env or {})
        shell, iopub, stdin, control, hb = _free_ports(5)
        self.info = {
            "shell_port": shell,
            "iopub_port": iopub,
            "stdin_port": stdin,
            "control_port": control,
            "hb_port": hb,
            "ip": "127.0.0.1",
            "key": secrets.token_hex(16),
            "transport": "tcp",
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        }
        fd, self.connection_file = tempfile.mkstemp(prefix="hutch-kernel-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(self.info, f)
        kernel_env = dict(os.environ)
        kernel_env.update(self.env)
        kernel_env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        kernel_env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        kernel_env["JPY_PARENT_PID"] = str(os.getpid())  # the kernel exits when the bridge does
        self.proc = subprocess.Popen(
            [sys.executable, "-c", KERNEL_LAUNCH, "-f", self.connection_file, *KERNEL_OPTIONS],
            cwd=cwd or os.getcwd(),
            env=kernel_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # NB: never our stdout, which is the agent's JSON lines
            stderr=None,  # the bridge's stderr: the agent keeps its tail for error messages
        )

    def connect(self) -> None:
        """Wait until the kernel answers on shell AND iopub delivers to us: a SUB socket
        misses what is published before its subscription reaches the kernel, so a reply alone
        does not prove that a run's output would arrive."""
        kc = self.kc = KernelClient(self.info)
        deadline = time.monotonic() + 60
        msg_id, sent_at, replied_at, subscribed = "", 0.0, 0.0, False
        while True:
            now = time.monotonic()
            if not self.is_alive():
                raise RuntimeError("the kernel exited while starting")
            if now > deadline:
                raise RuntimeError("the kernel did not answer within 60 s")
            # Ask again if the kernel missed the question (not listening yet) or its answer's
            # busy/idle went out before iopub was subscribed.
            if (
                not msg_id
                or (not replied_at and now - sent_at > 1)
                or (replied_at and now - replied_at > RESEND_S)
            ):
                msg_id, sent_at, replied_at = kc.send("kernel_info_request", {}), now, 0.0
            for channel, message in kc.poll(RESEND_S if replied_at else 0.05):
                if channel == "iopub":
                    subscribed = True
                elif message["parent_header"].get("msg_id") == msg_id:
                    replied_at = time.monotonic()
            if replied_at and subscribed:
                return

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def interrupt(self) -> None:
        if self.is_alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        if self.kc is not None:
            self.kc.close()
            self.kc = None
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
        if self.connection_file:
            try:
                os.unlink(self.connection_file)
            except OSError:
                pass

    def restart(self) -> None:
        self.kill()
        self.launch(self.cwd, self.env)
        self.connect()

    def kernel_pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def silent(self, code: str) -> None:
        kc = self.kc
        assert kc is not None
        msg_id = kc.execute(code, silent=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for channel, message in kc.poll(0.5):
                if channel == "shell" and message["parent_header"].get("msg_id") == msg_id:
                    c = message["content"]
                    if c.get("status") != "ok":
                        raise RuntimeError(
                            f"kernel setup failed: {c.get('ename')}: {c.get('evalue')}"
                        )
                    return
            if not self.is_alive():
                raise RuntimeError("the kernel died")
        raise RuntimeError("the kernel did not answer within 60 s")

    def run(
        self, run_id: int, code: str, timeout: float | None, env: dict[str, str] | None = None
    ) -> None:
        if not self.is_alive():
            return self.dead(run_id)
        if not env:
            return self._run(run_id, code, timeout)
        # Per-run variables (E2B's run_code(envs=...)): set in the kernel's os.environ for
        # this run (so `!` commands and subprocesses see them too), then put back as they
        # were, also when the cell changed them.
        names = sorted(env)
        self.silent(
            "import os as __o\n"
            f"__hutch_env_saved = {{k: __o.environ.get(k) for k in {names!r}}}\n"
            f"__o.environ.update({env!r})\ndel __o\n"
        )
        try:
            self._run(run_id, code, timeout)
        finally:
            if self.is_alive():
                try:
                    self.silent(ENV_RESTORE)
                except Exception:  # a restarted kernel has its env afresh: nothing to put back
                    pass

    def _run(self, run_id: int, code: str, timeout: float | None) -> None:
        kc = self.kc
        assert kc is not None
        msg_id = kc.execute(code)
        execution_count: int | None = None
        deadline = None if timeout is None else time.monotonic() + timeout
        interrupted_at = None
        status = "ok"
        idle = False
        while not idle:
            now = time.monotonic()
            if deadline is not None and interrupted_at is None and now >= deadline:
                interrupted_at = now
                status = "timeout"
                self.interrupt()
            if interrupted_at is not None and now - interrupted_at > 10:
                # The cell ignores KeyboardInterrupt (a C loop, a bare except): restart.
                self.restart()
                emit(
                    {
                        "id": run_id,
                        "type": "error",
                        "name": "TimeoutError",
                        "value": "the cell ignored the interrupt; the kernel was restarted "
                        "and its state is lost",
                        "traceback": [],
                    }
                )
                break
            # NB: the wait ends as soon as a message arrives; its length only bounds how late
            # a timeout or a dead kernel is noticed.
            wait = 0.5 if deadline is None else max(0.01, min(0.5, deadline - now))
            messages = kc.poll(wait)
            if not messages and not self.is_alive():
                return self.dead(run_id)
            for channel, msg in messages:
                if channel != "iopub" or msg["parent_header"].get("msg_id") != msg_id:
                    continue  # shell: the execute_reply (iopub's idle is what ends a run)
                if msg["header"].get("msg_type") == "execute_input":
                    execution_count = msg["content"].get("execution_count")
                idle = self._relay(run_id, msg) or idle
                if msg["header"].get("msg_type") == "error" and status == "ok":
                    status = "error"
        if idle and execution_count is None:
            # Idle without an execute_input: the kernel aborted the request unrun (see
            # stop_on_error). Never an empty run that looks like a success.
            status = "error"
            emit(
                {
                    "id": run_id,
                    "type": "error",
                    "name": "RunAborted",
                    "value": "the kernel aborted this run without running it; run it again",
                    "traceback": [],
                }
            )
        emit({"id": run_id, "type": "done", "status": status, "execution_count": execution_count})

    def _relay(self, run_id: int, msg: dict[str, Any]) -> bool:
        """Emit one iopub message of a run; True when it is the kernel's idle status."""
        kind = msg["header"].get("msg_type")
        content = msg["content"]
        if kind == "stream":
            emit({"id": run_id, "type": content["name"], "text": content["text"]})
        elif kind in ("execute_result", "display_data"):
            emit(
                {
                    "id": run_id,
                    "type": "result",
                    "data": content["data"],
                    "is_main_result": kind == "execute_result",
                }
            )
        elif kind == "error":
            emit(
                {
                    "id": run_id,
                    "type": "error",
                    "name": content["ename"],
                    "value": content["evalue"],
                    "traceback": [_ANSI.sub("", line) for line in content["traceback"]],
                }
            )
        elif kind == "status" and content["execution_state"] == "idle":
            return True
        return False

    def dead(self, run_id: int) -> None:
        emit(
            {
                "id": run_id,
                "type": "error",
                "name": "KernelDied",
                "value": "the kernel died (out of memory, os._exit, a crash); restart the "
                "context to go on",
                "traceback": [],
            }
        )
        emit({"id": run_id, "type": "done", "status": "dead"})


def main() -> None:
    options = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    bridge = Bridge()
    try:
        bridge.launch(options.get("cwd"), options.get("env"))
        bridge.connect()
    except Exception as e:
        bridge.kill()
        emit({"type": "failed", "message": f"{type(e).__name__}: {e}"})
        return
    emit({"type": "ready", "kernel_pid": bridge.kernel_pid()})
    try:
        for line in sys.stdin:
            request = json.loads(line)
            setup = request.get("setup")
            if setup is not None:
                code = "import os as __o\n"
                if setup.get("cwd"):
                    code += f"__o.chdir({setup['cwd']!r})\n"
                code += f"__o.environ.update({setup.get('env') or {}!r})\ndel __o\n"
                try:
                    bridge.silent(code)
                    emit({"type": "ready"})
                except Exception as e:
                    emit({"type": "failed", "message": str(e)})
                continue
            bridge.run(request["id"], request["code"], request.get("timeout"), request.get("env"))
    finally:
        try:
            bridge.kill()
        except Exception:
            pass


if __name__ == "__main__":
    threading.current_thread().name = "hutch-kernel-bridge"
    main()
