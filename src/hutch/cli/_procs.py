"""``hutch ps``, ``logs``, ``kill`` and ``start``: background processes from the shell."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from hutch.cli._output import render_table

if TYPE_CHECKING:
    from hutch.sdk import Client, Sandbox

Handler = Callable[[argparse.Namespace], int]
AddCommand = Callable[..., argparse.ArgumentParser]


def add_process_commands(command: AddCommand, client_for: Callable[..., object]) -> None:
    def bind(handler: Callable[[argparse.Namespace, Callable[..., object]], int]) -> Handler:
        return lambda args: handler(args, client_for)

    p = command("ps", bind(cmd_ps), "list a sandbox's background processes")
    p.add_argument("id", metavar="ID")

    p = command(
        "logs",
        bind(cmd_logs),
        "print a background process's output",
        epilog="examples:\n"
        "  hutch logs sb-1a2b3c4d5e6f web -f            (follow until it ends)\n"
        "  hutch logs sb-1a2b3c4d5e6f web --since 4096  (from stdout byte 4096 on)",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("process", metavar="PROC")
    p.add_argument("-f", "--follow", action="store_true", help="keep following until it ends")
    p.add_argument("--since", type=int, default=0, metavar="N", help="start at byte offset N")

    p = command("kill", bind(cmd_kill), "send a signal to a background process's tree")
    p.add_argument("id", metavar="ID")
    p.add_argument("process", metavar="PROC")
    p.add_argument("-s", "--signal", default="SIGTERM", help="name or number (default: SIGTERM)")

    p = command(
        "start",
        bind(cmd_start),
        "start a background process and print its id",
        epilog="example:\n  hutch start sb-1a2b3c4d5e6f --name web -- python3 -m http.server 8080",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("--name", help="the process id (generated if left out)")
    p.add_argument("--cwd", help="working directory in the sandbox")
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="kill it and its children after this long (`hutch ps` then shows timed out)",
    )
    p.add_argument(
        "argv",
        metavar="CMD",
        nargs="+",
        help="after --: one argument runs as a shell command line, several as a program and "
        "its arguments",
    )


def _sandbox(args: argparse.Namespace, client_for: Callable[..., object]) -> tuple[Client, Sandbox]:
    from hutch.sdk import Client, Sandbox

    client = client_for(args)
    assert isinstance(client, Client)
    return client, Sandbox(args.id, client=client)


def cmd_ps(args: argparse.Namespace, client_for: Callable[..., object]) -> int:
    client, sandbox = _sandbox(args, client_for)
    with client:
        rows = []
        for p in sandbox.list_processes():
            info = p.info
            started = datetime.fromtimestamp(info.started_at).strftime("%Y-%m-%d %H:%M:%S")
            exit_code = "-" if info.exit_code is None else str(info.exit_code)
            what = info.command if info.command is not None else " ".join(info.argv)
            status = "timed out" if info.timed_out else info.status
            rows.append([info.id, str(info.pid), status, exit_code, started, what])
    print(render_table(["ID", "PID", "STATUS", "EXIT", "STARTED", "COMMAND"], rows))
    return 0


def cmd_logs(args: argparse.Namespace, client_for: Callable[..., object]) -> int:
    client, sandbox = _sandbox(args, client_for)
    with client:
        process = sandbox.get_process(args.process)
        for event in process.stream_logs(since=args.since, follow=args.follow):
            out = sys.stdout.buffer if event.type == "stdout" else sys.stderr.buffer
            out.write(event.data)
            out.flush()
        if process.info.truncated and args.since < max(
            process.info.stdout_start, process.info.stderr_start
        ):
            print(
                f"hutch: older output was dropped (kept from stdout byte "
                f"{process.info.stdout_start}, stderr byte {process.info.stderr_start})",
                file=sys.stderr,
            )
    return 0


def cmd_kill(args: argparse.Namespace, client_for: Callable[..., object]) -> int:
    client, sandbox = _sandbox(args, client_for)
    signal: str | int = int(args.signal) if args.signal.isdigit() else args.signal
    with client:
        sandbox.kill_process(args.process, signal)
    return 0


def cmd_start(args: argparse.Namespace, client_for: Callable[..., object]) -> int:
    argv = list(args.argv)
    command: str | list[str] = argv[0] if len(argv) == 1 else argv
    client, sandbox = _sandbox(args, client_for)
    with client:
        process = sandbox.start_process(command, args.name, cwd=args.cwd, timeout=args.timeout)
    print(process.id)
    return 0
