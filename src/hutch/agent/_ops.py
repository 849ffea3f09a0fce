"""The agent's op table: op name -> the module and function that handle it.

Handlers are imported on first use, so an idle agent pays (in memory and startup time) only
for the ops it has been asked to run. To add an op, write its handler in a module named for
what it holds (``_files.py``, ``_pty.py``, ...) and add one line below.

- Unary ops: ``handler(agent, request) -> dict`` of RESULT fields. Raise ``OpError(code,
  message)`` for an error result, ``InvalidRequest(field, message)`` for a bad field.
- Stream ops: ``factory(agent, conn, stream, request) -> StreamOp``: an object with
  ``start()``, ``on_frame(kind, channel, payload)``, ``cancel()``, ``terminate(sig)`` and
  ``connection_lost()``; it sends exactly one RESULT and then calls
  ``conn.stream_finished(stream, op)``.
"""

from __future__ import annotations

UNARY_OPS: dict[str, tuple[str, str]] = {
    "ping": ("_server", "ping_op"),
    "stat": ("_files", "stat_op"),
    "mkdir": ("_files", "mkdir_op"),
    "remove": ("_files", "remove_op"),
    "move": ("_files", "move_op"),
}

STREAM_OPS: dict[str, tuple[str, str]] = {
    "exec": ("_exec", "open_exec"),
    "read": ("_files", "open_read"),
    "write": ("_files", "open_write"),
    "list": ("_files", "open_list"),
    "watch": ("_watch", "open_watch"),
}


class OpError(Exception):
    """An op failed in a way the caller should hear about as an error RESULT."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_handler(table: dict[str, tuple[str, str]], op: str) -> object:
    module, name = table[op]
    return getattr(__import__(f"hutch.agent.{module}", fromlist=[name]), name)
