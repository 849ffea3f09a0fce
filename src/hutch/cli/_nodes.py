"""`hutch node` (one host's daemon of a cluster; its API replicas are `hutch api`, cli/_api.py)
and the node admin commands `hutch node ls|drain|ready` (through the API, like every client
command)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hutch.cli._connect import client_for

Command = Callable[..., argparse.ArgumentParser]


def add_node_commands(command: Command, connection: argparse.ArgumentParser) -> None:
    node = command("node", cmd_node, "run this host's node daemon, or manage nodes")
    node.add_argument("--name", help="this node's name ($HUTCH_NODE_NAME)")
    node.add_argument("--host", help="the host's node address to listen on ($HUTCH_NODE_HOST)")
    node.add_argument("--port", type=int, help="node API port; tunnels on port+1 (7171)")
    node.add_argument("--home", type=Path, help="state directory ($HUTCH_HOME)")
    node.add_argument(
        "--database-url", help="the cluster's PostgreSQL database ($HUTCH_DATABASE_URL)"
    )
    node.add_argument(
        "--database", type=Path, help="or a SQLite file shared on one machine ($HUTCH_DATABASE)"
    )
    node.add_argument(
        "--remove-all",
        action="store_true",
        help="destroy every sandbox of this node's home and exit (scripts/cluster down)",
    )
    subs = node.add_subparsers(dest="node_command", metavar="COMMAND")
    p = subs.add_parser("ls", help="list the cluster's nodes", parents=[connection])
    p.set_defaults(handler=cmd_node_ls)
    p = subs.add_parser("drain", help="place no new sandbox on a node", parents=[connection])
    p.add_argument("name")
    p.add_argument(
        "--move",
        action="store_true",
        help="also move its sandboxes to other nodes (stopped, disk sent, started there)",
    )
    p.set_defaults(handler=cmd_node_drain)
    p = subs.add_parser(
        "ready", help="let a drained node take sandboxes again", parents=[connection]
    )
    p.add_argument("name")
    p.set_defaults(handler=cmd_node_ready)


def cmd_node(args: argparse.Namespace) -> int:
    from hutch.server import NodeConfig, remove_node_sandboxes, run_node

    try:
        config = NodeConfig.from_env(
            name=args.name,
            host=args.host,
            port=args.port,
            home=args.home,
            database=args.database,
            database_url=args.database_url,
        )
    except ValueError as exc:
        raise SystemExit(f"hutch: {exc}") from None
    if args.remove_all:
        import asyncio

        for rid in asyncio.run(remove_node_sandboxes(config)):
            sys.stdout.write(f"removed {rid}\n")
        return 0
    run_node(config)
    return 0


def _print_node(node: dict[str, Any]) -> None:
    runtimes = ",".join(node.get("runtimes") or ["runc"])  # a replica of an older Hutch: none
    sys.stdout.write(
        f"{node['name']:<12} {node['state']:<9} {node['sandboxes']:>4} sandboxes  "
        f"{node['cpu']:g} cpu  {node['memory_mb']} MB  {node['disk_mb']} MB disk  {runtimes}  "
        f"{node['address']}  beat {node['heartbeat_age']} s ago\n"
    )


def cmd_node_ls(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        for node in client.request("GET", "/v1/nodes")["nodes"]:
            _print_node(node)
    return 0


def cmd_node_drain(args: argparse.Namespace) -> int:
    if not args.move:
        with client_for(args) as client:
            _print_node(client.request("POST", f"/v1/nodes/{args.name}/drain"))
        return 0
    import dataclasses

    from hutch.sdk import Client

    with client_for(args) as probe:
        # One request that moves every sandbox of the node: seconds each, not one minute in all.
        config = dataclasses.replace(probe.config, request_timeout=3600.0)
    with Client(config=config) as client:
        done = client.request("POST", f"/v1/nodes/{args.name}/move")
    _print_node(done["node"])
    failed = 0
    for move in done["moves"]:
        if move["to"] is None:
            failed += 1
            sys.stdout.write(f"{move['sandbox_id']}  not moved: {move['error']}\n")
        else:
            note = f" ({move['error']})" if move["error"] else ""
            sys.stdout.write(f"{move['sandbox_id']}  moved to {move['to']}{note}\n")
    return 1 if failed else 0


def cmd_node_ready(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        _print_node(client.request("POST", f"/v1/nodes/{args.name}/ready"))
    return 0
