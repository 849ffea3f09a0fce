"""``hutch image import/pull/inspect/rm/tag/build -f``: images in and out of the store."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hutch.cli._output import format_size, short_id


def add_image_commands(
    images: Any, connection: argparse.ArgumentParser, client: Callable[[argparse.Namespace], Any]
) -> None:
    """Add the image subcommands to the `hutch image` subparsers `images`."""

    def handler(
        fn: Callable[[Any, argparse.Namespace], int],
    ) -> Callable[[argparse.Namespace], int]:
        def run(args: argparse.Namespace) -> int:
            with client(args) as c:
                return fn(c, args)

        return run

    p = images.add_parser(
        "import", help="import a `docker save` tarball or OCI archive", parents=[connection]
    )
    p.add_argument("file", metavar="FILE")
    p.add_argument("--name", help="name to store it as (default: the archive's tag)")
    p.set_defaults(handler=handler(_import))

    p = images.add_parser("pull", help="pull an image from an OCI registry", parents=[connection])
    p.add_argument("ref", metavar="REF", help="e.g. registry.example.com/app:1")
    p.add_argument("--name", help="name to store it as (default: REF)")
    p.add_argument("--username", help="registry user (password from $HUTCH_REGISTRY_PASSWORD)")
    p.add_argument("--insecure", action="store_true", help="plain-HTTP (or unverified) registry")
    p.set_defaults(handler=handler(_pull))

    p = images.add_parser("inspect", help="show an image and its config", parents=[connection])
    p.add_argument("name", metavar="NAME")
    p.set_defaults(handler=handler(_inspect))

    p = images.add_parser("rm", help="remove image names", parents=[connection])
    p.add_argument("names", metavar="NAME", nargs="+")
    p.set_defaults(handler=handler(_rm))

    p = images.add_parser("tag", help="give an image another name", parents=[connection])
    p.add_argument("source", metavar="NAME")
    p.add_argument("target", metavar="NEW_NAME")
    p.set_defaults(handler=handler(_tag))


def _print(image: Any) -> None:
    print(f"{image.name} {short_id(image.id)} {format_size(image.size_bytes)}")


def _import(client: Any, args: argparse.Namespace) -> int:
    print(f"importing {args.file} ...", file=sys.stderr)
    _print(client.import_image(args.file, name=args.name))
    return 0


def _pull(client: Any, args: argparse.Namespace) -> int:
    print(f"pulling {args.ref} ...", file=sys.stderr)
    image = client.pull_image(
        args.ref,
        name=args.name,
        username=args.username,
        password=os.environ.get("HUTCH_REGISTRY_PASSWORD") if args.username else None,
        insecure=args.insecure,
    )
    _print(image)
    return 0


def _inspect(client: Any, args: argparse.Namespace) -> int:
    image = client.get_image(args.name)
    out = {
        "name": image.name,
        "id": image.id,
        "size_bytes": image.size_bytes,
        "created_at": image.created_at.isoformat() if image.created_at else None,
        "config": {
            "env": image.env,
            "working_dir": image.working_dir,
            "user": image.user,
            "entrypoint": image.entrypoint,
            "cmd": image.cmd,
        },
        "labels": image.labels,
        "sandboxes": image.sandboxes,
    }
    print(json.dumps(out, indent=2))
    return 0


def _rm(client: Any, args: argparse.Namespace) -> int:
    for name in args.names:
        client.remove_image(name)
        print(name)
    return 0


def _tag(client: Any, args: argparse.Namespace) -> int:
    _print(client.tag_image(args.source, args.target))
    return 0


def build_with_buildah(
    store_root: Path, dockerfile: Path, context: Path, name: str, *, pull: bool = True
) -> Any:
    """Build `dockerfile` in `context` with buildah on this host and store the result as `name`;
    buildah's progress goes to stderr. Returns the stored image."""
    from hutch.runtime import ImageStore, build_image

    return build_image(ImageStore(store_root), dockerfile, context, name, out=sys.stderr)


def build_through_api(args: argparse.Namespace, client: Callable[[argparse.Namespace], Any]) -> int:
    """`hutch image build -f Dockerfile -t NAME [context]` on the server (POST /v1/images/build):
    the context goes up as a tar, buildah's progress comes back to stderr."""
    if not args.tag:
        print("hutch: name the image: hutch image build -f Dockerfile -t NAME [context]",
              file=sys.stderr)  # fmt: skip
        return 2
    context = Path(args.name if args.name != "default" else ".")
    with client(args) as c:
        image = c.build_image(
            args.tag,
            context,
            dockerfile=args.dockerfile,
            on_progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    _print(image)
    return 0
