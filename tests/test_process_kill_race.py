"""A kill that meets a process at the moment it ends: the process is reported with its own
exit, never as killed by a signal that did not reach it; one that the kill did reach is.

The interleaving is forced: the agent's table runs in a child interpreter that installs no
SIGCHLD handler, so a process that exits stays an unreaped zombie until the kill request is
handled — exactly what happens when its SIGCHLD waits in the agent's loop behind the kill.
(A child interpreter, because the reaper's waitpid(-1) would also reap pytest's children.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SCRIPT = r"""
import json, os, socket, sys, time
from hutch.agent._bgprocs import get_op, kill_op, start_op
from hutch.agent._loop import Loop
from hutch.agent._server import Agent

state = sys.argv[1]
os.environ["HUTCH_AGENT_STATE_DIR"] = state
agent = Agent(Loop(), socket.socket(socket.AF_UNIX), workspace=state, base_env=dict(os.environ))

def zombie(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    return stat[stat.rfind(b")") + 2 :].split()[0] == b"Z"

def wait_zombie(pid):
    deadline = time.monotonic() + 30
    while not zombie(pid):
        assert time.monotonic() < deadline, "never ended"
        time.sleep(0.01)

out = {}
for name, command, sig in [
    ("ended-failing", "exit 3", 9),
    ("ended-ok", "exit 0", 15),
    ("running", "sleep 600", 9),
    ("running-term", "sleep 600", 15),
]:
    proc = start_op(agent, {"id": name, "command": command})["process"]
    if command.startswith("exit"):
        wait_zombie(proc["pid"])  # it has ended; its SIGCHLD is not handled yet
    answer = kill_op(agent, {"id": name, "signal": sig})["process"]
    if not command.startswith("exit"):
        wait_zombie(proc["pid"])
        agent.reaper.reap()  # what the loop's SIGCHLD handler does
    out[name] = {"answer": answer, "final": get_op(agent, {"id": name})["process"]}
print(json.dumps(out))
"""


def _run(tmp_path: Path) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def test_a_kill_racing_the_exit_reports_the_process_own_exit(tmp_path: Path) -> None:
    seen = _run(tmp_path)
    # Ended with exit 3 just before a SIGKILL: "failed", exit 3, no signal, and the kill's
    # own answer already says so (the old code called it "killed").
    for view in ("answer", "final"):
        failing = seen["ended-failing"][view]
        assert (failing["status"], failing["exit_code"], failing["signal"]) == ("failed", 3, None)
    ok = seen["ended-ok"]["final"]
    assert (ok["status"], ok["exit_code"], ok["signal"]) == ("completed", 0, None)
    # A kill that reached a live process is a kill.
    for name, sig in (("running", 9), ("running-term", 15)):
        final = seen[name]["final"]
        assert (final["status"], final["signal"]) == ("killed", sig), final
        assert seen[name]["answer"]["status"] == "running"  # the signal is sent, not yet reaped
