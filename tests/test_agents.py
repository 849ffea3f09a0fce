"""The `agents` image: its CLIs run, and Claude Code drives a whole task (model call, tool call,
file written) against a fake of the Anthropic Messages API running inside the same sandbox.

`scripts/test` builds the image first (`hutch image build agents`, cached by recipe digest), as
it does the default image: a missing image is a failure here, never a skip.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from hutch import Sandbox
from hutch.runtime import ImageNotFound, ImageStore
from tests._server import SHARED_IMAGES, ServerProcess

pytestmark = pytest.mark.sandbox

RECIPE = Path(__file__).resolve().parents[1] / "images" / "agents"
FAKE_API = Path(__file__).with_name("support") / "fake_anthropic.py"
FAKE_KEY = "sk-ant-fake-" + "k3y" * 8


@pytest.fixture(scope="module")
def agents_image() -> str:
    try:
        ImageStore(SHARED_IMAGES).get("agents")
    except ImageNotFound:
        pytest.fail(
            "the agents image is not in the shared image store: run `sudo .venv/bin/hutch image "
            "build agents` (scripts/test does)"
        )
    return "agents"


def test_agent_clis_run_as_the_user(sdk_env: ServerProcess, agents_image: str) -> None:
    pins = json.loads((RECIPE / "package.json").read_text())["dependencies"]
    with Sandbox.create(image=agents_image) as sb:
        versions = {
            "claude": pins["@anthropic-ai/claude-code"],
            "codex": pins["@openai/codex"],
            "opencode": pins["opencode-ai"],
        }
        for cli, version in versions.items():
            r = sb.exec(f"{cli} --version", user="user", timeout=60)
            assert r.exit_code == 0, (cli, r.stdout, r.stderr)
            assert version in r.stdout, (cli, r.stdout)
        r = sb.exec(
            "id -un; echo $HOME; stat -c %U /workspace /home/user; rg --version | head -1; "
            "git --version; node --version",
            user="user",
        )
        lines = r.stdout.splitlines()
        assert lines[:4] == ["user", "/home/user", "user", "user"], r.stdout
        assert lines[4].startswith("ripgrep ") and lines[5].startswith("git version")


def test_claude_code_writes_a_file_via_a_fake_model(
    sdk_env: ServerProcess, agents_image: str
) -> None:
    # The key arrives as a secret: the agent reads it from its environment like any process.
    with Sandbox.create(image=agents_image, secrets={"ANTHROPIC_API_KEY": FAKE_KEY}) as sb:
        sb.exec("cat > /tmp/fake_anthropic.py", stdin=FAKE_API.read_bytes())
        started = sb.exec(
            "FAKE_TARGET=/workspace/hello.txt nohup python3 /tmp/fake_anthropic.py 8765 "
            "/tmp/fake.jsonl > /tmp/fake.out 2>&1 &"
        )
        assert started.exit_code == 0
        _wait_for_port(sb, 8765)
        r = sb.exec(
            "claude -p 'Create hello.txt in the current directory.' --allowedTools Write",
            user="user",
            cwd="/workspace",
            env={"ANTHROPIC_BASE_URL": "http://127.0.0.1:8765"},
            timeout=180,
        )
        assert r.exit_code == 0, (r.stdout, r.stderr, sb.exec("cat /tmp/fake.out").stdout)
        assert "Done" in r.stdout
        written = sb.exec("cat /workspace/hello.txt; stat -c %U /workspace/hello.txt")
        assert written.stdout == "written by the agent through the fake model\nuser\n"
        requests = [json.loads(line) for line in sb.exec("cat /tmp/fake.jsonl").stdout.splitlines()]
        messages = [q for q in requests if q["path"].startswith("/v1/messages")]
        assert len(messages) >= 2  # the tool call, then the answer after the tool result
        assert all(q["x-api-key"] == FAKE_KEY for q in messages)
        assert any(q["stream"] for q in messages)
        results = [res for q in messages for res in q["tool_results"]]
        assert results and not results[-1]["is_error"], results


def _wait_for_port(sb: Sandbox, port: int, timeout: float = 30.0) -> None:
    probe = (
        "import socket,sys\n"
        f"s=socket.socket(); s.settimeout(1); sys.exit(s.connect_ex(('127.0.0.1', {port})))"
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sb.run("python3", ["-c", probe]).exit_code == 0:
            return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}: {sb.exec('cat /tmp/fake.out').stdout}")
