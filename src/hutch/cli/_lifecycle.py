"""``hutch pause/resume/stop/timeout/fork`` and ``hutch snapshot ls/create/rm``."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from hutch.cli._connect import client_for as _client
from hutch.cli._output import format_time, render_table

Handler = Callable[[argparse.Namespace], int]
Command = Callable[..., argparse.ArgumentParser]


def add_lifecycle_commands(command: Command, connection: argparse.ArgumentParser) -> None:
    for name, handler, text in (
        ("pause", cmd_pause, "freeze a sandbox's processes (memory kept); any request wakes it"),
        # NB: no `hutch start`: it starts a background process. resume boots a stopped one.
        ("resume", cmd_resume, "run a paused sandbox again, or boot a stopped one on its disk"),
        ("stop", cmd_stop, "end a sandbox's processes, keeping its disk (resume boots it)"),
    ):
        p = command(name, handler, text)
        p.add_argument("ids", metavar="ID", nargs="+")

    p = command(
        "timeout",
        cmd_timeout,
        "end a sandbox's lifetime this long from now (then its on_timeout applies)",
        epilog="examples:\n  hutch timeout sb-1a2b3c4d5e6f 1h30m\n"
        "  hutch timeout sb-1a2b3c4d5e6f 0      (no limit)",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("duration", metavar="DURATION", help='"10m", "1h30m", or seconds')

    p = command("fork", cmd_fork, "start new sandboxes from a sandbox's current disk")
    p.add_argument("id", metavar="ID")
    p.add_argument("-n", "--count", type=int, default=1, help="how many (default: 1)")

    snapshots = command(
        "snapshot",
        _needs_subcommand,
        "manage snapshots of sandbox disks",
        epilog="examples:\n  hutch snapshot create sb-1a2b3c4d5e6f --name base\n"
        "  hutch create --snapshot base\n  hutch snapshot ls\n  hutch snapshot rm base",
    ).add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    p = snapshots.add_parser(
        "create", help="snapshot a sandbox's disk and print its id", parents=[connection]
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("--name", help="a name to create sandboxes from it by")
    p.set_defaults(handler=cmd_snapshot_create)
    p = snapshots.add_parser("ls", help="list snapshots", parents=[connection])
    p.add_argument("--sandbox", metavar="ID", help="only the snapshots of this sandbox")
    p.add_argument("-q", "--quiet", action="store_true", help="print the ids only")
    p.set_defaults(handler=cmd_snapshot_ls)
    p = snapshots.add_parser("rm", help="delete snapshots", parents=[connection])
    p.add_argument("snapshots", metavar="SNAPSHOT", nargs="+", help="ids or names")
    p.set_defaults(handler=cmd_snapshot_rm)


def add_lifecycle_options(parser: argparse.ArgumentParser) -> None:
    """The idle and lifetime options of ``hutch create``."""
    parser.add_argument(
        "--sleep-after", metavar="DURATION", help='sleep after this long idle ("10m" or seconds)'
    )
    parser.add_argument("--keep-alive", action="store_true", help="never sleep for idleness")
    parser.add_argument("--on-idle", choices=["pause", "stop"], help="how to sleep (pause)")
    parser.add_argument(
        "--on-timeout", choices=["destroy", "stop", "pause"], help="at the lifetime's end (destroy)"
    )
    parser.add_argument("--snapshot", help="start from this snapshot (id or name)")


def _sandbox_command(action: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        from hutch.sdk import Sandbox

        with _client(args) as client:
            for sandbox_id in args.ids:
                info = getattr(Sandbox(sandbox_id, client=client), action)()
                print(f"{info.id}\t{info.status}")
        return 0

    return run


cmd_pause = _sandbox_command("pause")
cmd_resume = _sandbox_command("resume")
cmd_stop = _sandbox_command("stop")


def cmd_timeout(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    duration: str | float = args.duration
    with _client(args) as client:
        info = Sandbox(args.id, client=client).set_timeout(duration)
    print(format_time(info.expires_at) if info.expires_at else "no limit")
    return 0


def cmd_fork(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        for sandbox in Sandbox(args.id, client=client).fork(args.count):
            print(sandbox.id)
    return 0


def cmd_snapshot_create(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        snap = Sandbox(args.id, client=client).snapshot(args.name)
    print(snap.id)
    return 0


def cmd_snapshot_ls(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        snaps = Sandbox.list_snapshots(args.sandbox, client=client)
    if args.quiet:
        for snap in snaps:
            print(snap.id)
        return 0
    rows = [[s.id, s.name or "", s.sandbox_id, s.image, format_time(s.created_at)] for s in snaps]
    print(render_table(["ID", "NAME", "SANDBOX", "IMAGE", "CREATED"], rows))
    return 0


def cmd_snapshot_rm(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        for snap in args.snapshots:
            Sandbox.delete_snapshot(snap, client=client)
    return 0


def _needs_subcommand(args: argparse.Namespace) -> int:
    return 2
