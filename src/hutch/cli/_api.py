"""``hutch api``: an API server for a shared PostgreSQL database, one of any number of
replicas behind a load balancer (``hutch serve`` is all of Hutch on one host, on SQLite)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from hutch.cli._output import print_error

Command = Callable[..., argparse.ArgumentParser]


def add_api_command(command: Command) -> None:
    p = command(
        "api",
        cmd_api,
        "run an API replica on a shared database",
        epilog="All state is in the database: run as many replicas as you like behind one load\n"
        "balancer. One of them at a time runs the reconciler (expiry, idle sleep). With the\n"
        "cluster's node token (HUTCH_NODE_TOKEN) a replica runs no sandbox itself: it places\n"
        "them on `hutch node` daemons (docs/cluster.md); without one, sandboxes run on this\n"
        "host and the replicas share one --home.\n\n"
        "example:\n"
        "  HUTCH_DATABASE_URL=postgresql://hutch:secret@db:5432/hutch HUTCH_NODE_TOKEN=... \\\n"
        "    hutch api --port 7070",
    )
    p.add_argument("--host", help="address to listen on (default: $HUTCH_HOST, then 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: $HUTCH_PORT, then 7070)")
    p.add_argument("--home", type=Path, help="this replica's state directory ($HUTCH_HOME)")
    p.add_argument(
        "--database-url",
        help="postgresql://USER:PASSWORD@HOST:PORT/DB (default: $HUTCH_DATABASE_URL)",
    )
    p.add_argument(
        "--database",
        type=Path,
        help="a SQLite file shared by processes of one machine, instead ($HUTCH_DATABASE)",
    )


def cmd_api(args: argparse.Namespace) -> int:
    from hutch.server import ServerConfig, run

    url = args.database_url or os.environ.get("HUTCH_DATABASE_URL")
    if not url and not (args.database or os.environ.get("HUTCH_DATABASE")):
        print_error(
            "hutch api needs the shared database: give --database-url or HUTCH_DATABASE_URL="
            "postgresql://USER:PASSWORD@HOST:5432/DB (for one host, run `hutch serve`)"
        )
        return 2
    if url:
        # NB: through the environment, so that the server's own loader checks the URL as it
        # checks every HUTCH_* setting (the option wins over a variable already set).
        os.environ["HUTCH_DATABASE_URL"] = url
    cluster = bool(os.environ.get("HUTCH_NODE_TOKEN"))
    try:
        config = ServerConfig.from_env(
            home=args.home,
            host=args.host,
            port=args.port,
            api_key=getattr(args, "api_key", None),
            database=args.database,
            cluster=cluster or None,
            build_default_image=False if cluster else None,
        )
    except ValueError as exc:
        print_error(str(exc))
        return 2
    if cluster:
        import logging

        # Every node call is an httpx request: its INFO line per request would drown the log.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    run(config)
    return 0
