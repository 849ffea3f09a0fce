"""``hutch ports`` (preview URLs) and ``hutch network`` (a sandbox's egress policy)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hutch._wire.sandbox_options import HELP
from hutch.cli._connect import client_for as _client
from hutch.cli._output import print_error, render_table

Handler = Callable[[argparse.Namespace], int]
Command = Callable[..., argparse.ArgumentParser]


def add_network_commands(command: Command, connection: argparse.ArgumentParser) -> None:
    ports = command(
        "ports",
        _needs_subcommand,
        "expose a sandbox's ports at preview URLs",
        epilog="examples:\n"
        "  hutch ports expose sb-1a2b3c4d5e6f 8080   (prints the URL; anyone with it can open it)\n"
        "  hutch ports ls sb-1a2b3c4d5e6f\n"
        "  hutch ports unexpose sb-1a2b3c4d5e6f 8080 (the URL answers 404 at once)",
    ).add_subparsers(dest="ports_command", metavar="COMMAND", required=True)
    p = ports.add_parser(
        "expose", help="expose a port and print its preview URL", parents=[connection]
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("port", metavar="PORT", type=int)
    p.add_argument("--name", help="a label for the port")
    p.set_defaults(handler=cmd_ports_expose)
    p = ports.add_parser("unexpose", help="close a port's preview URL", parents=[connection])
    p.add_argument("id", metavar="ID")
    p.add_argument("port", metavar="PORT", type=int)
    p.set_defaults(handler=cmd_ports_unexpose)
    p = ports.add_parser("ls", help="list exposed ports and their URLs", parents=[connection])
    p.add_argument("id", metavar="ID")
    p.add_argument("port", metavar="PORT", type=int, nargs="?", help="print this port's URL only")
    p.set_defaults(handler=cmd_ports_ls)

    p = command(
        "network",
        cmd_network,
        "show or set a sandbox's egress policy (effective for its next packet)",
        epilog="examples:\n"
        "  hutch network sb-1a2b3c4d5e6f                 (show the policy and the address)\n"
        "  hutch network sb-1a2b3c4d5e6f internet --deny 10.0.0.0/8\n"
        "  hutch network sb-1a2b3c4d5e6f none --allow 203.0.113.7/32\n"
        "\nsetting a policy replaces it whole: lists not given are emptied.",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("mode", nargs="?", choices=["none", "internet"], help="egress: none or internet")
    add_cidr_options(p)


def add_cidr_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow",
        metavar="CIDR",
        action="append",
        default=[],
        help=f"{HELP['network_allow']}, even with network none; repeatable",
    )
    parser.add_argument(
        "--deny",
        metavar="CIDR",
        action="append",
        default=[],
        help=f"{HELP['network_deny']}; repeatable",
    )


def _needs_subcommand(args: argparse.Namespace) -> int:
    raise AssertionError("argparse requires a subcommand")  # pragma: no cover


def format_policy(policy: dict[str, Any]) -> str:
    """The policy as ``key value`` lines (lists comma-separated, ``-`` when empty)."""
    return "\n".join(
        f"{key:<8}{', '.join(value) if isinstance(value, list) else value}"
        if value
        else f"{key:<8}-"
        for key, value in (
            ("network", policy.get("network")),
            ("allow", policy.get("network_allow") or []),
            ("deny", policy.get("network_deny") or []),
            ("address", policy.get("address")),
        )
    )


def cmd_ports_expose(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        exposed = Sandbox(args.id, client=client).expose_port(args.port, name=args.name)
    print(exposed.url)
    return 0


def cmd_ports_unexpose(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        Sandbox(args.id, client=client).unexpose_port(args.port)
    return 0


def cmd_ports_ls(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        exposed = Sandbox(args.id, client=client).get_exposed_ports()
    if args.port is not None:
        urls = [p.url for p in exposed if p.port == args.port]
        if not urls:
            print_error(f"port {args.port} is not exposed; expose it with: hutch ports expose")
            return 1
        print(urls[0])
        return 0
    rows = [[str(p.port), p.name or "", p.url] for p in exposed]
    print(render_table(["PORT", "NAME", "URL"], rows))
    return 0


def cmd_network(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        sandbox = Sandbox(args.id, client=client)
        if args.mode is None:
            if args.allow or args.deny:
                print_error("--allow and --deny need a mode: hutch network ID none|internet ...")
                return 2
            policy = sandbox.get_network()
        else:
            policy = sandbox.set_network(args.mode, allow=args.allow, deny=args.deny)
    print(format_policy(policy))
    return 0
