"""The pty leader gVisor's terminals run under (agent/_pty_leader.py), run here on the host's
kernel: the agent's signals reach the program in the terminal, and never loop back to it."""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time

from hutch.agent._pty_leader import LEADER_ENV, leader_argv


def _spawn(program: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    """The leader running `program` on a new pty, as the agent starts it; the master."""
    argv = leader_argv({LEADER_ENV: json.dumps([sys.executable, "-I", "-S"])}, program)
    assert argv is not None
    master, slave = os.openpty()

    def controlling_tty() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    leader = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        preexec_fn=controlling_tty,  # as the agent does
    )
    os.close(slave)
    return leader, master


def _read_until(master: int, pattern: bytes, timeout: float = 10.0) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {pattern!r} in {seen!r}"
        if select.select([master], [], [], left)[0]:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: no process holds the tty any more
                chunk = b""
            assert chunk, f"the terminal closed before {pattern!r}: {seen!r}"
            seen += chunk
    return seen


def test_a_resize_of_a_program_in_the_leaders_own_group_does_not_loop_back() -> None:
    """`cat` makes no process group of its own: the foreground group is the leader's. The
    leader sent the resize's SIGWINCH to that group, itself included, and died of it."""
    leader, master = _spawn(["cat"])
    try:
        os.write(master, b"ready\n")
        _read_until(master, b"ready\r\nready")  # cat runs (the echo, then its copy)
        for _ in range(3):
            os.kill(leader.pid, signal.SIGWINCH)  # what the agent does on a resize
        time.sleep(0.3)
        assert leader.poll() is None, _read_until(master, b"\n", 1)
        os.write(master, b"still here\n")
        _read_until(master, b"still here\r\nstill here")
        # ^C asked for by the agent (SIGUSR1) still reaches cat: the terminal ends with it.
        os.kill(leader.pid, signal.SIGUSR1)
        assert leader.wait(10) == -signal.SIGINT
    finally:
        if leader.poll() is None:
            leader.kill()
            leader.wait()
        os.close(master)
