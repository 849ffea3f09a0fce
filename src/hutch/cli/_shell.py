"""``hutch shell ID``: the user's terminal, in raw mode, wired to a shell in the sandbox."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hutch.sdk import Sandbox, Terminal

READ_SIZE = 64 * 1024


def terminal_size(fd: int) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return max(1, min(size.columns, 1000)), max(1, min(size.lines, 1000))


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Keystrokes go through unprocessed (Ctrl-C is a byte for the remote shell), restored
    however the block ends."""
    if not os.isatty(fd):
        yield
        return
    import termios
    import tty

    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def run_shell(sandbox: Sandbox, shell: str | None) -> int:
    """Run an interactive shell; returns its exit code."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    cols, rows = terminal_size(stdout if os.isatty(stdout) else stdin)
    terminal = sandbox.terminal(cols=cols, rows=rows, shell=shell)
    wake_r, wake_w = os.pipe()
    done = threading.Event()

    def pump_output() -> None:
        try:
            while chunk := terminal.recv():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(stdout, view) :]
        finally:
            done.set()
            os.write(wake_w, b"x")

    def on_winch(signum: int, frame: object) -> None:
        os.write(wake_w, b"w")

    previous = signal.signal(signal.SIGWINCH, on_winch)
    reader = threading.Thread(target=pump_output, name="hutch-shell-output", daemon=True)
    try:
        with raw_mode(stdin):
            reader.start()
            stdin_open = True
            while not done.is_set():
                watch = [wake_r, stdin] if stdin_open else [wake_r]
                ready, _, _ = select.select(watch, [], [])
                if wake_r in ready:
                    if b"w" in os.read(wake_r, 64) and not done.is_set():
                        terminal.resize(*terminal_size(stdout if os.isatty(stdout) else stdin))
                if stdin in ready:
                    data = os.read(stdin, READ_SIZE)
                    if data:
                        terminal.send(data)
                    else:  # end of input (not a tty): as if the user typed Ctrl-D
                        stdin_open = False
                        terminal.send(b"\x04")
            reader.join(timeout=5)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        os.close(wake_r)
        os.close(wake_w)
        if terminal.exit_code is None:
            with contextlib.suppress(Exception):
                terminal.close()
    return _exit_status(terminal)


def _exit_status(terminal: Terminal) -> int:
    return terminal.exit_code if terminal.exit_code is not None else 1
