"""``hutch``: argument parsing and the commands.

Every command talks to the server through the sync SDK, except ``serve`` (which is the server)
and ``image build`` (which builds on this host). An error from the server or the network is
one line on stderr and exit status 1; a usage error is exit status 2; ``exec`` and ``run``
exit with the command's own status (124 when it was killed by its timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from hutch._wire.sandbox_options import DEFAULTS, HELP, NETWORKS, RUNTIMES
from hutch.cli._api import add_api_command
from hutch.cli._buckets import add_bucket_commands
from hutch.cli._connect import client_for as _client
from hutch.cli._create_options import add_lifetime_options, ca_certificates_from, secrets_from
from hutch.cli._extras import install_server_message, missing_server_module
from hutch.cli._files import add_file_commands
from hutch.cli._images import add_image_commands
from hutch.cli._lifecycle import add_lifecycle_commands, add_lifecycle_options
from hutch.cli._network import add_cidr_options, add_network_commands
from hutch.cli._nodes import add_node_commands
from hutch.cli._output import (
    format_labels,
    format_size,
    format_time,
    parse_pairs,
    render_table,
    short_id,
)
from hutch.cli._output import print_error as _fail
from hutch.cli._stdin import unsent_stdin_warning
from hutch.cli._teams import add_key_and_team_commands
from hutch.cli._wait_port import add_wait_port_command

if TYPE_CHECKING:
    from hutch.sdk import Sandbox
    from hutch.server import ServerConfig

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hutch`` command line; returns the exit status.

    Args:
        argv: The arguments after the program name (``sys.argv[1:]`` when ``None``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    from hutch.sdk import HutchError

    try:
        return handler(args)
    except HutchError as exc:
        _fail(str(exc))
        return 1
    except ModuleNotFoundError as exc:
        # `pip install hutch` has no server: say how to get it instead of a traceback.
        if (module := missing_server_module(exc)) is None:
            raise
        _fail(install_server_message(args.command, module))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`hutch exec ... | head`): exit quietly, like cat does.
        _silence_stdout()
        return 141


def build_parser() -> argparse.ArgumentParser:
    """The parser for every ``hutch`` command (``args.handler`` runs the chosen one)."""
    connection = argparse.ArgumentParser(add_help=False)
    connection.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="the Hutch server's URL (default: $HUTCH_URL, then http://127.0.0.1:7070)",
    )
    connection.add_argument(
        "--api-key",
        default=argparse.SUPPRESS,
        help="the API key (default: $HUTCH_API_KEY)",
    )

    parser = argparse.ArgumentParser(
        prog="hutch",
        description="Self-hosted, isolated Linux sandboxes for untrusted code.",
        parents=[connection],
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(
        name: str, handler: Handler, help: str, epilog: str | None = None
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=help,
            description=help,
            epilog=epilog,
            parents=[connection],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    p = command("serve", cmd_serve, "run the Hutch server")
    p.add_argument("--host", help="address to listen on (default: $HUTCH_HOST, then 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: $HUTCH_PORT, then 7070)")
    _add_home(p)
    add_api_command(command)

    add_node_commands(command, connection)

    p = command("mcp", cmd_mcp, "serve the Model Context Protocol (stdio or streamable HTTP)")
    p.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    p.add_argument("--host", default="127.0.0.1", help="http: address to listen on")
    p.add_argument("--port", type=int, default=7071, help="http: port to listen on")

    p = command("create", cmd_create, "create a sandbox and print its id")
    _add_sandbox_options(p)
    _add_env(p)
    p.add_argument(
        "--label", metavar="K=V", action="append", type=_pair, help="a label; repeatable"
    )
    # Defaults and help: hutch._wire.sandbox_options, as for the SDK and the API.
    p.add_argument("--cpu", type=float, default=DEFAULTS.cpu, help=_help("cpu"))
    add_lifecycle_options(p)
    add_lifetime_options(p)
    p.add_argument(
        "--memory", type=int, default=DEFAULTS.memory_mb, metavar="MB", help=_help("memory_mb")
    )
    p.add_argument(
        "--disk", type=int, default=DEFAULTS.disk_mb, metavar="MB", help=_help("disk_mb")
    )
    p.add_argument("--runtime", choices=RUNTIMES, default=DEFAULTS.runtime, help=_help("runtime"))
    p.add_argument("--timeout", type=_seconds_or_duration, metavar="DURATION", help=HELP["timeout"])
    p.add_argument("--start-entrypoint", action="store_true", help=HELP["start_entrypoint"])

    p = command("ls", cmd_ls, "list sandboxes")
    p.add_argument("--label", metavar="K=V", action="append", type=_pair, help="filter; repeatable")
    p.add_argument("-q", "--quiet", action="store_true", help="print the ids only")

    p = command("info", cmd_info, "print a sandbox's details as JSON")
    p.add_argument("id", metavar="ID")

    p = command(
        "exec",
        cmd_exec,
        "run a command in a sandbox, streaming its output",
        epilog="examples:\n"
        "  hutch exec sb-1a2b3c4d5e6f -- 'ls -l / | wc -l'     (one argument: a shell command)\n"
        "  hutch exec sb-1a2b3c4d5e6f -- python -c 'print(1)'  (several: program and args)\n"
        "  hutch exec -i sb-1a2b3c4d5e6f -- wc -c < file        (-i: send your stdin)",
    )
    p.add_argument("id", metavar="ID")
    _add_exec_options(p)

    p = command(
        "run",
        cmd_run,
        "run a command in a new sandbox that is destroyed afterwards",
        epilog="example:\n  hutch run --network internet -- 'pip download requests && ls'",
    )
    _add_sandbox_options(p)
    _add_exec_options(p)

    p = command("shell", cmd_shell, "open an interactive shell in a sandbox (exits with its code)")
    p.add_argument("id", metavar="ID")
    p.add_argument(
        "--shell", help="the shell to run (default: the image's CMD if a shell, else bash, else sh)"
    )
    from hutch.cli._procs import add_process_commands

    add_process_commands(command, _client)
    add_file_commands(command)
    add_bucket_commands(command)
    add_network_commands(command, connection)
    add_lifecycle_commands(command, connection)
    add_wait_port_command(command)

    p = command("rm", cmd_rm, "destroy sandboxes")
    p.add_argument("ids", metavar="ID", nargs="+")

    images = command("image", _needs_subcommand, "manage images").add_subparsers(
        dest="image_command", metavar="COMMAND", required=True
    )
    p = images.add_parser("ls", help="list the server's images", parents=[connection])
    p.set_defaults(handler=cmd_image_ls)
    p = images.add_parser(
        "build",
        help="build an image on this host (root): 'default' or 'agents' from their recipes, "
        "or a Dockerfile (-f) with buildah (on the server when HUTCH_URL or --url is set)",
        parents=[connection],
    )
    p.set_defaults(handler=cmd_image_build)
    p.add_argument(
        "name",
        nargs="?",
        default="default",
        help="'default' or 'agents'; with -f, the build context dir",
    )
    p.add_argument("-f", "--file", dest="dockerfile", help="Dockerfile to build with buildah")
    p.add_argument("-t", "--tag", dest="tag", help="name of the built image (with -f)")
    p.add_argument("--force", action="store_true", help="rebuild even if it is cached")
    _add_home(p)

    add_image_commands(images, connection, _client)

    add_key_and_team_commands(command, connection, _client, _needs_subcommand)
    return parser


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--home",
        type=Path,
        help="state directory (default: $HUTCH_HOME, then /var/lib/hutch)",
    )


def _add_sandbox_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", default=DEFAULTS.image, help=_help("image"))
    parser.add_argument(
        "--network", choices=NETWORKS, default=DEFAULTS.network, help=_help("network")
    )
    add_cidr_options(parser)


def _help(option: str) -> str:
    return f"{HELP[option]} (default: %(default)s)"


def _add_env(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--env", metavar="K=V", action="append", type=_pair, help="environment variable; repeatable"
    )


def _add_exec_options(parser: argparse.ArgumentParser) -> None:
    _add_env(parser)
    parser.add_argument("--cwd", help="working directory in the sandbox")
    parser.add_argument(
        "-u", "--user", help="user to run as, e.g. 'user' (default: the image's, root)"
    )
    parser.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="kill the command after this long"
    )
    parser.add_argument(
        "-i", "--stdin", action="store_true", help="feed this command's stdin to the command"
    )
    parser.add_argument(
        "argv",
        metavar="CMD",
        nargs="+",
        help="after --: one argument runs as a shell command line, several as a program and "
        "its arguments",
    )


def _pair(text: str) -> tuple[str, str]:
    try:
        ((key, value),) = parse_pairs([text], "argument").items()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return key, value


def _needs_subcommand(args: argparse.Namespace) -> int:
    raise AssertionError("argparse requires a subcommand")  # pragma: no cover


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _server_config(args: argparse.Namespace, **overrides: object) -> ServerConfig:
    from hutch.server import ServerConfig

    # HUTCH_* variables are read by the server's own loader; options given here win.
    try:
        return ServerConfig.from_env(home=args.home, **overrides)
    except ValueError as exc:
        # A bad HUTCH_* value is the operator's to fix: say what is wrong, not a traceback.
        raise SystemExit(f"hutch: {exc}") from None


# --- commands --------------------------------------------------------------------------------


def cmd_mcp(args: argparse.Namespace) -> int:
    import asyncio

    from hutch.mcp import serve_http, serve_stdio
    from hutch.sdk import AsyncClient

    client = AsyncClient(getattr(args, "url", None), getattr(args, "api_key", None))
    if args.transport == "stdio":
        asyncio.run(serve_stdio(client))
        return 0
    # Clients of the HTTP endpoint authenticate with the same key hutch mcp uses for Hutch.
    key = client.config.api_key or ""
    if not key:
        _fail("hutch mcp --transport http needs an API key (--api-key or $HUTCH_API_KEY)")
        return 1
    print(f"hutch mcp: http://{args.host}:{args.port}/mcp", file=sys.stderr, flush=True)
    asyncio.run(serve_http(client, host=args.host, port=args.port, key=key))
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from hutch.server import run

    config = _server_config(
        args, host=args.host, port=args.port, api_key=getattr(args, "api_key", None)
    )
    run(config)
    return 0


def cmd_create(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        sandbox = Sandbox.create(
            image=args.image,
            env=dict(args.env or ()),
            cpu=args.cpu,
            memory_mb=args.memory,
            disk_mb=args.disk,
            network=args.network,
            network_allow=args.allow,
            network_deny=args.deny,
            runtime=args.runtime,
            labels=dict(args.label or ()),
            timeout=args.timeout,
            start_entrypoint=args.start_entrypoint,
            sleep_after=args.sleep_after,
            keep_alive=args.keep_alive,
            on_idle=args.on_idle,
            on_timeout=args.on_timeout,
            snapshot=args.snapshot,
            secrets=secrets_from(args.secret),
            pids_limit=args.pids_limit,
            ca_certificates=ca_certificates_from(args.ca_cert) or None,
            client=client,
        )
    print(sandbox.id)
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        sandboxes = Sandbox.list(labels=dict(args.label or ()), client=client)
    if args.quiet:
        for info in sandboxes:
            print(info.id)
        return 0
    rows = [
        [
            s.id,
            s.status,
            s.image,
            s.network,
            format_time(s.created_at),
            format_time(s.expires_at) if s.expires_at else "-",
            format_labels(s.labels),
        ]
        for s in sandboxes
    ]
    headers = ["ID", "STATUS", "IMAGE", "NETWORK", "CREATED", "EXPIRES", "LABELS"]
    print(render_table(headers, rows))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        info = Sandbox(args.id, client=client).info()
    print(json.dumps(info.raw, indent=2))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        return _stream_command(Sandbox(args.id, client=client), args)


def cmd_shell(args: argparse.Namespace) -> int:
    from hutch.cli._shell import run_shell
    from hutch.sdk import Sandbox

    with _client(args) as client:
        return run_shell(Sandbox(args.id, client=client), args.shell)


def cmd_run(args: argparse.Namespace) -> int:
    from hutch.sdk import Sandbox

    with _client(args) as client:
        sandbox = Sandbox.create(
            image=args.image,
            network=args.network,
            network_allow=args.allow,
            network_deny=args.deny,
            client=client,
        )
        with sandbox:  # destroyed on the way out, also on Ctrl-C
            return _stream_command(sandbox, args)


def _stream_command(sandbox: Sandbox, args: argparse.Namespace) -> int:
    argv: list[str] = args.argv
    env = dict(args.env or ())
    stdin = sys.stdin.buffer.read() if args.stdin else None
    if stdin is None and (warning := unsent_stdin_warning()) is not None:
        print(warning, file=sys.stderr, flush=True)
    cwd, user, timeout = args.cwd, args.user, args.timeout
    if len(argv) == 1:
        events = sandbox.exec_stream(
            argv[0], cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin
        )
    else:
        events = sandbox.run_stream(
            argv[0], argv[1:], cwd=cwd, env=env, user=user, timeout=timeout, stdin=stdin
        )
    sys.stdout.flush()
    sys.stderr.flush()
    for event in events:
        if event.type == "exit":
            if event.timed_out:
                limit = f" of {args.timeout:g}s" if args.timeout else ""
                _fail(f"the command ran past its timeout{limit} and was killed")
                return 124
            code = event.exit_code
            return code if code is not None and 0 <= code <= 255 else 1
        out = sys.stdout.buffer if event.type == "stdout" else sys.stderr.buffer
        out.write(event.data)
        out.flush()
    raise AssertionError("the exec stream ends with an exit event")  # pragma: no cover


def cmd_rm(args: argparse.Namespace) -> int:
    from hutch.sdk import HutchError, Sandbox

    status = 0
    with _client(args) as client:
        for sandbox_id in args.ids:
            try:
                Sandbox(sandbox_id, client=client).destroy()
            except HutchError as exc:
                _fail(f"{sandbox_id}: {exc}")
                status = 1
            else:
                print(sandbox_id, flush=True)
    return status


def cmd_image_ls(args: argparse.Namespace) -> int:
    with _client(args) as client:
        images = client.list_images()
    rows = [
        [i.name, short_id(i.id), format_size(i.size_bytes), format_time(i.created_at)]
        for i in images
    ]
    print(render_table(["NAME", "ID", "SIZE", "CREATED"], rows))
    return 0


def cmd_image_build(args: argparse.Namespace) -> int:
    if args.dockerfile is not None and (getattr(args, "url", None) or os.environ.get("HUTCH_URL")):
        from hutch.cli._images import build_through_api

        return build_through_api(args, _client)
    if os.geteuid() != 0:
        _fail("building an image needs root (debootstrap, chroot); run: sudo hutch image build")
        return 1
    from hutch.runtime import (
        DefaultImageBuildError,
        ImageStore,
        default_recipe_dir,
        ensure_default_image,
        render_progress_bar,
    )

    config = _server_config(args)
    if args.dockerfile is not None:
        return _build_dockerfile(args, config)
    if args.name not in ("default", "agents"):
        _fail("without -f only 'default' and 'agents' can be built; use -f Dockerfile [context]")
        return 2
    if args.name != "default":
        return _build_recipe_image(args, config)
    try:
        image = ensure_default_image(
            ImageStore(config.image_root),
            default_recipe_dir(),
            cache_dir=config.home / "cache",
            progress=render_progress_bar(sys.stderr),
            force=args.force,
        )
    except DefaultImageBuildError as exc:
        _fail(f"building the {args.name} image failed: {exc}")
        return 1
    print(f"{image.name} {image.id[:12]} {format_size(image.size_bytes)}")
    return 0


def _build_dockerfile(args: argparse.Namespace, config: ServerConfig) -> int:
    from hutch.cli._images import build_with_buildah
    from hutch.runtime import BuildError, ImageInvalid

    context = Path(args.name if args.name != "default" else ".")
    if not args.tag:
        _fail("name the image: hutch image build -f Dockerfile -t NAME [context]")
        return 2
    try:
        image = build_with_buildah(config.image_root, Path(args.dockerfile), context, args.tag)
    except (BuildError, ImageInvalid, ValueError) as exc:
        _fail(f"building {args.tag} failed: {exc}")
        return 1
    print(f"{image.name} {image.id[:12]} {format_size(image.size_bytes)}")
    return 0


def _build_recipe_image(args: argparse.Namespace, config: ServerConfig) -> int:
    """Images built on a stored image from `images/<name>/` (e.g. agents, on default)."""
    from hutch.runtime import (
        ImageStore,
        RecipeImageBuildError,
        ensure_recipe_image,
        recipe_dir_for,
        render_progress_bar,
    )

    try:
        image = ensure_recipe_image(
            ImageStore(config.image_root),
            args.name,
            recipe_dir_for(args.name),
            cache_dir=config.home / "cache",
            progress=render_progress_bar(sys.stderr),
            force=args.force,
        )
    except (RecipeImageBuildError, FileNotFoundError) as exc:
        _fail(str(exc))
        return 1
    print(f"{image.name} {image.id[:12]} {format_size(image.size_bytes)}")
    return 0


def _seconds_or_duration(text: str) -> float | str:
    """A number of seconds as a number; a duration ("10m", "1h30m") as given, for the server
    to check (it answers 422 naming the accepted forms)."""
    try:
        return float(text)
    except ValueError:
        return text
