"""`hutch keys ...` and `hutch teams ...`: API keys with their team, role and expiry; teams and
their quotas (an admin key's commands)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from hutch.cli._output import format_time, render_table

# CLI flag -> the quota's field (docs/api.md, "Teams, keys and quotas").
QUOTA_FLAGS = {
    "running": ("max_running", int, "sandboxes not stopped"),
    "cpu": ("max_cpu", float, "total cpu of those"),
    "memory": ("max_memory_mb", int, "total memory of those, MiB"),
    "disk": ("max_disk_mb", int, "total disk of all its sandboxes, MiB"),
    "lifetime": ("max_lifetime", str, "longest timeout (seconds or '2h')"),
    "snapshots": ("max_snapshots", int, "snapshots kept"),
    "rate": ("rate_per_second", float, "requests per second per key"),
    "burst": ("rate_burst", int, "requests at once per key"),
}
NO_LIMIT = "none"


def add_key_and_team_commands(
    command: Callable[..., argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
    client: Callable[[argparse.Namespace], Any],
    needs_subcommand: Callable[[argparse.Namespace], int],
) -> None:
    """Add `hutch keys` and `hutch teams` (`command` makes a top-level command)."""

    def handler(fn: Callable[[Any, argparse.Namespace], int]) -> Callable[..., int]:
        def run(args: argparse.Namespace) -> int:
            with client(args) as c:
                return fn(c, args)

        return run

    keys = command("keys", needs_subcommand, "manage API keys (admin)").add_subparsers(
        dest="keys_command", metavar="COMMAND", required=True
    )
    p = keys.add_parser("ls", help="list API keys", parents=[connection])
    p.set_defaults(handler=handler(_keys_ls))
    p = keys.add_parser("create", help="create an API key and print it", parents=[connection])
    p.set_defaults(handler=handler(_keys_create))
    p.add_argument("name", metavar="NAME", nargs="?", help="what it is for (default: TEAM-ROLE)")
    p.add_argument("--team", default="default", help="the team it acts for (default: default)")
    p.add_argument(
        "--role",
        choices=["member", "admin"],
        default="member",
        help="member: its team's resources only (default); admin: every team, keys, teams",
    )
    p.add_argument("--expires", metavar="DURATION", help="stop working after this, e.g. 30d")
    p.add_argument(
        "--e2b", action="store_true", help="an E2B-shaped key (e2b_<hex>) for the e2b SDKs"
    )
    for name, help_text in (("revoke", "revoke an API key at once"), ("rm", "same as revoke")):
        p = keys.add_parser(name, help=help_text, parents=[connection])
        p.set_defaults(handler=handler(_keys_revoke))
        p.add_argument("key_id", metavar="ID")

    teams = command("teams", needs_subcommand, "manage teams and quotas (admin)").add_subparsers(
        dest="teams_command", metavar="COMMAND", required=True
    )
    p = teams.add_parser("ls", help="list teams and their quotas", parents=[connection])
    p.set_defaults(handler=handler(_teams_ls))
    p = teams.add_parser("create", help="create a team", parents=[connection])
    p.set_defaults(handler=handler(_teams_create))
    p.add_argument("name", metavar="NAME")
    _add_quota_flags(p)
    p = teams.add_parser("rm", help="delete an empty team and its keys", parents=[connection])
    p.set_defaults(handler=handler(_teams_rm))
    p.add_argument("name", metavar="NAME")
    p = teams.add_parser(
        "quota",
        help="show a team's quota, or set limits ('none' lifts one)",
        parents=[connection],
    )
    p.set_defaults(handler=handler(_teams_quota))
    p.add_argument("name", metavar="NAME")
    _add_quota_flags(p)


def _add_quota_flags(parser: argparse.ArgumentParser) -> None:
    for flag, (_, _, help_text) in QUOTA_FLAGS.items():
        parser.add_argument(f"--{flag}", metavar="N", help=f"{help_text} ('{NO_LIMIT}': no limit)")


def _quota_from(args: argparse.Namespace) -> dict[str, Any]:
    quota: dict[str, Any] = {}
    for flag, (field, kind, _) in QUOTA_FLAGS.items():
        raw = getattr(args, flag)
        if raw is None:
            continue
        if raw == NO_LIMIT:
            quota[field] = None
            continue
        try:
            quota[field] = kind(raw)
        except ValueError:
            raise SystemExit(f"hutch: --{flag} {raw!r} is not a number (or '{NO_LIMIT}')") from None
    return quota


def _keys_ls(client: Any, args: argparse.Namespace) -> int:
    rows = [
        [
            k.id,
            k.name,
            k.team,
            k.role,
            k.prefix,
            format_time(k.created_at),
            format_time(k.expires_at),
        ]
        for k in client.list_keys()
    ]
    print(render_table(["ID", "NAME", "TEAM", "ROLE", "PREFIX", "CREATED", "EXPIRES"], rows))
    return 0


def _keys_create(client: Any, args: argparse.Namespace) -> int:
    key = client.create_key(
        args.name or f"{args.team}-{args.role}",
        e2b=args.e2b,
        team=args.team,
        role=args.role,
        expires_in=args.expires,
    )
    print(key.key)
    expiry = f", expires {format_time(key.expires_at)} UTC" if key.expires_at else ""
    print(
        f"hutch: created {key.id} ({key.name}, team {key.team}, {key.role}{expiry}); the key is "
        "shown only this once",
        file=sys.stderr,
    )
    return 0


def _keys_revoke(client: Any, args: argparse.Namespace) -> int:
    client.delete_key(args.key_id)
    print(args.key_id)
    return 0


def _limit(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _teams_ls(client: Any, args: argparse.Namespace) -> int:
    headers = ["NAME", *(flag.upper() for flag in QUOTA_FLAGS)]
    rows = [
        [t.name, *(_limit(t.quota.get(field)) for field, _, _ in QUOTA_FLAGS.values())]
        for t in client.list_teams()
    ]
    print(render_table(headers, rows))
    return 0


def _teams_create(client: Any, args: argparse.Namespace) -> int:
    team = client.create_team(args.name, **_quota_from(args))
    print(team.name)
    return 0


def _teams_rm(client: Any, args: argparse.Namespace) -> int:
    client.delete_team(args.name)
    print(args.name)
    return 0


def _teams_quota(client: Any, args: argparse.Namespace) -> int:
    quota = _quota_from(args)
    if quota:
        team = client.set_team_quota(args.name, **quota)
    else:
        team = next((t for t in client.list_teams() if t.name == args.name), None)
        if team is None:
            print(f"hutch: no team {args.name!r} (`hutch teams ls` lists them)", file=sys.stderr)
            return 1
    for flag, (field, _, _) in QUOTA_FLAGS.items():
        print(f"{flag:<10} {_limit(team.quota.get(field))}")
    return 0
