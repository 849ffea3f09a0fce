"""The agent as a plain host process, laid out and started the way a sandbox starts it.

For tests, benchmarks and development; the runtime can reuse ``build_code_dir`` for the
read-only ``/.hutch/code`` it mounts into sandboxes.
"""

from __future__ import annotations

import os
import py_compile
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType

_PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # .../hutch


def bootstrap_code(code_dir: str) -> str:
    """The ``python -c`` program that starts the agent from ``code_dir``."""
    return (
        f"import sys; sys.path.insert(0, {code_dir!r}); "
        "from hutch.agent.__main__ import main; main()"
    )


def build_code_dir(dest: Path) -> Path:
    """Copy only what the agent may import (``hutch/_wire``, ``hutch/agent`` and an empty
    ``hutch/__init__.py``) into ``dest``, with bytecode compiled next to it: in a sandbox the
    directory is read-only, and compiling at every start would cost tens of milliseconds."""
    hutch = dest / "hutch"
    hutch.mkdir(parents=True, exist_ok=True)
    (hutch / "__init__.py").write_text("")
    for package in ("_wire", "agent"):
        shutil.copytree(
            _PACKAGE_ROOT / package,
            hutch / package,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
            dirs_exist_ok=True,
        )
    for source in hutch.rglob("*.py"):
        py_compile.compile(str(source), doraise=True)
    return dest


class HostAgent:
    """An agent process listening on ``workdir/agent.sock`` (created here, passed as an fd)."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="hutch-agent-")) if workdir is None else workdir
        self.socket_path = self.workdir / "agent.sock"
        self.workspace = self.workdir / "workspace"
        self._env = dict(os.environ if env is None else env)
        self._python = python
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        code = build_code_dir(self.workdir / "code")
        self.workspace.mkdir(exist_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            listener.listen(128)
            env = {
                **self._env,
                "HUTCH_AGENT_LISTEN_FD": str(listener.fileno()),
                "HUTCH_AGENT_WORKSPACE": str(self.workspace),
            }
            self.process = subprocess.Popen(
                [self._python, "-I", "-S", "-c", bootstrap_code(str(code))],
                pass_fds=[listener.fileno()],
                env=env,
                cwd=self.workspace,
            )
        finally:
            listener.close()  # the agent holds its own copy

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM (a graceful stop), then SIGKILL after ``timeout``; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return self.process.returncode

    def __enter__(self) -> HostAgent:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
