# ruff: noqa: E501 -- KERNEL_SETUP is code for the kernel, kept compact
"""The Python code interpreter's bridge: runs under the IMAGE's python3, never the agent's.

The agent (stdlib only, the host's Python) cannot import jupyter_client, so each Python code
context is this script plus the ipykernel it starts. The agent talks to it in JSON lines:

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
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from typing import Any

CHART_MIME = "application/vnd.hutch.chart+json"
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

# Runs once inside the kernel, silently. It must not import matplotlib (that costs ~0.3 s):
# an import hook patches pie()/bxp() to remember their input when the user imports it.
KERNEL_SETUP = r"""
def __hutch_setup():
    import sys, importlib.abc, importlib.util
    for blocked in ("debugpy", "jedi"):  # see KERNEL_LAUNCH
        if blocked in sys.modules and sys.modules[blocked] is None:
            del sys.modules[blocked]
    from IPython import get_ipython
    from IPython.core.formatters import JSONFormatter
    from traitlets import Unicode

    def patch_axes(mod):
        Axes = mod.Axes
        pie, bxp = Axes.pie, Axes.bxp
        def hutch_pie(self, x, *args, **kwargs):
            labels = kwargs.get("labels")
            if labels is None and len(args) >= 2:
                labels = args[1]
            self._hutch_pie = {"values": [float(v) for v in x],
                               "labels": None if labels is None else [str(l) for l in labels]}
            return pie(self, x, *args, **kwargs)
        def hutch_bxp(self, bxpstats, *args, **kwargs):
            self._hutch_box = list(bxpstats)
            return bxp(self, bxpstats, *args, **kwargs)
        Axes.pie, Axes.bxp = hutch_pie, hutch_bxp

    class Finder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "matplotlib.axes._axes":
                return None
            sys.meta_path.remove(self)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                sys.meta_path.insert(0, self)
            if spec is None or spec.loader is None:
                return spec
            exec_module = spec.loader.exec_module
            def run(module):
                exec_module(module)
                patch_axes(module)
            spec.loader.exec_module = run
            return spec
    if "matplotlib.axes._axes" in sys.modules:
        patch_axes(sys.modules["matplotlib.axes._axes"])
    else:
        sys.meta_path.insert(0, Finder())

    def num(v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return str(v)
        return int(f) if f.is_integer() and abs(f) < 2**53 else f

    def nums(seq):
        return [num(v) for v in seq]

    def extract_axes(ax):
        from matplotlib.collections import PathCollection
        from matplotlib.container import BarContainer
        base = {"title": ax.get_title(), "x_label": ax.get_xlabel(), "y_label": ax.get_ylabel(),
                "x_scale": ax.get_xscale(), "y_scale": ax.get_yscale()}
        pie = getattr(ax, "_hutch_pie", None)
        if pie is not None:
            labels = pie["labels"] or [str(i) for i in range(len(pie["values"]))]
            total = sum(pie["values"]) or 1.0
            return dict(base, type="pie", elements=[
                {"label": l, "value": num(v), "fraction": v / total}
                for l, v in zip(labels, pie["values"])])
        box = getattr(ax, "_hutch_box", None)
        if box is not None:
            ticks = [t.get_text() for t in ax.get_xticklabels()]
            elements = []
            for i, s in enumerate(box):
                label = s.get("label")
                if label is None:
                    label = ticks[i] if i < len(ticks) and ticks[i] else str(i + 1)
                elements.append({"label": str(label), "min": num(s["whislo"]),
                                 "first_quartile": num(s["q1"]), "median": num(s["med"]),
                                 "third_quartile": num(s["q3"]), "max": num(s["whishi"]),
                                 "outliers": nums(s.get("fliers", []))})
            return dict(base, type="box_and_whisker", elements=elements)
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        if bars:
            ticks = {float(t): l.get_text() for t, l in zip(ax.get_xticks(), ax.get_xticklabels())}
            horizontal = getattr(bars[0], "orientation", "vertical") == "horizontal"
            if horizontal:
                ticks = {float(t): l.get_text() for t, l in zip(ax.get_yticks(), ax.get_yticklabels())}
            elements = []
            for c in bars:
                group = c.get_label() or ""
                if group.startswith("_"):
                    group = ""
                for r in c.patches:
                    if horizontal:
                        center, value = r.get_y() + r.get_height() / 2, r.get_width()
                    else:
                        center, value = r.get_x() + r.get_width() / 2, r.get_height()
                    label = ticks.get(float(center)) or ticks.get(round(center, 9)) or num(center)
                    elements.append({"label": label, "value": num(value), "group": group})
            return dict(base, type="bar", elements=elements)
        scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
        if scatters:
            elements = []
            for i, c in enumerate(scatters):
                pts = c.get_offsets()
                label = c.get_label()
                elements.append({"label": label if label and not label.startswith("_") else f"series {i}",
                                 "points": [[num(x), num(y)] for x, y in pts]})
            return dict(base, type="scatter", elements=elements)
        lines = [l for l in ax.get_lines()]
        if lines:
            elements = []
            for i, l in enumerate(lines):
                label = l.get_label()
                elements.append({"label": label if label and not label.startswith("_") else f"series {i}",
                                 "x": nums(l.get_xdata()), "y": nums(l.get_ydata())})
            return dict(base, type="line", elements=elements)
        return dict(base, type="unknown", elements=[])

    def extract_figure(fig):
        charts = [extract_axes(ax) for ax in fig.get_axes()]
        if len(charts) == 1:
            return charts[0]
        title = fig._suptitle.get_text() if getattr(fig, "_suptitle", None) else ""
        return {"type": "composite", "title": title, "elements": charts}

    class ChartFormatter(JSONFormatter):
        # NB: not for_type(): matplotlib_inline pops Figure from every formatter when it sets
        # up the inline backend, which would drop ours.
        format_type = Unicode("application/vnd.hutch.chart+json")

        def __call__(self, obj):
            cls = type(obj)
            if not (cls.__module__.startswith("matplotlib") and cls.__name__ == "Figure"):
                return None
            try:
                return extract_figure(obj)
            except Exception as e:
                return {"type": "unknown", "title": "", "elements": [], "error": repr(e)}

    ip = get_ipython()
    df = ip.display_formatter
    fmt = ChartFormatter(parent=df)
    df.formatters[fmt.format_type] = fmt
    df.active_types = list(df.active_types) + [fmt.format_type]
__hutch_setup()
del __hutch_setup
"""


# ipykernel_launcher without the debugger and IPython's jedi completion: importing them is
# over half of the kernel's start (measured debugpy 0.3 s and jedi 0.2 s of ~1 s), and
# nothing here speaks the debug or completion protocol. KERNEL_SETUP unblocks both, so user
# code may still import them.
KERNEL_LAUNCH = (
    "import sys; sys.modules['debugpy'] = sys.modules['jedi'] = None\n"
    "from ipykernel import kernelapp; kernelapp.launch_new_instance()"
)


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


class Bridge:
    """Launches the kernel itself (no KernelManager: its kernelspec lookup and launcher cost
    ~0.5 s) before importing jupyter_client, so the two start in parallel."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.kc: Any = None
        self.connection_file = ""
        self.cwd: str | None = None
        self.env: dict[str, str] = {}

    def launch(self, cwd: str | None, env: dict[str, str] | None) -> None:
        import importlib.util
        import secrets
        import tempfile

        for module in ("ipykernel", "jupyter_client"):
            if importlib.util.find_spec(module) is None:
                raise ModuleNotFoundError(
                    f"No module named {module!r} in {sys.executable} (Debian: python3-ipykernel "
                    "python3-jupyter-client; or pip install ipykernel jupyter_client)"
                )

        self.cwd, self.env = cwd, dict(env or {})
        shell, iopub, stdin, control, hb = _free_ports(5)
        info = {
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
            json.dump(info, f)
        kernel_env = dict(os.environ)
        kernel_env.update(self.env)
        kernel_env.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
        kernel_env["PYDEVD_DISABLE_FILE_VALIDATION"] = "1"
        kernel_env["JPY_PARENT_PID"] = str(os.getpid())  # the kernel exits when the bridge does
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-Xfrozen_modules=off",
                "-c",
                KERNEL_LAUNCH,
                "-f",
                self.connection_file,
            ],
            cwd=cwd or os.getcwd(),
            env=kernel_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # NB: never our stdout, which is the agent's JSON lines
            stderr=None,  # the bridge's stderr: the agent keeps its tail for error messages
        )

    def connect(self) -> None:
        from jupyter_client.blocking import BlockingKernelClient  # type: ignore[import-not-found]

        kc = BlockingKernelClient()
        kc.load_connection_file(self.connection_file)
        kc.start_channels()
        self.kc = kc
        deadline = time.monotonic() + 60
        while True:
            try:
                kc.wait_for_ready(timeout=1)
                break
            except RuntimeError:
                if not self.is_alive():
                    raise RuntimeError("the kernel exited while starting") from None
                if time.monotonic() > deadline:
                    raise RuntimeError("the kernel did not answer within 60 s") from None
        self.silent(KERNEL_SETUP)

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def interrupt(self) -> None:
        if self.is_alive():
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGINT)

    def kill(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
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
        assert self.kc is not None
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        while True:
            reply = self.kc.get_shell_msg(timeout=60)
            if reply["parent_header"].get("msg_id") == msg_id:
                break
        if reply["content"].get("status") != "ok":
            c = reply["content"]
            raise RuntimeError(f"kernel setup failed: {c.get('ename')}: {c.get('evalue')}")

    def run(self, run_id: int, code: str, timeout: float | None) -> None:
        kc = self.kc
        assert kc is not None
        if not self.is_alive():
            return self.dead(run_id)
        msg_id = kc.execute(code, store_history=True, allow_stdin=False)
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
            wait = 0.5 if deadline is None else max(0.01, min(0.5, deadline - now))
            try:
                msg = kc.get_iopub_msg(timeout=wait)
            except queue.Empty:
                if not self.is_alive():
                    return self.dead(run_id)
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
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
                if status == "ok":
                    status = "error"
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
                idle = True
        emit({"id": run_id, "type": "done", "status": status})

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
            bridge.run(request["id"], request["code"], request.get("timeout"))
    finally:
        try:
            bridge.kill()
        except Exception:
            pass


if __name__ == "__main__":
    threading.current_thread().name = "hutch-kernel-bridge"
    main()
