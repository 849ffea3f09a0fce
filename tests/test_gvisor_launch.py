"""The launcher gVisor sandboxes start every process through (agent/_launch.py), checked with
the real agent on the host: each child gets its hard process limit before any of its code
runs, without the agent forking, and a missing or unrunnable program reads as under runc."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.agent._host import HostAgent
from hutch.node._agent_client import AgentConnection
from hutch.runtime.container._gvisor_launch import LAUNCHER_NAME
from hutch.runtime.container._gvisor_preload import build_preload
from tests.test_agent import run

pytestmark = pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")

LIMIT = 77


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = build_preload(tmp_path_factory.mktemp("agent-home"))
    assert built is not None and (built / LAUNCHER_NAME).is_file()
    return built / LAUNCHER_NAME


@pytest.fixture(scope="module")
def calls(launcher: Path) -> Path:
    """A log of the launcher's invocations, kept by a script standing in front of it."""
    log = launcher.parent.parent / "launches"
    log.touch()
    return log


@pytest.fixture(scope="module")
def agent(launcher: Path, calls: Path) -> Iterator[HostAgent]:
    logged = launcher.parent.parent / "logged-launch"
    logged.write_text(f'#!/bin/sh\necho "$4" >> {calls}\nexec {launcher} "$@"\n')
    logged.chmod(0o755)
    # An environment of its own: what the caller's shell exports (OLDPWD after a `cd`) would
    # make the agent send plain word-list commands through the shell after all.
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HUTCH_AGENT_NPROC": str(LIMIT),
        "HUTCH_AGENT_LAUNCHER": str(logged),
    }
    with HostAgent(env=env) as host:
        yield host


def _read(path: str) -> str:
    return Path(path).read_text()


def max_processes(limits: bytes) -> list[str]:
    line = next(x for x in limits.decode().splitlines() if x.startswith("Max processes"))
    return line.split()[2:4]


async def test_every_child_has_the_hard_limit_and_the_agent_none(
    agent: HostAgent, conn: AgentConnection, calls: Path
) -> None:
    for request, first_candidate in (
        ({"argv": ["cat", "/proc/self/limits"]}, "/cat"),  # looked up on PATH
        ({"argv": ["/bin/cat", "/proc/self/limits"]}, "/bin/cat"),
        ({"command": "cat /proc/self/limits"}, "/cat"),  # a plain word list: no shell
        ({"command": "cat /proc/self/limits | cat"}, "sh"),  # through the shell
    ):
        ran = await run(conn, **request)
        assert ran.result["exit_code"] == 0, ran.stderr
        assert max_processes(ran.stdout) == [str(LIMIT), str(LIMIT)], ran.stdout
        # It went through the launcher (vfork-ed), not a preexec_fn (a fork of the agent).
        assert _read(str(calls)).splitlines()[-1].endswith(first_candidate)
    own = _read(f"/proc/{agent.pid}/limits").encode()
    assert max_processes(own) != [str(LIMIT), str(LIMIT)]


async def test_the_child_is_the_program_with_its_argv_and_no_extra_fd(
    conn: AgentConnection,
) -> None:
    ran = await run(conn, argv=["sh", "-c", 'echo "$0 $1"; ls /proc/$$/fd', "zero", "one"])
    assert ran.result["exit_code"] == 0, ran.stderr
    first, *fds = ran.stdout.decode().split()[:2], *ran.stdout.decode().split()[2:]
    assert first == ["zero", "one"]
    # stdin, stdout, stderr and ls's own directory fd: the launcher's report pipe is closed.
    assert len(fds) <= 4, fds
    assert ran.pid is not None
    # The pid reported is the program's own: the launcher exec'd it rather than forking.
    pid_run = await run(conn, argv=["sh", "-c", "echo $$"])
    assert pid_run.stdout.decode().strip() == str(pid_run.pid)


async def test_missing_and_unrunnable_programs_read_as_under_runc(
    agent: HostAgent, conn: AgentConnection
) -> None:
    ran = await run(conn, argv=["no-such-program-hutch"])
    assert ran.result["exit_code"] == 127
    assert b"no-such-program-hutch: command not found" in ran.stderr
    ran = await run(conn, argv=["/no/such/program"])
    assert ran.result["exit_code"] == 127
    assert b"/no/such/program: No such file or directory" in ran.stderr
    path = agent.workspace / "not-executable"
    path.write_text("#!/bin/sh\necho hi\n")
    ran = await run(conn, argv=[str(path)])
    assert ran.result["exit_code"] == 126
    assert b"ermission denied" in ran.stderr
    # The agent reaped the launcher it started: no zombie stays behind.
    children = _read(f"/proc/{agent.pid}/task/{agent.pid}/children").split()
    states = [_read(f"/proc/{c}/stat").split(") ")[1][0] for c in children]
    assert "Z" not in states


def test_a_state_file_caught_mid_rewrite_is_read_again_not_taken_for_a_dead_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # runsc truncates and rewrites its state file while a sandbox starts; a read in between
    # must not say the sandbox is gone (its start failed as "exited before it listened").
    from hutch.runtime.container import _runsc

    state = tmp_path / "sb-1_sandbox:sb-1.state"
    whole = json.dumps({"status": "running", "sandbox": {"pid": os.getpid()}, "bundleDir": "/b"})
    reads = iter([b"", whole[:17].encode(), whole.encode()])
    monkeypatch.setattr(Path, "read_bytes", lambda self: next(reads))
    runsc = object.__new__(_runsc.Runsc)
    runsc.root = tmp_path
    found = runsc.state("sb-1")
    assert found is not None and found.status == "running" and found.pid == os.getpid()
    monkeypatch.undo()
    state.write_text(whole[:17])  # torn for good: no sandbox, after a few tries
    assert runsc.state("sb-1") is None
