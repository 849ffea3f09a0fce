"""The agent's handlers bound to the contract's types, for mypy only.

`UNARY_OPS` and `STREAM_OPS` (_ops.py) dispatch by module and function name so that handlers
load on first use; here the same functions are bound to `hutch._wire.agent_calls`'
`UnaryHandlers` and `StreamHandlers`, so that mypy checks each unary handler's return and each
stream handler's `send_result` against its op's result type. tests/test_agent_contract.py
checks that these tables and the dispatch tables name the same functions. Nothing imports
this module (importing it would load every handler, and it would make the op modules and _ops
one import loop).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from hutch._wire.agent_calls import StreamHandlers, UnaryHandlers
    from hutch.agent import (
        _bgprocs,
        _close_flush,
        _code,
        _code_run,
        _exec,
        _file_transfer,
        _files,
        _proc_log_stream,
        _pty,
        _secrets,
        _server,
        _sessions,
        _watch,
    )

    TYPED_UNARY_OPS: UnaryHandlers = {
        "ping": _server.ping_op,
        "set_secrets": _secrets.set_secrets_op,
        "pty_create": _pty.pty_create,
        "pty_resize": _pty.pty_resize,
        "pty_close": _pty.pty_close,
        "pty_list": _pty.pty_list,
        "pty_info": _pty.pty_info,
        "code_context_list": _code.list_op,
        "code_context_delete": _code.delete_op,
        "process_start": _bgprocs.start_op,
        "process_list": _bgprocs.list_op,
        "process_get": _bgprocs.get_op,
        "process_kill": _bgprocs.kill_op,
        "process_kill_all": _bgprocs.kill_all_op,
        "process_stdin": _bgprocs.stdin_op,
        "set_env": _bgprocs.set_env_op,
        "flush_closes": _close_flush.flush_closes_op,
        "port_check": _bgprocs.port_check_op,
        "session_create": _sessions.create_op,
        "session_list": _sessions.list_op,
        "session_delete": _sessions.delete_op,
        "stat": _files.stat_op,
        "mkdir": _files.mkdir_op,
        "remove": _files.remove_op,
        "move": _files.move_op,
    }

    TYPED_STREAM_OPS: StreamHandlers = {
        "exec": _exec.open_exec,
        "pty_attach": _pty.open_attach,
        "code_context_create": _code.open_create,
        "code_context_restart": _code.open_restart,
        "code_run": _code_run.open_run,
        "process_logs": _proc_log_stream.open_logs,
        "session_exec": _sessions.open_session_exec,
        "read": _file_transfer.open_read,
        "write": _file_transfer.open_write,
        "list": _files.open_list,
        "watch": _watch.open_watch,
    }
