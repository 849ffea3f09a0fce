"""A code context whose interpreter never says it is ready: the create fails with
`context_failed` once the agent's start deadline passes, instead of waiting forever, and the
interpreter is killed. The real agent on the host (no root, no sandbox); the deadline is
shortened through the agent's own setting."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.agent._host import HostAgent
from hutch.node._agent_client import AgentConnection, AgentError


@pytest.fixture(scope="module")
def hung_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose `python3` writes its pid and then hangs, as a broken image's might."""
    bin_dir = tmp_path_factory.mktemp("hung-python")
    fake = bin_dir / "python3"
    fake.write_text(f"#!/bin/sh\necho $$ > {bin_dir}/pid\nexec sleep 1000\n")
    fake.chmod(0o755)
    return bin_dir


@pytest.fixture(scope="module")
def agent(hung_python: Path) -> Iterator[HostAgent]:
    env = {
        **os.environ,
        "PATH": f"{hung_python}:/usr/bin:/bin",
        "HUTCH_AGENT_CODE_START_S": "1",
    }
    with HostAgent(env=env) as host:
        yield host


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


async def test_an_interpreter_that_never_starts_fails_the_create(
    conn: AgentConnection, hung_python: Path
) -> None:
    with pytest.raises(AgentError) as err:
        # NB: the bound is only so that a regression fails instead of hanging the suite.
        await asyncio.wait_for(conn.call("code_context_create", language="python"), 60)
    assert err.value.code == "context_failed"
    assert "was not ready after 1 s and was killed" in str(err.value)
    pid = int((hung_python / "pid").read_text())
    for _ in range(100):  # SIGKILLed before the error was sent; give it 5 s to be gone
        if not _running(pid):
            break
        await asyncio.sleep(0.05)
    assert not _running(pid), "the hung interpreter was left running"
    # The agent goes on: the failed context is not listed, and a bash context starts.
    listed = await conn.call("code_context_list")
    assert all(c["language"] != "python" for c in listed["contexts"])
    made = await conn.call("code_context_create", language="bash")
    assert made["state"] == "ready"
