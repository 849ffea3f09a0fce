"""``hutch wait-port``: block until a port listens inside a sandbox (for scripts and CI)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from hutch.cli._connect import client_for as _client

Command = Callable[..., argparse.ArgumentParser]


def add_wait_port_command(command: Command) -> None:
    p = command(
        "wait-port",
        cmd_wait_port,
        "wait until a port listens inside a sandbox (exit 1 on timeout)",
        epilog="examples:\n"
        "  hutch start sb-1a2b3c4d5e6f --name web -- python3 -m http.server 8080\n"
        "  hutch wait-port sb-1a2b3c4d5e6f 8080 && hutch ports expose sb-1a2b3c4d5e6f 8080\n"
        "  hutch wait-port sb-1a2b3c4d5e6f 3000 --http /health --timeout 120",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("port", metavar="PORT", type=int)
    p.add_argument(
        "--http",
        metavar="PATH",
        help="wait until GET PATH answers 200-399, not just for a listener",
    )
    p.add_argument(
        "--timeout", type=float, default=60.0, metavar="SECONDS", help="(default: %(default)s)"
    )


def cmd_wait_port(args: argparse.Namespace) -> int:
    from hutch.sdk import ProcessTimeout, Sandbox

    mode = "http" if args.http else "tcp"
    with _client(args) as client:
        try:
            Sandbox(args.id, client=client).wait_for_port(
                args.port, mode=mode, path=args.http or "/", timeout=args.timeout
            )
        except ProcessTimeout as exc:
            print(f"hutch: error: {exc}", file=sys.stderr)
            return 1
    return 0
