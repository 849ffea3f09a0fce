"""A `hutch` package tree whose agent echoes whatever it is sent: the runtime's own cost, with
no agent work in it (tests/test_runtime.py, bench/bench_create.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import hutch

ECHO_AGENT = """
import socket

def main():
    listener = socket.socket(fileno=3)
    while True:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
"""


def echo_agent_package(root: Path) -> Path:
    """Write the package under `root` and return its directory."""
    package = root / "echo-agent"
    shutil.copytree(
        Path(hutch.__file__).parent / "_wire",
        package / "_wire",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    (package / "agent").mkdir()
    (package / "agent/__init__.py").write_text("")
    (package / "agent/__main__.py").write_text(ECHO_AGENT)
    return package
