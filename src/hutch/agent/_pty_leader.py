"""Ctrl-C, Ctrl-\\, Ctrl-Z and window resizes for terminals where the kernel does not send them.

gVisor's terminal (Debian's 2022 runsc) has no ISIG: ^C written to the master reaches the
shell as a plain byte and no SIGINT is sent, nor SIGWINCH on a resize. The agent cannot send
them itself: the foreground process group of a tty is only known to a process of the tty's
own session (`tcgetpgrp` answers ENOTTY to anyone else, on the master too, and gVisor's
/proc shows tpgid 0). So under gVisor (`HUTCH_AGENT_PTY_LEADER` set: the agent's own Python
command line, as JSON) each terminal's process is a small leader in the agent's Python: it is
the session's leader holding the tty, runs the shell as its child, and on a signal from the
agent (`REQUESTS`) sends the matching signal to whatever job is in the foreground. It exits
with the shell's status, so the terminal's exit code is the shell's.
"""

from __future__ import annotations

import json
import signal

LEADER_ENV = "HUTCH_AGENT_PTY_LEADER"

# What the agent sends the leader -> what the leader sends the foreground job.
REQUESTS = {
    signal.SIGUSR1: signal.SIGINT,
    signal.SIGUSR2: signal.SIGQUIT,
    signal.SIGTTIN: signal.SIGTSTP,  # the leader never reads the tty: SIGTTIN is free
    signal.SIGWINCH: signal.SIGWINCH,
}
# The byte of termios' c_cc index -> the leader's request signal.
_KEYS = (("VINTR", signal.SIGUSR1), ("VQUIT", signal.SIGUSR2), ("VSUSP", signal.SIGTTIN))

_LEADER = r"""
import os, signal, sys
requests = {REQUESTS}
pid = 0
def forward(number, _frame):
    try:
        group = os.tcgetpgrp(0)
        if group == os.getpgrp() and requests[number] == number:
            # The leader's own group is in the foreground (a program that makes no group
            # of its own, a shell not set up yet): a SIGWINCH sent to the group would come
            # back to this handler, again and again (a RecursionError ended a leader).
            if pid:
                os.kill(pid, number)
        else:
            os.killpg(group, requests[number])
    except OSError:
        pass
for number in requests:
    signal.signal(number, forward)
# The shell's own job control signals must not end the leader (it is in the foreground
# group until the shell makes its own).
for number in (signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTOU):
    signal.signal(number, signal.SIG_IGN)
env = dict(os.environ)
env.pop("PYTHONHOME", None)
pid = os.fork()
if pid == 0:
    for number in (*requests, signal.SIGINT, signal.SIGQUIT, signal.SIGTSTP, signal.SIGTTOU):
        signal.signal(number, signal.SIG_DFL)
    try:
        os.execvpe(sys.argv[1], sys.argv[1:], env)
    except OSError as e:
        os.write(2, f"{sys.argv[1]}: {e.strerror}\r\n".encode())
        os._exit(127)
while True:
    try:
        _, status = os.waitpid(pid, 0)
        break
    except InterruptedError:
        continue
code = os.waitstatus_to_exitcode(status)
if code < 0:
    signal.signal(-code, signal.SIG_DFL)
    os.kill(os.getpid(), -code)
os._exit(code & 0xFF)
""".replace("{REQUESTS}", "{" + ", ".join(f"{int(k)}: {int(v)}" for k, v in REQUESTS.items()) + "}")


def leader_argv(environ: dict[str, str], shell_argv: list[str]) -> list[str] | None:
    """The command that runs `shell_argv` under a leader, or None where none is needed."""
    prefix = environ.get(LEADER_ENV)
    if not prefix:
        return None
    return [*json.loads(prefix), "-c", _LEADER, *shell_argv]


def leader_env(environ: dict[str, str], env: dict[str, str]) -> dict[str, str]:
    """`env` plus what the leader's Python needs (it drops it again for the shell)."""
    home = environ.get("PYTHONHOME")
    return {**env, "PYTHONHOME": home} if home else env


def signal_keys(master: int) -> dict[int, signal.Signals]:
    """The terminal's signal characters now (`stty intr` may change them) -> the request to
    send the leader; empty when the program turned ISIG off (raw mode: ^C is its input)."""
    import termios

    try:
        attrs = termios.tcgetattr(master)
    except termios.error:
        return {}
    if not attrs[3] & termios.ISIG:
        return {}
    keys: dict[int, signal.Signals] = {}
    for name, request in _KEYS:
        char = attrs[6][getattr(termios, name)]
        value = char[0] if isinstance(char, bytes) and char else char
        if isinstance(value, int) and value != 0:  # 0: _POSIX_VDISABLE
            keys[value] = request
    return keys
