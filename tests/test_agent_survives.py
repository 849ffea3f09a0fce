"""Nothing a sandbox's code does can kill its agent: the OOM killer picks user processes only,
a fork bomb leaves room for the next exec, and `kill -9 -1` as sandbox root misses PID 1.

Each test abuses a fresh small sandbox as untrusted code would, then checks what a user
would notice: the next call works at once and says what happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator

import pytest

from hutch import CommandTimeout, Conflict, Sandbox
from tests._server import ServerProcess, runtime_ids, wait_for

pytestmark = pytest.mark.sandbox

# Many small Pythons (about 11 MB resident each, the agent about 13 MB): together far over the
# limit, each smaller than the agent, so an OOM killer that weighs processes by size alone,
# as the kernel's does, would pick the agent.
MEMORY_HUNGRY_FORKS = (
    "for i in $(seq 80); do python3 -c 'import time; b = bytearray(2 * 1024**2); "
    'b[::4096] = b"x" * (len(b) // 4096); time.sleep(60)\' & done; wait'
)


@pytest.fixture()
def small(server: ServerProcess) -> Iterator[Sandbox]:
    box = Sandbox.create(
        base_url=server.url, api_key=server.api_key, memory_mb=256, disk_mb=256, pids_limit=96
    )
    yield box
    box.destroy()


def _agent_pid_is_unchanged(sb: Sandbox, before: str) -> None:
    # The agent is PID 1: had it died, the sandbox would be gone with it, and a new one
    # could not have the same start time.
    assert sb.exec("cut -d' ' -f22 /proc/1/stat").stdout == before


def test_one_big_allocation_is_oom_killed_and_says_so(small: Sandbox) -> None:
    born = small.exec("cut -d' ' -f22 /proc/1/stat").stdout
    r = small.exec("python3 -c 'b = bytearray(2 * 1024**3); b[::4096] = b\"x\" * (len(b) // 4096)'")
    assert r.exit_code == 137, (r.exit_code, r.stderr)
    assert r.oom_killed is True
    ok = small.exec("echo still here")
    assert ok.stdout == "still here\n" and ok.oom_killed is False
    _agent_pid_is_unchanged(small, born)


def test_many_memory_hungry_processes_never_take_the_agent(small: Sandbox) -> None:
    born = small.exec("cut -d' ' -f22 /proc/1/stat").stdout
    with contextlib.suppress(CommandTimeout):  # the survivors sleep on: an expected end
        small.exec(MEMORY_HUNGRY_FORKS, timeout=20)
    # The agent answered the whole time and is the same process.
    assert small.exec("echo alive").stdout == "alive\n"
    _agent_pid_is_unchanged(small, born)


def test_a_killed_sigkill_that_is_not_oom_is_not_reported_as_oom(small: Sandbox) -> None:
    r = small.exec("kill -9 $$")
    assert r.exit_code == 137 and r.oom_killed is False


def test_a_background_process_killed_by_oom_says_so(small: Sandbox) -> None:
    p = small.start_process(
        "python3 -c 'b = bytearray(2 * 1024**3); b[::4096] = b\"x\" * (len(b) // 4096)'"
    )
    p.wait(timeout=60)
    info = small.get_process(p.id)
    assert info.status == "killed" and info.exit_code == 137
    assert info.oom_killed is True


def test_the_next_exec_works_at_once_after_a_fork_bomb_times_out(small: Sandbox) -> None:
    born = small.exec("cut -d' ' -f22 /proc/1/stat").stdout
    with pytest.raises(CommandTimeout):
        small.exec("bomb() { bomb | bomb & }; bomb; sleep 30", timeout=3)
    # No retry: the very next exec must be able to fork (bash, then its pipeline).
    after = small.exec("echo a | tr a b")
    assert (after.exit_code, after.stdout, after.stderr) == (0, "b\n", "")
    _agent_pid_is_unchanged(small, born)


def test_kill_minus_one_as_root_leaves_the_agent(small: Sandbox) -> None:
    born = small.exec("cut -d' ' -f22 /proc/1/stat").stdout
    small.start_process("sleep 600")
    small.exec("kill -9 -1")
    assert small.exec("echo alive").stdout == "alive\n"
    _agent_pid_is_unchanged(small, born)


def test_a_sandbox_sees_its_own_limits(server: ServerProcess) -> None:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key, memory_mb=512, cpu=1.0)
    try:
        r = sb.exec(
            "free -m | awk '/^Mem:/ {print $2}'; grep -c ^processor /proc/cpuinfo; "
            "python3 -c 'import os; print(os.cpu_count())'; cut -d. -f1 /proc/uptime"
        )
        total_mb, processors, cpu_count, uptime = r.stdout.split()
        # The host has 24 GB and 2 cores, and has been up for far longer than this sandbox.
        assert int(total_mb) == 512
        assert processors == "1" and cpu_count == "1"
        assert int(uptime) < 120
    finally:
        sb.destroy()


def _init_pid(server: ServerProcess, sandbox_id: str) -> int:
    rid = runtime_ids(server.home).get(sandbox_id, sandbox_id)
    state = json.loads((server.home / "runc" / rid / "state.json").read_text())
    return int(state["init_process_pid"])


def test_a_sandbox_whose_agent_is_killed_from_outside_says_so(server: ServerProcess) -> None:
    sb = Sandbox.create(base_url=server.url, api_key=server.api_key, memory_mb=256)
    try:
        assert sb.exec("echo ok").stdout == "ok\n"
        os.kill(_init_pid(server, sb.id), signal.SIGKILL)  # as a host OOM or an operator would
        wait_for(lambda: sb.info().status == "error", timeout=30)
        info = sb.info()
        assert info.status_reason is not None and info.status_reason.startswith("agent_exited")
        # Not "the agent does not answer, retry": the call says what happened.
        with pytest.raises(Conflict) as refused:
            sb.exec("echo again")
        assert "agent_exited" in str(refused.value)
        # Its disk was kept: an explicit start brings it back.
        sb.start()
        assert sb.info().status == "running"
        assert sb.exec("echo back").stdout == "back\n"
    finally:
        sb.destroy()
